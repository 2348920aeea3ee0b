"""Task files: Konduktor's shape, overrides, ${VAR}, and one clear message per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from konduktor.errors import TaskError, UsageError
from konduktor.task import Overrides, load

QUICKSTART = """\
name: single-file-upload
num_nodes: 1
workdir: .
file_mounts:
  ~/test_dir: ./test_dir
  ~/static_path.txt: ./static_path.txt
  /data/ref: s3://bucket/ref
resources:
  cpus: 1
  memory: 1
  accelerators: H100:8
  image_id: ubuntu
  labels:
    kueue.x-k8s.io/queue-name: user-queue
    maxRunDurationSeconds: "600"
envs: {KEY: value, N: 3}
run: |
  ls -lah
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding the task file, and the current directory (as when a user
    launches from it): relative paths in the file start there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_dir").mkdir()
    (tmp_path / "static_path.txt").write_text("x")
    return tmp_path


def write(project: Path, text: str) -> Path:
    path = project / "task.yaml"
    path.write_text(text)
    return path


def test_quickstart_shape_loads(project: Path) -> None:
    task = load(write(project, QUICKSTART))
    assert task.name == "single-file-upload"
    assert task.num_nodes == 1
    assert task.workdir == project.resolve()
    kinds = {m.target: m.kind for m in task.file_mounts}
    assert kinds == {"~/test_dir": "dir", "~/static_path.txt": "file", "/data/ref": "bucket"}
    assert (task.resources.cpus, task.resources.memory) == (1.0, 1.0)
    assert task.resources.accelerators == "H100:8"
    assert task.resources.labels == {
        "kueue.x-k8s.io/queue-name": "user-queue",
        "maxRunDurationSeconds": "600",
    }
    assert task.envs == {"KEY": "value", "N": "3"}
    assert task.run == "ls -lah\n"


def test_the_shipped_quickstart_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
    monkeypatch.chdir(example)  # as the README runs it
    shipped = load(Path("task.yaml"))
    assert shipped.workdir == example
    assert {m.target: m.kind for m in shipped.file_mounts} == {
        "~/test_dir": "dir",
        "~/static_path.txt": "file",
    }
    text = QUICKSTART.replace("  /data/ref: s3://bucket/ref\n", "")
    path = example / "task.test.yaml"
    path.write_text(text)
    try:
        assert load(path).workdir == example
    finally:
        path.unlink()


def test_overrides_and_env_substitution(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "data-v2").mkdir()
    (project / "vars.env").write_text("# comment\nexport VERSION=v2\n")
    monkeypatch.setenv("FROM_SHELL", "yes")
    path = write(project, "workdir: ./data-${VERSION}\nenvs: {VERSION: v1}\nrun: echo\n")
    task = load(
        path,
        Overrides(
            name="renamed",
            num_nodes=4,
            cpus="8",
            memory="32",
            gpus="A100:2",
            image_id="img",
            envs=["EXTRA=1", "FROM_SHELL"],
            env_file=project / "vars.env",
        ),
    )
    assert task.workdir == (project / "data-v2").resolve()
    assert (task.name, task.num_nodes) == ("renamed", 4)
    assert (task.resources.cpus, task.resources.memory) == (8.0, 32.0)
    assert (task.resources.accelerators, task.resources.image_id) == ("A100:2", "img")
    assert task.envs == {"VERSION": "v2", "EXTRA": "1", "FROM_SHELL": "yes"}


def test_default_name_comes_from_the_file(project: Path) -> None:
    path = project / "My Task.yaml"
    path.write_text("run: echo\n")
    assert load(path).name == "my-task"


