"""Hostile layers through the pod startup script, under every shell and tar it supports.

Each case is a stack of layers (base first) whose digests the plan vouches for, as if a
hostile layer had got that far: the script must refuse it with one line and exit 97,
writing nothing outside its tree and creating no device, FIFO, hard link or setuid
file, or, for the tricky but legitimate ones, place exactly the expected tree. Every
case runs under dash and busybox ash, with GNU tar and busybox tar, and through
`konduktor extract`, which must reach the same verdict.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from test_pod import _which, run_script, toolbox

from konduktor import pod
from konduktor.errors import ExtractError
from konduktor.extract import LayerRef, extract, sha256_file
from konduktor.plan import LaunchPlan, Layer, Tree

OUT = "{outside}"  # stands for the directory outside the tree, in link targets


@dataclass(frozen=True)
class M:
    """A tar member: a file (data), a symlink (link), a directory, or another type."""

    name: str
    data: bytes = b"x"
    link: str | None = None
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644

    def info(self, outside: Path) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
        info = tarfile.TarInfo(self.name)
        info.mode, info.uid, info.gid = self.mode, 1234, 1234
        if self.link is not None:
            info.type = tarfile.SYMTYPE if self.type == tarfile.REGTYPE else self.type
            info.linkname = self.link.replace(OUT, str(outside))
            return info, None
        info.type = self.type
        if self.type != tarfile.REGTYPE:
            return info, None
        info.size = len(self.data)
        return info, io.BytesIO(self.data)


def d(name: str, mode: int = 0o755) -> M:
    return M(name, type=tarfile.DIRTYPE, mode=mode)


def ln(name: str, target: str) -> M:
    return M(name, link=target)


@dataclass(frozen=True)
class Case:
    id: str
    layers: list[list[M]]
    placed: dict[str, object] | None = None  # None: refused; else the tree expected
    words: tuple[str, ...] = ()  # in the one failure line
    bounds: tuple[int, int] | None = None  # (members, tar bytes) the plan claims instead
    raw: bytes | None = None  # the layer's bytes as they are (not a zstd tar)
    plan_only: bool = False  # a rule of the plan (bounds): konduktor extract cannot know it
    gnu_only: bool = False  # busybox tar cannot list it: refused there, placed with GNU tar


DEEP = "/".join(["d"] * 120)
NASTY = ["new\nline", "tab\tbed", "back\\slash", "caf\udce9"]  # the last is not UTF-8

CASES = [
    Case("dotdot", [[M("../escaped")]], words=("leave the destination",)),
    Case("dotdot-inside", [[M("a/../../escaped")]], words=("leave the destination",)),
    Case("dotdot-dir", [[d("../up")]], words=("leave the destination",)),
    Case("absolute", [[M("/abs/escaped")]], words=("leave the destination",)),
    Case("absolute-dir", [[d("/abs")]], words=("leave the destination",)),
    Case("dot-only", [[d("./")]]),
    Case("link-then-file", [[ln("d", OUT), M("d/escaped")]], words=("d is a symlink",)),
    Case("link-then-dir", [[ln("d", OUT), d("d/sub")]], words=("d is a symlink",)),
    Case("link-then-link", [[ln("d", OUT), ln("d/l", "x")]], words=("d is a symlink",)),
    Case("link-dotdot-then-file", [[ln("d", "../../.."), M("d/escaped")]]),
    Case("inner-link-then-file", [[ln("d", "."), M("d/x")]], words=("d is a symlink",)),
    Case("across-layers", [[ln("d", OUT)], [M("d/escaped")]], words=("d is a symlink",)),
    Case("across-layers-dir", [[ln("d", OUT)], [d("d/sub")]], words=("d is a symlink",)),
    Case("across-layers-deep", [[d("a"), ln("a/b", OUT)], [M("a/b/c/escaped")]]),
    Case("chain", [[ln("link", OUT)], [ln("x", "link"), M("x/evil2")]]),
    Case("chain-one-layer", [[ln("a", "b"), ln("b", OUT), M("a/evil")]]),
    Case("chain-three-layers", [[ln("a", OUT)], [ln("b", "a")], [M("b/evil")]]),
    Case("whiteout-through-link", [[ln("d", OUT)], [M("d/.wh.victim", b"")]]),
    Case("whiteout-after-content", [[M("a")], [M("b"), M(".wh.a", b"")]]),
    Case("whiteout-of-dotdot", [[M("a")], [M(".wh...", b"")]]),
    Case("whiteout-empty", [[M("a")], [M(".wh.", b"")]]),
    Case("whiteout-is-a-dir", [[M("a")], [d(".wh.a")]]),
    Case("hardlink-absolute", [[M("h", link="/etc/passwd", type=tarfile.LNKTYPE)]]),
    Case("hardlink-outside", [[M("h", link=f"{OUT}/victim", type=tarfile.LNKTYPE)]]),
    Case("hardlink-dotdot", [[M("h", link="../outside/victim", type=tarfile.LNKTYPE)]]),
    Case("hardlink-inside", [[M("a"), M("h", link="a", type=tarfile.LNKTYPE)]]),
    Case("char-device", [[M("dev", type=tarfile.CHRTYPE)]], words=("character devices",)),
    Case("block-device", [[M("blk", type=tarfile.BLKTYPE)]], words=("block devices",)),
    Case("fifo", [[M("fifo", type=tarfile.FIFOTYPE)]], words=("FIFOs",)),
    Case("fifo-in-overlay", [[M("a")], [M("fifo", type=tarfile.FIFOTYPE)]]),
    Case("setuid", [[M("suid", mode=0o4755)]], words=("setuid",)),
    Case("setgid", [[M("sgid", mode=0o2755)]], words=("setuid",)),
    Case("setuid-noexec", [[M("suid", mode=0o4644)]], words=("setuid",)),
    Case("sticky-dir", [[d("tmp", 0o1777)]], words=("setuid",)),
    Case("setgid-dir", [[d("shared", 0o2775)]], words=("setuid",)),
    Case("more-members", [[M("a"), M("b")]], bounds=(1, 0), plan_only=True),
    Case("bomb", [[M("zeros", b"\0" * (64 << 20))]], bounds=(1, 10240), plan_only=True),
    Case("not-zstd", [[M("a")]], raw=b"\x1f\x8b\x08\x00gzip, not zstd", words=("not a zstd",)),
    Case("not-a-tar", [[M("a")]], raw=zstandard.ZstdCompressor().compress(b"x" * 4096)),
    Case("truncated", [[M("a")]], raw=zstandard.ZstdCompressor().compress(b"x" * 9000)[:20]),
    # tricky but legitimate: placed exactly
    Case("outward-link-kept", [[ln("data", "/mnt/datasets")]], {"data": "-> /mnt/datasets"}),
    Case("link-replaced-by-file", [[ln("l", OUT)], [M("l", b"mine")]], {"l": b"mine"}),
    Case("link-replaced-by-link", [[ln("l", OUT)], [ln("l", "a")]], {"l": "-> a"}),
    Case(
        "link-replaced-by-dir",
        [[ln("d", OUT)], [M(".wh.d", b""), M("d/f", b"in")]],
        {"d": "dir", "d/f": b"in"},
    ),
    Case(
        "dir-replaced-by-file",
        [[M("d/a", b"a")], [M(".wh.d", b""), M("d", b"file")]],
        {"d": b"file"},
    ),
    Case(
        "dir-replaced-by-link",
        [[M("d/a", b"a")], [M(".wh.d", b""), ln("d", "elsewhere")]],
        {"d": "-> elsewhere"},
    ),
    Case("whiteout-a-tree", [[M("d/a"), M("d/e/b"), M("k")], [M(".wh.d", b"")]], {"k": b"x"}),
    Case(
        "case-and-normalisation",
        [
            [
                M("Readme", b"1"),
                M("README", b"2"),
                *(M(unicodedata.normalize(f, "é"), f.encode()) for f in ("NFC", "NFD")),
            ]
        ],
        {
            "Readme": b"1",
            "README": b"2",
            unicodedata.normalize("NFC", "é"): b"NFC",
            unicodedata.normalize("NFD", "é"): b"NFD",
        },
    ),
    Case(
        "long-name",
        [[M("n" * 200 + "/" + "m" * 240, b"long")]],
        {"n" * 200: "dir", "n" * 200 + "/" + "m" * 240: b"long"},
    ),
    Case(
        "deep",
        [[M(DEEP + "/f", b"deep")]],
        {**{DEEP[: 2 * i + 1]: "dir" for i in range(120)}, DEEP + "/f": b"deep"},
    ),
    Case("dot-components", [[M("./a/./b//c", b"c")]], {"a": "dir", "a/b": "dir", "a/b/c": b"c"}),
    Case(
        "modes-and-owners",
        [[M("run", b"#!/bin/sh\n", mode=0o777), M("priv", b"p", mode=0o600), d("dir", 0o700)]],
        {"run": (b"#!/bin/sh\n", 0o755), "priv": (b"p", 0o644), "dir": "dir"},
    ),
    Case("arrow-in-a-file-name", [[M("a -> b")]], {"a -> b": b"x"}, gnu_only=True),
    Case(
        "nasty-names-whiteouts",
        [[M(n, b"gone") for n in NASTY] + [M("kept")], [M(f".wh.{n}", b"") for n in NASTY]],
        {"kept": b"x"},
        gnu_only=True,
    ),
    Case("empty", [[]], {}),
    Case(
        "100k-members",
        [[M(f"m/{i // 1000}/{i}", b"1") for i in range(100_000)]],
        {"m": "dir", **{f"m/{i}": "dir" for i in range(100)}}
        | {f"m/{i // 1000}/{i}": b"1" for i in range(100_000)},
    ),
]
assert len(CASES) >= 50


def layer_file(store: Path, index: int, members: list[M], case: Case, outside: Path) -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            tar.addfile(*member.info(outside))
    data = case.raw if case.raw is not None else zstandard.ZstdCompressor().compress(raw.getvalue())
    path = store / "v1" / "objects" / f"{index}.tar.zst"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    count, size = case.bounds or (len(members), len(raw.getvalue()))
    return Layer(f"v1/objects/{index}.tar.zst", "full", sha256_file(path), len(data), count, size)


# -- shells x tars ------------------------------------------------------------------------------


def _busybox_bin(tmp_path: Path) -> Path:
    busybox = _which("busybox")
    bin_dir = tmp_path / "busybox-bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            (bin_dir / applet).symlink_to(busybox)
        (bin_dir / "zstd").symlink_to(_which("zstd"))
    return bin_dir


def environments(tmp_path: Path) -> Iterator[tuple[str, str, str, str]]:
    """(shell name, tar name, shell path, PATH) for every supported combination."""
    gnu = Path(toolbox(tmp_path, "zstd"))
    everything_busybox = _busybox_bin(tmp_path)
    busybox_tar = _with_tar(gnu, tmp_path / "coreutils-busybox-tar", _which("busybox"))
    with_gnu_tar = _with_tar(everything_busybox, tmp_path / "busybox-gnu-tar", gnu / "tar")
    yield "dash", "gnu", "/bin/sh", str(gnu)
    yield "dash", "busybox", "/bin/sh", str(busybox_tar)
    yield "ash", "gnu", str(with_gnu_tar / "sh"), str(with_gnu_tar)
    yield "ash", "busybox", str(everything_busybox / "sh"), str(everything_busybox)


def _with_tar(bin_dir: Path, copy: Path, tar: Path | str) -> Path:
    """A copy of the PATH directory *bin_dir* whose tar is *tar*."""
    shutil.copytree(bin_dir, copy, symlinks=True)
    os.unlink(copy / "tar")
    (copy / "tar").symlink_to(os.path.realpath(tar))
    return copy


def placed_tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.fsdecode(os.fsencode(path.relative_to(root)))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = (path.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


def expected_tree(case: Case) -> dict[str, object]:
    assert case.placed is not None
    return {k: (v, 0o644) if isinstance(v, bytes) else v for k, v in case.placed.items()}


def assert_nothing_hostile(root: Path) -> None:
    """No device, FIFO, socket, hard link or setuid/setgid/sticky file anywhere below."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            kind = stat.S_IFMT(st.st_mode)
            assert kind in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK), (dirpath, name)
            assert not st.st_mode & 0o7000, (dirpath, name)
            assert kind != stat.S_IFREG or st.st_nlink == 1, (dirpath, name)


