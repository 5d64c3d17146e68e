"""The interface every backend implements, and the mechanics file-lock backends share.

A backend knows one mechanism: how to take a lock on a target without blocking, how to
wait for it up to a timeout, how to release it and how to tell who holds it. It never
prints and never exits; the policy (``runalways._policy``) decides what a user sees.

This module is on the import path of ``import runalways``, which every cron start pays
for: it imports nothing beyond ``os``, ``errno`` and ``time`` at module level, loads
``runalways.errors`` only to raise, and quotes its annotations rather than importing
``__future__`` (about 0.1 ms a start).
"""

import errno
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

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


class Capabilities:
    """What a backend's lock survives, declared as data.

    The conformance suite checks every declaration in both directions (a backend that
    says a lock is lost must really lose it), and ``runalways backends`` prints them.
    """

    __slots__ = (
        "across_hosts",
        "crash_release_seconds",
        "identity",
        "kept_across_exec",
        "kept_by_fork_child",
        "kept_when_file_closed",
        "kept_when_replaced",
        "needs_write_access",
        "other_users_can_hold",
    )

    def __init__(
        self,
        *,
        identity: str,
        kept_by_fork_child: bool,
        kept_across_exec: bool,
        kept_when_replaced: bool,
        kept_when_file_closed: bool,
        needs_write_access: bool,
        across_hosts: bool,
        other_users_can_hold: bool,
        crash_release_seconds: float,
    ) -> None:
        #: "inode": symlinks and hard links share the lock (Sys::RunAlways);
        #: "path": the resolved path, so symlinks share it and hard links do not;
        #: "name": the script's file name, the same on every host.
        self.identity = identity
        #: A child made by fork() still holds the lock after the parent exits.
        self.kept_by_fork_child = kept_by_fork_child
        #: The program an os.exec*() starts still holds the lock.
        self.kept_across_exec = kept_across_exec
        #: Replacing the script by rename (editors, deploys) keeps other copies out.
        self.kept_when_replaced = kept_when_replaced
        #: The holder may open and close its own script file (linecache, tracebacks).
        self.kept_when_file_closed = kept_when_file_closed
        #: The lock needs a descriptor open for writing.
        self.needs_write_access = needs_write_access
        #: Copies on different hosts exclude each other.
        self.across_hosts = across_hosts
        #: Another user who can run the script can take this lock, and so keep the job
        #: from running (the trap of locking a script anyone may read).
        self.other_users_can_hold = other_users_can_hold
        #: After SIGKILL of the holder, the lock is free again within this many seconds.
        self.crash_release_seconds = crash_release_seconds

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Holder:
    """Who holds a lock, as far as the mechanism can know."""

    __slots__ = ("command", "excludes", "host", "kind", "note", "pid", "since", "user")

    def __init__(
        self,
        pid: "int | None" = None,
        user: "str | None" = None,
        since: "float | None" = None,
        host: "str | None" = None,
        command: "str | None" = None,
        kind: "str | None" = None,
        excludes: bool = True,
    ) -> None:
        self.pid = pid
        self.user = user
        #: Epoch seconds: when the holding process started.
        self.since = since
        self.host = host
        self.command = command
        #: The kind of lock /proc/locks shows (FLOCK, POSIX, OFDLCK), where known.
        self.kind = kind
        #: False for a lock of a kind the asking backend does not conflict with: a copy
        #: started with another backend holds it, and would not keep this one out.
        self.excludes = excludes
        #: What else the mechanism knows: "on another host: never taken over", "stale: ...".
        self.note: str | None = None

    def describe(self) -> str:
        """``pid 4242, user alice, since 2026-11-24 10:00:03`` (only what is known)."""
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.host is not None:
            parts.append(f"host {self.host}")
        if self.user is not None:
            parts.append(f"user {self.user}")
        if self.since is not None:
            parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)))
        if self.note is not None:
            parts.append(self.note)
        return ", ".join(parts) if parts else "holder unknown"


class Target:
    """What is locked: a file, and the name people see in messages.

    ``path`` is None for a lock known only by name (``--name``); backends that lock a
    file get one in the private lock directory from :meth:`file`.
    """

    __slots__ = ("create", "display", "disposable", "name", "path", "private")

    def __init__(
        self,
        path: "str | None",
        display: str,
        name: str,
        *,
        create: bool = False,
        private: bool = False,
        disposable: bool = False,
    ) -> None:
        self.path = path
        #: How messages name it: sys.argv[0] as given, the command, or the lock name.
        self.display = display
        #: A host-independent name (the script's file name, or --name).
        self.name = name
        #: The file is created when missing (a lock file, not the script).
        self.create = create
        #: Opened without following a symbolic link (a lock file, not the script).
        self.private = private
        #: runalways named the file itself, in the private lock directory: it is removed
        #: at release, so that a command run with a new argument every day does not leave
        #: a file a day behind. Never a file the user named.
        self.disposable = disposable

    def file(self) -> str:
        if self.path is None:
            from runalways._lockdir import lock_file_for

            self.path = lock_file_for(self.name)
            self.create = self.private = self.disposable = True
        return self.path


