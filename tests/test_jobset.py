"""JobSet rendering: valid against the JobSet CRD's schema (unknown fields rejected), golden."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import missing_on_this_machine

from konduktor import launch, task
from konduktor.k8s import jobset
from konduktor.plan import Bucket, File, LaunchPlan, Layer, Tree
from konduktor.task import load

ROOT = Path(__file__).resolve().parents[1]
# The CRD is data kept beside the project (../shared/k8s, see its README), never copied in.
SHARED = Path(os.environ.get("KONDUKTOR_SHARED") or ROOT.parent / "shared")
CRD = SHARED / "k8s" / "jobset.x-k8s.io_jobsets.yaml"
GOLDEN = ROOT / "fixtures" / "jobset" / "quickstart.yaml"
LAUNCH_GOLDEN = ROOT / "fixtures" / "jobset" / "launch.yaml"
K8S_VERSION = "1.30"  # kubernetes-validate's schemas for this Kubernetes release
PROVENANCE = {"git-commit": "0123456789abcdef0123456789abcdef01234567", "git-dirty": "true"}
OWNER = jobset.Owner("tester", "tester-0a1b")


@pytest.fixture(autouse=True)
def fixed_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden files hold a fixed owner, not whoever runs the tests."""
    monkeypatch.setattr(jobset, "current_owner", lambda: OWNER)


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


def require_crd(crd: Path) -> None:
    """Skip when the CRD is missing, or fail when CI is set: a CI run has shared/ beside it."""
    if crd.is_file():
        return
    missing = (
        f"the JobSet CRD {crd} is missing: put shared/ (holding k8s/{crd.name}, see "
        f"shared/k8s/README.md) beside the project at {ROOT.parent / 'shared'}, or set "
        "KONDUKTOR_SHARED to the shared/ directory"
    )
    missing_on_this_machine(missing)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    require_crd(CRD)
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.fixture
def task_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # launched from the task's folder: workdir: . is there
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
        secret_names=["konduktor-creds-s3", "konduktor-creds-gs"],
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


@pytest.mark.parametrize("ci", ["true", None])
def test_a_missing_crd_fails_on_ci_and_skips_elsewhere(
    ci: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = tmp_path / "shared" / "k8s" / CRD.name
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome) as raised:
        require_crd(absent)
    assert str(absent) in str(raised.value)
    assert "KONDUKTOR_SHARED" in str(raised.value)
    absent.parent.mkdir(parents=True)
    absent.write_text("kind: CustomResourceDefinition\n")
    require_crd(absent)  # present: neither


def test_konduktor_shape(task_file: Path) -> None:
    manifest = render(task_file)
    assert manifest["metadata"]["labels"] == {
        "kueue.x-k8s.io/queue-name": "user-queue",
        "trainy.ai/job-name": "train-1a2b",
        "trainy.ai/user-id": "tester-0a1b",
        "trainy.ai/username": "tester",
        "trainy.ai/accelerator": "H100",
        "trainy.ai/num-accelerators": "8",
        "trainy.ai/konduktor-managed": "true",
        "parent": "trainy",
        "maxRunDurationSeconds": "600",  # the task's label stays, as upstream's
        "kueue.x-k8s.io/max-exec-time-seconds": "600",  # the one Kueue enforces
    }
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
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[jobset.CREDENTIALS_PATH]["readOnly"] is True


