"""The pod startup script (DESIGN §7), rendered from a launch plan: plan in, text out.

``startup.sh`` holds the fixed functions; :func:`render` appends the calls that
the plan dictates, every value quoted for ``sh``. The script exits with
:data:`SYNC_FAILED` and one ``konduktor: sync failed: ...`` line on stderr when
anything before ``setup:`` and ``run:`` fails; a failing ``setup:`` ends it with its own
exit code, ``run:`` not started.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from importlib import resources

from konduktor.plan import TO_UPLOAD, File, LaunchPlan

SYNC_FAILED = 97
_TEMPLATE = resources.files(__package__).joinpath("startup.sh")


def render(plan: LaunchPlan) -> str:
    """The whole script for *plan*; pure (the same plan gives the same text)."""
    q = shlex.quote
    lines = [_TEMPLATE.read_text(), "# --- from the launch plan ---"]
    if plan.endpoint_url:
        lines.append(f"export K_ENDPOINT={q(plan.endpoint_url)}")
    if plan.region:
        lines.append(f"export K_REGION={q(plan.region)}")
    lines.append("k_start")
    # Files first (git mode's key may be one), except those inside a tree, which would
    # be replaced with it.
    roots = [t.target.rstrip("/") + "/" for t in plan.trees]
    inside = [f for f in plan.files if f.target.startswith(tuple(roots))]
    lines += [_file(plan, f) for f in plan.files if f not in inside]
    for tree in sorted(plan.trees, key=lambda t: t.target.count("/")):
        lines.append(f"k_tree {_path(tree.target)} {_mark(tree.id, tree.target)}")
        if plan.git and tree is plan.workdir:
            g = plan.git
            lines.append(
                f"k_known_hosts <<'KONDUKTOR_KNOWN_HOSTS'\n{g.known_hosts}KONDUKTOR_KNOWN_HOSTS"
            )
            lines.append(
                f"k_git {q(g.url)} {q(g.branch)} {g.commit} {_path(g.key)} {int(g.submodules)}"
            )
        lines += [
            f"k_layer {q(_url(plan, la.key))} {q(la.https or '')} {_digest(la.sha256)} "
            f"{la.members:d} {la.tar_bytes:d} {la.size:d} {q(la.kind)}"
            for la in tree.layers
        ]
        lines.append("k_place")
    lines += [_file(plan, f) for f in inside]
    for b in plan.buckets:
        lines.append(f"k_bucket {_path(b.target)} {q(b.url)} {_mark(b.url, b.target)}")
    provenance = plan.provenance()
    lines.append(
        f"export KONDUKTOR_GIT_COMMIT={q(provenance['git-commit'])}"
        f" KONDUKTOR_GIT_DIRTY={provenance['git-dirty']}"
        f" KONDUKTOR_SNAPSHOT={q(provenance['snapshot'])}"
    )
    lines.append(_script("run", plan.run))
    if plan.setup.strip():
        lines.append(_script("setup", plan.setup))
        lines.append('k_run "$K_STATE/run.sh" "$K_STATE/setup.sh"')
    else:
        lines.append('k_run "$K_STATE/run.sh"')
    return "\n".join(lines) + "\n"


def _script(name: str, text: str) -> str:
    """The lines that write *text* (``run:`` or ``setup:``) to ``$K_STATE/<name>.sh``, as a
    here-document whose end marker the text cannot hold (it is named after its digest)."""
    end = f"KONDUKTOR_{name.upper()}_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    body = text if text.endswith("\n") else text + "\n"
    path = f"$K_STATE/{name}.sh"
    return f'cat >"{path}" <<\'{end}\' || k_fail "cannot write {path}"\n{body}{end}'


def _file(plan: LaunchPlan, f: File) -> str:
    q = shlex.quote
    url = _url(plan, f.key)
    sha256 = _digest(f.sha256)
    return f"k_file {_path(f.target)} {q(url)} {q(f.https or '')} {sha256} {f.mode:o} {f.size:d}"


def _digest(sha256: str) -> str:
    """A sha256 the launcher computed (DESIGN §4's trust rule): 64 hex digits, nothing else
    (a dry run shows its placeholder for layers not built yet)."""
    if sha256 == TO_UPLOAD:
        return shlex.quote(sha256)
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a sha256 the launcher computed: {sha256!r}")
    return sha256


def _path(target: str) -> str:
    """*target* for sh: ``~`` is the container user's $HOME, expanded in the pod."""
    if target == "~":
        return '"$HOME"'
    if target.startswith("~/"):
        return '"$HOME"/' + shlex.quote(target[2:])
    return shlex.quote(target)


def _url(plan: LaunchPlan, key: str) -> str:
    return f"{plan.store.rstrip('/')}/{key}"


def _mark(content: str, target: str) -> str:
    """A file name saying: this content was placed at this target."""
    return hashlib.sha256(f"{content}\0{target}".encode()).hexdigest()[:24]