def outside_dir(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("untouched\n")
    return outside


def assert_outside_untouched(outside: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "untouched\n"
    assert not (tmp_path / "escaped").exists()
    assert not Path("/escaped").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_layers_under_every_shell_and_tar(tmp_path: Path, case: Case) -> None:
    outside = outside_dir(tmp_path)
    store = tmp_path / "store"
    layers = tuple(layer_file(store, i, m, case, outside) for i, m in enumerate(case.layers))
    plan = LaunchPlan(
        job="hostile",
        store=f"file://{store}",
        run="echo ran",
        trees=(Tree("~/konduktor_workdir", "/src", None, False, layers),),
    )
    for shell, tar, shell_path, path in environments(tmp_path):
        home = tmp_path / f"home-{shell}-{tar}"
        result = run_script(plan, home, path, shell=shell_path)
        where = f"{shell} with {tar} tar: {result.stderr}"
        assert_outside_untouched(outside, tmp_path)
        assert_nothing_hostile(home)
        refused = case.placed is None or (case.gnu_only and tar == "busybox")
        if refused:
            assert result.returncode == pod.SYNC_FAILED, where
            failures = [line for line in result.stderr.splitlines() if "sync failed" in line]
            assert len(failures) == 1, where
            assert all(word in failures[0] for word in case.words), where
            assert failures[0] in (home / ".konduktor" / "termination-log").read_text(), where
            assert not (home / "konduktor_workdir").exists(), where
            assert not list(home.glob(".konduktor-stage.*")), where
        else:
            assert result.returncode == 0, where
            assert placed_tree(home / "konduktor_workdir") == expected_tree(case), where


@pytest.mark.parametrize(
    "case", [c for c in CASES if not c.plan_only], ids=[c.id for c in CASES if not c.plan_only]
)
def test_konduktor_extract_reaches_the_same_verdicts(tmp_path: Path, case: Case) -> None:
    outside = outside_dir(tmp_path)
    refs = [
        LayerRef(tmp_path / "store" / la.key, la.sha256)
        for la in (
            layer_file(tmp_path / "store", i, m, case, outside) for i, m in enumerate(case.layers)
        )
    ]
    dest = tmp_path / "dest"
    if case.placed is None:
        with pytest.raises(ExtractError):
            extract(refs, dest)
        assert not dest.exists()
    else:
        extract(refs, dest)
        assert placed_tree(dest) == expected_tree(case)
    assert_outside_untouched(outside, tmp_path)
    assert_nothing_hostile(tmp_path)
