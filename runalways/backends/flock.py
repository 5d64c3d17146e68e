"""``fcntl`` backend: flock(2) on the script file itself, as Sys::RunAlways does.

The lock belongs to the open file description: it is shared with children made by
fork() (a daemonising job keeps it), untouched when the process opens and closes the
script elsewhere (tracebacks, linecache), and released by the kernel the moment the
last holder of the description dies, SIGKILL included. A read-only descriptor is
enough, so a read-only script, or one owned by another user, can be locked too.
"""

import errno
import os

try:
    import fcntl
except ImportError:  # Windows: unavailable() says why, and `runalways backends` still lists it
    fcntl = None  # type: ignore[assignment]

from runalways._values import Capabilities
from runalways.backends._filelock import FileLockBackend


class FlockBackend(FileLockBackend):
    name = "fcntl"
    proc_locks_kind = "FLOCK"
    capabilities = Capabilities(
        identity="inode",
        kept_by_fork_child=True,
        kept_across_exec=False,
        kept_when_replaced=False,
        kept_when_file_closed=True,
        needs_write_access=False,
        across_hosts=False,
        other_users_can_hold=True,  # flock needs only read access to the script
        crash_release_seconds=0.0,
    )

    @classmethod
    def unavailable(cls) -> "str | None":
        return "flock(2) is POSIX only; use the portalocker backend" if fcntl is None else None

    def _lock(self, fd: int, blocking: bool) -> None:
        operation = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(fd, operation)
        except OSError as error:
            # NFSv4 emulates flock with a POSIX lock, which refuses an exclusive lock on
            # a read-only descriptor with EBADF (util-linux flock.c does the same dance).
            # Re-open the file read-write, when we may, and try once more.
            if error.errno != errno.EBADF:
                raise
            fcntl.flock(self._reopen_for_writing(error), operation)

    def _reopen_for_writing(self, error: "OSError") -> int:
        try:
            writable = os.open(self.lock_file(), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            raise error from None
        self._close()
        self._fd = writable
        return writable

    def _unlock(self, fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
