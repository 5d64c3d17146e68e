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

from runalways.backends.base import Target
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


def lock_file_for(key: str, readable: str | None = None, suffix: str = ".lock") -> str:
    """``<dir>/<readable>-<hash of key><suffix>``: distinct keys never share a file.

    ``readable`` (default: the key) is what a person sees in the name.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    shown = "".join(c if c.isalnum() or c in "-_." else "_" for c in readable or key).strip("_.")[-48:]
    return os.path.join(directory(), f"{shown or 'lock'}-{digest}{suffix}")


def lock_file_target(path: str, display: str, name: str) -> Target:
    """A lock file the user named (RUNALWAYS_LOCK=PATH, --lock, ``path=``).

    Its directory must pass the same rules as the private directory: in a directory
    others can write to, they could plant a symlink or a file of theirs at that path.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        problem = _problem(os.stat(folder))
    except OSError as error:
        raise SettingError(f"cannot use the lock file {path!r}: its directory: {error.strerror}") from None
    if problem is not None:
        raise SettingError(
            f"cannot use the lock file {path!r}: its directory {problem}, so others could plant or hold "
            "the file: choose a directory only you can write to, or RUNALWAYS_LOCK=private"
        )
    return Target(path, display=display, name=name, create=True, private=True)


def private_target(script: Target, lock: str | None, identity: str) -> Target:
    """The lock file that stands for ``script`` when it is not the script itself.

    ``lock`` is a path (RUNALWAYS_LOCK=PATH) or "private"; ``identity`` says what makes
    two starts the same job: "inode" (the script's file, as the default lock: links
    share it, a replaced script is a new job) or "path" (the resolved path: a deploy
    that replaces the file is still the same job).
    """
    assert script.path is not None
    if lock not in (None, "private"):
        if identity == "path":
            raise SettingError(
                f"RUNALWAYS_IDENTITY=path picks its own lock file and RUNALWAYS_LOCK={lock!r} names another: "
                "unset one of them"
            )
        return lock_file_target(lock, script.display, script.name)
    if identity == "path":
        key = "path:" + os.path.realpath(script.path)
    else:
        try:
            status = os.stat(script.path)
        except OSError as error:
            raise SettingError(f"cannot find the script {script.path!r}: {error.strerror}") from None
        key = f"inode:{status.st_dev}:{status.st_ino}"
    return Target(
        lock_file_for(key, os.path.basename(script.path)), script.display, script.name, create=True, private=True
    )
