"""What Linux's /proc tells about locks and processes: who holds a lock, when a process started.

Loaded when a holder is looked for (``runalways status`` and ``list``, the alone
policy's message, a stale check) and by the ``pidfile`` backend at every start, which
tells a live holder from a stale pidfile by the process's start time.
"""

from __future__ import annotations

import errno
import os

from runalways._values import Holder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator


def lock_holders(device: int, inode: int) -> list[tuple[str, int]] | None:
    """``(kind, pid)`` of every granted lock on the file, from /proc/locks.

    kind is FLOCK, POSIX or OFDLCK. None when the kernel does not list locks (not Linux),
    so the caller knows the answer is "cannot tell" rather than "nobody".
    """
    try:
        with open("/proc/locks") as listing:
            lines = listing.read().splitlines()
    except OSError:
        return None
    wanted = _file_id(device, inode)
    found = []
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; waiters have "->" after the
        # number and hold nothing yet.
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[5] != wanted:
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        found.append((fields[1], pid))
    return found


def _file_id(device: int, inode: int) -> str:
    """How /proc/locks and fdinfo name a file: ``fd:01:1234`` (major:minor:inode)."""
    return f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"


def lock_holder(device: int, inode: int, kind: str, pid: int) -> Holder:
    """A Holder for the ``kind`` lock /proc/locks lists on the file with ``pid``.

    /proc/locks gives -1 for an OFD lock, and for flock the process that took the lock,
    which may be gone while a fork child (a daemonised job) holds it on. Then the owner
    is whoever has a descriptor whose fdinfo shows the lock.
    """
    if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
        owners = description_holders(device, inode, kind)
        if not owners:
            return Holder(kind=kind)
        pid = owners[0]
    holder = describe_process(pid)
    holder.kind = kind
    return holder


def description_holders(device: int, inode: int, kind: str) -> list[int]:
    """Pids (lowest first) with a descriptor on the file whose fdinfo lists a ``kind`` lock.

    Reads the fdinfo of every descriptor it may see (Linux 4.1 and later list there the
    locks of the descriptor's open file description): milliseconds on a desktop, and
    only for ``status`` and the holder of a refused lock. Processes of other users are
    invisible to an unprivileged caller.
    """
    wanted = _file_id(device, inode)
    found: list[int] = []
    for pid, descriptor in open_descriptors():
        if found and found[-1] == pid:
            continue
        # fdinfo alone, never a stat of the descriptor's file: that would hang on a
        # descriptor of a dead NFS mount, and the lock line names the file anyway.
        try:
            with open(descriptor.replace("/fd/", "/fdinfo/", 1)) as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        if any(line.startswith("lock:") and _lock_fields(line) == (kind, wanted) for line in lines):
            found.append(pid)
    return found


def _lock_fields(line: str) -> tuple[str, str]:
    """(kind, file) of an fdinfo lock line: ``lock:  1: OFDLCK ADVISORY  WRITE -1 fe:00:2146498 0 EOF``."""
    fields = line.split()
    return (fields[2], fields[6]) if len(fields) > 6 else ("", "")


def boot_time() -> float | None:
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


#: errno values that say this process is short of something, not that the file is missing.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})

#: This process's boot-time offset in clock ticks, once read (it never changes).
_offset: list[int] = []


def boottime_offset_ticks() -> int:
    """The boot-time offset of this process's time namespace, in clock ticks (0 outside one).

    /proc/PID/stat gives a start time as the *reader's* time namespace sees it (Linux adds
    the reader's boot-time offset), so a holder in a container with a time namespace and
    a start outside it read two start times of one process, and a pidfile would seem to
    name another process. Start ticks are therefore kept as the initial namespace sees
    them: what /proc says, less the reader's own offset (exact for offsets in whole ticks,
    as ``unshare --boottime`` sets them).
    """
    if not _offset:
        ticks = 0
        try:
            with open("/proc/self/timens_offsets") as offsets:
                for line in offsets:
                    clock, seconds, nanoseconds = line.split()
                    if clock == "boottime":
                        ticks = (int(seconds) * 10**9 + int(nanoseconds)) * os.sysconf("SC_CLK_TCK") // 10**9
        except (OSError, ValueError):
            pass  # no time namespaces (before Linux 5.6): no offset
        _offset.append(ticks)
    return _offset[0]


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (field 22 of /proc/PID/stat)."""
    status = process_status(pid)
    return None if status is None else status[1]


def process_status(pid: int) -> tuple[str, int] | None:
    """``(state, start ticks)`` of ``pid`` (fields 3 and 22 of /proc/PID/stat), or None.

    The start ticks are those the initial time namespace sees (boottime_offset_ticks).

    State "Z" is a zombie: dead, though its pid is not free yet.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError as error:
        if error.errno in _OUT_OF_RESOURCES:
            # Not "no such process": a full descriptor table would make a live holder
            # look dead, or /proc look missing.
            from runalways.errors import LockFailed

            raise LockFailed(f"cannot read /proc/{pid}/stat: {error.strerror}") from None
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19]) - boottime_offset_ticks()


