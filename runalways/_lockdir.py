"""The private directory for the lock files runalways creates itself.

Used for locks known by a name (``--name``, ``runalways run``), never for the script
itself. The directory is ``RUNALWAYS_DIR`` if set, else ``$XDG_RUNTIME_DIR/runalways``,
else ``<tmp>/runalways-<uid>``; it is created 0700 and refused when another user owns
it or may write to it. A lock file in a directory others can write to can be planted,
swapped for a symlink or held by them (filelock CVE-2025-68146, tendo's /tmp names).
Lock files are created 0600 with O_NOFOLLOW and never deleted: unlinking a lock file on
release is the race that let two copies run in tendo, filelock, portalocker and fasteners.
"""

from __future__ import annotations

import hashlib
import os
import stat

from runalways.errors import SettingError


def directory() -> str:
    chosen = os.environ.get("RUNALWAYS_DIR")
    if chosen:
        return _ensure(chosen, "RUNALWAYS_DIR")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _safe(runtime):
        return _ensure(os.path.join(runtime, "runalways"), "the lock directory")
    tmp = os.environ.get("TMPDIR") or "/tmp"
    if not os.path.isdir(tmp):
        tmp = "/tmp"
    return _ensure(os.path.join(tmp, f"runalways-{os.getuid()}"), "the lock directory")


def _safe(path: str) -> bool:
    try:
        return _problem(os.lstat(path)) is None
    except OSError:
        return False


def _problem(status: os.stat_result) -> str | None:
    if not stat.S_ISDIR(status.st_mode):
        return "is not a directory (a symbolic link is refused)"
    if status.st_uid not in (os.getuid(), 0):
        return f"belongs to another user (uid {status.st_uid})"
    if status.st_mode & 0o022:
        return f"can be written by other users (mode {stat.S_IMODE(status.st_mode):04o})"
    return None


def _ensure(path: str, what: str) -> str:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise SettingError(
            f"cannot create {what} {path!r}: {error.strerror}; set RUNALWAYS_DIR to a private directory"
        ) from None
    problem = _problem(os.lstat(path))
    if problem is not None:
        raise SettingError(
            f"{what} {path!r} {problem}; lock files there could be planted or held by others: "
            "set RUNALWAYS_DIR to a directory only you can write to"
        )
    return path


def lock_file_for(name: str) -> str:
    """``<dir>/<readable part of name>-<hash>.lock``: distinct names never share a file."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_.")[-48:]
    return os.path.join(directory(), f"{readable or 'lock'}-{digest}.lock")
