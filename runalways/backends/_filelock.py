"""A kernel lock on an open file: the mechanics the flock, lockf, OFD and portalocker backends share.

Each of those backends says only how to lock and unlock a descriptor (``_lock`` and
``_unlock``) and which kind of lock ``/proc/locks`` shows for it; opening the file,
checking that the file locked is still the one at its path, removing a lock file
runalways named itself at release, and finding the holder live here.
"""

import abc
import errno
import os

from runalways.backends.base import Backend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

    from runalways._settings import Settings
    from runalways._values import Holder, Target
    from runalways.errors import LockFailed

#: errno values that mean "another holder has it", and nothing else. flock(2) says
#: EWOULDBLOCK (== EAGAIN on Linux); POSIX lets fcntl(F_SETLK) answer EACCES too.
CONTENTION = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})

#: The mode of lock files runalways creates: its owner reads and writes them, and the
#: sticky bit keeps age-based cleaners off them. systemd-tmpfiles skips files with the
#: sticky bit when it ages /tmp and /var/tmp, and the XDG base-directory specification
#: lets cleaners of XDG_RUNTIME_DIR remove only files without it: a held lock file that
#: a cleaner removes lets the next start create a new one and run beside the holder.
LOCK_FILE_MODE = 0o1600

#: How many times a start re-opens a lock file that was removed or replaced while it
#: took the lock, before it gives up (each round needs another release in between).
REOPEN_ROUNDS = 100

#: Which kinds of lock in /proc/locks keep out a lock of each kind. On a local Linux file
#: system flock(2) locks and POSIX record locks never conflict, while traditional POSIX
#: and OFD locks do: the fcntl backend runs beside a lockf holder, ofd does not.
EXCLUDED_BY = {"FLOCK": ("FLOCK",), "POSIX": ("POSIX", "OFDLCK"), "OFDLCK": ("POSIX", "OFDLCK")}


