"""``lockf`` backend: a POSIX record lock (fcntl.lockf, F_SETLK) on the script file.

The lock fasteners, tendo and oslo.concurrency take. It belongs to the process, not to
a descriptor: closing ANY descriptor of the file in the process drops it (a traceback,
a warning or linecache reading the script does), a child made by fork() holds nothing,
and the file must be open for writing, so a read-only script cannot be guarded with it.
On Linux it does not exclude flock(2) holders (the fcntl backend) and it does exclude
OFD holders (the ofd backend). Choose it to share a lock with programs that use lockf
or fcntl(F_SETLK) on the same file.
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # Windows: unavailable() says why, and `runalways backends` still lists it
    fcntl = None  # type: ignore[assignment]

from runalways._values import Capabilities
from runalways.backends._filelock import FileLockBackend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways._settings import Settings
    from runalways._values import Target

#: (st_dev, st_ino) -> pid of each file this process holds a lockf lock on, whichever
#: backend object took it. The pid tells a fork child, which holds none, from its parent.
_held: dict[tuple[int, int], int] = {}


class LockfBackend(FileLockBackend):
    name = "lockf"
    proc_locks_kind = "POSIX"
    capabilities = Capabilities(
        identity="inode",
        kept_by_fork_child=False,
        kept_across_exec=False,
        kept_when_replaced=False,
        kept_when_file_closed=False,
        needs_write_access=True,
        across_hosts=False,
        other_users_can_hold=False,  # it needs write access to the script
        crash_release_seconds=0.0,
    )

    @classmethod
    def unavailable(cls) -> str | None:
        if fcntl is None:
            return "POSIX record locks need the fcntl module, which this platform lacks; use the portalocker backend"
        return None

    def __init__(self, target: Target, settings: Settings | None = None) -> None:
        super().__init__(target, settings)
        self._key: tuple[int, int] | None = None

    def _attempt(self, blocking: bool) -> bool:
        if self._fd is None and self._held_by_this_process():
            # POSIX locks never conflict with their own process: a second lock on the
            # file (runalways.api.lock() after `import runalways`) would be granted at
            # once, and its release, or just closing its descriptor, would silently drop
            # the first. Refuse it, as flock and OFD locks refuse a second description.
            return False
        taken = super()._attempt(blocking)
        if taken and self._key is None and self._fd is not None:
            status = os.fstat(self._fd)
            self._key = (status.st_dev, status.st_ino)
            _held[self._key] = os.getpid()
        return taken

    def _held_by_this_process(self) -> bool:
        if not _held:  # the common case (one lock, taken once) costs no stat
            return False
        try:
            status = os.stat(self.lock_file())
        except OSError:
            return False  # no file: the open creates it or says why it cannot
        return _held.get((status.st_dev, status.st_ino)) == os.getpid()

    def release(self) -> None:
        super().release()
        if self._key is not None:
            _held.pop(self._key, None)
            self._key = None

    def _lock(self, fd: int, blocking: bool) -> None:
        # lockf() with no length locks the whole file, however it grows: F_SETLK, or
        # F_SETLKW to wait, with l_start=0 and l_len=0.
        fcntl.lockf(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(self, fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN)