def start_epoch(ticks: int) -> float | None:
    """Epoch seconds of a process start given in clock ticks after boot."""
    booted = boot_time()  # as this time namespace sees it: add back its offset
    return None if booted is None else booted + (ticks + boottime_offset_ticks()) / os.sysconf("SC_CLK_TCK")


def boot_id() -> str | None:
    """This boot's random id: a pid or a start time recorded before a reboot means nothing now."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as found:
            return found.read().strip()
    except OSError:
        return None


def describe_process(pid: int) -> Holder:
    """A Holder with what /proc says of ``pid``: its user, start time and command line."""
    holder = Holder(pid=pid)
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return holder  # gone, or in another pid namespace
    holder.user = user_name(uid)
    ticks = start_ticks(pid)
    if ticks is not None:
        holder.since = start_epoch(ticks)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().rstrip(b"\0").split(b"\0")
        holder.command = " ".join(word.decode(errors="replace") for word in words)
    except OSError:
        pass
    return holder


def user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def open_descriptors() -> Iterator[tuple[int, str]]:
    """``(pid, /proc/PID/fd/N)`` for every descriptor of every process we may look at."""
    try:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return
    for pid in sorted(pids):
        folder = f"/proc/{pid}/fd"
        try:
            descriptors = os.listdir(folder)
        except OSError:  # gone, or another user's
            continue
        for fd in descriptors:
            yield pid, f"{folder}/{fd}"


def replaced_holders(path: str) -> list[Holder]:
    """Processes holding a lock on a file that was at ``path`` and has been replaced.

    A deploy that renames a new script over a running one leaves the running copy
    holding its lock on the old, now nameless file: the kernel shows the descriptor as
    ``<path> (deleted)``, with no link left (st_nlink == 0). A second copy can start.
    """
    orphaned = os.path.realpath(path) + " (deleted)"
    found: dict[int, Holder] = {}
    for pid, descriptor in open_descriptors():
        try:
            if pid in found or os.readlink(descriptor) != orphaned:
                continue
            status = os.stat(descriptor)
        except OSError:
            continue
        if status.st_nlink == 0 and lock_holders(status.st_dev, status.st_ino):
            found[pid] = describe_process(pid)
    return list(found.values())


def held_lock_files() -> list[tuple[str, int, str]]:
    """``(kind, pid, path)`` of every lock a process we may look at holds on a file.

    From the fdinfo of every descriptor (the lock lines name the locks held through it),
    so a lock is found with the file it is on; the path ends in `` (deleted)`` when the
    file has no name left. A lock shared by a fork child and its parent is listed once,
    for the lowest pid.
    """
    found: dict[tuple[str, str], tuple[int, str]] = {}
    for pid, descriptor in open_descriptors():
        try:
            with open(descriptor.replace("/fd/", "/fdinfo/", 1)) as info:
                locks = [_lock_fields(line) for line in info.read().splitlines() if line.startswith("lock:")]
            if not locks:
                continue
            path = os.readlink(descriptor)
        except OSError:
            continue
        for kind, file_id in locks:
            if kind and (kind, file_id) not in found and path.startswith("/"):
                found[(kind, file_id)] = (pid, path)
    return [(kind, pid, path) for (kind, _), (pid, path) in found.items()]


def runs_as_main_script(pid: int, path: str) -> bool:
    """Whether ``path`` is a file the process was started with (``python job.py``, ``./job.py``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().rstrip(b"\0").split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    wanted = os.path.realpath(path)
    for word in words[:3]:  # the interpreter, maybe an option, then the script
        name = os.fsdecode(word)
        if name and not name.startswith("-") and os.path.realpath(os.path.join(cwd, name)) == wanted:
            return True
    return False