class FileLockBackend(Backend):
    """A kernel lock on an open file: shared mechanics of flock, lockf, OFD and portalocker.

    Subclasses say how to lock and unlock a descriptor (``_lock``/``_unlock``) and which
    kind of lock ``/proc/locks`` shows for them.
    """

    #: The lock type /proc/locks prints for this mechanism: FLOCK, POSIX or OFDLCK.
    proc_locks_kind: "ClassVar[str]"

    def __init__(self, target: "Target", settings: "Settings | None" = None) -> None:
        super().__init__(target, settings)
        self._fd: int | None = None

    @classmethod
    def adopt(cls, target: "Target", fd: int) -> "FileLockBackend":
        """The backend of a lock this process took on ``fd`` without one: the plain start
        of ``runalways/__init__.py`` locks its script with a bare flock(2)."""
        backend = cls(target)
        backend._fd = fd
        return backend

    @abc.abstractmethod
    def _lock(self, fd: int, blocking: bool) -> None:
        """Lock ``fd`` exclusively, waiting for it when ``blocking``; OSError on contention or failure."""

    @abc.abstractmethod
    def _unlock(self, fd: int) -> None:
        """Give up the lock on ``fd``."""

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        path = self.lock_file()
        # O_CLOEXEC: programs started by the holder never inherit the lock descriptor.
        flags = os.O_CLOEXEC | (os.O_RDWR if self.capabilities.needs_write_access else os.O_RDONLY)
        if self.target.create:
            flags |= os.O_CREAT
        if self.target.private:
            flags |= os.O_NOFOLLOW
        try:
            self._fd = os.open(path, flags, LOCK_FILE_MODE)
        except OSError as error:
            from runalways.errors import LockFailed

            raise LockFailed(self._open_failure(path, error)) from None
        return self._fd

    def lock_file(self) -> str:
        """The locked file: the target's, or for a named target one the lock directory names."""
        path = self.target.path
        if path is None:
            # Found when first needed, not when the backend is made: a start that finds
            # no usable lock directory says so as it takes the lock, as for any failure.
            from runalways._lockdir import lock_file_for

            path = lock_file_for(self.target.name)
            self.target = self.target.located(path)
        return path

    def _open_failure(self, path: str, error: "OSError") -> str:
        why = error.strerror or str(error)
        hint = ""
        # EROFS too: a script on a read-only mount cannot be opened for writing either. Only
        # when the file is readable, or flock would fail as well and the hint would mislead.
        writing_refused = error.errno in (errno.EACCES, errno.EROFS) and os.access(path, os.R_OK)
        if writing_refused and self.capabilities.needs_write_access:
            hint = (
                f"; the {self.name} backend needs write access to the file and the fcntl backend does not: "
                "use RUNALWAYS_BACKEND=fcntl (--backend fcntl on the command line)"
            )
        return f"cannot open {path!r} to lock it: {why}{hint}"

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _attempt(self, blocking: bool) -> bool:
        for _ in range(REOPEN_ROUNDS):
            fd = self._open()
            try:
                self._lock(fd, blocking)
            except OSError as error:
                if error.errno in CONTENTION:
                    return False
                raise self._failure(error) from None
            if not self.target.create or self._still_at_its_path():
                return True
            # The file was removed (a holder releasing it, a cleaner) or replaced while
            # this start waited for it: a lock on it keeps nobody out. Lock the file
            # that is there now, as a start that came later would.
            self._close()
        from runalways.errors import LockFailed

        raise LockFailed(
            f"the lock file {self.lock_file()!r} was removed or replaced {REOPEN_ROUNDS} times while this "
            "copy took it: something keeps deleting it; keep other programs out of the lock directory"
        )

    def _still_at_its_path(self) -> bool:
        """Whether the file just locked is still the file at the target's path."""
        fd = self._open()  # the descriptor locked (a backend may have re-opened the file)
        if not self._names(fd):
            return False
        status = os.fstat(fd)
        if self.target.disposable and not status.st_mode & 0o1000 and status.st_uid == os.geteuid():
            # A lock file runalways made before its lock files had the sticky bit.
            os.fchmod(fd, LOCK_FILE_MODE)
        return True

    def _names(self, fd: int) -> bool:
        """Whether the target's path names the file open as ``fd``."""
        mine = os.fstat(fd)
        try:
            there = os.lstat(self.lock_file())
        except FileNotFoundError:
            return False
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def _failure(self, error: "OSError") -> "LockFailed":
        from runalways.errors import LockFailed

        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        return LockFailed(
            f"cannot lock {self.lock_file()!r} with {self.name}: {error.strerror} ({code}); "
            "this is an error of the file system, not another copy running: "
            "choose another backend (see 'runalways backends') or keep the script on a local disk"
        )

    def try_acquire(self) -> bool:
        taken = self._attempt(blocking=False)
        if not taken:
            self._close()
        return taken

    def acquire(self, timeout: "float | None") -> bool:
        from runalways._waiting import wait_for

        taken = wait_for(lambda: self._attempt(blocking=True), lambda: self._attempt(blocking=False), timeout)
        if not taken:
            self._close()
        return taken

    def release(self) -> None:
        if self._fd is not None:
            if self.target.disposable:
                self._remove_locked_file(self._fd)
            self._unlock(self._fd)
            self._close()

    def _remove_locked_file(self, fd: int) -> None:
        """Remove the lock file while still holding its lock.

        Safe because every start checks, once it holds a lock file, that the file is
        still at its path (``_attempt``): a copy that waited on this file wakes, finds
        it gone and locks the new file, where at most one copy gets in. Removing a lock
        file at release without that check is the race that let two copies run in
        tendo, filelock, portalocker and fasteners. Nobody else removes or replaces the
        file while we hold its lock, so the name still names our file here.
        """
        try:
            if self._names(fd):
                os.unlink(self.lock_file())
        except OSError:
            pass  # gone already, or the directory is read-only now: the file is harmless

    def close_in_forked_children(self) -> None:
        # The child closes its copy of the descriptor without unlocking: an unlock in
        # the child would drop the parent's lock too (filelock #634, zc.lockfile PR #8),
        # while a close only drops the child's reference to the open file description.
        def forget() -> None:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

        os.register_at_fork(after_in_child=forget)

    def holder(self) -> "Holder | None":
        from runalways import _proc

        path = self.lock_file()
        try:
            status = os.stat(path)
        except OSError:
            return None
        found = _proc.lock_holders(status.st_dev, status.st_ino)
        if found is None:  # no /proc/locks: the kernel cannot tell us, ask the lock itself
            return self._probe()
        if not found:
            return None
        # A lock that keeps this backend out first. Else name a lock it does not see: a
        # copy started with another backend runs beside it unnoticed (flock and POSIX
        # locks do not exclude each other), and status should say so rather than "not running".
        excluding = EXCLUDED_BY.get(self.proc_locks_kind, (self.proc_locks_kind,))
        kind, pid = min(found, key=lambda entry: entry[0] not in excluding)
        holder = _proc.lock_holder(status.st_dev, status.st_ino, kind, pid)
        holder.excludes = kind in excluding
        return holder

    def _probe(self) -> "Holder | None":
        """Where the kernel lists no locks, test the lock with a second open (racy, documented)."""
        from runalways.errors import LockFailed

        probe = type(self)(self.target, self.settings)
        try:
            free = probe.try_acquire()
        except LockFailed:
            return None
        if free:
            probe.release()
            return None
        from runalways._values import Holder

        return Holder()
