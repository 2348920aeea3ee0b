"""Our JobSet against upstream Konduktor's, field by field, for the three golden tasks.

fixtures/upstream/jobset/<task>.yaml is upstream's own rendering of
fixtures/jobset/tasks/<task>.yaml (made by fixtures/upstream/render_jobsets.py with its
published package); ours is rendered here for the same job name, owner, config and
Secrets. Every field that differs must be one of the differences listed below, each
with its reason (the README's "Differences from Konduktor" lists the same), and every
listed difference must still occur: a field that starts or stops differing fails.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity
from test_jobset import K8S_VERSION, OWNER, job_and_pod, validator  # noqa: F401

from konduktor import config
from konduktor.k8s import jobset, secrets
from konduktor.task import load

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "fixtures" / "jobset" / "tasks"
UPSTREAM = ROOT / "fixtures" / "upstream" / "jobset"
GOLDEN = ROOT / "fixtures" / "jobset" / "golden"
NAMES = ["cpu-single", "gpu-two-nodes", "queued"]
PROVENANCE = {"git-commit": "0123456789abcdef0123456789abcdef01234567", "git-dirty": "false"}
# a launch's provenance also has snapshot and layers: the same kind of addition
POD = "spec.replicatedJobs.workers.template.spec.template"
CONTAINER = f"{POD}.spec.containers.konduktor-container"

# (field pattern, reason): fields only ours has
ADDED = [
    ("metadata.annotations.konduktor.dev/*", "provenance: tool version, commit, dirty flag"),
    ("spec.network.enableDNSHostnames", "JobSet's default, written out"),
    ("spec.replicatedJobs.workers.replicas", "JobSet's default, written out"),
    ("spec.replicatedJobs.workers.template.spec.completionMode", "JobSet's default (Indexed)"),
    (f"{POD}.metadata.labels.konduktor.dev/job", "our jobs, logs and status find pods by it"),
    (f"{POD}.metadata.labels.trainy.ai/job-name", "the pod names its job as the JobSet does"),
    (
        "spec.replicatedJobs.workers.template.spec.podFailurePolicy.rules.0.onPodConditions.0.status",
        "required by the JobSet CRD and Kubernetes 1.30 (True: the default upstream relies on)",
    ),
    (f"{CONTAINER}.command.*", "our startup script, run by sh (images without bash work)"),
    (f"{CONTAINER}.env.KONDUKTOR_GIT_*", "provenance (KONDUKTOR_SNAPSHOT, _LAYERS too)"),
    (f"{CONTAINER}.volumeMounts.konduktor-credentials*", "the store's credentials"),
    (f"{POD}.spec.volumes.konduktor-credentials*", "the store's credentials"),
]
# fields only upstream has
OMITTED = [
    (f"{CONTAINER}.args.*", "upstream's bash script; ours is in command"),
    (f"{CONTAINER}.env.KONDUKTOR_ENV_*", "upstream's script's env summary"),
    (f"{CONTAINER}.volumeMounts.sync*", "upstream's rsync scratch; our pod fetches from the store"),
    (f"{POD}.spec.volumes.sync*", "upstream's rsync scratch"),
]
# fields both have, with other values
CHANGED = [
    (f"{CONTAINER}.command.0", "sh, not bash: images without bash work (run: gets bash if there)"),
]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of *value* by its dotted path; list items with a name by their name."""
    if isinstance(value, dict):
        items = value.items()
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, dict) and "name" in v for v in value)
    ):
        items = ((v["name"], v) for v in value)
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def normalized(manifest: dict[str, Any]) -> dict[str, Any]:
    """Flattened, with resource quantities as numbers (``4.0`` and ``"4"`` are equal)."""
    flat = flatten(manifest)
    for path, value in flat.items():
        if f"{CONTAINER}.resources." in path:
            flat[path] = parse_quantity(value)
    return flat


def ours(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(jobset, "current_owner", lambda: OWNER)
    cfg = config.load(tmp_path / "none.yaml", tmp_path / "none-sync.yaml")
    found: list[secrets.UserSecret] = []
    if name == "queued":
        cfg = config.load(TASKS / "config.yaml", tmp_path / "none-sync.yaml")
        listed = yaml.safe_load((TASKS / "secrets.yaml").read_text())
        found = [
            secrets.UserSecret(s["name"], s["basename"], s["kind"], tuple(s["keys"]))
            for s in listed
        ]
    return jobset.render(
        load(TASKS / f"{name}.yaml"),
        name=f"{name}-1a2b",
        command="echo start",
        secret_names=["konduktor-creds-s3", "konduktor-creds-gs"],
        provenance=PROVENANCE,
        pod_config=cfg.pod_config,
        secrets_config=secrets.pod_config(found),
        jobset_config=cfg.jobset_config,
    )


def listed(path: str, table: list[tuple[str, str]]) -> str | None:
    return next((pattern for pattern, _ in table if fnmatch.fnmatchcase(path, pattern)), None)


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> tuple[list[str], set[str]]:
    """The unlisted differences, and the listed patterns that matched one."""
    a, b = normalized(mine), normalized(theirs)
    unlisted, used = [], set()
    for path in sorted(a.keys() | b.keys()):
        if path in a and path in b:
            if a[path] == b[path]:
                continue
            table, what = CHANGED, f"{path}: ours {a[path]!r}, upstream's {b[path]!r}"
        elif path in a:
            table, what = ADDED, f"{path}: only ours ({a[path]!r})"
        else:
            table, what = OMITTED, f"{path}: only upstream's ({b[path]!r})"
        pattern = listed(path, table)
        if pattern is None:
            unlisted.append(what)
        else:
            used.add(pattern)
    return unlisted, used


@pytest.mark.parametrize("name", NAMES)
def test_ours_differs_from_upstreams_rendering_only_as_documented(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = yaml.safe_load((UPSTREAM / f"{name}.yaml").read_text())
    unlisted, _ = differences(ours(name, tmp_path, monkeypatch), theirs)
    assert unlisted == []


def test_every_documented_difference_occurs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: set[str] = set()
    for name in NAMES:
        theirs = yaml.safe_load((UPSTREAM / f"{name}.yaml").read_text())
        used |= differences(ours(name, tmp_path, monkeypatch), theirs)[1]
    documented = {pattern for pattern, _ in ADDED + OMITTED + CHANGED}
    assert documented - used == set()


def test_a_difference_not_listed_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = ours("gpu-two-nodes", tmp_path, monkeypatch)
    pod = mine["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["tolerations"].pop()
    pod["containers"][0]["env"] = [e for e in pod["containers"][0]["env"] if e["name"] != "RANK"]
    theirs = yaml.safe_load((UPSTREAM / "gpu-two-nodes.yaml").read_text())
    unlisted, _ = differences(mine, theirs)
    assert any(".tolerations.1.effect" in line for line in unlisted)
    assert any(".env.RANK." in line for line in unlisted)


@pytest.mark.parametrize("name", NAMES)
def test_golden_tasks_are_valid_and_unchanged(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    validator: Any,  # noqa: F811
) -> None:
    """To change a golden file on purpose: KONDUKTOR_UPDATE_GOLDEN=1 pytest, then review."""
    manifest = ours(name, tmp_path, monkeypatch)
    assert sorted(validator.iter_errors(manifest), key=str) == []
    for obj in job_and_pod(manifest):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    rendered = jobset.to_yaml(manifest)
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("KONDUKTOR_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert rendered == golden.read_text()
