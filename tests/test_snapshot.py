"""Layers: determinism, base/clean equality, overlays, keys, round trips through extract."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard
from gitrepo_helpers import commit_all, git, make_repo

from konduktor import snapshot
from konduktor.extract import LayerRef, extract
from konduktor.selection import select

FILES = {
    "README.md": "# demo\n",
    "src/train.py": "print('train')\n",
    "src/model/net.py": "class Net: ...\n",
    "data/.keep": "",
    "big.bin": bytes(range(256)) * 4096,
    ".konduktorignore": "*.ckpt\n",
}


@pytest.fixture(autouse=True)
def konduktor_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "khome"
    monkeypatch.setenv("KONDUKTOR_HOME", str(home))
    return home


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path,
        FILES,
        symlinks={"link": "src/train.py", "abs": "/etc/hostname"},
        executable=["src/train.py"],
    )


def build(root: Path, out: Path, **kwargs: object) -> snapshot.SnapshotInfo:
    return snapshot.build(root, out=out, **kwargs)  # type: ignore[arg-type]


def layer_bytes(info: snapshot.SnapshotInfo) -> list[bytes]:
    return [layer.path.read_bytes() for layer in info.layers if layer.path]


def members(path: Path) -> list[tarfile.TarInfo]:
    with (
        path.open("rb") as f,
        zstandard.ZstdDecompressor().stream_reader(f) as reader,
        tarfile.open(fileobj=reader, mode="r|") as tar,
    ):
        return list(tar)


def tree(root: Path) -> dict[str, tuple[str, object]]:
    """Everything under root except .git: path -> (kind, content or target) with exec bit."""
    found: dict[str, tuple[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.islink(full):
                found[rel] = ("link", os.readlink(full))
            else:
                mode = os.stat(full).st_mode
                found[rel] = ("x" if mode & stat.S_IXUSR else "f", Path(full).read_bytes())
    return found


def expected_tree(root: Path) -> dict[str, tuple[str, object]]:
    """The selection of root, read from disk, in the same shape as tree()."""
    everything = tree(root)
    return {p: everything[p] for p in select(root).paths()}


def roundtrip(info: snapshot.SnapshotInfo, dest: Path) -> dict[str, tuple[str, object]]:
    refs = [LayerRef(layer.path, layer.sha256) for layer in info.layers if layer.path]
    extract(refs, dest)
    return tree(dest)


# -- format ----------------------------------------------------------------------------------


def test_members_are_sorted_normalised_and_owned_by_nobody(repo: Path, tmp_path: Path) -> None:
    info = build(repo, tmp_path / "out")
    assert [layer.kind for layer in info.layers] == ["base"]
    found = members(info.layers[0].path)  # type: ignore[arg-type]
    names = [m.name for m in found]
    assert names == sorted(names, key=os.fsencode)
    assert "src/train.py" in names
    assert ".git" not in {n.split("/")[0] for n in names}
    for m in found:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.isfile() or m.issym()
        if m.isfile():
            assert m.mode in (0o644, 0o755)
    assert {m.name: m.mode for m in found if m.isfile()}["src/train.py"] == 0o755
    assert {m.name: m.linkname for m in found if m.issym()} == {
        "abs": "/etc/hostname",
        "link": "src/train.py",
    }


def test_manifest_describes_the_layer(repo: Path, tmp_path: Path) -> None:
    info = build(repo, tmp_path / "out")
    layer = info.layers[0]
    assert layer.path is not None
    manifest = json.loads(layer.path.with_name(layer.path.name[:-8] + ".json").read_text())
    assert manifest["format"] == snapshot.FORMAT_VERSION
    assert manifest["kind"] == "base"
    assert manifest["key"] == layer.key
    assert manifest["commit"] == git(repo, "rev-parse", "HEAD").decode().strip()
    assert manifest["dirty"] is False
    assert manifest["base"] is None
    assert manifest["sha256"] == hashlib.sha256(layer.path.read_bytes()).hexdigest()
    entries = {e["path"]: e for e in manifest["entries"]}
    assert entries["big.bin"]["sha256"] == hashlib.sha256(FILES["big.bin"]).hexdigest()  # type: ignore[arg-type]
    assert entries["big.bin"]["size"] == len(FILES["big.bin"])
    assert entries["src/train.py"]["mode"] == "0755"
    assert entries["link"]["target"] == "src/train.py"


# -- determinism -----------------------------------------------------------------------------


def test_same_inputs_give_identical_bytes_despite_mtime_mode_and_umask_noise(
    repo: Path, tmp_path: Path
) -> None:
    (repo / "new.txt").write_text("untracked\n")
    (repo / "README.md").write_text("# changed\n")
    first = layer_bytes(build(repo, tmp_path / "a"))
    for path in (repo / "src/train.py", repo / "README.md", repo / "new.txt"):
        os.utime(path, (1, 1))
    os.chmod(repo / "README.md", 0o664)
    os.chmod(repo / "new.txt", 0o600)
    old = os.umask(0o077)
    try:
        second = layer_bytes(build(repo, tmp_path / "b"))
    finally:
        os.umask(old)
    assert len(first) == 2
    assert first == second


def test_base_from_commit_equals_clean_work_tree_snapshot(repo: Path, tmp_path: Path) -> None:
    from_tree = build(repo, tmp_path / "tree", commit="HEAD")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    from_clean = build(clone, tmp_path / "clean")
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    from_bare = build(bare, tmp_path / "bare", commit="HEAD")
    assert [layer.kind for layer in from_clean.layers] == ["base"]
    assert layer_bytes(from_tree) == layer_bytes(from_clean) == layer_bytes(from_bare)
    assert from_tree.layers[0].key == from_clean.layers[0].key == from_bare.layers[0].key


def test_work_tree_file_edited_after_status_never_enters_the_base(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base is keyed by its commit forever: bytes read from disk are checked against git."""
    real_plan = snapshot.plan

    def plan_then_edit(*args: object, **kwargs: object) -> snapshot.Plan:
        result = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        (repo / "README.md").write_text("# edited behind git's back\n")
        return result

    monkeypatch.setattr(snapshot, "plan", plan_then_edit)
    racy = build(repo, tmp_path / "racy")
    monkeypatch.undo()
    reference = build(repo, tmp_path / "ref", commit="HEAD")
    assert layer_bytes(racy)[0] == layer_bytes(reference)[0]


