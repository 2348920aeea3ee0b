"""The launch plan: everything a pod needs to fetch, verify and place, as one JSON file.

The launcher writes it to the store (:func:`konduktor.layout.plan`) before it submits;
the pod startup script is rendered from it (:func:`konduktor.pod.render`). Keys are
relative to the store URL; ``https`` is a presigned URL when the store can sign.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from konduktor.task import WORKDIR_TARGET

FORMAT = 1
TO_UPLOAD = "(to upload)"  # a dry run's digest of a layer not built yet: never submitted


@dataclass(frozen=True)
class Layer:
    key: str  # the store key (konduktor.layout), relative to the store URL
    kind: str  # base, overlay or full
    sha256: str  # of the compressed bytes
    size: int
    members: int  # bounds the pod checks before extracting: the tar's member count
    tar_bytes: int  # and its exact uncompressed size
    https: str | None = None


@dataclass(frozen=True)
class Tree:
    """A directory in the pod made from layers: the workdir or a directory mount."""

    target: str  # ~/konduktor_workdir, ~/test_dir, /data/x
    source: str  # the local directory it was taken from
    commit: str | None
    dirty: bool
    layers: tuple[Layer, ...]

    @property
    def id(self) -> str:
        """Names this tree's content: what a restarted container compares to skip work."""
        keys = "\n".join([self.commit or "", *(layer.key for layer in self.layers)])
        return hashlib.sha256(keys.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class File:
    """A single local file mounted at *target*; its object is content-addressed."""

    target: str
    source: str
    key: str  # the store key of the content-addressed object
    sha256: str
    size: int
    mode: int  # permission bits, kept from the local file (a 0600 key stays 0600)
    https: str | None = None


@dataclass(frozen=True)
class Bucket:
    """A bucket URL mounted as is: fetched by the pod with its own credentials."""

    target: str
    url: str


@dataclass(frozen=True)
class GitCheckout:
    """Git mode: the workdir is cloned from *url* at *commit*, then its overlay applied."""

    url: str
    branch: str
    commit: str
    known_hosts: str  # the remote host's keys, pinned: the pod checks against exactly these
    key: str  # the private key's path in the pod (a file mount or the mounted Secret)
    submodules: bool = False


@dataclass(frozen=True)
class LaunchPlan:
    job: str
    store: str  # the store URL; object URLs are f"{store}/{key}"
    run: str
    setup: str = ""  # run before run:, in the workdir; if it fails, run: does not start
    trees: tuple[Tree, ...] = ()
    files: tuple[File, ...] = ()
    buckets: tuple[Bucket, ...] = ()
    git: GitCheckout | None = None
    endpoint_url: str | None = None  # S3-compatible store or GCS emulator
    region: str | None = None
    tool: str = ""
    format: int = field(default=FORMAT)

    @property
    def workdir(self) -> Tree | None:
        return next((t for t in self.trees if t.target == WORKDIR_TARGET), None)

    def provenance(self) -> dict[str, str]:
        """Commit, dirty flag and snapshot id of the workdir, and every layer's digest."""
        work = self.workdir
        digests = [layer.sha256 for tree in self.trees for layer in tree.layers]
        digests += [f.sha256 for f in self.files]
        out = {
            "git-commit": (work.commit or "") if work else "",
            "git-dirty": str(bool(work and work.dirty)).lower(),
            "snapshot": work.id if work else "",
            "layers": ",".join(digests),
        }
        if self.git:
            out.update({"git-remote": self.git.url, "git-branch": self.git.branch})
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LaunchPlan:
        data: dict[str, Any] = json.loads(text)
        data["trees"] = tuple(
            Tree(**{**t, "layers": tuple(Layer(**la) for la in t["layers"])})
            for t in data.get("trees", ())
        )
        data["files"] = tuple(File(**f) for f in data.get("files", ()))
        data["buckets"] = tuple(Bucket(**b) for b in data.get("buckets", ()))
        data["git"] = GitCheckout(**data["git"]) if data.get("git") else None
        return cls(**data)
