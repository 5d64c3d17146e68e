"""``pidfile`` backend: a readable pidfile created with link(2), stale-safe and race-safe.

For file systems and platforms without usable kernel locks, and for people who want a
pidfile they can read. No lock is held by the kernel: the pidfile existing, and naming a
live process, is the lock.

**Where.** ``<lock directory>/<script name>-<hash>.pid``, the hash taken over the
script's *resolved* path (symbolic links share the pidfile, hard links and copies do
not: identity "path"), or over the lock's name for a named lock. A lock file chosen for
the job (RUNALWAYS_LOCK=PATH, ``--lock PATH``, ``path=``) is itself the pidfile; a file
already there that is not a pidfile is never deleted (exit 2). The lock directory is
``runalways._lockdir.directory()``: RUNALWAYS_DIR, else a per-user private directory,
refused when another user owns it or anyone else may write to it (a sticky bit does not
help: another user could still create the pidfile's name first). The pidfile itself is
never opened through a symbolic link (O_NOFOLLOW), and runalways never writes into a
file it did not create: the peers that did (tendo, Sys::RunAlone::User, filelock before
CVE-2025-68146) let a planted symlink truncate any file the victim could write.

**What.** ``key=value`` lines: ``pid``, ``start_ticks`` (field 22 of /proc/PID/stat, as
the initial time namespace sees it: ``_proc.boottime_offset_ticks``),
``boot_id`` (/proc/sys/kernel/random/boot_id), ``host``, ``uid``, ``started`` (epoch
seconds the process started), ``script`` or ``name``, and ``token``, 128 random bits
that make every pidfile ever written unique. The file appears with its full content at
once: written to a temporary file in the same directory, fsync()ed, then link()ed to
the pidfile's name, which fails if the name exists. It is 0600 with the sticky bit, as
every lock file runalways creates: its owner (and root) read it, and age-based cleaners
leave it alone (``_filelock.LOCK_FILE_MODE``). Where the file system has no hard
links (vfat), the pidfile is created with O_EXCL and written in place instead.

**Stale.** A pidfile is stale when its boot id is not this boot's, its pid is gone (or a
zombie), or its pid now belongs to a process with another start time (pid reuse, the
flaw of pid, python-pidfile and twisted #7555). A pidfile naming another host is never
taken over: nothing here can tell whether that process lives. A pidfile that does not
parse cannot be one of ours (they appear whole): it counts as held by an unknown writer
for MALFORMED_GRACE seconds, in case something is still writing it, and as stale after.

**Taking over a stale pidfile, exactly once.** Replacing the stale file by rename has
a classic hole: A renames its file over the stale one and runs; slow B, which judged
the *old* file stale, then removes or replaces A's live file, and two copies run. Here
no file is ever replaced, and every unlink is of a file whose *incarnation* was
verified. An incarnation is one file at one name, identified by the sha256 of (name,
inode, mtime, content); the token makes the content of every file runalways writes
unique, so an incarnation that is gone never comes back. The rules:

1. A file appears at a name only by link()/O_EXCL, which fail when the name exists.
2. To unlink (or, for a handover, rename over) incarnation I at name X, a process must
   first create I's *claim*, ``.<pidfile>.<hash of I>.claim``, itself by rule 1; then
   read X again and find I there; then unlink X; then remove the claim.
3. A claim is removed by the process that created it, or, when that process is dead,
   as a stale file by rule 2 (a claim on the claim), up to CLAIM_DEPTH levels.

While a process holds I's claim nobody else holds it (rule 1), so nobody else can
remove or replace I (rule 2), so I is still at X when the holder unlinks X after seeing
it there: every unlink removes exactly the incarnation that was judged stale. A claim
created after I is gone finds another incarnation (or none) at X and removes nothing. A
live holder's pidfile is never judged stale: its process lives with the recorded start
time and boot id, and a dead process never comes back. So a live holder's pidfile stays
until its holder removes it, at most one pidfile is at the name at any time (rule 1),
and of any number of starters racing over a stale pidfile exactly one link() succeeds.
A starter that finds the claim held by a live process says "another copy has it": the
claimer is about to remove the stale file, and whoever then links first runs.

**Release.** At exit (atexit; also on release()) the pidfile is removed, by rule 2, if
it still names this process (pid, start time, boot id, host): a fork child that exits
normally runs the parent's atexit handlers and must not remove the parent's file. A
holder killed by a signal leaves the file behind; the next start finds it stale at once
(crash_release_seconds=0). A SIGKILL in the middle of writing can leave a temporary
``.<pidfile>.<pid>.<random>.tmp`` file behind; it is never read.

**Fork and exec.** The pid in the file is the parent's: when a job daemonises, the
file names a dead pid once the parent exits, and a new copy may start while the daemon
runs (kept_by_fork_child=False). ``runalways.api.handover()`` (or the backend's
``handover()``) rewrites the file atomically to name another process: call it in the
daemon after fork() *before the parent exits* (the parent waits for it), or in the
parent with the child's pid. os.exec*() keeps the pid and its start time, so the file
still names a live holder (kept_across_exec=True); the atexit clean-up does not survive
the exec, and a guarded program exec'd by the holder finds the file naming itself and
takes it as its own.

**Waiting.** acquire(timeout) polls with a doubling back-off capped at 10 ms
(_waiting.poll_until): a released or stale pidfile is noticed within about 10 ms, and each
poll is a read of the pidfile and of /proc/PID/stat, never a write.
"""

