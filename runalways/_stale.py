"""Stale holders, and the copy a replacing start stops: killing the process a lock names.

A lock held for longer than RUNALWAYS_STALE_AFTER is an alarm, never silence.

The always policy's weakness is a holder that hangs: every later start exits 0, for
ever. With a limit, a start that finds the lock held longer (counted from the holder's
start, or its last heartbeat) says so on one line and exits 4 (RUNALWAYS_STALE_EXIT),
at every start until someone acts. Age alone never frees a lock whose holder lives
(sidekiq-unique-jobs and filelock freed locks of slow, healthy holders, and two copies
ran): with RUNALWAYS_ON_STALE=kill the start signals the holder's process group, waits
until the holder is dead and the lock itself is free, and only then takes it. It never
deletes anything, and it never kills a holder of another user or on another host.

RUNALWAYS_POLICY=replace (:func:`replace`) stops the holder by the same mechanics, whatever
its age. Loaded only when a start with RUNALWAYS_STALE_AFTER or that policy finds the lock held.
"""

from __future__ import annotations

import os
import signal

from runalways._heartbeat import age
from runalways._messages import say
from runalways._settings import Settings, format_duration
from runalways._values import Holder
from runalways._waiting import poll_until
from runalways.backends.base import Backend

#: Seconds a killed holder gets after SIGKILL to be gone (a process stuck in the kernel
#: on a dead mount may never go: then it is reported, not waited for).
_DEATH_TIMEOUT = 10.0


def take_over(backend: Backend, chosen: Settings) -> bool:
    """The lock is held: go on as usual (False) unless its holder is stale.

    A stale holder is reported (one line on stderr, even when silent, and exit
    ``chosen.stale_exit``) or, with RUNALWAYS_ON_STALE=kill and a holder this process
    may kill, killed; True once its lock is ours. False when another start killed it
    first and its new copy holds the lock: the usual policy applies to that one.
    """
    assert chosen.stale_after is not None
    holder = backend.holder()
    if holder is None or not holder.excludes:
        return False
    held_for, beat = age(backend, holder)
    if held_for is None or held_for <= chosen.stale_after:
        return False
    display = backend.target.display
    about = (
        f"'{display}' is held by {holder.describe()} for {format_duration(held_for)}"
        + ("" if beat is None else " since its last heartbeat")
        + f", longer than the limit of {format_duration(chosen.stale_after)}"
    )
    details: dict[str, object] = {
        "holder_pid": holder.pid,
        "holder_host": holder.host,
        "holder_age": round(held_for, 1),
    }
    refusal = _cannot_kill(holder) if chosen.on_stale == "kill" else "reported"
    if refusal is None:
        outcome = _kill(backend, holder, chosen.kill_grace)
        if outcome is True:
            _reported(chosen, "kill", backend, details)
            say(f"runalways: {about}: killed it and started anew")
            return True
        if outcome is False:
            return False
        refusal = outcome
    _reported(chosen, "stale", backend, details)
    hint = "" if refusal == "reported" else f" ({refusal})"
    say(f"runalways: {about}: is it hung?{hint}")
    raise SystemExit(chosen.stale_exit)


#: How long a replacing start looks for the holder of a lock it found held by no known process.
_HOLDER_UNKNOWN_FOR = 1.0


