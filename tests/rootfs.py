"""Root file systems of real images, built from Debian's packages, for the pod script.

- ``minbase``: ``debootstrap --variant=minbase bookworm``, the ``ubuntu`` case: no curl,
  no CA certificates, no python3, no zstd;
- ``python``: minbase plus python3-minimal and python3-zstandard, the ``python:slim``
  case with zstandard: no curl, no zstd binary;
- ``busybox``: busybox's applets only, plus zstd (as ``apk add zstd`` gives on Alpine).

They are built once and kept in ``KONDUKTOR_ROOTFS_CACHE`` (default
``/var/tmp/konduktor-rootfs``) between test sessions; each test gets its own copy,
which the script may change (it installs packages as root). Running the script in one
needs root (chroot); without root or debootstrap the tests skip, and on CI they fail.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from conftest import missing_on_this_machine

CACHE = Path(os.environ.get("KONDUKTOR_ROOTFS_CACHE", "/var/tmp/konduktor-rootfs"))
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
USER = 1000  # the unprivileged container user
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (to chroot)")
    if not shutil.which("debootstrap"):
        missing.append("debootstrap (apt-get install debootstrap)")
    if missing:
        missing_on_this_machine(f"the image tests need {' and '.join(missing)}")


def cached(kind: str) -> Path:
    """The root file system *kind*, built on first use."""
    require()
    root = CACHE / kind
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        {"minbase": _minbase, "python": _python, "busybox": _busybox}[kind](root)
        (root / ".complete").touch()
    return root


def fresh(kind: str, where: Path) -> Path:
    """A copy of the root *kind* that a test may change, with a HOME for USER."""
    root = where / f"root-{kind}"
    subprocess.run(["cp", "-a", str(cached(kind)), str(root)], check=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")  # apt-get, as root
    home = root / "home" / "k"
    home.mkdir(parents=True)
    os.chown(home, USER, USER)
    return root


def run(root: Path, script: str, *, user: bool) -> subprocess.CompletedProcess[str]:
    """Run *script* (its text) with sh inside *root*, as root or as USER, HOME=/home/k."""
    (root / "startup.sh").write_text(script)
    who = [f"--userspec={USER}:{USER}"] if user else []
    env = ["env", "-i", f"PATH={PATH}", "HOME=/home/k", "KONDUKTOR_CREDENTIALS_DIR=/none"]
    return subprocess.run(
        ["chroot", *who, str(root), *env, "/bin/sh", "/startup.sh"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _chroot(root: Path, command: str) -> None:
    subprocess.run(["chroot", str(root), "/bin/sh", "-c", command], check=True, timeout=600)


def _minbase(root: Path) -> None:
    subprocess.run(
        ["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    for gone in ("curl", "wget", "python3", "zstd"):  # what the ubuntu image lacks
        assert not (root / "usr" / "bin" / gone).exists(), gone


def _python(root: Path) -> None:
    subprocess.run(["cp", "-a", str(cached("minbase")), str(root)], check=True)
    (root / ".complete").unlink()
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    _chroot(
        root,
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends python3-minimal python3-zstandard >/dev/null && apt-get clean",
    )


def _busybox(root: Path) -> None:
    """busybox and its applets, zstd, and the shared libraries both need: nothing else."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for program in ("busybox", "zstd"):
        _copy_with_libraries(Path(shutil.which(program) or program), root)
    applets = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if not (bin_dir / applet).exists():
            (bin_dir / applet).symlink_to("busybox")
    for directory in ("tmp", "dev", "etc", "home"):
        (root / directory).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "dev" / "null").chmod(0o666)


def _copy_with_libraries(program: Path, root: Path) -> None:
    shutil.copy2(program, root / "bin" / program.name)
    listed = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True)
    for line in listed.stdout.splitlines():
        library = next((part for part in line.split() if part.startswith("/")), None)
        if library is None:
            continue
        target = root / library.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy2(os.path.realpath(library), target)