from __future__ import annotations

import errno
import os
import time

from runalways import _lockdir, _proc
from runalways._values import Capabilities, Holder
from runalways._waiting import poll_until
from runalways.backends._filelock import LOCK_FILE_MODE
from runalways.backends.base import Backend
from runalways.errors import LockFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict

    from runalways._settings import Settings
    from runalways._values import Target

    Fields = Dict[str, str]

#: Keys every pidfile runalways writes has; a file without them is malformed.
REQUIRED = ("pid", "start_ticks", "boot_id", "host", "token")

#: Seconds a malformed pidfile counts as held (its writer may still be at work).
MALFORMED_GRACE = 2.0

#: The largest pid kill() takes (a C int); Linux's own limit is far below it.
MAX_PID = 2**31 - 1

#: Levels of claims on claims a starter breaks before it gives up (each level needs a
#: process killed inside the claim window of the level below).
CLAIM_DEPTH = 3

#: Rounds of look, judge and remove one attempt makes before it says "another copy has it".
ROUNDS = 64

#: errno values of link(2) on a file system without hard links (vfat answers EPERM).
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

LIVE, STALE, UNKNOWN, FOREIGN = "live", "stale", "unknown", "foreign"
REMOVED, CHANGED, BUSY = "removed", "changed", "busy"

#: Pidfiles held by a backend in this program image. A pidfile naming this process but
#: not listed here was written before an exec(), or handed to this process by its parent.
_held_here: set[str] = set()

_identity: list[tuple[int, Fields]] = []


def me() -> Fields:
    """This process as a pidfile names it: pid, start ticks, boot id, host (after fork, the child)."""
    pid = os.getpid()
    if not _identity or _identity[0][0] != pid:
        _identity[:] = [(pid, describe(pid))]
    return _identity[0][1]


def describe(pid: int) -> Fields:
    ticks = _proc.start_ticks(pid)
    if ticks is None:
        raise LockFailed(f"cannot hand the lock to pid {pid}: no such process")
    return {"pid": str(pid), "start_ticks": str(ticks), "boot_id": _proc.boot_id() or "", "host": os.uname().nodename}


def names(fields: Fields, process: Fields) -> bool:
    return all(fields.get(key) == process[key] for key in ("pid", "start_ticks", "boot_id", "host"))


def render(fields: Fields) -> bytes:
    """The pidfile's text. Values are escaped so that no value (a path with a newline) adds a key."""
    lines = ["# runalways pidfile: this process holds the lock (see 'runalways status')"]
    lines += [f"{key}={value.encode('unicode_escape').decode('ascii')}" for key, value in fields.items()]
    return ("\n".join(lines) + "\n").encode("ascii")