def test_default_max_run_duration(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("run: echo\n")
    manifest = jobset.render(
        load(path), name="t-0000", command="true", secret_names=["s"], provenance={}
    )
    assert manifest["metadata"]["annotations"]["kueue.x-k8s.io/maxRunDurationSeconds"] == "604800"
    assert jobset.MAX_EXEC_LABEL not in manifest["metadata"]["labels"]  # as upstream: no limit
    labels = manifest["metadata"]["labels"]
    assert (labels["trainy.ai/accelerator"], labels["trainy.ai/num-accelerators"]) == ("None", "0")


def test_the_owner_is_the_cleaned_login_and_a_host_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real current_owner
    monkeypatch.setenv("LOGNAME", "Jane.Doe")
    owner = jobset.current_owner()
    assert owner.username == "jane-doe"
    assert owner.user_id.startswith("jane-doe-")
    assert len(owner.user_id) == len("jane-doe-") + 4


def test_job_names_are_name_dash_eight_hex(task_file: Path) -> None:
    name = jobset.job_name(load(task_file))
    assert name.startswith("train-")
    assert len(name) == len("train-") + 8
    int(name[-8:], 16)


def test_the_longest_name_leaves_every_pod_host_name_within_63(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(f"name: {'a' * task.MAX_NAME}\nnum_nodes: {task.MAX_NODES}\nrun: echo\n")
    name = jobset.job_name(load(path))
    assert len(f"{name}-workers-0-{task.MAX_NODES - 1}") <= 63


@pytest.mark.parametrize(
    ("file", "name"),
    [("My_Train.v2.yaml", "my-train-v2"), ("2024-run.yaml", "run"), ("___.yaml", "task")],
)
def test_a_task_without_a_name_is_named_after_its_file_validly(
    tmp_path: Path, file: str, name: str
) -> None:
    path = tmp_path / file
    path.write_text("run: echo\n")
    assert load(path).name == name


def test_golden(task_file: Path) -> None:
    """To change the golden file on purpose: KONDUKTOR_UPDATE_GOLDEN=1 pytest, then review."""
    rendered = yaml.safe_dump(render(task_file), sort_keys=True)
    if os.environ.get("KONDUKTOR_UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text()


def job_and_pod(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The replicated job's Job and its pod template, as objects Kubernetes validates."""
    job_spec = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    meta = {"name": manifest["metadata"]["name"]}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": job_spec["template"]["spec"],
    }
    return job, pod


def test_the_job_and_pod_template_pass_kubernetes_validate(task_file: Path) -> None:
    for obj in job_and_pod(render(task_file)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_an_unknown_container_field(task_file: Path) -> None:
    _, pod = job_and_pod(copy.deepcopy(render(task_file)))
    pod["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def launch_plan() -> LaunchPlan:
    """A fixed plan: a dirty workdir of two layers, a file and a bucket mount."""
    base = "v1/bases/0123456789abcdef/" + "c" * 40 + "/fedcba9876543210.tar.zst"
    overlay = "v1/objects/ab/" + "ab" * 32 + ".tar.zst"
    workdir = Tree(
        "~/konduktor_workdir",
        "/src/project",
        "c" * 40,
        True,
        (
            Layer(
                base, "base", "1" * 64, 1000, 12, 20480, "https://s3.example/base?X-Amz-Signature=1"
            ),
            Layer(
                overlay,
                "overlay",
                "2" * 64,
                100,
                3,
                4096,
                "https://s3.example/overlay?X-Amz-Signature=2",
            ),
        ),
    )
    key = File("~/.ssh/id_ed25519", "/src/key", "v1/objects/33/" + "3" * 64, "3" * 64, 80, 0o600)
    return LaunchPlan(
        job="train-1a2b",
        store="s3://team-bucket/code",
        run="python train.py --lr $LR\n",
        trees=(workdir,),
        files=(key,),
        buckets=(Bucket("/data/ref", "s3://datasets/ref"),),
        region="eu-west-1",
        tool="0.1.0",
    )


def test_launch_manifest_golden(task_file: Path, validator: Any) -> None:
    """The whole JobSet a launch submits, startup script included. To change it on purpose:
    KONDUKTOR_UPDATE_GOLDEN=1 pytest, then review the diff."""
    manifest = launch.manifest(load(task_file), launch_plan())
    assert sorted(validator.iter_errors(manifest), key=str) == []
    for obj in job_and_pod(manifest):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    rendered = jobset.to_yaml(manifest)
    assert yaml.safe_load(rendered) == manifest
    if os.environ.get("KONDUKTOR_UPDATE_GOLDEN"):
        LAUNCH_GOLDEN.write_text(rendered)
    assert rendered == LAUNCH_GOLDEN.read_text()


def test_pod_config_merges_into_the_pod_as_upstreams_does(task_file: Path, validator: Any) -> None:
    """kubernetes.pod_config: mappings merge, the first container merges into ours, volumes
    and mounts by name (a mount taking /dev/shm drops ours), other lists are appended to;
    env: the config's, then the Secrets', then the task's win, each in the first's place."""
    pod_config = {
        "metadata": {"labels": {"team": "vision"}},
        "spec": {
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"pool": "h100"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
            "volumes": [
                {"name": jobset.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
            "containers": [
                {
                    "env": [
                        {"name": "PYTHONUNBUFFERED", "value": "1"},
                        {"name": "LR", "value": "from-config"},
                        {"name": "HF_HOME", "value": "/data/hf"},
                    ],
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                }
            ],
        },
    }
    secrets_config = {
        "spec": {
            "containers": [
                {
                    "env": [
                        {"name": "HF_HOME", "value": "/secret"},
                        {
                            "name": "HF_TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "hf-x", "key": "HF_TOKEN"}},
                        },
                    ]
                }
            ]
        }
    }
    manifest = jobset.render(
        load(task_file),
        name="train-1a2b",
        command="echo start",
        secret_names=["konduktor-creds-s3"],
        provenance=PROVENANCE,
        pod_config=pod_config,
        secrets_config=secrets_config,
        jobset_config={"metadata": {"annotations": {"cost": "42"}, "labels": {"team": "v"}}},
    )
    assert sorted(validator.iter_errors(manifest), key=str) == []
    for obj in job_and_pod(manifest):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    template = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    pod = template["spec"]
    assert template["metadata"]["labels"]["team"] == "vision"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert [t["key"] for t in pod["tolerations"]] == [
        "nvidia.com/gpu",
        "trainy.ai/accelerator-profile",
        "spot",
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[jobset.SHM_VOLUME]["emptyDir"]["sizeLimit"] == "64Gi"
    container = pod["containers"][0]
    shm = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm == ["dshm"]
    assert container["securityContext"] == {"capabilities": {"add": ["IPC_LOCK"]}}
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["PYTHONUNBUFFERED"] == "1"  # the config's, in the template's place
    assert names.index("PYTHONUNBUFFERED") == 0
    assert env["HF_HOME"] == "/secret"  # a Secret's over the config's
    assert env["LR"] == "0.1"  # the task's over everything
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-x", "key": "HF_TOKEN"}}
    assert env["NUM_GPUS_PER_NODE"] == "8"
    assert env["SKYPILOT_NUM_NODES"] == "2"
    meta = manifest["metadata"]
    assert meta["annotations"]["cost"] == "42"
    assert meta["labels"]["team"] == "v"


def test_a_max_run_duration_from_the_config_is_enforced(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("run: echo\n")
    annotations = {jobset.MAX_RUN_ANNOTATION: "7200"}
    manifest = jobset.render(
        load(path),
        name="t-0000",
        command="true",
        secret_names=["s"],
        provenance={},
        jobset_config={"metadata": {"annotations": annotations}},
    )
    assert manifest["metadata"]["labels"][jobset.MAX_EXEC_LABEL] == "7200"
    assert manifest["metadata"]["annotations"][jobset.MAX_RUN_ANNOTATION] == "7200"