BAD = [
    ("malformed-yaml", "run: [echo\n", "not valid YAML"),
    ("not-a-mapping", "- run\n", "mapping of keys"),
    ("unknown-key", "run: echo\nfile_mount: {}\n", "did you mean `file_mounts`"),
    ("unknown-resource", "run: echo\nresources: {gpu: 1}\n", "resources.gpu"),
    ("typo-accelerators", "run: echo\nresources: {acelerators: H100}\n", "`accelerators`"),
    ("missing-run", "name: x\n", "`run` is missing"),
    ("empty-run", "run: '  '\n", "run:"),
    ("run-not-string", "run: [a, b]\n", "run:"),
    ("invalid-name", "name: My_Job\nrun: echo\n", "name: 'My_Job'"),
    ("name-too-long", f"name: {'a' * 41}\nrun: echo\n", "at most 40"),
    (
        "name-underscore",
        "name: my_train\nrun: echo\n",
        "name: 'my_train' is not valid; a name is a DNS-1035 label: lowercase letters, "
        "digits and -, starting with a letter, ending with a letter or digit, at most 40",
    ),
    ("name-dot", "name: my.train\nrun: echo\n", "starting with a letter"),
    ("name-digit-first", "name: 1train\nrun: echo\n", "name: '1train'"),
    ("num-nodes-zero", "num_nodes: 0\nrun: echo\n", "num_nodes: 0"),
    ("num-nodes-string", "num_nodes: two\nrun: echo\n", "num_nodes"),
    ("memory-with-unit", "run: echo\nresources: {memory: 16G}\n", "resources.memory: '16G'"),
    ("cpus-negative-text", "run: echo\nresources: {cpus: many}\n", "resources.cpus"),
    ("bad-accelerators", "run: echo\nresources: {accelerators: 'H100:x'}\n", "TYPE:COUNT"),
    ("accelerators-x", "run: echo\nresources: {accelerators: H100x8}\n", "did you mean H100:8?"),
    ("accelerators-unknown", "run: echo\nresources: {accelerators: V100}\n", "Known types: A100"),
    (
        "accelerators-two-types",
        "run: echo\nresources: {accelerators: [H100, A100]}\n",
        "TYPE:COUNT",
    ),
    ("accelerators-zero", "run: echo\nresources: {accelerators: {H100: 0}}\n", "TYPE:COUNT"),
    ("accelerators-many", "run: echo\nresources: {accelerators: {H100: 65}}\n", "at most 64"),
    (
        "job-config-key",
        "run: echo\nresources: {job_config: {restarts: 1}}\n",
        "job_config.restarts",
    ),
    (
        "max-restarts-negative",
        "run: echo\nresources: {job_config: {max_restarts: -1}}\n",
        "job_config.max_restarts: -1",
    ),
    ("completions-zero", "run: echo\nresources: {job_config: {completions: 0}}\n", "completions"),
    ("disk-size-text", "run: echo\nresources: {disk_size: big}\n", "resources.disk_size"),
    ("labels-not-mapping", "run: echo\nresources: {labels: [a]}\n", "resources.labels"),
    ("envs-not-mapping", "run: echo\nenvs: [A]\n", "envs"),
    ("env-without-value", "run: echo\nenvs: {TOKEN: null}\n", "--env TOKEN=V"),
    ("missing-workdir", "workdir: ./nope\nrun: echo\n", "workdir: "),
    ("workdir-is-file", "workdir: ./static_path.txt\nrun: echo\n", "not a directory"),
    ("unknown-var", "workdir: ./${NOPE}\nrun: echo\n", "${NOPE} is not in envs"),
    ("missing-mount-source", "file_mounts: {~/x: ./missing}\nrun: echo\n", "does not exist"),
    (
        "mount-onto-workdir",
        "file_mounts: {~/konduktor_workdir: ./test_dir}\nrun: echo\n",
        "collides with the workdir",
    ),
    (
        "mount-inside-workdir",
        "file_mounts: {~/konduktor_workdir/x: ./test_dir}\nrun: echo\n",
        "collides",
    ),
    ("mount-over-home", "file_mounts: {'~': ./test_dir}\nrun: echo\n", "home directory"),
    ("bucket-as-target", "file_mounts: {'s3://b/x': ./test_dir}\nrun: echo\n", "not a URL"),
    (
        "relative-target",
        "file_mounts: {data: ./test_dir}\nrun: echo\n",
        "absolute or start with ~/",
    ),
    ("ftp-source", "file_mounts: {/d: 'ftp://h/x'}\nrun: echo\n", "only s3:// and gs://"),
    ("mount-source-empty", "file_mounts: {/d: ''}\nrun: echo\n", "file_mounts./d"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_task_files_name_file_key_and_fix(project: Path, text: str, message: str) -> None:
    path = write(project, text)
    with pytest.raises(TaskError) as raised:
        load(path)
    assert str(raised.value).startswith(str(path))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_task_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="does not exist"):
        load(tmp_path / "nope.yaml")


def test_env_override_from_an_unset_variable(project: Path) -> None:
    with pytest.raises(UsageError, match="--env NOT_SET_ANYWHERE: not set"):
        load(write(project, "run: echo\n"), Overrides(envs=["NOT_SET_ANYWHERE"]))


def test_resources_list_is_reported_not_crashed_on(project: Path) -> None:
    with pytest.raises(TaskError, match="resources"):
        load(write(project, "run: echo\nresources: [a]\n"), Overrides(cpus="2"))


def test_values_at_the_limits_load(project: Path) -> None:
    from konduktor import task as task_module

    run = "x" * (task_module.MAX_TEXT_BYTES - len("AB"))
    text = (
        f"num_nodes: {task_module.MAX_NODES}\n"
        f"resources: {{cpus: {task_module.MAX_CPUS}, memory: '{task_module.MAX_MEMORY_GIB}', "
        f"accelerators: 'H100:{task_module.MAX_GPUS}', labels: {{team.io/queue: a-b_c.d}}}}\n"
        f"envs: {{A: B}}\nrun: {run}\n"
    )
    task = load(write(project, text))
    assert task.num_nodes == task_module.MAX_NODES
    assert (task.resources.cpus, task.resources.memory) == (1024.0, 65536.0)
    over = text.replace("envs: {A: B}", "envs: {A: BC}")
    with pytest.raises(TaskError, match="run: and envs take 64 KiB together"):
        load(write(project, over))


def test_every_mistake_of_a_file_is_on_its_own_line(project: Path) -> None:
    text = "num_nodes: 0\nresources: {cpus: .nan, memory: 1e9}\nenvs: {1 BAD: x, A=B: y}\nrun: ''\n"
    path = write(project, text)
    with pytest.raises(TaskError) as raised:
        load(path)
    lines = str(raised.value).splitlines()
    parts = ("num_nodes: 0", "cpus: nan", "memory: '1e9'", "'1 BAD'", "'A=B'", "run")
    assert len(lines) == len(parts), lines
    for part in parts:
        assert len([line for line in lines if part in line]) >= 1, part
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_schema_paths_mounts_and_variables_are_reported_together(project: Path) -> None:
    """Mistakes the schema finds and those found resolving paths come in one error."""
    text = (
        "name: my_train\n"
        "run: dup\n"
        "workdir: ./nope\n"
        "file_mounts:\n"
        "  ~/a: ./missing\n"
        "  ~/b: ./${NOPE}\n"
        "  ~/c: ./test_dir\n"
        "  ~/c/: ./test_dir\n"
        "  ~/konduktor_workdir/x: ./test_dir\n"
        "  data: ./test_dir\n"
        "run: echo\n"
    )
    path = write(project, text)
    with pytest.raises(TaskError) as raised:
        load(path)
    lines = str(raised.value).splitlines()
    expected = [
        f"{path}:11:1: key 'run' is given twice (first at line 2); keep one",
        f"{path}: name: 'my_train' is not valid",
        f"{path}: workdir: {project / 'nope'} is not a directory",
        f"{path}: file_mounts.~/a: {project / 'missing'} does not exist",
        f"{path}: file_mounts.~/b: ${{NOPE}} is not in envs",
        f"{path}: file_mounts.data: the target must be absolute",
        f"{path}: file_mounts.~/c/: the same place as file_mounts.~/c",
        f"{path}: file_mounts.~/konduktor_workdir/x: collides with the workdir",
    ]
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)