def replace(backend: Backend, chosen: Settings) -> bool:
    """RUNALWAYS_POLICY=replace: the lock is held; stop its holder and take the lock (True).

    The holder is the process the lock names (its pid and start time), signalled as a stale
    holder is: SIGTERM to its process group, SIGKILL after RUNALWAYS_KILL_GRACE, then the
    lock itself is waited for, never deleted. False when another start took the lock first
    (it replaced the same holder at the same moment): exactly one of them runs. A holder
    this start must not signal (on another host, of another user, pid unknown) is one line
    and exit 2: replacing was asked for, and silence would leave the old copy running.
    """
    holder = backend.holder()
    if holder is None or holder.pid is None:
        # Ended between the try and the look; or the lock is still held by a process that is
        # being torn down (killed by another replacing start: an OFD lock is then listed with
        # no descriptor left to name its owner); or a start has just taken it and has not yet
        # said who it is: look again, briefly.
        found: list[Holder] = [] if holder is None else [holder]
        taken: list[bool] = []

        def taken_or_known() -> bool:
            if backend.try_acquire():
                taken.append(True)
                return True
            now = backend.holder()
            if now is not None:
                found.append(now)
            return now is not None and now.pid is not None

        poll_until(taken_or_known, _HOLDER_UNKNOWN_FOR, first=0.005, longest=0.05)
        if taken:
            return True
        holder = found[-1] if found else Holder()
    display = backend.target.display
    refusal = _cannot_kill(holder)
    if refusal is None:
        outcome = _kill(backend, holder, chosen.kill_grace)
        if outcome is True:
            details: dict[str, object] = {"holder_pid": holder.pid, "holder_host": holder.host, "reason": "replace"}
            _reported(chosen, "kill", backend, details)
            if not chosen.silent:
                say(f"runalways: '{display}' replaced the copy that ran ({holder.describe()})")
            return True
        if outcome is False:
            return False
        refusal = outcome
    from runalways._messages import fail

    fail(f"cannot replace the copy of '{display}' that holds the lock ({holder.describe()}): {refusal}")


def _cannot_kill(holder: Holder) -> str | None:
    """Why this process must not kill ``holder``, or None when it may."""
    if holder.pid is None:
        return "its pid is unknown: not killed"
    if holder.host is not None and holder.host != os.uname().nodename:
        return "on another host: never killed from here"
    try:
        owner = os.stat(f"/proc/{holder.pid}").st_uid
    except FileNotFoundError:
        # Gone since the lock named it: another start killed it (two replacing starts, two
        # starts finding it stale), or it ended. Nothing is signalled (:func:`_kill` checks
        # its pid and start time first); the lock is waited for, and one start takes it.
        return None
    except OSError:
        return "cannot see the process: not killed"
    if owner != os.getuid():
        return "of another user: not killed"
    return None


def _kill(backend: Backend, holder: Holder, grace: float) -> bool | str:
    """SIGTERM, SIGKILL after ``grace``; then wait for the lock to be free and take it.

    True: taken. False: another start took it first (it killed the same holder). A
    string: why the holder could not be made to go.
    """
    assert holder.pid is not None
    pid = holder.pid
    from runalways._proc import start_ticks

    # The process judged stale, by its pid and start time: a pid the system gave to
    # another process meanwhile is never signalled.
    started = start_ticks(pid)

    def gone() -> bool:
        return _dead(pid) or start_ticks(pid) != started

    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        group = None
    # The whole group (a job's children hang with it), unless it is ours: a holder
    # started from the same shell must not take this process down with it.
    target_group = group if group is not None and group != os.getpgrp() else None
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, _DEATH_TIMEOUT)):
        if gone():
            break
        try:
            if target_group is not None:
                os.killpg(target_group, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            return "cannot signal it: not killed"
        if poll_until(gone, wait, first=0.005, longest=0.1):
            break
    else:
        return f"still there {format_duration(_DEATH_TIMEOUT)} after SIGKILL (stuck in the kernel?)"
    # Dead: the lock is free at once for kernel locks, after the backend's declared
    # release time for the others. Wait for the lock itself; never delete anything.
    taken: list[bool] = []

    def free_or_taken_by_another() -> bool:
        if backend.try_acquire():
            taken.append(True)
            return True
        now_held = backend.holder()
        return now_held is not None and now_held.pid not in (None, pid)

    waited = backend.capabilities.crash_release_seconds + _DEATH_TIMEOUT
    if not poll_until(free_or_taken_by_another, waited, first=0.005, longest=0.1):
        return "its lock was not released after it died"
    return bool(taken)


def _dead(pid: int) -> bool:
    from runalways._proc import process_status

    status = process_status(pid)
    return status is None or status[0] == "Z"


def _reported(chosen: Settings, event: str, backend: Backend, details: dict[str, object]) -> None:
    if chosen.recorded:
        from runalways._report import report

        report(chosen, event, backend, details)