# -- keys ------------------------------------------------------------------------------------


def test_base_key_depends_on_commit_and_root_not_contents(repo: Path, tmp_path: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    key = snapshot.keys(repo).layers[0]
    assert key[0] == "base"
    assert head in key[1]
    sub = snapshot.keys(repo / "src").layers[0][1]
    assert head in sub
    assert sub != key[1]
    (repo / "README.md").write_text("dirty\n")
    assert snapshot.keys(repo).layers[0] == key
    assert snapshot.keys(repo, level=5).layers[0] != key


def test_base_key_is_the_same_in_every_clone(repo: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert snapshot.keys(clone).layers == snapshot.keys(repo).layers


def test_overlay_key_follows_content_and_cache_sees_second_edit(repo: Path) -> None:
    (repo / "README.md").write_text("one\n")
    first = snapshot.keys(repo)
    assert first.dirty
    assert [k for k, _ in first.layers] == ["base", "overlay"]
    assert snapshot.keys(repo) == first  # cached: nothing changed
    # Same git status output as before, different content: the key must change.
    (repo / "README.md").write_text("two\n")
    second = snapshot.keys(repo)
    assert second.layers[1] != first.layers[1]
    (repo / "README.md").write_text("one\n")
    assert snapshot.keys(repo).layers[1] == first.layers[1]


def test_keys_match_the_built_layers(repo: Path, tmp_path: Path) -> None:
    (repo / "src/model/net.py").unlink()
    (repo / "extra.py").write_text("x = 1\n")
    info = build(repo, tmp_path / "out")
    assert snapshot.keys(repo).layers == tuple((layer.kind, layer.key) for layer in info.layers)


def test_clean_work_tree_has_no_overlay_and_untracked_ignored_file_changes_nothing(
    repo: Path,
) -> None:
    (repo / "model.ckpt").write_bytes(b"\0" * 100)
    result = snapshot.keys(repo)
    assert not result.dirty
    assert len(result.layers) == 1


# -- overlays round trip ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        "modify",
        "add_untracked",
        "delete",
        "rename_staged",
        "exec_flip",
        "symlink_retarget",
        "file_becomes_dir",
        "dir_becomes_file",
        "konduktorignore_edited",
        "staged_only",
    ],
)
def test_base_plus_overlay_reproduces_the_work_tree_selection(
    repo: Path, tmp_path: Path, change: str
) -> None:
    apply_change(repo, change)
    info = build(repo, tmp_path / "out")
    assert info.dirty
    assert [layer.kind for layer in info.layers] == ["base", "overlay"]
    assert roundtrip(info, tmp_path / "dest") == expected_tree(repo)


def apply_change(repo: Path, change: str) -> None:
    if change == "modify":
        (repo / "src/train.py").write_text("print('changed')\n")
    elif change == "add_untracked":
        (repo / "notes/todo.txt").parent.mkdir()
        (repo / "notes/todo.txt").write_text("todo\n")
    elif change == "delete":
        (repo / "src/model/net.py").unlink()
    elif change == "rename_staged":
        git(repo, "mv", "README.md", "DOCS.md")
    elif change == "exec_flip":
        os.chmod(repo / "README.md", 0o755)
    elif change == "symlink_retarget":
        (repo / "link").unlink()
        os.symlink("README.md", repo / "link")
    elif change == "file_becomes_dir":
        (repo / "README.md").unlink()
        (repo / "README.md").mkdir()
        (repo / "README.md/inner.txt").write_text("inner\n")
    elif change == "dir_becomes_file":
        for p in (repo / "src/model").iterdir():
            p.unlink()
        (repo / "src/model").rmdir()
        (repo / "src/model").write_text("now a file\n")
    elif change == "konduktorignore_edited":
        (repo / ".konduktorignore").write_text("*.ckpt\nbig.bin\n")
    elif change == "staged_only":
        (repo / "staged.txt").write_text("staged\n")
        git(repo, "add", "staged.txt")