def test_both_spellings_of_a_variable_are_substituted(project: Path) -> None:
    """``$VAR`` and ``${VAR}``, in workdir and in both sides of file_mounts, as Konduktor;
    run: and setup: are left to the pod's shell."""
    (project / "data-v2").mkdir()
    (project / "data-v2" / "w.bin").write_text("w")
    text = (
        "workdir: ./data-$VERSION\n"
        "envs: {VERSION: v2, SIZE: 13, B: bkt}\n"
        "file_mounts:\n"
        "  /model/llama-${SIZE}b: s3://$B/llama-${SIZE}b\n"
        "  ~/w-$VERSION.bin: ./data-${VERSION}/w.bin\n"
        "setup: echo $VERSION\n"
        "run: echo ${VERSION}\n"
    )
    task = load(write(project, text))
    assert task.workdir == (project / "data-v2").resolve()
    mounts = {m.target: m.source for m in task.file_mounts}
    assert mounts == {
        "/model/llama-13b": "s3://bkt/llama-13b",
        "~/w-v2.bin": str((project / "data-v2" / "w.bin").resolve()),
    }
    assert (task.setup, task.run) == ("echo $VERSION", "echo ${VERSION}")
    with pytest.raises(TaskError, match=r"workdir: \$NOPE is not in envs; .* --env NOPE=VALUE"):
        load(write(project, "workdir: ./$NOPE\nrun: echo\n"))


