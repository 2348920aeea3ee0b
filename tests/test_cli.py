"""The command line: exit codes, one-line errors, outputs, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from gitrepo_helpers import git, make_repo

from konduktor.cli import cli, main


@pytest.fixture(autouse=True)
def konduktor_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONDUKTOR_HOME", str(tmp_path / "khome"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path,
        {"a.py": "a\n", "secret.env": "x\n", "sub/b.py": "b\n", ".konduktorignore": "*.env\n"},
    )


def run(*args: str | Path) -> tuple[int, str, str]:
    """Run main() the way the console script does; return (exit code, stdout, stderr)."""
    with CliRunner().isolation() as (stdout, stderr, _):
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in args])
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def run_konduktor(
    *args: str | Path, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, sys.executable, "-m", "konduktor", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_help_explains_every_command() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for command in ("ls-files", "snapshot", "extract"):
        assert command in out
    code, out, _ = run("snapshot", "--help")
    assert code == 0
    assert "--commit" in out
    assert "--out" in out


def test_ls_files_lists_the_selection_nul_separated(repo: Path) -> None:
    code, out, _ = run("ls-files", repo)
    assert code == 0
    assert out.splitlines() == [".konduktorignore", "a.py", "sub/b.py"]
    result = CliRunner().invoke(cli, ["ls-files", "-z", str(repo / "sub")])
    assert result.stdout_bytes == b"b.py\0"


def test_ls_files_why_names_the_rule(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    code, out, err = run("ls-files", "--why", "secret.env", "a.py", "missing.txt")
    assert out.splitlines() == [
        "secret.env\texcluded\t.konduktorignore:1:*.env",
        "a.py\tships\ttracked",
        "missing.txt\texcluded\tnot found",
    ]
    # every path answered, then one error per path that names nothing
    assert (code, err) == (1, f"error: missing.txt does not exist in {repo}; check the path\n")


def test_ls_files_takes_files_and_several_paths_as_git_does(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    args = ("sub", "a.py", "secret.env")
    code, out, err = run("ls-files", *args)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["a.py", "sub/b.py"]  # secret.env does not ship: not listed
    assert set(git(repo, "ls-files", *args).decode().splitlines()) - set(out.splitlines()) == {
        "secret.env"
    }
    monkeypatch.chdir(repo / "sub")
    code, out, _ = run("ls-files", "--root", "..", "../a.py", "b.py")
    assert (code, out) == (0, git(repo / "sub", "ls-files", "../a.py", "b.py").decode())
    assert out == "../a.py\nb.py\n"


def test_ls_files_reports_every_path_that_names_nothing_then_fails(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo / "sub")
    code, out, err = run("ls-files", "--why", "b.py", "../a.py", "nope.py")
    assert code == 1
    assert out.splitlines() == [
        "b.py\tships\ttracked",
        f"{repo / 'a.py'}\texcluded\toutside the synced directory",
        "nope.py\texcluded\tnot found",
    ]
    assert err.splitlines() == [
        f"error: {repo / 'a.py'} is outside the synced directory {repo / 'sub'}; "
        "give --root a directory that holds it",
        f"error: nope.py does not exist in {repo / 'sub'}; check the path",
    ]
    code, out, err = run("ls-files", "b.py", tmp_path / "nope")
    assert (code, out) == (1, "b.py\n")
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert errors == [f"error: {tmp_path / 'nope'} does not exist; check the path"]


def test_snapshot_summary_says_where_no_commit_came_from(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("a\n")
    code, out, _ = run("snapshot", plain)
    assert code == 0
    assert out.splitlines()[-1].startswith("not a git work tree: one full layer in ")
    fresh = make_repo(tmp_path, {"a.py": "a\n"}, commit=False, name="fresh")
    code, out, _ = run("snapshot", fresh)
    assert out.splitlines()[-1].startswith("git repository without commits: one full layer in ")


def test_out_names_say_base_and_overlay_and_extract_checks_their_order(
    repo: Path, tmp_path: Path
) -> None:
    (repo / "a.py").write_text("edited\n")
    code, _, err = run("snapshot", repo, "--out", tmp_path / "out")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [re.sub("[0-9a-f]{8,}", "H", name) for name in names] == [
        "base-H-H.json",
        "base-H-H.tar.zst",
        "overlay-H.json",
        "overlay-H.tar.zst",
    ]
    base, overlay = sorted((tmp_path / "out").glob("*.tar.zst"))  # as the shell globs them
    code, out, err = run("extract", overlay, base, tmp_path / "dest")
    assert (code, out) == (2, "")
    assert err == (
        f"error: layers in the wrong order: {base.name} is the base of {overlay.name} and comes "
        f"right before it: konduktor extract {base} {overlay} {tmp_path / 'dest'}\n"
    )
    assert not (tmp_path / "dest").exists()
    code, _, err = run("extract", overlay, tmp_path / "dest")
    assert code == 2
    assert err.startswith(f"error: {overlay.name} is an overlay and needs its base layer ")
    assert not (tmp_path / "dest").exists()
    code, _, err = run("extract", base, overlay, tmp_path / "dest")
    assert code == 0, err
    assert (tmp_path / "dest" / "a.py").read_text() == "edited\n"


def test_ls_files_why_without_paths_is_a_usage_error() -> None:
    code, _, err = run("ls-files", "--why")
    assert code == 2
    assert "needs at least one PATH" in err


def test_snapshot_json_shape(repo: Path, tmp_path: Path) -> None:
    (repo / "a.py").write_text("changed\n")
    code, out, err = run("snapshot", repo, "--out", tmp_path / "out", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["commit"] == git(repo, "rev-parse", "HEAD").decode().strip()
    assert data["dirty"] is True
    assert [layer["kind"] for layer in data["layers"]] == ["base", "overlay"]
    for layer in data["layers"]:
        assert set(layer) >= {"kind", "key", "sha256", "bytes", "files", "path"}
        assert Path(layer["path"]).is_file()
    assert data["layers"][1]["files"] == 1


def test_snapshot_table_and_extract_round_trip(repo: Path, tmp_path: Path) -> None:
    code, out, _ = run("snapshot", repo, "--out", tmp_path / "out")
    assert code == 0
    assert "base" in out
    assert "(clean)" in out
    assert "wrote" in out
    layer = next((tmp_path / "out").glob("*.tar.zst"))
    code, out, err = run("extract", layer, tmp_path / "dest")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dest").rglob("*") if p.is_file()) == [
        ".konduktorignore",
        "a.py",
        "b.py",
    ]
    code, _, err = run("extract", layer, tmp_path / "dest")
    assert code == 2
    assert "--replace" in err
    code, _, _ = run("extract", layer, tmp_path / "dest", "--replace")
    assert code == 0


def test_extract_refuses_a_tampered_layer(repo: Path, tmp_path: Path) -> None:
    run("snapshot", repo, "--out", tmp_path / "out")
    layer = next((tmp_path / "out").glob("*.tar.zst"))
    data = bytearray(layer.read_bytes())
    data[-10] ^= 0xFF
    layer.write_bytes(bytes(data))
    code, _, err = run("extract", layer, tmp_path / "dest")
    assert code == 1
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("snapshot", "{tmp}/nope"), "does not exist"),
        (("snapshot", "{tmp}/file.txt"), "is not a directory"),
        (("snapshot", "{repo}", "--commit", "no-such-rev"), "does not name a commit"),
        (("ls-files", "{repo}", "--commit", "no-such-rev"), "does not name a commit"),
        (("snapshot", "{empty}", "--commit", "HEAD"), "does not name a commit"),
        (("snapshot", "{tmp}/plain", "--commit", "HEAD"), "needs a git repository"),
    ],
    ids=["missing", "not-a-dir", "bad-rev", "ls-bad-rev", "no-commits", "no-git"],
)
def test_bad_input_is_one_clear_line_exit_2_and_leaves_nothing(
    repo: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    empty = make_repo(tmp_path, {"x": "x"}, commit=False, name="empty")
    out = tmp_path / "out"
    filled = [a.format(tmp=tmp_path, repo=repo, empty=empty) for a in args]
    code, stdout, err = run(*filled, "--out", out) if args[0] == "snapshot" else run(*filled)
    assert code == 2, (stdout, err)  # bad arguments: a usage error, as click's own
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []


def _unprivileged() -> tuple[str, ...]:
    """A prefix that makes root subject to file permissions, as an ordinary user is."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}")