def test_overlay_holds_only_changes_and_whiteouts(repo: Path, tmp_path: Path) -> None:
    (repo / "src/train.py").write_text("print('changed')\n")
    (repo / "src/model/net.py").unlink()
    info = build(repo, tmp_path / "out")
    overlay = info.layers[1]
    assert overlay.path is not None
    assert [m.name for m in members(overlay.path)] == ["src/model/.wh.net.py", "src/train.py"]
    assert overlay.files == 1


def test_plain_directory_is_one_full_layer_round_trip(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    for rel, content in {**FILES, ".gitignore": "*.log\n", "x.log": "no", "y.ckpt": "no"}.items():
        (plain / rel).parent.mkdir(parents=True, exist_ok=True)
        (plain / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    os.symlink("README.md", plain / "link")
    info = build(plain, tmp_path / "out")
    assert info.commit is None
    assert [layer.kind for layer in info.layers] == ["full"]
    assert info.layers[0].key.startswith("objects/")
    got = roundtrip(info, tmp_path / "dest")
    assert got == expected_tree(plain)
    assert "x.log" not in got
    assert "y.ckpt" not in got
    assert "link" in got


def test_repository_without_commits_is_one_full_dirty_layer(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.py": "a\n"}, commit=False)
    info = build(repo, tmp_path / "out")
    assert info.commit is None
    assert info.dirty
    assert [layer.kind for layer in info.layers] == ["full"]
    assert roundtrip(info, tmp_path / "dest") == {"a.py": ("f", b"a\n")}


def test_sync_root_in_subdirectory(repo: Path, tmp_path: Path) -> None:
    (repo / "src/new.py").write_text("new\n")
    info = build(repo / "src", tmp_path / "out")
    assert roundtrip(info, tmp_path / "dest") == expected_tree(repo / "src")
    assert "new.py" in tree(tmp_path / "dest")


def test_non_utf8_and_odd_names_round_trip(tmp_path: Path) -> None:
    odd = {
        os.fsdecode(b"caf\xe9.txt"): "latin-1 name\n",
        "with space/and\nnewline.txt": "odd\n",
        "deep/" * 30 + "long-name-" + "x" * 120 + ".py": "long\n",
    }
    repo = make_repo(tmp_path, odd)
    (repo / os.fsdecode(b"untracked-\xff.txt")).write_text("dirty\n")
    info = build(repo, tmp_path / "out")
    assert roundtrip(info, tmp_path / "dest") == expected_tree(repo)


def test_build_failure_leaves_no_output(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "src/train.py").write_text("dirty\n")
    out = tmp_path / "out"
    calls = {"n": 0}

    def fail_late(*args: object, **kwargs: object) -> str:
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot, "content_key", fail_late)
    with pytest.raises(KeyboardInterrupt):
        build(repo, out)
    assert calls["n"] == 1  # it failed after the base layer was written, not before
    assert list(out.iterdir()) == []


def test_commit_selection_reads_no_work_tree(repo: Path, tmp_path: Path) -> None:
    commit_all(repo, "second")
    for child in repo.iterdir():
        if child.name != ".git":
            if child.is_dir() and not child.is_symlink():
                import shutil

                shutil.rmtree(child)
            else:
                child.unlink()
    info = build(repo, tmp_path / "out", commit="HEAD")
    got = roundtrip(info, tmp_path / "dest")
    assert got["big.bin"] == ("f", FILES["big.bin"])
    assert got["src/train.py"][0] == "x"


def test_eol_conversion_keeps_the_base_equal_to_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With checkout filters the work tree's bytes differ from the blobs: read git objects."""
    monkeypatch.setattr(snapshot, "_CLOCK_MARGIN_NS", -(10**12))  # trust every fresh file
    repo = make_repo(tmp_path, {".gitattributes": "*.txt text eol=crlf\n", "a.txt": "one\ntwo\n"})
    (repo / "a.txt").unlink()
    git(repo, "checkout", "--", "a.txt")
    assert (repo / "a.txt").read_bytes() == b"one\r\ntwo\r\n"
    from_clean = build(repo, tmp_path / "clean")
    from_tree = build(repo, tmp_path / "tree", commit="HEAD")
    assert [layer.kind for layer in from_clean.layers] == ["base"]
    assert layer_bytes(from_clean) == layer_bytes(from_tree)


def test_repo_id_is_cached_per_commit_and_shallow_clones_differ(
    repo: Path, tmp_path: Path, konduktor_home: Path
) -> None:
    from konduktor.gitrepo import Repo

    commit_all(repo, "second")
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    full = Repo.discover(repo)
    assert full is not None
    repo_id = full.repo_id(head)
    cached = json.loads((konduktor_home / "cache" / "repo-ids.json").read_text())
    assert cached == {head: repo_id}
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    (konduktor_home / "cache" / "repo-ids.json").unlink()
    other = Repo.discover(shallow)
    assert other is not None
    assert other.repo_id(head) != repo_id  # documented: the boundary stands in for the roots
