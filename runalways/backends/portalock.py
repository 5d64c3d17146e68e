"""``portalocker`` backend: the portalocker package's lock (flock(2) on Linux, msvcrt on Windows).

The default on Windows, where fcntl does not exist. On Linux and the BSDs portalocker
calls flock(2) (LOCK_EX|LOCK_NB, LOCK_EX to wait), so its lock behaves, and excludes,
exactly as the fcntl backend's: kept when the script is opened and closed elsewhere,
shared with fork children, enough with a read-only descriptor. portalocker is imported
only when this backend locks: it costs some 30 ms (it reads its own package metadata).
"""

from __future__ import annotations

import errno

from runalways._values import Capabilities
from runalways.backends._filelock import FileLockBackend


class PortalockerBackend(FileLockBackend):
    name = "portalocker"
    proc_locks_kind = "FLOCK"
    capabilities = Capabilities(
        identity="inode",
        kept_by_fork_child=True,
        kept_across_exec=False,
        kept_when_replaced=False,
        kept_when_file_closed=True,
        needs_write_access=False,
        across_hosts=False,
        other_users_can_hold=True,  # flock on Linux: read access to the script is enough
        crash_release_seconds=0.0,
    )

    @classmethod
    def unavailable(cls) -> str | None:
        from importlib.util import find_spec

        if find_spec("portalocker") is None:
            return "the portalocker package is not installed (pip install portalocker)"
        return None

    def _lock(self, fd: int, blocking: bool) -> None:
        import portalocker

        flags = portalocker.LockFlags.EXCLUSIVE
        if not blocking:
            flags |= portalocker.LockFlags.NON_BLOCKING
        try:
            # Waiting is portalocker's own blocking lock (flock(LOCK_EX) on POSIX), which
            # wait_for() bounds with its timer: the kernel wakes us when the holder lets
            # go, where portalocker.Lock(timeout=) would poll every 0.25 s.
            portalocker.lock(fd, flags)
        except portalocker.AlreadyLocked:
            # msvcrt says contention with errnos (EDEADLOCK, EBUSY) the base class would
            # take for failures; AlreadyLocked is portalocker's word that someone holds it.
            raise BlockingIOError(errno.EAGAIN, "held by another process") from None
        except portalocker.LockException as error:
            raise _cause(error) from None

    def _unlock(self, fd: int) -> None:
        import portalocker

        try:
            portalocker.unlock(fd)
        except portalocker.LockException as error:
            raise _cause(error) from None


def _cause(error: Exception) -> OSError:
    """The OSError portalocker wrapped, so FileLockBackend reports the real errno (ENOLCK on NFS)."""
    cause = error.__cause__
    if isinstance(cause, OSError):
        return cause
    return OSError(errno.EIO, str(error))
