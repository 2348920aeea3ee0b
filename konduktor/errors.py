"""Exceptions raised by konduktor.

Every error the user can cause or fix is a :class:`KonduktorError`; its message
says what failed, on which object, and what to do next. The CLI prints it as
``error: <message>`` and exits 1.

    KonduktorError
    ├── UsageError        bad arguments or paths given by the user
    ├── GitError          a git command or repository read failed
    ├── SelectionError    a file could not be read while selecting or archiving
    └── ExtractError      a layer is corrupt, tampered with or hostile
"""

from __future__ import annotations


class KonduktorError(Exception):
    """Base of every error konduktor raises on purpose."""


class UsageError(KonduktorError):
    """The user asked for something that cannot be done as asked."""


class GitError(KonduktorError):
    """A git operation failed."""


class SelectionError(KonduktorError):
    """A selected file could not be read or changed while it was read."""


class ExtractError(KonduktorError):
    """A layer failed verification or holds a member that may not be extracted."""