def test_relative_paths_start_at_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in Konduktor: configs/train.yaml with workdir: . launched from the repository's
    root ships the root, not configs/."""
    root = tmp_path / "repo"
    (root / "configs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "configs" / "train.yaml").write_text(
        "workdir: .\nfile_mounts: {~/data: data}\nrun: echo\n"
    )
    monkeypatch.chdir(root)
    task = load(Path("configs/train.yaml"))
    assert task.workdir == root.resolve()
    assert [m.source for m in task.file_mounts] == [str((root / "data").resolve())]
    monkeypatch.chdir(root / "configs")
    with pytest.raises(TaskError) as raised:
        load(Path("train.yaml"))
    message = str(raised.value)
    assert f"{root / 'configs' / 'data'} does not exist" in message
    assert "(relative to the current directory)" in message


def test_setup_is_read_and_counts_in_the_text_bound(project: Path) -> None:
    from konduktor import task as task_module

    assert load(write(project, "setup: pip install x\nrun: echo\n")).setup == "pip install x"
    assert load(write(project, "run: echo\n")).setup == ""
    half = "x" * (task_module.MAX_TEXT_BYTES // 2)
    with pytest.raises(TaskError, match="setup:, run: and envs take 64 KiB together"):
        load(write(project, f"setup: {half}\nrun: {half}x\n"))
    with pytest.raises(TaskError, match="setup: 3 is not valid; give the commands"):
        load(write(project, "setup: 3\nrun: echo\n"))


def test_anchors_without_aliases_and_inline_merges_load(project: Path) -> None:
    task = load(write(project, "envs: &e\n  <<: {A: '1'}\n  B: '2'\nrun: &r echo\n"))
    assert task.envs == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "run: ls\nrun: rm\n",
            "task.yaml:2:1: key 'run' is given twice",
        ),
        (
            "x: &a ls\nrun: *a\n",
            "task.yaml:2:6: cannot read the task file: not valid YAML: alias *a",
        ),
        ("envs: {A: " + "[" * 40 + "]" * 40 + "}\nrun: ls\n", "nested deeper than 32"),
    ],
    ids=["duplicate", "alias", "deep"],
)
def test_yaml_that_could_mislead_or_explode_is_refused(
    project: Path, text: str, message: str
) -> None:
    with pytest.raises(TaskError, match=message.replace("*", r"\*").replace(".", r"\.")):
        load(write(project, text))


def test_mount_sources_must_be_files_or_directories(project: Path) -> None:
    import os

    os.mkfifo(project / "pipe")
    with pytest.raises(TaskError, match=r"file_mounts\.~/p: .*pipe is a FIFO"):
        load(write(project, "file_mounts: {~/p: ./pipe}\nrun: echo\n"))
    with pytest.raises(TaskError, match="/dev/zero is a character device"):
        load(write(project, "file_mounts: {~/z: /dev/zero}\nrun: echo\n"))
    (project / "loop").symlink_to("loop")
    with pytest.raises(TaskError, match=r"cannot reach .*loop: Too many levels of symbolic links"):
        load(write(project, "file_mounts: {~/l: ./loop}\nrun: echo\n"))


def test_env_names_from_the_command_line_and_env_files(project: Path) -> None:
    path = write(project, "run: echo\n")
    with pytest.raises(UsageError, match=r"^--env '1 X', 'A-B': not a variable name"):
        load(path, Overrides(envs=["1 X=secret", "OK=1", "A-B=2"]))
    (project / "vars.env").write_text("GOOD=1\n1BAD=2\nNOEQ\n")
    with pytest.raises(TaskError) as raised:
        load(path, Overrides(env_file=project / "vars.env"))
    assert "vars.env:2: '1BAD' is not a variable name" in str(raised.value)
    assert "vars.env:3: write KEY=VALUE" in str(raised.value)


UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_tasks"


@pytest.mark.parametrize("name", [p.name for p in sorted(UPSTREAM.glob("*.yaml"))])
def test_konduktors_documented_task_files_load(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task files of Konduktor's documentation, launched from a project that has the
    local paths they name."""
    path = UPSTREAM / name
    assert path.read_text().startswith("# Source: "), "say where it comes from"
    (tmp_path / "my_dir").mkdir()
    (tmp_path / "my_dir" / ".konduktorignore").write_text("*.log\n")
    (tmp_path / "local" / "path").mkdir(parents=True)
    (tmp_path / "static_path.txt").write_text("static\n")
    monkeypatch.chdir(tmp_path)
    task = load(path)
    assert task.run.strip()
    assert task.resources.labels.get("kueue.x-k8s.io/queue-name") in (None, "user-queue")


