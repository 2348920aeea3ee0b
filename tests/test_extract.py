"""Tests for konduktor.extract: round trips, overlays and hostile layers.

Layers are real files: tars written by Python's tarfile, compressed by a zstd
stream writer (so frames carry no content size, like our writer's).
"""

from __future__ import annotations

import _thread
import contextlib
import hashlib
import io
import os
import random
import re
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from gitrepo_helpers import commit_all, make_repo
from hypothesis import given, settings
from hypothesis import strategies as st

from konduktor.errors import ExtractError, UsageError
from konduktor.extract import ExtractResult, LayerRef, extract, sha256_file
from konduktor.snapshot import build as build_snapshot

Entry = tuple[tarfile.TarInfo, bytes]
Tree = dict[str, tuple[object, ...]]

DIR = ("dir", 0o755)
NON_UTF8 = os.fsdecode(b"caf\xe9.txt")


# -- building layers -------------------------------------------------------------------------


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    link: str = "",
    pax: dict[str, str] | None = None,
) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = len(data)
    info.linkname = link
    if pax:
        info.pax_headers = pax
    return info, data


def file(name: str, data: bytes = b"", mode: int = 0o644) -> Entry:
    return entry(name, data=data, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return entry(name, tarfile.SYMTYPE, link=target, mode=0o777)


def tar_bytes(entries: Iterable[Entry], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def compress(data: bytes) -> bytes:
    """Compress like our writer: a stream writer, so the frame has no content size."""
    buffer = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(buffer, closefd=False) as writer:
        writer.write(data)
    return buffer.getvalue()


def write_layer(path: Path, data: bytes) -> LayerRef:
    """Write a layer file and return it with the sha256 of exactly these bytes."""
    path.write_bytes(data)
    return LayerRef(path, hashlib.sha256(data).hexdigest())


def make_layer(
    path: Path, entries: Iterable[Entry], tar_format: int = tarfile.PAX_FORMAT
) -> LayerRef:
    return write_layer(path, compress(tar_bytes(entries, tar_format)))


def snapshot(root: Path) -> Tree:
    """Everything under root: kind, mode and bytes of files, targets of symlinks."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            key = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                tree[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                tree[key] = ("file", mode, Path(path).read_bytes())
            else:
                tree[key] = ("dir" if stat.S_ISDIR(info.st_mode) else "other", mode)
    return tree


def extract_layers(tmp_path: Path, *layers: list[Entry]) -> tuple[Path, ExtractResult]:
    refs = [make_layer(tmp_path / f"layer{i}.tar.zst", entries) for i, entries in enumerate(layers)]
    dest = tmp_path / "dest"
    return dest, extract(refs, dest)


# -- round trips ------------------------------------------------------------------------------


def test_files_modes_and_symlinks_round_trip(tmp_path: Path) -> None:
    dest, result = extract_layers(
        tmp_path,
        [
            file("bin/run.sh", b"#!/bin/sh\n", 0o755),
            file("tool", b"x", 0o700),
            file("README", b"hello\n"),
            file("secret", b"s", 0o600),
            symlink("rel", "bin/run.sh"),
            symlink("data", "/mnt/datasets"),
            symlink("dangling", "missing/file"),
            symlink("bin/up", "../../outside"),
            symlink("bin/here", "."),
        ],
    )
    assert snapshot(dest) == {
        "bin": DIR,
        "bin/run.sh": ("file", 0o755, b"#!/bin/sh\n"),
        "tool": ("file", 0o755, b"x"),
        "README": ("file", 0o644, b"hello\n"),
        "secret": ("file", 0o644, b"s"),
        "rel": ("link", "bin/run.sh"),
        "data": ("link", "/mnt/datasets"),
        "dangling": ("link", "missing/file"),
        "bin/up": ("link", "../../outside"),
        "bin/here": ("link", "."),
    }
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert result == ExtractResult(files=4, symlinks=5, deleted=0)


def test_odd_names_round_trip(tmp_path: Path) -> None:
    deep = "/".join(f"level{i}" for i in range(40)) + "/deep.txt"
    entries = [
        file("with space.txt", b"1"),
        file("new\nline", b"2"),
        file(NON_UTF8, b"3"),
        file("ünï/日本.txt", b"4"),
        file(deep, b"5"),
        file("n" * 250, b"6"),
        symlink("to-cafe", NON_UTF8),
    ]
    raw = tar_bytes(entries)
    assert b"hdrcharset=BINARY" in raw  # the non-UTF-8 name really took the pax route
    dest = tmp_path / "dest"
    extract([write_layer(tmp_path / "layer.tar.zst", compress(raw))], dest)
    assert b"caf\xe9.txt" in os.listdir(os.fsencode(dest))
    tree = snapshot(dest)
    for info, data in entries[:6]:
        assert tree[info.name] == ("file", 0o644, data)
    assert tree["to-cafe"] == ("link", NON_UTF8)


def test_large_file_round_trips(tmp_path: Path) -> None:
    big = random.Random(7).randbytes(3 * 2**20)
    layer = make_layer(tmp_path / "layer.tar.zst", [file("big.bin", big)])
    frame = zstandard.get_frame_parameters(layer.path.read_bytes())
    assert frame.content_size == zstandard.CONTENTSIZE_UNKNOWN
    extract([layer], tmp_path / "dest")
    assert (tmp_path / "dest" / "big.bin").read_bytes() == big


def test_layer_of_several_frames(tmp_path: Path) -> None:
    raw = tar_bytes([file("a", b"a" * 5000), file("b", b"b" * 5000)])
    half = len(raw) // 2
    layer = write_layer(tmp_path / "layer.tar.zst", compress(raw[:half]) + compress(raw[half:]))
    extract([layer], tmp_path / "dest")
    assert (tmp_path / "dest" / "b").read_bytes() == b"b" * 5000


def test_overlay_whiteouts_delete_and_prune(tmp_path: Path) -> None:
    base = [
        file("keep.txt", b"k"),
        file("gone.txt"),
        symlink("link", "keep.txt"),
        file("tree/sub/a"),
        file("tree/b"),
        file("p/q/only/f"),
        file("p/other", b"o"),
        file("x1/x2/x3/f"),
    ]
    overlay = [
        file(".wh.gone.txt"),
        file(".wh.link"),
        file(".wh.tree"),
        file("p/q/.wh.only"),
        file("x1/x2/x3/.wh.f"),
        file("absent/.wh.here"),
        file("keep.txt/.wh.under-a-file"),
        file("new.txt", b"n"),
    ]
    dest, result = extract_layers(tmp_path, base, overlay)
    assert snapshot(dest) == {
        "keep.txt": ("file", 0o644, b"k"),
        "p": DIR,
        "p/other": ("file", 0o644, b"o"),
        "new.txt": ("file", 0o644, b"n"),
    }
    assert result == ExtractResult(files=3, symlinks=0, deleted=5)


@pytest.mark.parametrize(
    ("base", "overlay", "expected"),
    [
        pytest.param(
            [file("x", b"file")],
            [file(".wh.x"), file("x/y", b"inner")],
            {"x": DIR, "x/y": ("file", 0o644, b"inner")},
            id="file-becomes-directory",
        ),
        pytest.param(
            [file("x/y", b"inner")],
            [file(".wh.x"), file("x", b"file")],
            {"x": ("file", 0o644, b"file")},
            id="directory-becomes-file",
        ),
    ],
)
def test_whiteout_then_other_kind(
    tmp_path: Path, base: list[Entry], overlay: list[Entry], expected: Tree
) -> None:
    dest, _ = extract_layers(tmp_path, base, overlay)
    assert snapshot(dest) == expected


def test_overlay_member_replaces_without_whiteout(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_bytes(b"must not change")
    base = [file("a", b"old"), symlink("b", str(target)), file("c/d")]
    overlay = [symlink("a", "elsewhere"), file("b", b"new"), file("c", b"file over dir")]
    dest, result = extract_layers(tmp_path, base, overlay)
    assert snapshot(dest) == {
        "a": ("link", "elsewhere"),
        "b": ("file", 0o644, b"new"),
        "c": ("file", 0o644, b"file over dir"),
    }
    assert target.read_bytes() == b"must not change"
    assert result == ExtractResult(files=2, symlinks=1, deleted=0)


def test_directory_members_are_accepted(tmp_path: Path) -> None:
    base = [entry("d", tarfile.DIRTYPE, mode=0o700), entry("s", tarfile.DIRTYPE, mode=0o777)]
    base += [file("d/f", b"f"), symlink("l", "d")]
    overlay = [
        entry("l", tarfile.DIRTYPE),
        entry("d", tarfile.DIRTYPE),
        entry("e", tarfile.DIRTYPE),
    ]
    dest, _ = extract_layers(tmp_path, base, overlay)
    assert snapshot(dest) == {
        "d": DIR,
        "d/f": ("file", 0o644, b"f"),
        "s": DIR,
        "l": DIR,
        "e": DIR,
    }


def test_dot_and_empty_components_are_dropped(tmp_path: Path) -> None:
    dest, _ = extract_layers(tmp_path, [file("./a/./b//c", b"x")])
    assert snapshot(dest) == {"a": DIR, "a/b": DIR, "a/b/c": ("file", 0o644, b"x")}


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1755, 0o6711, 0o4644, 0o2600])
def test_special_mode_bits_are_refused(tmp_path: Path, mode: int) -> None:
    """As the pod refuses them (busybox tar would create them before any check)."""
    layer = make_layer(tmp_path / "layer.tar.zst", [file("ok"), file("special", b"x", mode)])
    with pytest.raises(ExtractError, match="setuid, setgid and sticky bits are not allowed"):
        extract([layer], tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_plain_modes_become_0644_or_0755(tmp_path: Path) -> None:
    modes = {"exec": 0o711, "private": 0o600, "world": 0o666, "all": 0o777}
    dest, _ = extract_layers(tmp_path, [file(name, b"x", mode) for name, mode in modes.items()])
    assert {name: stat.S_IMODE((dest / name).lstat().st_mode) for name in modes} == {
        "exec": 0o755,
        "private": 0o644,
        "world": 0o644,
        "all": 0o755,
    }


def test_modes_ignore_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        dest, _ = extract_layers(tmp_path, [file("d/run", b"x", 0o755), file("d/doc", b"y")])
    finally:
        os.umask(old)
    assert snapshot(dest) == {
        "d": DIR,
        "d/run": ("file", 0o755, b"x"),
        "d/doc": ("file", 0o644, b"y"),
    }
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_extracting_twice_gives_the_same_tree(tmp_path: Path) -> None:
    base = make_layer(tmp_path / "base.tar.zst", [file("a/b", b"1"), symlink("l", "a")])
    overlay = make_layer(tmp_path / "overlay.tar.zst", [file("a/.wh.b"), file("c", b"2")])
    dest = tmp_path / "work" / "dest"
    first = extract([base, overlay], dest)
    tree = snapshot(dest)
    (dest / "stale").write_bytes(b"from a previous run")
    assert extract([base, overlay], dest) == first
    assert snapshot(dest) == tree
    assert os.listdir(dest.parent) == ["dest"]  # no staging or trash left behind


def test_no_layers_gives_an_empty_directory(tmp_path: Path) -> None:
    assert extract([], tmp_path / "dest") == ExtractResult(files=0, symlinks=0, deleted=0)
    assert snapshot(tmp_path) == {"dest": DIR}


def test_sha256_file(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(2**20 + 5)
    (tmp_path / "blob").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_uppercase_digest_is_accepted(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer.tar.zst", [file("a", b"x")])
    assert layer.sha256 is not None
    extract([LayerRef(layer.path, layer.sha256.upper())], tmp_path / "dest")
    assert (tmp_path / "dest" / "a").read_bytes() == b"x"


# -- errors that are not about a hostile archive ------------------------------------------------


def test_refusal_names_layer_member_and_reason(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer.tar.zst", [file("ok"), file("../evil")])
    with pytest.raises(ExtractError) as excinfo:
        extract([layer], tmp_path / "dest")
    message = str(excinfo.value)
    assert str(layer.path) in message
    assert "'../evil'" in message
    assert "'..' component" in message


def test_digest_mismatch_names_both_digests(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer.tar.zst", [file("a")])
    wrong = "0" * 64
    with pytest.raises(ExtractError) as excinfo:
        extract([LayerRef(layer.path, wrong)], tmp_path / "dest")
    message = str(excinfo.value)
    assert str(layer.path) in message
    assert wrong in message
    assert str(layer.sha256) in message
    assert "rebuild it" in message


@pytest.mark.parametrize("sha256", [None, "0" * 64], ids=["unverified", "verified"])
def test_missing_layer_file(tmp_path: Path, sha256: str | None) -> None:
    with pytest.raises(ExtractError, match="cannot read layer"):
        extract([LayerRef(tmp_path / "nope.tar.zst", sha256)], tmp_path / "dest")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "symlink", "dot", "dotdot"])
def test_destination_must_be_a_directory_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    layer = make_layer(tmp_path / "layer.tar.zst", [file("a")])
    (tmp_path / "sub").mkdir()
    dest = tmp_path / "dest"
    if kind == "file":
        dest.write_bytes(b"not a directory")
    elif kind == "symlink":
        dest.symlink_to("sub")
    elif kind == "dot":
        monkeypatch.chdir(tmp_path / "sub")
        dest = Path(".")
    else:
        dest = tmp_path / "sub" / ".."
    before = snapshot(tmp_path)
    with pytest.raises(ExtractError, match="destination"):
        extract([layer], dest)
    assert snapshot(tmp_path) == before


def test_interrupt_removes_staging_and_keeps_dest(tmp_path: Path) -> None:
    big = random.Random(1).randbytes(4 * 2**20)
    data = compress(tar_bytes([file("first", b"1"), file("big", big)]))
    fifo = tmp_path / "layer.fifo"
    os.mkfifo(fifo)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "marker").write_bytes(b"old tree")
    before = snapshot(tmp_path)
    saw_staging: list[bool] = []
    feeder = threading.Thread(
        target=feed_then_interrupt, args=(fifo, data, saw_staging), daemon=True
    )
    feeder.start()
    with pytest.raises(KeyboardInterrupt):
        extract([LayerRef(fifo, None)], dest)
    feeder.join(timeout=60)
    assert saw_staging == [True]
    assert snapshot(tmp_path) == before


def feed_then_interrupt(fifo: Path, data: bytes, saw_staging: list[bool]) -> None:
    """Send half a layer, wait until extraction wrote into staging, then press Ctrl-C.

    The extracting thread is blocked reading the FIFO meanwhile, so the interrupt
    lands inside extract() once the rest of the data wakes it up.
    """
    half = len(data) // 2
    with contextlib.suppress(BrokenPipeError), fifo.open("wb", buffering=0) as pipe:
        pipe.write(data[:half])
        deadline = time.monotonic() + 30
        while not any(fifo.parent.glob(".dest.konduktor-*/first")):
            if time.monotonic() > deadline:
                saw_staging.append(False)
                return
            time.sleep(0.01)
        saw_staging.append(True)
        _thread.interrupt_main()
        pipe.write(data[half:])


# -- the order of a snapshot's layers ---------------------------------------------------------


@pytest.fixture
def layers(tmp_path: Path) -> dict[str, LayerRef]:
    """A committed repo with an uncommitted edit, snapshotted into out/ by `snapshot --out`:
    its base and overlay as the CLI reads them (manifests beside), plus an older base."""
    repo = make_repo(tmp_path, {"train.py": "v1\n", "net.py": "n\n"})
    old = build_snapshot(repo, out=tmp_path / "old").layers[0].path
    (repo / "net.py").write_text("n2\n")
    commit_all(repo)
    (repo / "train.py").write_text("edited\n")
    built = {la.kind: la.path for la in build_snapshot(repo, out=tmp_path / "out").layers}
    assert old is not None
    refs = {kind: LayerRef.beside_manifest(path) for kind, path in built.items() if path}
    return {**refs, "old base": LayerRef.beside_manifest(old)}


def test_out_names_say_which_layer_is_which(layers: dict[str, LayerRef]) -> None:
    assert re.fullmatch(r"base-[0-9a-f]{12}-[0-9a-f]{8}\.tar\.zst", layers["base"].path.name)
    assert re.fullmatch(r"overlay-[0-9a-f]{12}\.tar\.zst", layers["overlay"].path.name)
    assert layers["overlay"].base == layers["base"].key
    assert (layers["base"].kind, layers["overlay"].kind) == ("base", "overlay")


def test_base_then_overlay_keeps_the_uncommitted_edit(
    tmp_path: Path, layers: dict[str, LayerRef]
) -> None:
    dest = tmp_path / "dest"
    extract([layers["base"], layers["overlay"]], dest)
    assert (dest / "train.py").read_text() == "edited\n"
    assert (dest / "net.py").read_text() == "n2\n"


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (
            ["overlay", "base"],
            r"^layers in the wrong order: (?P<base>base-\S+) is the base of overlay-\S+ and "
            r"comes right before it: konduktor extract \S+/(?P=base) \S+/overlay-\S+ \S+/dest$",
        ),
        (
            ["overlay"],
            r"^overlay-\S+ is an overlay and needs its base layer (?P<base>base-\S+) right before "
            r"it: konduktor extract \S+/out/(?P=base) \S+/overlay-\S+ \S+/dest$",
        ),
        (["old base", "overlay"], r"^overlay-\S+ is an overlay and needs its base layer base-"),
        (["base", "base"], r"^\S+/base-\S+ is a base layer \(a whole tree\) and must come first"),
        (["overlay", "overlay"], r"needs its base layer base-"),
    ],
    ids=["overlay-first", "no-base", "other-base", "base-twice", "overlay-twice"],
)
def test_layers_out_of_order_are_refused_before_anything_is_written(
    tmp_path: Path, layers: dict[str, LayerRef], order: list[str], message: str
) -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UsageError) as excinfo:
        extract([layers[name] for name in order], tmp_path / "dest")
    assert re.search(message, str(excinfo.value)), str(excinfo.value)
    assert sorted(os.listdir(tmp_path)) == before  # no dest, no staging directory


def test_the_base_named_for_a_lone_overlay_is_the_file_snapshot_wrote(
    tmp_path: Path, layers: dict[str, LayerRef]
) -> None:
    with pytest.raises(UsageError) as excinfo:
        extract([layers["overlay"]], tmp_path / "dest")
    named = str(excinfo.value).split("konduktor extract ")[1].split()[0]
    assert Path(named) == layers["base"].path


def test_a_base_without_manifest_is_not_order_checked(
    tmp_path: Path, layers: dict[str, LayerRef], caplog: pytest.LogCaptureFixture
) -> None:
    unverified = LayerRef(layers["base"].path, None)
    extract([unverified, layers["overlay"]], tmp_path / "dest")
    assert "cannot check that" in caplog.text
    assert (tmp_path / "dest" / "train.py").read_text() == "edited\n"


def test_a_manifest_with_only_a_sha256_verifies_but_does_not_order(tmp_path: Path) -> None:
    ref = make_layer(tmp_path / "hand.tar.zst", [file("a", b"1")])
    (tmp_path / "hand.json").write_text(f'{{"sha256": "{ref.sha256}"}}')
    assert LayerRef.beside_manifest(ref.path) == LayerRef(ref.path, ref.sha256)


# -- hostile layers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sandbox:
    """tmp_path holding the layers, a dest, and an outside directory nothing may touch."""

    root: Path

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def dest(self) -> Path:
        return self.root / "dest"

    def layer(self, entries: list[Entry], tar_format: int = tarfile.PAX_FORMAT) -> LayerRef:
        count = len(list((self.root / "layers").iterdir()))
        return make_layer(self.root / "layers" / f"{count}.tar.zst", entries, tar_format)

    def raw_layer(self, data: bytes, *, verified: bool = True) -> LayerRef:
        count = len(list((self.root / "layers").iterdir()))
        layer = write_layer(self.root / "layers" / f"{count}.tar.zst", data)
        return layer if verified else LayerRef(layer.path, None)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    (tmp_path / "layers").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "sentinel").write_bytes(b"keep me")
    return Sandbox(tmp_path)


Build = Callable[[Sandbox], list[LayerRef]]


def one(*entries: Entry, tar_format: int = tarfile.PAX_FORMAT) -> Build:
    return lambda box: [box.layer(list(entries), tar_format)]


def through_link(make_entry: Callable[[str], Entry]) -> Build:
    """Layer 1 plants a link to outside; layer 2 uses it as a parent."""
    return lambda box: [
        box.layer([symlink("l", str(box.outside))]),
        box.layer([make_entry("l/sentinel")]),
    ]


def flipped_second_layer(box: Sandbox) -> list[LayerRef]:
    good = box.layer([file("first-layer-file", b"fine")])
    bad = box.layer([file("second", b"x" * 1000)])
    data = bytearray(bad.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.path.write_bytes(bytes(data))
    return [good, bad]


def hostile_then_flipped(box: Sandbox) -> list[LayerRef]:
    # A layer that would fail during extraction, before one that fails verification:
    # the digest error proves every digest is checked before anything is extracted.
    hostile = box.layer([entry("passwd", tarfile.LNKTYPE, link="/etc/passwd")])
    return [hostile, *flipped_second_layer(box)[1:]]


def truncated_tar(cut: Callable[[bytes], int]) -> Build:
    def build(box: Sandbox) -> list[LayerRef]:
        raw = tar_bytes([file("a", b"a" * 700), file("b", b"b" * 100)])
        return [box.raw_layer(compress(raw[: cut(raw)]))]

    return build


def truncated_zstd(box: Sandbox) -> list[LayerRef]:
    data = compress(tar_bytes([file("big", random.Random(5).randbytes(200_000))]))
    return [box.raw_layer(data[: len(data) // 2], verified=False)]


def corrupt_zstd(box: Sandbox) -> list[LayerRef]:
    data = bytearray(compress(tar_bytes([file("a", b"x")])))
    data[0] ^= 0xFF  # the frame magic
    return [box.raw_layer(bytes(data))]


def after(layers: Build, suffix: bytes) -> Build:
    def build(box: Sandbox) -> list[LayerRef]:
        layer = layers(box)[0]
        return [box.raw_layer(layer.path.read_bytes() + suffix)]

    return build


def plain_tar(box: Sandbox) -> list[LayerRef]:
    return [box.raw_layer(tar_bytes([file("a", b"x")]))]


def outside_path(name: str) -> Build:
    return lambda box: [box.layer([file(str(box.outside / name), b"evil")])]


SPARSE_MAP = {"GNU.sparse.map": "0,1", "GNU.sparse.name": "s", "GNU.sparse.size": "1"}
# Sparse format 1.0 keeps its map in the data; without data tarfile raises a bare ValueError.
SPARSE_1_0_NO_MAP = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s"}
LONG_DOTDOT = "d" * 120 + "/../../outside/evil"
NUL_NAME = "n" * 120 + "\0/../outside/evil"

HOSTILE = [
    # names
    pytest.param(outside_path("evil"), "the name is absolute", id="absolute"),
    pytest.param(one(file("../outside/evil")), "'..' component", id="dotdot"),
    pytest.param(one(file("a/../../outside/evil")), "'..' component", id="nested-dotdot"),
    pytest.param(
        one(entry("innocent", data=b"evil", pax={"path": "../outside/evil"})),
        "'..' component",
        id="pax-path-dotdot",
    ),
    pytest.param(
        lambda box: [box.layer([entry("innocent", pax={"path": str(box.outside / "evil")})])],
        "absolute",
        id="pax-path-absolute",
    ),
    pytest.param(
        one(file(LONG_DOTDOT), tar_format=tarfile.GNU_FORMAT),
        "'..' component",
        id="gnu-longname-dotdot",
    ),
    pytest.param(one(file(NUL_NAME)), "NUL byte", id="pax-name-with-nul"),
    pytest.param(one(file(".")), "empty or names the root", id="name-dot"),
    pytest.param(one(file("")), "empty or names the root", id="name-empty"),
    pytest.param(one(entry("./", tarfile.DIRTYPE)), "names the root", id="dir-dot-slash"),
    # writing through symlinks
    pytest.param(
        lambda box: [box.layer([symlink("l", str(box.outside)), file("l/evil")])],
        "is a symlink",
        id="symlink-absolute-parent",
    ),
    pytest.param(one(symlink("l", "."), file("l/x")), "is a symlink", id="symlink-dot-parent"),
    pytest.param(
        lambda box: [
            box.layer([symlink("l2", str(box.outside)), symlink("l1", "l2"), file("l1/evil")])
        ],
        "is a symlink",
        id="symlink-chain",
    ),
    pytest.param(
        lambda box: [box.layer([symlink("a/b", str(box.outside)), file("a/b/c/evil")])],
        "is a symlink",
        id="symlink-mid-chain",
    ),
    pytest.param(
        through_link(lambda name: file(name, b"evil")), "is a symlink", id="symlink-earlier-layer"
    ),
    pytest.param(
        through_link(lambda name: entry(name, tarfile.DIRTYPE)),
        "is a symlink",
        id="dir-through-earlier-symlink",
    ),
    pytest.param(one(file("f"), file("f/x")), "is a file, not a directory", id="parent-is-file"),
    pytest.param(one(symlink("l", "")), "non-empty", id="symlink-empty-target"),
    # member types
    pytest.param(
        one(entry("passwd", tarfile.LNKTYPE, link="/etc/passwd")), "hard links", id="hardlink-etc"
    ),
    pytest.param(
        one(file("a", b"x"), entry("b", tarfile.LNKTYPE, link="a")),
        "hard links",
        id="hardlink-in-archive",
    ),
    pytest.param(one(entry("null", tarfile.CHRTYPE)), "character devices", id="char-device"),
    pytest.param(one(entry("sda", tarfile.BLKTYPE)), "block devices", id="block-device"),
    pytest.param(one(entry("fifo", tarfile.FIFOTYPE)), "FIFOs", id="fifo"),
    pytest.param(one(entry("c", tarfile.CONTTYPE, data=b"x")), "contiguous", id="contiguous"),
    pytest.param(
        one(entry("s", tarfile.GNUTYPE_SPARSE), tar_format=tarfile.GNU_FORMAT),
        "sparse",
        id="gnu-sparse",
    ),
    pytest.param(one(entry("s", data=b"x", pax=SPARSE_MAP)), "sparse", id="pax-sparse"),
    pytest.param(one(entry("v", b"Z")), "type b'Z'", id="unknown-type"),
    pytest.param(one(entry("s", pax=SPARSE_1_0_NO_MAP)), "malformed header", id="bad-sparse-map"),
    # whiteouts
    pytest.param(one(file(".wh..")), "may not name '.'", id="whiteout-dot"),
    pytest.param(one(file(".wh...")), "may not name '..'", id="whiteout-dotdot"),
    pytest.param(one(file("a/.wh.")), "may not name ''", id="whiteout-empty-target"),
    pytest.param(
        through_link(lambda name: file(name.replace("sentinel", ".wh.sentinel"))),
        "is a symlink",
        id="whiteout-through-symlink",
    ),
    pytest.param(one(file(".wh.x", b"data")), "empty regular file", id="whiteout-with-data"),
    pytest.param(one(symlink(".wh.x", "y")), "empty regular file", id="whiteout-symlink"),
    pytest.param(one(file("a"), file(".wh.b")), "before every other", id="whiteout-after-file"),
    pytest.param(one(file("d/.wh..wh..opq")), "opaque", id="opaque-whiteout"),
    # integrity
    pytest.param(flipped_second_layer, "tampered with", id="sha256-mismatch"),
    pytest.param(hostile_then_flipped, "tampered with", id="sha256-checked-first"),
    pytest.param(truncated_tar(lambda raw: 700), "truncated or corrupt", id="tar-cut-in-member"),
    pytest.param(truncated_tar(lambda raw: 1536), "end-of-archive", id="tar-cut-between-members"),
    pytest.param(truncated_tar(lambda raw: 2560 + 512), "end-of-archive", id="tar-one-zero-block"),
    pytest.param(truncated_zstd, "truncated", id="zstd-cut"),
    pytest.param(corrupt_zstd, "truncated or corrupt", id="zstd-bad-magic"),
    pytest.param(after(one(file("a")), b"junk"), "corrupt", id="zstd-trailing-garbage"),
    pytest.param(plain_tar, "corrupt", id="not-zstd"),
    pytest.param(lambda box: [box.raw_layer(b"")], "corrupt", id="empty-file"),
]


@pytest.mark.parametrize("old_dest", [False, True], ids=["no-dest", "old-dest"])
@pytest.mark.parametrize(("build", "reason"), HOSTILE)
def test_hostile_layer_is_refused(
    sandbox: Sandbox, build: Build, reason: str, old_dest: bool
) -> None:
    if old_dest:
        sandbox.dest.mkdir()
        (sandbox.dest / "marker").write_bytes(b"old tree")
    # A valid first layer makes sure staging holds files when the failure comes.
    layers = [sandbox.layer([file("benign.txt", b"fine")]), *build(sandbox)]
    before = snapshot(sandbox.root)
    with pytest.raises(ExtractError, match=re.escape(reason)):
        extract(layers, sandbox.dest)
    assert snapshot(sandbox.root) == before
    assert sandbox.dest.exists() == old_dest


def test_hostile_names_really_reach_the_reader(sandbox: Sandbox) -> None:
    """The tarfile writer must not have cleaned up the names the cases rely on."""
    names = {
        "pax-path": [entry("innocent", pax={"path": "../outside/evil"})],
        "gnu": [file(LONG_DOTDOT)],
        "nul": [file(NUL_NAME)],
    }
    formats = {"gnu": tarfile.GNU_FORMAT}
    seen = {}
    for key, entries in names.items():
        raw = tar_bytes(entries, formats.get(key, tarfile.PAX_FORMAT))
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar:
            seen[key] = [member.name for member in tar]
    assert seen == {"pax-path": ["../outside/evil"], "gnu": [LONG_DOTDOT], "nul": [NUL_NAME]}


# -- property: corrupt archives fail cleanly --------------------------------------------------

FUZZ_TARS = [
    tar_bytes(
        [
            file("é" * 60 + "/long/name.txt", b"hello" * 200, 0o755),
            symlink("link", "ü" * 120),
            file("x" * 120, b"z"),
        ]
    ),
    # tarfile parses GNU sparse maps before we can refuse them: a bad map must not escape.
    tar_bytes([entry("sparse", data=b"y", pax=SPARSE_MAP)]),
]


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.sampled_from(FUZZ_TARS),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupt_tar_fails_cleanly(tar: bytes, edits: list[tuple[int, int]]) -> None:
    raw = bytearray(tar)
    for position, value in edits:
        raw[position % len(raw)] = value
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        layer = write_layer(root / "layer.tar.zst", compress(bytes(raw)))
        try:
            extract([layer], root / "dest")
        except ExtractError:
            assert sorted(os.listdir(root)) == ["layer.tar.zst"]
        else:
            assert sorted(os.listdir(root)) == ["dest", "layer.tar.zst"]
