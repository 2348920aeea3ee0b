"""Exceptions raised by konduktor.

Every error the user can cause or fix is a :class:`KonduktorError`; its message
says what failed, on which object, and what to do next. The CLI prints it as
``error: <message>`` and exits with the class's :attr:`~KonduktorError.exit_code`.

    KonduktorError
    ├── UsageError        bad arguments or paths given by the user (exit 2, as click's)
    ├── AbortedError      the user answered "no" when asked to go on
    ├── GitError          a git command or repository read failed
    ├── SelectionError    a file could not be read while selecting or archiving
    ├── ExtractError      a layer is corrupt, tampered with or hostile
    │   └── RefusedMemberError  a member breaks an extraction rule (named with its layer)
    ├── ConfigError       ~/.konduktor/config.yaml is invalid
    ├── TaskError         a task file is invalid
    ├── ClusterError      the Kubernetes API is unreachable or refused a request
    ├── JobError          no job, or more than one, answers to a name; a job vanished
    ├── SetupError        this machine cannot do the work (TMPDIR missing or full)
    └── StorageError      an object store operation failed
        ├── NotFoundError          the object or bucket does not exist
        │   └── MissingKeyError    the key does not exist (backends: a normal answer)
        ├── PermissionDeniedError  the credentials may not do this
        ├── SourceChangedError     a file changed while it was uploaded (the key stays free)
        ├── ConflictError          a key holds different content than the one being written
        │   └── KeyTakenError      a create-only write lost to another writer (the store retries)
        └── TransientError         the store stayed unreachable after retries

Exit codes of the ``konduktor`` command:

    0    success
    1    a KonduktorError (other than UsageError), "aborted" at a prompt included
    2    a usage error: bad options or arguments (UsageError, and click's own)
    3    an unexpected error, a bug: rerun with -v for the traceback
    130  interrupted (Ctrl-C); 143 on SIGTERM, 129 on SIGHUP (both handled as Ctrl-C is:
         uploads in flight are aborted and scratch files removed before the exit)
    N    `launch` without -d (a cluster's job or --local): the exit code of the task itself
A pod whose startup script cannot sync its files exits 97 before `run:` starts.
"""

from __future__ import annotations

from typing import ClassVar


class KonduktorError(Exception):
    """Base of every error konduktor raises on purpose."""

    exit_code: ClassVar[int] = 1


EXIT_INTERRUPTED = 130  # Ctrl-C; signal N ends a command with 128 + N


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so that every cleanup a Ctrl-C
    runs (aborting uploads, removing scratch files) runs for them too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class UsageError(KonduktorError):
    """The user asked for something that cannot be done as asked."""

    exit_code: ClassVar[int] = 2


class AbortedError(KonduktorError):
    """The user declined to go on when asked."""


class GitError(KonduktorError):
    """A git operation failed."""


class SelectionError(KonduktorError):
    """A selected file could not be read or changed while it was read."""


class ExtractError(KonduktorError):
    """A layer failed verification or holds a member that may not be extracted."""


class RefusedMemberError(ExtractError):
    """A layer member breaks an extraction rule; the member loop re-raises it as an
    ExtractError naming the layer and the member."""


class ConfigError(KonduktorError):
    """The configuration file is invalid."""


class TaskError(KonduktorError):
    """A task file is invalid; the message names the file, the key path and the fix."""


class StorageError(KonduktorError):
    """An object store operation failed."""


class NotFoundError(StorageError):
    """The object, or the bucket, does not exist."""


class MissingKeyError(NotFoundError):
    """The key (or, from an S3 HEAD, the bucket) does not exist: a store backend answers
    None where that is a normal case (head, stream, delete)."""


class PermissionDeniedError(StorageError):
    """The credentials in use may not do this."""


class SourceChangedError(StorageError):
    """The file being uploaded changed while it was read: its bytes are not those of the
    sha256 the key was named by, so the upload was aborted and the key left free."""


class ConflictError(StorageError):
    """A key already holds content other than what is being written (keys are immutable)."""


class KeyTakenError(ConflictError):
    """A create-only write found the key created by another writer, or being created."""


class TransientError(StorageError):
    """The store could not be reached, or kept failing, after retries."""


class SetupError(KonduktorError):
    """This machine's setup cannot do the work: TMPDIR is missing, unwritable or full."""


class ClusterError(KonduktorError):
    """The Kubernetes API could not be reached, or refused a request."""


class JobError(KonduktorError):
    """No job, or more than one, answers to a name; or the followed job was deleted."""
