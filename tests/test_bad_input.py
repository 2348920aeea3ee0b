"""The bad-input sweep: careless and hostile input to `konduktor launch`, one table.

Every case runs the real command line (``main()``, in process; in a subprocess without
root's file-permission bypass where a file must be unreadable) against a real S3 store
(moto) configured as the store and a local Kubernetes API server, and must end with
exit 1 or 2 and exactly one ``error:`` line, no traceback, nothing on stdout, no object
and no multipart upload in the bucket, no request to the API server, no local store
and no local run. The workdir, mounts and files the cases point at are made once.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from config_files import write_config
from kube_server import KubeAPI, serve
from test_cli import _unprivileged, run

BUCKET = "bad-input-sweep"
_BIG = 20 << 30  # sparse: above the default hard limit (10000 MB), and costs no disk


@dataclass(frozen=True)
class Case:
    """One bad input. In the texts, %P% is the project directory (the task file's),
    %R% the directory above it, %E% the S3 endpoint and %B% the bucket."""

    id: str
    task: str | bytes = "run: ls\n"
    words: tuple[str, ...] = ()  # each must appear in the error line
    args: tuple[str, ...] = ()
    target: str = "cluster"  # cluster, local, dry-run; "none" adds no target option
    code: int = 1
    config: str | None = None  # the config file's text (default: the S3 store's)
    env: dict[str, str] = field(default_factory=dict)
    task_path: str | None = None  # launch this path instead of writing the task file
    unprivileged: bool = False  # run as root without its permission bypass (subprocess)
    secret: str | None = None  # must not appear in the output


STORE_CONFIG = "jobs:\n  bucket: s3://%B%\nsync:\n  store:\n    endpoint_url: %E%\n"


def _sync(lines: str) -> str:
    """A config with the S3 store and these lines in its sync section (indented 2)."""
    return f"jobs:\n  bucket: s3://%B%\nsync:\n{lines}  store:\n    endpoint_url: %E%\n"


def _store(lines: str) -> str:
    """A config whose sync.store section has these lines (indented 4) after the bucket."""
    return f"jobs:\n  bucket: s3://%B%\nsync:\n  store:\n{lines}"


_LAUGHS = "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
BILLION_LAUGHS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
BILLION_LAUGHS += _LAUGHS + "envs: {X: *i}\nrun: ls\n"
RUN_100K = "run: |\n" + ("  echo " + "x" * 90 + "\n") * 1100
RUN_5M = "run: |\n" + ("  echo " + "x" * 90 + "\n") * 55000
NESTED = "envs:\n  X: " + "[" * 40 + "]" * 40 + "\nrun: ls\n"

TASK_SYNTAX = [
    Case("yaml-unclosed", "name: [unclosed\nrun: ls\n", ("task.yaml:2:", "not valid YAML")),
    Case("yaml-tab", "run: ls\n\tname: x\n", ("task.yaml:2:1", "not valid YAML")),
    Case("yaml-billion-laughs", BILLION_LAUGHS, ("alias *a", "refused")),
    Case("yaml-alias-run", "x: &r ls\nrun: *r\n", ("task.yaml:2:6", "alias *r")),
    Case("yaml-alias-recursive", "x: &a [*a]\nrun: ls\n", ("alias *a",)),
    Case("yaml-alias-merge", "x: &m {a: 1}\nenvs:\n  <<: *m\nrun: ls\n", ("alias *m",)),
    Case("yaml-duplicate-run", "run: ls\nrun: rm -rf ~\n", ("task.yaml:2:1", "'run'", "line 1")),
    Case("yaml-duplicate-env", "envs:\n  A: 1\n  A: 2\nrun: ls\n", ("task.yaml:3:3", "'A'")),
    Case("yaml-duplicate-resource", "resources: {cpus: 1, cpus: 64}\nrun: ls\n", ("'cpus'",)),
    Case("yaml-duplicate-mount", "file_mounts:\n  ~/a: ./d\n  ~/a: ./afile\nrun: ls\n", ("'~/a'",)),
    Case("yaml-nested-deep", NESTED, ("nested deeper than 32",)),
    Case("yaml-python-tag", "run: !!python/object/apply:os.system [ls]\n", ("constructor",)),
    Case("yaml-nul", "run: ls\x00\n", ("task.yaml:1", "#x0000")),
    Case("yaml-not-utf8", b"run: caf\xe9\n", ("task.yaml:1", "not UTF-8")),
    Case("yaml-utf16", "run: ls\n".encode("utf-16"), ("not UTF-8",)),
    Case("yaml-empty", "", ("a task file is a mapping",)),
    Case("yaml-list", "- run: ls\n", ("a task file is a mapping",)),
    Case("yaml-scalar", "just words\n", ("a task file is a mapping",)),
    Case("yaml-two-documents", "run: ls\n---\nrun: rm\n", ("not valid YAML", "single document")),
    Case("yaml-unhashable-key", "? [a]\n: 1\nrun: ls\n", ("unhashable",)),
    Case("task-over-1mib", RUN_5M, ("over 1.0 MB",)),
]

TASK_VALUES = [
    Case("num-nodes-0", "num_nodes: 0\nrun: ls\n", ("num_nodes", "at least 1")),
    Case("num-nodes-100m", "num_nodes: 100000000\nrun: ls\n", ("num_nodes", "at most 512")),
    Case("num-nodes-100k", "num_nodes: 100000\nrun: ls\n", ("num_nodes", "at most 512")),
    Case("num-nodes-513", "num_nodes: 513\nrun: ls\n", ("num_nodes: 513",)),
    Case("num-nodes-negative", "num_nodes: -1\nrun: ls\n", ("num_nodes",)),
    Case("num-nodes-fraction", "num_nodes: 1.5\nrun: ls\n", ("num_nodes",)),
    Case("num-nodes-string", "num_nodes: '2'\nrun: ls\n", ("num_nodes",)),
    Case("num-nodes-bool", "num_nodes: true\nrun: ls\n", ("num_nodes",)),
    Case("cpus-inf", "resources: {cpus: .inf}\nrun: ls\n", ("resources.cpus: inf",)),
    Case("cpus-nan", "resources: {cpus: .nan}\nrun: ls\n", ("resources.cpus: nan",)),
    Case("cpus-negative", "resources: {cpus: -1}\nrun: ls\n", ("resources.cpus",)),
    Case("cpus-zero", "resources: {cpus: 0}\nrun: ls\n", ("resources.cpus",)),
    Case("cpus-inf-string", "resources: {cpus: inf}\nrun: ls\n", ("resources.cpus: 'inf'",)),
    Case("cpus-huge", "resources: {cpus: 2000}\nrun: ls\n", ("at most 1024",)),
    Case("cpus-huge-string", "resources: {cpus: '99999999'}\nrun: ls\n", ("at most 1024",)),
    Case("memory-inf", "resources: {memory: .inf}\nrun: ls\n", ("resources.memory",)),
    Case("memory-huge", "resources: {memory: 1e9}\nrun: ls\n", ("at most 65536",)),
    Case("memory-unit", "resources: {memory: 16G}\nrun: ls\n", ("resources.memory", "GiB")),
    Case("memory-negative", "resources: {memory: -0.5}\nrun: ls\n", ("resources.memory",)),
    Case("gpus-zero", "resources: {accelerators: 'H100:0'}\nrun: ls\n", ("accelerators",)),
    Case("gpus-1000", "resources: {accelerators: 'H100:1000'}\nrun: ls\n", ("at most 64",)),
    Case("gpus-spaces", "resources: {accelerators: H100 x8}\nrun: ls\n", ("accelerators",)),
    Case("env-name-space", "envs: {1 BAD: x}\nrun: ls\n", ("envs: '1 BAD'", "MY_VAR")),
    Case("env-name-equals", "envs: {A=B: x}\nrun: ls\n", ("envs: 'A=B'",)),
    Case("env-name-equals-local", "envs: {A=B: x}\nrun: ls\n", ("envs: 'A=B'",), target="local"),
    Case("env-name-empty", "envs: {'': x}\nrun: ls\n", ("envs: ''",)),
    Case("env-name-dash", "envs: {MY-VAR: x}\nrun: ls\n", ("envs: 'MY-VAR'",)),
    Case("env-name-unicode", "envs: {ÉTÉ: x}\nrun: ls\n", ("envs: 'ÉTÉ'",)),
    Case("env-value-list", "envs: {A: [1, 2]}\nrun: ls\n", ("envs.A", "a string")),
    Case("env-value-map", "envs: {A: {b: 1}}\nrun: ls\n", ("envs.A",)),
    Case("env-value-null", "envs: {TOKEN: null}\nrun: ls\n", ("envs.TOKEN", "--env TOKEN=")),
    Case("run-100k", RUN_100K, ("103 KiB", "64 KiB")),
    Case("envs-over-64k", "envs: {BLOB: " + "x" * 70000 + "}\nrun: ls\n", ("run: and envs",)),
    Case("run-missing", "name: x\n", ("`run` is missing",)),
    Case("run-empty", "run: ''\n", ("run",)),
    Case("run-list", "run: [ls, pwd]\n", ("run",)),
    Case("run-number", "run: 3\n", ("run: 3",)),
    Case("unknown-key", "fille_mounts: {}\nrun: ls\n", ("did you mean `file_mounts`",)),
    Case("unknown-resource", "resources: {gpus: 1}\nrun: ls\n", ("resources.gpus",)),
    Case("name-uppercase", "name: My_Job\nrun: ls\n", ("name", "lowercase")),
    Case("name-too-long", f"name: {'a' * 70}\nrun: ls\n", ("name",)),
    Case("label-key", "resources:\n  labels: {'bad key!': x}\nrun: ls\n", ("resources.labels",)),
    Case("label-value", "resources:\n  labels: {team: " + "v" * 70 + "}\nrun: ls\n", ("labels",)),
    Case("image-space", "resources: {image_id: 'ubuntu latest'}\nrun: ls\n", ("image_id",)),
]

REPO_STATES = [
    Case("workdir-missing", "workdir: ./missing\nrun: ls\n", ("workdir", "not a directory")),
    Case("workdir-file", "workdir: ./afile\nrun: ls\n", ("workdir", "not a directory")),
    Case("workdir-fifo", "workdir: ./fifo\nrun: ls\n", ("workdir", "not a directory")),
    Case("workdir-dev-zero", "workdir: /dev/zero\nrun: ls\n", ("workdir",)),
    Case("workdir-broken-link", "workdir: ./broken\nrun: ls\n", ("workdir",)),
    Case("workdir-link-loop", "workdir: ./loop\nrun: ls\n", ("workdir",)),
    Case("workdir-sparse-over-limit", "workdir: %R%/bigwork\nrun: ls\n", ("sync.hard_limit_mb",)),
    Case(
        "workdir-sparse-dry-run",
        "workdir: %R%/bigwork\nrun: ls\n",
        ("sync.hard_limit_mb", "huge.bin"),
        target="dry-run",
    ),
    Case(
        "workdir-sparse-local",
        "workdir: %R%/bigwork\nrun: ls\n",
        ("sync.hard_limit_mb",),
        target="local",
    ),
    Case(
        "workdir-sparse-low-limit",
        "workdir: %R%/bigwork\nrun: ls\n",
        ("hard limit of 1 MB",),
        config=_sync("  hard_limit_mb: 1\n"),
    ),
    Case("mount-fifo", "file_mounts: {~/f: ./fifo}\nrun: ls\n", ("fifo is a FIFO",)),
    Case("mount-fifo-local", "file_mounts: {~/f: ./fifo}\nrun: ls\n", ("FIFO",), target="local"),
    Case(
        "mount-fifo-dry-run",
        "file_mounts: {~/f: ./fifo}\nrun: ls\n",
        ("FIFO",),
        target="dry-run",
    ),
    Case(
        "mount-fifo-with-workdir",
        "workdir: ./d\nfile_mounts: {~/f: ./fifo}\nrun: ls\n",
        ("FIFO",),
    ),
    Case("mount-dev-zero", "file_mounts: {~/z: /dev/zero}\nrun: ls\n", ("character device",)),
    Case("mount-dev-null", "file_mounts: {~/z: /dev/null}\nrun: ls\n", ("character device",)),
    Case("mount-dev-urandom", "file_mounts: {~/z: /dev/urandom}\nrun: ls\n", ("device",)),
    Case("mount-socket", "file_mounts: {~/s: ./sock}\nrun: ls\n", ("sock is a socket",)),
    Case("mount-link-to-fifo", "file_mounts: {~/f: ./fifolink}\nrun: ls\n", ("FIFO",)),
    Case("mount-broken-link", "file_mounts: {~/b: ./broken}\nrun: ls\n", ("does not exist",)),
    Case("mount-link-loop", "file_mounts: {~/l: ./loop}\nrun: ls\n", ("file_mounts.~/l",)),
    Case("mount-missing", "file_mounts: {~/x: ./nope}\nrun: ls\n", ("does not exist",)),
    Case(
        "mount-sparse-over-limit",
        "file_mounts: {~/big: %R%/bigwork/huge.bin}\nrun: ls\n",
        ("sync.hard_limit_mb", "~/big"),
    ),
    Case(
        "mount-unreadable",
        "file_mounts: {~/k: ./locked}\nrun: ls\n",
        ("cannot read", "Permission denied"),
        unprivileged=True,
    ),
    Case(
        "workdir-unreadable-file",
        "workdir: %R%/lockedwork\nrun: ls\n",
        ("locked.py", "Permission denied"),
        unprivileged=True,
    ),
    Case("mount-url", "file_mounts: {/data: 'http://host/x'}\nrun: ls\n", ("s3://",)),
    Case("mount-target-relative", "file_mounts: {data: ./d}\nrun: ls\n", ("absolute",)),
    Case("mount-target-root", "file_mounts: {/: ./d}\nrun: ls\n", ("whole /",)),
    Case(
        "mount-target-workdir", "file_mounts: {~/konduktor_workdir: ./d}\nrun: ls\n", ("collides",)
    ),
    Case("mount-unset-var", "file_mounts:\n  ~/x: ./${NOPE}\nrun: ls\n", ("${NOPE}",)),
]

TASK_FILES = [
    Case("task-fifo", task_path="%P%/fifo", words=("not a regular file",)),
    Case("task-dev-zero", task_path="/dev/zero", words=("not a regular file",)),
    Case("task-directory", task_path="%P%/d", words=("not a regular file",)),
    Case("task-missing", task_path="%P%/absent.yaml", words=("does not exist",)),
    Case("task-broken-link", task_path="%P%/broken", words=("does not exist",)),
    Case("task-link-loop", task_path="%P%/loop", words=("cannot read task file",)),
    Case("task-socket", task_path="%P%/sock", words=("not a regular file",)),
]

FLAGS = [
    # a bad override is a usage error blamed on its flag (the task file is fine)
    Case("flag-num-nodes-huge", args=("--num-nodes", "100000000"), words=("--num-nodes:",), code=2),
    Case("flag-cpus-inf", args=("--cpus", "inf"), words=("--cpus: 'inf'",), code=2),
    Case("flag-cpus-nan", args=("--cpus", "nan"), words=("--cpus: 'nan'",), code=2),
    Case("flag-cpus-huge", args=("--cpus", "5000"), words=("--cpus", "at most 1024"), code=2),
    Case("flag-memory-huge", args=("--memory", "1000000000000"), words=("--memory:",), code=2),
    Case("flag-gpus-huge", args=("--gpus", "H100:1000"), words=("--gpus: 'H100:1000'",), code=2),
    Case("flag-env-bad-name", args=("--env", "1 BAD=x"), words=("--env '1 BAD'",), code=2),
    Case("flag-env-space", args=("--env", "A B"), words=("--env 'A B'",), code=2),
    Case("flag-env-empty-name", args=("--env", "=x"), words=("--env ''",), code=2),
    Case(
        "flag-env-secret-not-echoed",
        args=("--env", "BAD-NAME=hunter2"),
        words=("BAD-NAME",),
        secret="hunter2",
        code=2,
    ),
    Case("flag-env-big", args=("--env", "X=" + "y" * 70000), words=("run: and envs",)),
    Case("flag-env-file-bad-name", args=("--env-file", "%P%/bad.env"), words=(":2:", "'1BAD'")),
    Case("flag-env-file-no-equals", args=("--env-file", "%P%/noeq.env"), words=("KEY=VALUE",)),
    Case("flag-env-file-not-utf8", args=("--env-file", "%P%/latin1.env"), words=("not UTF-8",)),
    Case("flag-env-file-fifo", args=("--env-file", "%P%/fifo"), words=("not a regular file",)),
    Case("flag-env-file-dev-zero", args=("--env-file", "/dev/zero"), words=("--env-file",)),
    Case("flag-env-file-missing", args=("--env-file", "%P%/absent.env"), words=("--env-file",)),
    Case("flag-name", args=("--name", "Bad Name"), words=("--name: 'Bad Name'",), code=2),
    Case("flag-image-space", args=("--image-id", "a b"), words=("--image-id: 'a b'",), code=2),
    Case("flag-store-scheme", args=("--store", "ftp://x"), words=("ftp",), code=2),
    Case("flag-store-bucket", args=("--store", "s3://Bad_Name"), words=("malformed",), code=2),
    Case(
        "flag-kubeconfig-missing",
        args=("-y", "--kubeconfig", "%P%/absent-kubeconfig"),
        target="none",
        words=("context",),
    ),
    Case(
        "flag-context-unknown",
        args=("--context", "nope"),
        words=("no Kubernetes context 'nope'",),
    ),
    Case("flag-env-dry-run", args=("--env", "1 BAD=x"), words=("--env",), target="dry-run", code=2),
    Case(
        "flag-env-local",
        args=("--env", "A=B=C", "--env", "2X=1"),
        words=("'2X'",),
        target="local",
        code=2,
    ),
    # click's own parse errors: one line too, naming where the help is
    Case("flag-num-nodes-0", args=("--num-nodes", "0"), words=("--num-nodes", "--help"), code=2),
    Case("flag-num-nodes-word", args=("--num-nodes", "two"), words=("'two'",), code=2),
    Case("flag-unknown", args=("--gpu", "H100"), words=("--gpu", "--gpus"), code=2),
    Case("flag-output-alone", args=("-o", "yaml"), words=("--dry-run",), code=2),
    Case("flag-output-format", args=("-o", "xml"), target="dry-run", words=("'xml'",), code=2),
    Case("flag-mode", args=("--mode", "zip"), words=("'zip'",), code=2),
    Case("flag-local-and-dry-run", args=("--local",), target="dry-run", words=("--local",), code=2),
]

CONFIGS = [
    Case("config-syntax", config="sync: [1\n", words=("config.yaml:2:1", "not valid YAML")),
    Case("config-tab", config="sync:\n\tstore: {}\n", words=("config.yaml:2:1",)),
    Case("config-not-utf8", config="jobs:\n  bucket: s3://caf\udce9\n", words=("not UTF-8",)),
    Case("config-alias", config="a: &a {}\nsync: *a\n", words=("alias *a",)),
    Case("config-duplicate", config="sync: {}\nsync: {}\n", words=("config.yaml:2:1", "'sync'")),
    Case("config-list", config="- a\n", words=("mapping",)),
    Case("config-over-1mib", config="#" + "x" * (1 << 20) + "\n", words=("over 1.0 MB",)),
    Case("config-max-attempts-0", config=_store("    max_attempts: 0\n"), words=("max_attempts",)),
    Case("config-max-attempts-neg", config=_store("    max_attempts: -3\n"), words=("1 and 100",)),
    Case("config-presign-0", config=_sync("  presign_seconds: 0\n"), words=("presign_seconds",)),
    Case(
        "config-presign-8-days",
        config=_sync("  presign_seconds: 691200\n"),
        words=("between 1 and 604800",),
    ),
    Case(
        "config-soft-above-hard",
        config=_sync("  soft_limit_mb: 500\n  hard_limit_mb: 100\n"),
        words=("soft_limit_mb (500) is above sync.hard_limit_mb (100)",),
    ),
    Case(
        "config-soft-above-default-hard",
        config=_sync("  soft_limit_mb: 20000\n"),
        words=("above sync.hard_limit_mb (10000)",),
    ),
    Case("config-soft-0", config=_sync("  soft_limit_mb: 0\n"), words=("soft_limit_mb",)),
    Case("config-hard-negative", config=_sync("  hard_limit_mb: -1\n"), words=("hard_limit_mb",)),
    Case("config-hard-inf", config=_sync("  hard_limit_mb: .inf\n"), words=("above 0",)),
    Case("config-hard-nan", config=_sync("  hard_limit_mb: .nan\n"), words=("nan",)),
    Case("config-level-0", config=_sync("  compression_level: 0\n"), words=("1 and 22",)),
    Case("config-hooks-timeout-0", config="hooks:\n  timeout: 0\n", words=("hooks.timeout",)),
    Case("config-hooks-timeout-nan", config="hooks:\n  timeout: .nan\n", words=("hooks.timeout",)),
    Case(
        "config-several-at-once",
        config=_sync("  presign_seconds: 0\n  hard_limit_mb: 0\n"),
        words=("presign_seconds", "hard_limit_mb"),
    ),
    Case(
        "config-endpoint-userinfo",
        config=_store("    endpoint_url: http://AKIAKEY:s3cr3tvalue@127.0.0.1:9000\n"),
        words=("credentials", "AWS profile"),
        secret="s3cr3tvalue",
    ),
    Case(
        "config-endpoint-user-only",
        config=_store("    endpoint_url: https://AKIAKEY@s3.example.com\n"),
        words=("credentials",),
        secret="AKIAKEY",
    ),
    Case(
        "config-endpoint-ftp", config=_store("    endpoint_url: ftp://host\n"), words=("http(s)",)
    ),
    Case(
        "config-endpoint-words", config=_store("    endpoint_url: not a url\n"), words=("http(s)",)
    ),
    Case(
        "config-endpoint-port",
        config=_store("    endpoint_url: http://h:99999\n"),
        words=("h:99999",),
    ),
    Case(
        "config-endpoint-query",
        config=_store("    endpoint_url: http://h/p?x=1\n"),
        words=("http",),
    ),
    Case(
        "config-endpoint-no-host", config=_store("    endpoint_url: http:///p\n"), words=("http",)
    ),
    Case("config-retry-mode", config=_store("    retry_mode: legacy\n"), words=("retry_mode",)),
    Case("config-fifo", env={"KONDUKTOR_CONFIG": "%P%/fifo"}, words=("not a regular file",)),
    Case("config-directory", env={"KONDUKTOR_CONFIG": "%P%/d"}, words=("not a regular file",)),
    Case("config-dev-zero", env={"KONDUKTOR_CONFIG": "/dev/zero"}, words=("not a regular file",)),
]

ENVIRONMENT = [
    Case("tmpdir-missing", env={"TMPDIR": "%R%/no-such-dir"}, words=("TMPDIR", "not a writable")),
    Case("tmpdir-file", env={"TMPDIR": "%P%/afile"}, words=("TMPDIR", "not a writable")),
    Case("tmpdir-full", env={"TMPDIR": "/proc"}, words=("TMPDIR /proc has no space left",)),
    Case("tmpdir-missing-local", env={"TMPDIR": "%R%/gone"}, words=("TMPDIR",), target="local"),
]

CASES = TASK_SYNTAX + TASK_VALUES + REPO_STATES + TASK_FILES + FLAGS + CONFIGS + ENVIRONMENT


@dataclass(frozen=True)
class World:
    root: Path
    project: Path
    endpoint: str
    kube: KubeAPI
    kubeconfig: Path

    def fill(self, text: str) -> str:
        for token, value in (("%P%", self.project), ("%R%", self.root), ("%E%", self.endpoint)):
            text = text.replace(token, str(value))
        return text.replace("%B%", BUCKET)


def _make_files(root: Path) -> Path:
    project = root / "project"
    (project / "d").mkdir(parents=True)
    (project / "d" / "x.txt").write_text("x\n")
    (project / "afile").write_text("a\n")
    (project / "locked").write_text("secret\n")
    (project / "locked").chmod(0)
    os.mkfifo(project / "fifo")
    (project / "fifolink").symlink_to("fifo")
    (project / "broken").symlink_to("missing-target")
    (project / "loop").symlink_to("loop")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(project / "sock"))
    (project / "bad.env").write_text("GOOD=1\n1BAD=2\n")
    (project / "noeq.env").write_text("JUSTKEY\n")
    (project / "latin1.env").write_bytes(b"A=caf\xe9\n")
    (root / "bigwork").mkdir()
    with (root / "bigwork" / "huge.bin").open("wb") as f:
        f.truncate(_BIG)
    (root / "lockedwork").mkdir()
    (root / "lockedwork" / "locked.py").write_text("secret\n")
    (root / "lockedwork" / "locked.py").chmod(0)
    return project


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_server: str) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad-input")
    project = _make_files(root)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    with serve() as kube:
        yield World(root, project, s3_server, kube, kube.write_kubeconfig(root))


def _bucket_state(endpoint: str) -> tuple[list[Any], list[Any]]:
    client = boto3.client("s3", endpoint_url=endpoint)
    objects = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return objects, uploads


@pytest.fixture
def clean_bucket(world: World) -> Iterator[None]:
    """After a case, the bucket is emptied, so that a case that leaks fails alone."""
    yield
    client = boto3.client("s3", endpoint_url=world.endpoint)
    objects, uploads = _bucket_state(world.endpoint)
    for obj in objects:
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    for up in uploads:
        client.abort_multipart_upload(Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"])


def _target(case: Case, world: World) -> tuple[str, ...]:
    return {
        "cluster": ("-y", "-d", "--kubeconfig", str(world.kubeconfig)),
        "local": ("--local", "-y"),
        "dry-run": ("--dry-run",),
        "none": (),
    }[case.target]


def _launch(case: Case, world: World, task: Path) -> tuple[int, str, str]:
    args = ("launch", *_target(case, world), *(world.fill(a) for a in case.args), str(task))
    if not case.unprivileged:
        return run(*args)
    cmd = [*_unprivileged(), sys.executable, "-m", "konduktor", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout, done.stderr


def _write_inputs(case: Case, world: World, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = world.root / "config.yaml"
    text = world.fill(STORE_CONFIG if case.config is None else case.config)
    sync = write_config(config, text)
    monkeypatch.setenv("KONDUKTOR_CONFIG", str(config))
    monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(sync))
    for name, value in case.env.items():
        monkeypatch.setenv(name, world.fill(value))
    if case.task_path is not None:
        return Path(world.fill(case.task_path))
    task = world.project / "task.yaml"
    task.write_bytes(case.task if isinstance(case.task, bytes) else world.fill(case.task).encode())
    return task


@pytest.mark.usefixtures("clean_bucket")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_nothing_is_sent(
    case: Case, world: World, monkeypatch: pytest.MonkeyPatch, konduktor_home_sandbox: Path
) -> None:
    monkeypatch.chdir(world.project)
    task = _write_inputs(case, world, monkeypatch)
    world.kube.requests.clear()
    code, out, err = _launch(case, world, task)
    lines = err.splitlines()
    assert (code, len(lines)) == (case.code, 1), err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in case.words:
        assert word in lines[0], lines[0]
    if case.secret is not None:
        assert case.secret not in err + out
    assert out == ""
    assert _bucket_state(world.endpoint) == ([], [])
    assert world.kube.requests == []
    assert not (konduktor_home_sandbox / "store").exists()
    assert not (konduktor_home_sandbox / "local").exists()


def test_the_sweep_is_big_and_its_files_are_what_they_claim(world: World) -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {name: os.lstat(world.project / name).st_mode for name in ("fifo", "sock", "loop")}
    assert stat.S_ISFIFO(kinds["fifo"])
    assert stat.S_ISSOCK(kinds["sock"])
    assert stat.S_ISLNK(kinds["loop"])
    huge = world.root / "bigwork" / "huge.bin"
    assert huge.stat().st_size == _BIG
    assert huge.stat().st_blocks * 512 < 1 << 20  # sparse: the test costs no disk


@pytest.mark.usefixtures("clean_bucket")
@pytest.mark.parametrize(
    "args",
    [
        ("launch", "--dry-run", "%P%/task.yaml"),
        ("launch", "-y", "-d", "--kubeconfig", "%R%/kubeconfig", "%P%/task.yaml"),
        ("snapshot", "%R%/bigwork", "--upload"),
    ],
    ids=["launch-dry-run", "launch", "snapshot-upload"],
)
def test_the_hard_limit_refuses_before_any_file_is_read(
    world: World, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    from konduktor import launch, snapshot

    def never(path: object) -> str:
        raise AssertionError(f"{path} was hashed")

    monkeypatch.setattr(snapshot, "_hash_file", never)
    monkeypatch.setattr(launch, "sha256_file", never)
    task = _write_inputs(Case("big", "workdir: %R%/bigwork\nrun: ls\n"), world, monkeypatch)
    assert task == world.project / "task.yaml"
    world.kube.requests.clear()
    code, out, err = run(*(world.fill(a) for a in args))
    assert (code, out) == (1, ""), err
    assert err.startswith("error: ")
    assert "would ship 21.5 GB, above the hard limit of 10000 MB (sync.hard_limit_mb)" in err
    assert "huge.bin (21.5 GB)" in err
    assert _bucket_state(world.endpoint) == ([], [])
    assert world.kube.requests == []


@pytest.mark.usefixtures("clean_bucket")
def test_five_mistakes_in_a_task_file_are_five_lines_in_one_run(
    world: World, monkeypatch: pytest.MonkeyPatch, konduktor_home_sandbox: Path
) -> None:
    """Every mistake of the file at once, one ``error:`` line each, whatever finds it
    (the YAML reader, the schema, the limits, the paths, the variables); exit 1 and
    nothing sent, as for one mistake."""
    monkeypatch.chdir(world.project)
    text = (
        "name: my_train\n"  # the schema
        "resources: {cpus: .inf}\n"  # the limits
        "workdir: ./missing\n"  # the paths
        "file_mounts:\n  ~/w: ./w-${NOPE}\n"  # the variables
        "run: ls\n"
        "run: ls -l\n"  # the YAML reader
    )
    task = _write_inputs(Case("five", text), world, monkeypatch)
    world.kube.requests.clear()
    code, out, err = _launch(Case("five"), world, task)
    lines = err.splitlines()
    assert code == 1, err
    assert len(lines) == 5, err
    assert all(line.startswith(f"error: {task}") for line in lines), err
    expected = [
        (":7:1: key 'run' is given twice (first at line 6)",),
        ("name: 'my_train' is not valid", "DNS-1035"),
        ("resources.cpus: inf is not valid",),
        ("workdir:", "missing is not a directory", "relative to the current directory"),
        ("file_mounts.~/w: ${NOPE} is not in envs", "--env NOPE=VALUE"),
    ]
    for line, words in zip(lines, expected, strict=True):
        assert all(word in line for word in words), (line, words)
    assert (out, "Traceback" in err) == ("", False)
    assert _bucket_state(world.endpoint) == ([], [])
    assert world.kube.requests == []
    assert not (konduktor_home_sandbox / "local").exists()