def parse(raw: bytes) -> Fields | None:
    """The fields of a pidfile, or None when it is not one runalways wrote whole."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None
    fields = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return None
        fields[key] = value
    if any(key not in fields for key in REQUIRED):
        return None
    pid = fields["pid"]
    # pid 0 would make kill(0, 0) ask about our own process group; a pid past a C int
    # makes kill() raise OverflowError (and past 4300 digits int() raises ValueError).
    if not (pid.isdigit() and len(pid) <= 10 and 0 < int(pid) <= MAX_PID and fields["start_ticks"].isdigit()):
        return None
    return fields


class Seen:
    """One incarnation of a file, as read: its fields, owner, age and identifying key."""

    __slots__ = ("age", "fields", "key", "path", "uid")

    def __init__(self, path: str, status: os.stat_result, raw: bytes) -> None:
        self.path = path
        self.fields = parse(raw)
        self.uid = status.st_uid
        self.age = time.time() - status.st_mtime
        # The mtime and the inode tell apart two malformed files of equal content; the
        # token does it for ours. ctime would not do: link() and unlink() change it.
        identity = f"{path}\0{status.st_dev}\0{status.st_ino}\0{status.st_mtime_ns}\0".encode()
        self.key = _lockdir.hex_digest(identity + raw)


def read(path: str) -> Seen | None:
    """The file at ``path`` now, or None if there is none. Never follows a symbolic link."""
    try:
        # O_NONBLOCK: a FIFO planted at the name must not hang the start (filelock #549).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LockFailed(
                f"{path!r} is a symbolic link, not a pidfile; runalways never follows one there "
                "(a planted link could make it write elsewhere): remove it"
            ) from None
        raise LockFailed(f"cannot read the pidfile {path!r}: {error.strerror}") from None
    try:
        status = os.fstat(fd)
        if not _is_regular(status):
            raise LockFailed(f"{path!r} is not a regular file, so not a pidfile runalways wrote: remove it")
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    return Seen(path, status, raw)


def _is_regular(status: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(status.st_mode)


def judge(seen: Seen) -> tuple[str, str]:
    """(LIVE, STALE, UNKNOWN or FOREIGN, why) for the pidfile or claim ``seen``."""
    fields = seen.fields
    if fields is None:
        # Its age either way: after the clock was stepped back, a file written before the
        # step seems to come from the future, and would count as being written for as
        # long as the step was.
        if abs(seen.age) < MALFORMED_GRACE:
            return UNKNOWN, "not in runalways's format, and written in the last seconds"
        return STALE, f"not in runalways's format, and {seen.age:.0f} s old"
    here = me()
    if fields["host"] != here["host"]:
        return FOREIGN, f"on another host ({fields['host']}): never taken over from here"
    if fields["boot_id"] and here["boot_id"] and fields["boot_id"] != here["boot_id"]:
        return STALE, "written before the machine last booted"
    pid = int(fields["pid"])
    status = _proc.process_status(pid)
    if status is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return STALE, f"pid {pid} is gone"
        except OSError:
            pass
        # It exists but /proc hides it (hidepid=): its start time cannot be checked, so
        # it is taken as the holder rather than risk removing a live holder's file.
        return LIVE, "its process exists"
    state, ticks = status
    if state in ("Z", "X"):
        return STALE, f"pid {pid} has exited"
    if str(ticks) != fields["start_ticks"]:
        return STALE, f"pid {pid} is gone (another process has that pid now)"
    return LIVE, "its process runs"


class PidfileBackend(Backend):
    name = "pidfile"
    capabilities = Capabilities(
        identity="path",
        kept_by_fork_child=False,
        kept_across_exec=True,
        kept_when_replaced=True,
        kept_when_file_closed=True,
        needs_write_access=False,
        across_hosts=False,
        other_users_can_hold=False,  # the pidfile lives in a directory private to the user
        crash_release_seconds=0.0,
    )

    @classmethod
    def unavailable(cls) -> str | None:
        if _proc.start_ticks(os.getpid()) is None:
            return "it needs Linux's /proc to tell a live holder from a stale pidfile"
        return None

    def __init__(self, target: Target, settings: Settings | None = None) -> None:
        super().__init__(target, settings)
        self._path: str | None = None
        #: The fields of the pidfile this object wrote or took, while it holds it.
        self._fields: Fields | None = None
        self._exit_hook = False

    @property
    def pidfile(self) -> str:
        """The pidfile's path (computed once: it checks and creates the lock directory)."""
        if self._path is None:
            target = self.target
            if target.path is None:
                self._path = _lockdir.lock_file_for(target.name, suffix=".pid")
            elif target.create:
                # A lock file chosen for this job (RUNALWAYS_LOCK, --lock, path=): it is the
                # pidfile; its directory passed the lock directory's rules.
                self._path = target.path
            else:
                resolved = os.path.realpath(target.path)
                self._path = _lockdir.lock_file_for(resolved, os.path.basename(resolved), suffix=".pid")
        return self._path

    def lock_file(self) -> str:
        return self.pidfile

    # -- taking and giving up -----------------------------------------------------------

    def try_acquire(self) -> bool:
        path = self.pidfile
        if self._fields is not None and path in _held_here:
            return True
        for _ in range(ROUNDS):
            seen = read(path)
            if seen is None:
                record = self._record(me())
                if self._create(path, record):
                    self._took(record)
                    return True
                continue  # another starter linked first: look at what it wrote
            if seen.fields is not None and names(seen.fields, me()):
                if path in _held_here:
                    return False  # another lock object of this program holds it
                # Written by this process before it exec()ed this program, or handed to
                # it by its parent: it is ours.
                self._took(seen.fields)
                return True
            verdict, _ = judge(seen)
            if verdict != STALE:
                return False
            if seen.fields is None and self.target.create and not self.target.disposable:
                # A file the user named that is not a pidfile may be anything: never
                # delete it (filelock #29 deleted user data by unlinking "lock files").
                # One runalways named itself (RUNALWAYS_LOCK=private) is its own: a
                # truncated one is taken over, as at the default place.
                raise LockFailed(f"{path!r} exists and is not a pidfile runalways wrote: remove it or choose another")
            if self._remove(path, seen) == BUSY:
                return False
        return False

    def acquire(self, timeout: float | None) -> bool:
        # A 10 ms cap: a poll only reads the pidfile and /proc/PID/stat, so 100 a second
        # cost next to nothing, and the hand-over stays well under the 20 ms target.
        return poll_until(self.try_acquire, float("inf") if timeout is None else timeout, longest=0.01)

    def release(self) -> None:
        if self._fields is None:
            return
        self._fields = None
        _held_here.discard(self.pidfile)
        self._remove_if_mine()

    def handover(self, pid: int | None = None) -> None:
        """Rewrite the pidfile, atomically, to name ``pid`` (None: this process).

        Call it in a daemon after fork(), while the parent still runs, or in the parent
        with the child's pid. Raises LockFailed when the pidfile no longer is this job's.
        """
        path = self.pidfile
        seen = read(path)
        mine = self._fields
        if mine is None or seen is None or seen.fields is None or seen.fields["token"] != mine["token"]:
            raise LockFailed(
                f"cannot hand over {path!r}: it no longer names this job "
                "(did the holder exit before the handover, letting another copy in?)"
            )
        record = self._record(me() if pid is None else describe(pid))
        claim = self._claim(seen)
        if claim is None:
            raise LockFailed(f"cannot hand over {path!r}: another copy is taking it over")
        try:
            now = read(path)
            if now is None or now.key != seen.key:
                raise LockFailed(f"cannot hand over {path!r}: it changed while being handed over")
            temp = self._write_temp(path, record)
            try:
                os.rename(temp, path)
            except OSError as error:
                raise self._failure(path, error) from None
            finally:
                _unlink(temp)
        finally:
            _unlink(claim)
        if pid is None or pid == os.getpid():
            self._took(record)
        else:
            self._fields = None
            _held_here.discard(path)

    def _took(self, record: Fields) -> None:
        self._fields = record
        _held_here.add(self.pidfile)
        if not self._exit_hook:
            import atexit

            # The import guard never calls release(): the process ending is the release.
            # Unlike a kernel lock, a pidfile is not removed by exiting, so remove it here.
            atexit.register(self._at_exit)
            self._exit_hook = True

    def _at_exit(self) -> None:
        if self._fields is not None:
            try:
                self._remove_if_mine()
            except (LockFailed, OSError):
                pass  # left behind: it names a dead process, and the next start takes it over

    def _remove_if_mine(self) -> None:
        """Remove the pidfile if it names this process: never a fork parent's, never a successor's."""
        path = self.pidfile
        seen = read(path)
        if seen is None or seen.fields is None or not names(seen.fields, me()):
            return
        try:
            self._remove(path, seen)
        except LockFailed:
            # No room for the claim (a full disk): nobody else may touch a live holder's
            # file, so the holder may remove its own after checking it once more.
            now = read(path)
            if now is not None and now.key == seen.key:
                _unlink(path)

    def _record(self, process: Fields) -> Fields:
        record = dict(process)
        record["uid"] = str(os.getuid())
        started = _proc.start_epoch(int(process["start_ticks"]))
        if started is not None:
            record["started"] = f"{started:.2f}"
        if self.target.path is not None:
            record["script"] = os.path.realpath(self.target.path)
        else:
            record["name"] = self.target.name
        record["token"] = os.urandom(16).hex()
        return record

    # -- the takeover protocol (see the module's docstring) -----------------------------

    def _remove(self, path: str, seen: Seen, depth: int = 0) -> str:
        """Unlink the incarnation ``seen`` of ``path`` by rule 2: REMOVED, CHANGED or BUSY."""
        claim = self._claim(seen)
        if claim is None:
            other = read(self._claim_path(seen))
            if other is None:
                return CHANGED  # the claim went as we looked: look again
            if depth < CLAIM_DEPTH and judge(other)[0] == STALE:
                self._remove(other.path, other, depth + 1)  # its claimer died: free it
                return CHANGED
            return BUSY
        try:
            now = read(path)
            if now is None or now.key != seen.key:
                return CHANGED
            try:
                os.unlink(path)
            except FileNotFoundError:
                return CHANGED  # cannot happen while we hold the claim (rule 2)
            except OSError as error:
                raise LockFailed(f"cannot remove the stale pidfile {path!r}: {error.strerror}") from None
            return REMOVED
        finally:
            _unlink(claim)

    def _claim_path(self, seen: Seen) -> str:
        directory, base = os.path.split(self.pidfile)
        return os.path.join(directory, f".{base}.{seen.key[:32]}.claim")

    def _claim(self, seen: Seen) -> str | None:
        """Create the claim on ``seen`` (its path), or None if another process has it."""
        claim = self._claim_path(seen)
        record = self._record(me())
        record["claims"] = os.path.basename(seen.path)
        return claim if self._create(claim, record) else None

    def _create(self, path: str, record: Fields) -> bool:
        """Make ``path`` appear with its whole content: False if it exists already."""
        temp = self._write_temp(path, record)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno in _NO_LINKS:
                return self._create_in_place(path, record)
            raise self._failure(path, error) from None
        finally:
            _unlink(temp)
        return True

    def _create_in_place(self, path: str, record: Fields) -> bool:
        """No hard links here: O_EXCL, then write. Readers meanwhile see a malformed file (held)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_FILE_MODE)
        except FileExistsError:
            return False
        except OSError as error:
            raise self._failure(path, error) from None
        try:
            _write_all(fd, render(record))
        except OSError as error:
            _unlink(path)  # ours, half written: nobody may take it over for MALFORMED_GRACE
            raise self._failure(path, error) from None
        finally:
            os.close(fd)
        return True

    def _write_temp(self, path: str, record: Fields) -> str:
        """A fully written and fsync()ed temporary file beside ``path``; removed on failure."""
        directory, base = os.path.split(path)
        temp = os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_FILE_MODE)
        except OSError as error:
            raise self._failure(path, error) from None
        try:
            _write_all(fd, render(record))
        except OSError as error:
            _unlink(temp)
            raise self._failure(path, error) from None
        finally:
            os.close(fd)
        return temp

    def _failure(self, path: str, error: OSError) -> LockFailed:
        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        return LockFailed(
            f"cannot write the pidfile {path!r}: {error.strerror} ({code}); nothing was left behind: "
            "set RUNALWAYS_DIR to a private directory on a writable local file system"
        )

    # -- who holds it -------------------------------------------------------------------

    def holder(self) -> Holder | None:
        self.stale = None
        seen = read(self.pidfile)
        if seen is None:
            return None
        verdict, why = judge(seen)
        found = _holder_from(seen)
        if verdict == STALE:
            found.note = f"stale: {why}"
            self.stale = found
            return None
        if verdict == LIVE and found.pid is not None:
            found.command = _proc.describe_process(found.pid).command
        elif verdict != LIVE:
            found.note = why
        return found


def _holder_from(seen: Seen) -> Holder:
    holder = Holder(user=_proc.user_name(seen.uid))
    fields = seen.fields
    if fields is None:
        return holder
    holder.pid = int(fields["pid"])
    holder.host = fields["host"]
    try:
        holder.since = float(fields.get("started", ""))
    except ValueError:
        pass
    return holder


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


def _unlink(path: str) -> None:
    """Remove a file of ours (a temporary file, a claim), as well as we can."""
    try:
        os.unlink(path)
    except OSError:
        pass  # a claim left behind is broken as stale once we are gone (rule 3)