class Backend:
    """One lock on one target, by one mechanism."""

    name: "ClassVar[str]"
    capabilities: "ClassVar[Capabilities]"
    #: Environment variables this backend reads, besides the core ones.
    settings: "ClassVar[tuple[str, ...]]" = ()
    #: A fencing token, for backends that have one: a number that grows with every
    #: acquisition of the lock, so a resource can refuse a holder older than the last it saw.
    token: "int | None" = None
    #: Set by holder() when it found what a holder that is gone left behind (a stale
    #: pidfile), so that status can say so; None for locks that vanish with their holder.
    stale: "Holder | None" = None
    #: Why the job runs without holding the lock, when a setting let the backend take
    #: it without the lock (the server was unreachable); the policy says so.
    unlocked: "str | None" = None
    #: Something the backend could not check and the user should know, said once at
    #: the start (a server that does not let it read its configuration).
    notice: "str | None" = None

    @classmethod
    def unavailable(cls) -> "str | None":
        """Why this backend cannot work here, or None when it can."""
        return None

    def __init__(self, target: "Target") -> None:
        self.target = target

    def try_acquire(self) -> bool:
        """Take the lock without blocking: True if taken, False if another copy has it.

        Any other failure raises :class:`~runalways.errors.LockFailed`.
        """
        raise NotImplementedError

    def acquire(self, timeout: "float | None") -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for the lock; True if taken."""
        raise NotImplementedError

    def take(self, timeout: "float | None") -> bool:
        """Try once without blocking, then wait up to ``timeout`` (0: do not wait)."""
        # The first non-blocking try keeps the common case to one system call.
        return self.try_acquire() or (timeout != 0 and self.acquire(timeout))

    def release(self) -> None:
        """Give the lock up. Never called at exit by the import guard: the process ending does it."""
        raise NotImplementedError

    def holder(self) -> "Holder | None":
        """Who holds the lock now, or None if nobody does. Never takes the lock."""
        raise NotImplementedError

    def lock_file(self) -> "str | None":
        """The file that holds the lock, for backends that lock one (status shows it)."""
        return None

    def lock_key(self) -> str:
        """What names this lock to every process that takes it (in heartbeats and the job's log).

        The name for a backend that locks a name, else the resolved path of the locked file.
        It goes into an environment variable: the NUL bytes that separate the words of a
        ``runalways run`` command's name become spaces.
        """
        if self.capabilities.identity == "name":
            return "name:" + self.target.name.replace("\0", " ")
        return os.path.realpath(self.lock_file() or self.target.file())

    def child_environment(self) -> dict[str, str]:
        """Variables ``runalways run`` adds to the environment of the command it runs holding this lock."""
        return {}

    def close_in_forked_children(self) -> None:
        """RUNALWAYS_FORK=close: children made by fork() must not hold this lock.

        A no-op where a fork child never holds the lock anyway.
        """

    def handover(self, pid: "int | None" = None) -> None:
        """Make the lock belong to ``pid`` (None: this process, a child after fork()).

        A lock that fork children share needs nothing; a backend whose lock names its
        holder (a pidfile) rewrites it; any other cannot hand its lock over.
        """
        if not self.capabilities.kept_by_fork_child:
            from runalways.errors import LockFailed

            raise LockFailed(f"the {self.name} backend cannot hand its lock to another process")


class FileLockBackend(Backend):
    """A kernel lock on an open file: shared mechanics of flock, lockf, OFD and portalocker.

    Subclasses say how to lock and unlock a descriptor (``_lock``/``_unlock``) and which
    kind of lock ``/proc/locks`` shows for them.
    """

    #: The lock type /proc/locks prints for this mechanism: FLOCK, POSIX or OFDLCK.
    proc_locks_kind: "ClassVar[str]"

    def __init__(self, target: "Target") -> None:
        super().__init__(target)
        self._fd: int | None = None

    @classmethod
    def adopt(cls, target: "Target", fd: int) -> "FileLockBackend":
        """The backend of a lock this process took on ``fd`` without one: the plain start
        of ``runalways/__init__.py`` locks its script with a bare flock(2)."""
        backend = cls(target)
        backend._fd = fd
        return backend

    def _lock(self, fd: int, blocking: bool) -> None:
        raise NotImplementedError

    def _unlock(self, fd: int) -> None:
        raise NotImplementedError

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        path = self.target.file()
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
        return self.target.file()

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
            f"the lock file {self.target.file()!r} was removed or replaced {REOPEN_ROUNDS} times while this "
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
            there = os.lstat(self.target.file())
        except FileNotFoundError:
            return False
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def _failure(self, error: "OSError") -> "LockFailed":
        from runalways.errors import LockFailed

        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        return LockFailed(
            f"cannot lock {self.target.file()!r} with {self.name}: {error.strerror} ({code}); "
            "this is an error of the file system, not another copy running: "
            "choose another backend (see 'runalways backends') or keep the script on a local disk"
        )

    def try_acquire(self) -> bool:
        taken = self._attempt(blocking=False)
        if not taken:
            self._close()
        return taken

    def acquire(self, timeout: "float | None") -> bool:
        from runalways.backends._waiting import wait_for

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
                os.unlink(self.target.file())
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

        path = self.target.file()
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

        probe = type(self)(self.target)
        try:
            free = probe.try_acquire()
        except LockFailed:
            return None
        if free:
            probe.release()
            return None
        return Holder()
