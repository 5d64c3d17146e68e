"""``ofd`` backend: an open-file-description lock (Linux F_OFD_SETLK) on the script file.

A POSIX record lock owned by the open file description, as a flock(2) lock is (Linux
3.15 and later; flock(1) --fcntl takes the same): kept when the process opens and
closes the script elsewhere, shared with children made by fork(), released by the
kernel when the last descriptor of the description closes, SIGKILL included. As every
POSIX record lock, it needs the file open for writing, it excludes lockf holders (and
NFS serves it through its lock manager), and on Linux it does not exclude flock holders.
"""

from __future__ import annotations

import os
import struct

try:
    import fcntl
except ImportError:  # Windows: unavailable() says why, and `runalways backends` still lists it
    fcntl = None  # type: ignore[assignment]

from runalways._values import Capabilities
from runalways.backends._filelock import FileLockBackend

#: struct flock as the kernel reads it for F_OFD_*: short l_type, short l_whence, off_t
#: l_start, off_t l_len, pid_t l_pid, in native alignment. "0q" pads the end to the
#: alignment of off_t as the C compiler does, to sizeof(struct flock), the bytes the
#: kernel copies: 32 on x86_64 and aarch64 (plain "hhqqi" is 28), 24 on i386. CPython is
#: built with a 64-bit off_t, and the F_OFD_* commands exist only with it.
FLOCK_LAYOUT = "hhqqi0q"


def whole_file(lock_type: int) -> bytes:
    """A struct flock of ``lock_type`` for the whole file, however it grows (start 0, length 0).

    l_pid must be 0: the kernel answers EINVAL to an OFD command with any other pid.
    """
    return struct.pack(FLOCK_LAYOUT, lock_type, os.SEEK_SET, 0, 0, 0)


class OfdBackend(FileLockBackend):
    name = "ofd"
    proc_locks_kind = "OFDLCK"
    capabilities = Capabilities(
        identity="inode",
        kept_by_fork_child=True,
        kept_across_exec=False,
        kept_when_replaced=False,
        kept_when_file_closed=True,
        needs_write_access=True,
        across_hosts=False,
        other_users_can_hold=False,  # it needs write access to the script
        crash_release_seconds=0.0,
    )

    @classmethod
    def unavailable(cls) -> str | None:
        if fcntl is None or not hasattr(fcntl, "F_OFD_SETLK"):
            return (
                "open file description locks (F_OFD_SETLK) are Linux-only; "
                "the fcntl backend's flock(2) locks behave the same way"
            )
        return None

    def _lock(self, fd: int, blocking: bool) -> None:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if blocking else fcntl.F_OFD_SETLK, whole_file(fcntl.F_WRLCK))

    def _unlock(self, fd: int) -> None:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, whole_file(fcntl.F_UNLCK))
