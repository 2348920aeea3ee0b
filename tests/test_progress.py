"""Progress on the long steps: bars on a terminal, periodic lines elsewhere, none with -q.

On a pseudo-terminal, `launch --local` of a tree of incompressible data draws an upload bar
that moves and the pod script's extraction lines; without a terminal the CLI prints a line
per PERIOD (lowered here, so that every update prints: no timing is asserted).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import run

from konduktor import progress

BIG = 6_000_000  # above progress.LARGE
SMALL = 1_000_000
LOCAL = 400_000_000  # incompressible: the upload and the extraction take a while


def _tree(root: Path, size: int) -> Path:
    """A directory (not in git: one full layer) of *size* random bytes, with a task."""
    root.mkdir()
    with (root / "data.bin").open("wb") as f:
        for _ in range(0, size, 1 << 24):
            f.write(os.urandom(min(1 << 24, size - f.tell())))
    (root / "task.yaml").write_text("name: progress\nworkdir: .\nrun: echo done\n")
    return root


def _lines(err: str, start: str) -> list[str]:
    pattern = rf"konduktor: {start} [\d.]+ [kMG]?B of [\d.]+ MB \(\d+%\)"
    return [line for line in err.splitlines() if re.fullmatch(pattern, line)]


@pytest.fixture
def every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pause between two progress lines: each update prints one."""
    monkeypatch.setattr(progress, "PERIOD", 0.0)


@pytest.mark.usefixtures("every_update")
def test_an_upload_prints_lines_when_big_and_none_when_small_or_quiet(tmp_path: Path) -> None:
    big, small = _tree(tmp_path / "big", BIG), _tree(tmp_path / "small", SMALL)
    store = f"file://{tmp_path}/store"
    code, _, err = run("snapshot", "--upload", "--store", store, big)
    assert code == 0, err
    lines = _lines(err, "upload full layer")
    assert len(set(lines)) > 1, err
    code, _, err = run("snapshot", "--upload", "--store", store, small)
    assert code == 0, err
    assert "upload" not in err.replace("uploaded 0 B", "")
    assert "konduktor: build 1 of 2 files (50%)" in err.splitlines()  # counted, not sized
    code, _, err = run("-q", "snapshot", "--upload", "--store", f"file://{tmp_path}/other", big)
    assert (code, err) == (0, "")


@pytest.mark.usefixtures("every_update")
def test_extract_prints_lines_when_big_and_none_when_small(tmp_path: Path) -> None:
    for name, size in (("big", BIG), ("small", SMALL)):
        out = tmp_path / f"{name}-layers"
        code, _, err = run("snapshot", "--out", out, _tree(tmp_path / name, size))
        assert code == 0, err
        (layer,) = out.glob("*.tar.zst")
        code, _, err = run("extract", layer, tmp_path / f"{name}-dest")
        assert code == 0, err
        assert (tmp_path / f"{name}-dest" / "data.bin").stat().st_size == size
        lines = _lines(err, "extract")
        assert (len(set(lines)) > 1) == (name == "big"), err


def test_a_build_prints_counted_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(progress, "PERIOD", 0.0)
    tree = tmp_path / "many"
    tree.mkdir()
    for i in range(5):
        (tree / f"f{i}.txt").write_text(f"{i}\n")
    code, _, err = run("snapshot", tree)
    assert code == 0, err
    assert [line for line in err.splitlines() if "files (" in line] == [
        f"konduktor: snapshot {i} of 5 files ({i * 20}%)" for i in range(1, 5)
    ]


def _on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run *argv* with a pseudo-terminal as stdin, stdout and stderr: (exit code, output)."""
    parent, child = os.openpty()
    proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, cwd=cwd)
    os.close(child)
    out = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([parent], [], [], 1)[0]:
                try:
                    data = os.read(parent, 1 << 16)
                except OSError:  # EIO: every process holding the terminal is gone
                    break
                if not data:
                    break
                out += data
    finally:
        os.close(parent)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=10), out.decode(errors="replace")


def _job(output: str) -> str:
    found = re.search(r"job (progress-[0-9a-f]{8}):", output)
    assert found is not None, output
    return found.group(1)


def _states(output: str, start: str) -> set[str]:
    """The distinct screens (a bar redrawn after \\r, or a line) that begin with *start*."""
    screens = re.split(r"[\r\n]+", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output))
    return {s.strip() for s in screens if s.strip().startswith(start)}


def test_launch_local_on_a_terminal_shows_the_upload_and_the_extraction_moving(
    tmp_path: Path,
) -> None:
    work = _tree(tmp_path / "work", LOCAL)
    env = dict(os.environ, KONDUKTOR_PROGRESS_SECONDS="0.2")  # the pod script's period
    argv = [sys.executable, "-m", "konduktor", "launch", "--local", "-y", "task.yaml"]
    code, output = _on_a_terminal(argv, {**env, "KONDUKTOR_HOME": str(tmp_path / "a")}, work)
    assert code == 0, output
    uploads = _states(output, "upload full layer")
    assert len(uploads) > 1, output
    assert all(re.search(r"\d+%", state) for state in uploads), uploads
    extracting = _states(output, "konduktor: extract full layer of ~/konduktor_workdir ")
    assert len(extracting) > 1, output
    assert [line.strip() for line in output.splitlines()[-2:]] == [
        "done",
        f"job {_job(output)} exited with code 0",
    ]

    code, output = _on_a_terminal(
        [*argv[:3], "-q", *argv[3:]], {**env, "KONDUKTOR_HOME": str(tmp_path / "b")}, work
    )
    assert (code, output) == (0, "done\r\n")
