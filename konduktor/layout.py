"""The store layout (DESIGN §5): every key konduktor reads or writes is built and parsed here.

Under the store URL::

    v1/bases/<repo-id>/<commit>/<root-id>.tar.zst   base layers, keyed by commit
    v1/objects/<xx>/<sha256>.tar.zst                overlays and full layers (content-addressed)
    v1/objects/<xx>/<sha256>                        single mounted files (content-addressed)
    v1/plans/<job>.json                             launch plans, what a pod fetches
    v1/used/<name>                                  last-used markers, for gc
    v1/locks/<name>                                 upload locks: who is uploading <name>
    v1/check/probe-<stamp>                          `konduktor check`'s write probe

An object's :class:`Name` is its path below ``v1/``: manifests and ``store ls`` show it,
and ``--out`` file names are made from it; :attr:`Name.key` is the key in the store. No
other module spells these prefixes or slices a key.
"""

from __future__ import annotations

VERSION = "v1"
_ROOT = f"{VERSION}/"
_BASES = "bases/"
_OBJECTS = "objects/"
USED = f"{_ROOT}used/"  # the prefix of every last-used marker
PLANS = f"{_ROOT}plans/"
LOCKS = f"{_ROOT}locks/"  # the prefix of every upload lock (never a layer: see LAYER_PREFIXES)
LAYER_PREFIXES = (f"{_ROOT}{_BASES}", f"{_ROOT}{_OBJECTS}")  # where layers (and files) live


class Name(str):
    """A stored object's name inside the layout, e.g. ``bases/<repo>/<commit>/<root>.tar.zst``.

    A ``str``, so that it prints and compares as the name users see; typed, so that a
    plain string cannot be passed where a name (not a store key) is meant.
    """

    __slots__ = ()

    @property
    def key(self) -> str:
        """The object's key in the store."""
        return _ROOT + self

    @property
    def used(self) -> str:
        """The key of its last-used marker."""
        return USED + self

    @property
    def lock(self) -> str:
        """The key of its upload lock (``Store.put(..., lock=name.lock)``)."""
        return LOCKS + self

    @property
    def is_base(self) -> bool:
        return self.startswith(_BASES)

    @property
    def commit(self) -> str | None:
        """The commit a base layer is keyed by; None for content-addressed objects."""
        return self.split("/")[2] if self.is_base else None

    def out_name(self, kind: str) -> str:
        """The file name (no extension) ``snapshot --out`` gives the layer: it says which layer
        it is, ``base-<commit[:12]>-<root-id[:8]>`` or ``<kind>-<sha256[:12]>`` (an overlay or
        a full layer), and sorts a snapshot's base before its overlay."""
        parts = self.removesuffix(".tar.zst").split("/")
        if self.is_base and len(parts) == 4:
            return f"base-{parts[2][:12]}-{parts[3][:8]}"
        return f"{kind}-{parts[-1][:12]}"


def base(repo_id: str, commit: str, root_id: str) -> Name:
    return Name(f"{_BASES}{repo_id}/{commit}/{root_id}.tar.zst")


def layer(digest: str) -> Name:
    """A content-addressed layer (overlay or full), named by its manifest core's sha256."""
    return Name(f"{_OBJECTS}{digest[:2]}/{digest}.tar.zst")


def file(digest: str) -> Name:
    """A single mounted file, named by its content's sha256."""
    return Name(f"{_OBJECTS}{digest[:2]}/{digest}")


def plan(job: str) -> str:
    return f"{PLANS}{job}.json"


def probe(stamp: str) -> str:
    return f"{_ROOT}check/probe-{stamp}"


def parse(key: str) -> Name:
    """The name of the store key *key*; ValueError when it is not in this layout."""
    if not key.startswith(_ROOT):
        raise ValueError(f"{key!r} is not a {VERSION} key")
    return Name(key[len(_ROOT) :])


def parse_used(key: str) -> Name:
    """The name a last-used marker *key* stands for."""
    if not key.startswith(USED):
        raise ValueError(f"{key!r} is not a last-used marker")
    return Name(key[len(USED) :])