def test_unreadable_file_fails_cleanly_without_partial_output(repo: Path, tmp_path: Path) -> None:
    (repo / "locked.py").write_text("secret\n")
    (repo / "locked.py").chmod(0o000)
    out = tmp_path / "out"
    done = run_konduktor("snapshot", repo, "--out", out, prefix=_unprivileged())
    assert done.returncode == 1, done.stderr
    assert "locked.py" in done.stderr
    assert "Permission denied" in done.stderr
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    assert list(out.iterdir()) == []


def test_unexpected_error_is_short_and_points_to_verbose(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from konduktor import snapshot

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(snapshot, "build", boom)
    code, _, err = run("snapshot", repo)
    assert code == 3
    assert "kaboom" in err
    assert "-v" in err
    assert "Traceback" not in err


def test_usage_error_exits_2() -> None:
    code, _, err = run("snapshot", "--level", "99")
    assert code == 2
    assert "99" in err


def test_warnings_reach_stderr(repo: Path, tmp_path: Path) -> None:
    (repo / ".konduktorignore").write_text("*.env   # secrets\n")
    code, _, err = run("ls-files", repo)
    assert code == 0
    assert "warning: .konduktorignore:1:" in err
    assert "did you mean '*.env'" in err


def test_snapshot_uses_the_configured_compression_level(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The level is part of the keys: launch, the hook and `snapshot` must agree on it."""
    from konduktor import snapshot as snap

    config = tmp_path / "sync.yaml"
    config.write_text("sync:\n  compression_level: 7\n")
    monkeypatch.setenv("KONDUKTOR_SYNC_CONFIG", str(config))
    code, out, err = run("snapshot", "--json", repo)
    assert code == 0, err
    keys = [layer["key"] for layer in json.loads(out)["layers"]]
    assert keys == [layer.key for layer in snap.plan(repo, level=7).layers]
    assert keys != [layer.key for layer in snap.plan(repo, level=3).layers]


def test_verbose_shows_the_traceback_of_an_unexpected_error(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from konduktor import selection

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(selection, "select", broken)
    code, _, err = run("ls-files", repo)
    assert code == 3
    assert (
        err
        == "unexpected error: RuntimeError: a bug; rerun with -v for the traceback and report it\n"
    )
    with pytest.raises(RuntimeError, match="a bug"):
        main(["-v", "ls-files", str(repo)])


def test_only_the_layout_module_spells_the_store_layout() -> None:
    package = Path(__file__).resolve().parents[1] / "konduktor"
    spelled = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*")
        if path.is_file() and path.suffix in (".py", ".sh") and "v1/" in path.read_text()
    )
    assert spelled == ["layout.py"]


def test_why_explains_the_commit_given(repo: Path) -> None:
    (repo / "a.py").unlink()
    code, out, _ = run("ls-files", "--why", "--root", repo, repo / "a.py")
    assert (code, out) == (0, "a.py\texcluded\tdeleted in the work tree\n")
    code, out, _ = run("ls-files", "--why", "--commit", "HEAD", "--root", repo, repo / "a.py")
    assert (code, out) == (0, "a.py\tships\ttracked\n")


@pytest.mark.parametrize(
    "args",
    [
        ("snapshot", "{repo}", "--upload", "--out", "{tmp}/out"),
        ("launch", "--local", "--dry-run", "{tmp}/task.yaml"),
        ("launch", "-o", "yaml", "{tmp}/task.yaml"),
    ],
    ids=["upload-out", "local-dry-run", "output-without-dry-run"],
)
def test_options_that_do_not_go_together_are_usage_errors(
    repo: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    (tmp_path / "task.yaml").write_text("name: t\nrun: 'true'\n")
    code, out, err = run(*(a.format(repo=repo, tmp=tmp_path) for a in args))
    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("error: ")
    assert line.endswith(f"(see: konduktor {args[0]} --help)")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "khome" / "store").exists()