def test_every_documented_page_has_its_task_file() -> None:
    names = {p.stem for p in UPSTREAM.glob("*.yaml")}
    for page in ("task_schema", "file_sync", "runtime_file_sync", "lifecycle", "distributed"):
        assert any(name.startswith(page) for name in names), page


@pytest.mark.parametrize(
    "given",
    ["H100:8", "h100:8", "{H100: 8}", "[H100:8]", "['h100:8']", "{h100: 8}"],
)
def test_accelerators_in_every_form_konduktor_reads(project: Path, given: str) -> None:
    path = write(project, f"run: echo\nresources:\n  accelerators: {given}\n")
    assert load(path).resources.accelerators == "H100:8"


def test_one_accelerator_without_a_count_is_one(project: Path) -> None:
    path = write(project, "run: echo\nresources: {accelerators: a100-80gb}\n")
    assert load(path).resources.accelerators == "A100-80GB:1"


def test_job_config_and_its_flags(project: Path) -> None:
    path = write(project, "run: echo\nresources: {job_config: {max_restarts: 3, completions: 2}}\n")
    res = load(path).resources
    assert (res.max_restarts, res.completions) == (3, 2)
    res = load(path, Overrides(max_restarts=0)).resources
    assert (res.max_restarts, res.completions) == (0, 2)
    with pytest.raises(UsageError) as raised:
        load(path, Overrides(completions=0))
    assert str(raised.value).startswith("--completions: 0 is not valid")


def test_disk_size_is_accepted_with_a_warning(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(project, "run: echo\nresources: {disk_size: 256}\n")
    load(path)
    assert "resources.disk_size is deprecated and has no effect" in caplog.text
