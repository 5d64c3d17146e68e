"""What Linux's /proc tells about locks and processes (for ``runalways status``).

Not on the import path of the guard: only status, messages about a holder and the
backends' ``holder()`` use it.
"""

from __future__ import annotations

import os

from runalways.backends.base import Holder


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
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
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


def boot_time() -> float | None:
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])


def describe_process(pid: int) -> Holder:
    """A Holder with what /proc says of ``pid``: its user, start time and command line."""
    holder = Holder(pid=pid)
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return holder  # gone, or in another pid namespace
    holder.user = user_name(uid)
    ticks = start_ticks(pid)
    booted = boot_time()
    if ticks is not None and booted is not None:
        holder.since = booted + ticks / os.sysconf("SC_CLK_TCK")
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
