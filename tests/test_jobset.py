"""JobSet rendering: valid against the JobSet CRD's schema (unknown fields rejected), golden."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from konduktor.k8s import jobset
from konduktor.task import load

ROOT = Path(__file__).resolve().parents[1]
# The CRD is data kept beside the project (../shared/k8s, see its README), never copied in.
SHARED = Path(os.environ.get("KONDUKTOR_SHARED") or ROOT.parent / "shared")
CRD = SHARED / "k8s" / "jobset.x-k8s.io_jobsets.yaml"
GOLDEN = ROOT / "fixtures" / "jobset" / "quickstart.yaml"
PROVENANCE = {"git-commit": "0123456789abcdef0123456789abcdef01234567", "git-dirty": "true"}


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected wherever it lists properties."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    if not CRD.exists():
        pytest.skip(f"{CRD} is missing: set KONDUKTOR_SHARED to the shared/ directory")
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    (tmp_path / "test_dir").mkdir()
    path = tmp_path / "task.yaml"
    path.write_text(
        "name: train\nnum_nodes: 2\nworkdir: .\n"
        "resources:\n  cpus: 4\n  memory: 16\n  accelerators: H100:8\n  image_id: nvcr.io/pt:24\n"
        "  labels:\n    kueue.x-k8s.io/queue-name: user-queue\n"
        "    maxRunDurationSeconds: 600\n"
        "envs:\n  LR: 0.1\nrun: python train.py\n"
    )
    return path


def render(task_file: Path) -> dict[str, Any]:
    return jobset.render(
        load(task_file),
        name="train-1a2b",
        command="echo start",
        secret_name="konduktor-creds",
        provenance=PROVENANCE,
    )


def test_rendered_jobset_is_valid_against_the_crd(task_file: Path, validator: Any) -> None:
    manifest = render(task_file)
    errors = sorted(validator.iter_errors(manifest), key=str)
    assert errors == []


def test_the_strict_schema_rejects_unknown_fields(task_file: Path, validator: Any) -> None:
    manifest = copy.deepcopy(render(task_file))
    manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["parralelism"] = 2
    assert not validator.is_valid(manifest)


def test_konduktor_shape(task_file: Path) -> None:
    manifest = render(task_file)
    assert manifest["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "user-queue"}
    annotations = manifest["metadata"]["annotations"]
    assert annotations["kueue.x-k8s.io/maxRunDurationSeconds"] == "600"
    assert annotations["konduktor.dev/git-commit"] == PROVENANCE["git-commit"]
    job = manifest["spec"]["replicatedJobs"][0]
    assert job["name"] == "workers"
    assert (job["template"]["spec"]["parallelism"], job["template"]["spec"]["completions"]) == (
        2,
        2,
    )
    container = job["template"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "8"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == "train-1a2b-workers-0-0.train-1a2b"
    assert env["NODE_HOST_IPS"] == (
        "train-1a2b-workers-0-0.train-1a2b,train-1a2b-workers-0-1.train-1a2b"
    )
    assert env["NUM_NODES"] == "2"
    assert env["KONDUKTOR_GIT_COMMIT"] == PROVENANCE["git-commit"]
    assert env["LR"] == "0.1"
    mount = container["volumeMounts"][0]
    assert mount["readOnly"] is True


def test_default_max_run_duration(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("run: echo\n")
    manifest = jobset.render(
        load(path), name="t-0000", command="true", secret_name="s", provenance={}
    )
    assert manifest["metadata"]["annotations"]["kueue.x-k8s.io/maxRunDurationSeconds"] == "604800"


def test_job_names_are_name_dash_four_hex(task_file: Path) -> None:
    name = jobset.job_name(load(task_file))
    assert name.startswith("train-")
    assert len(name) == len("train-") + 4
    int(name[-4:], 16)


def test_golden(task_file: Path) -> None:
    """To change the golden file on purpose: KONDUKTOR_UPDATE_GOLDEN=1 pytest, then review."""
    rendered = yaml.safe_dump(render(task_file), sort_keys=True)
    if os.environ.get("KONDUKTOR_UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text()
