"""The explicit API: guard at run time, or hold a named lock for a block.

Importing this module guards nothing. Two entry points:

``guard()`` applies a policy on demand, like Sys::RunAlone::Flexible's ``lock()``::

    import runalways.api

    def main() -> None:
        options = parse_arguments()
        if options.dry_run:
            return
        runalways.api.guard()            # exits 0 here if another copy runs
        run_the_job()

``lock()`` holds a lock for the length of a ``with`` block and raises
:class:`~runalways.errors.AlreadyRunning` (with what is known of the holder) when
another process has it::

    with runalways.api.lock(name="nightly-report", wait=30):
        build_the_report()

Both take ``backend=``, ``silent=`` (guard only), ``retry=`` (``N`` or ``"N,S"``) or
``wait=`` (seconds, ``float("inf")`` for ever), and a target: ``path=`` (a lock file,
created if missing) or ``name=`` (a lock file of that name in the private lock
directory); without one, the main script's file, or the name RUNALWAYS_NAME gives it. A
name may use the script's arguments: ``{1}`` … ``{9}``, ``{args}``, ``{script}``
(``guard(name="report-{1}")``); a name in code names its own lock, whatever
RUNALWAYS_NAME says. As for ``import runalways``, the RUNALWAYS_* environment variables
override the other keywords, so an operator can change a deployed script without editing it.
Errors raise :class:`~runalways.errors.RunAlwaysError`.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import runalways
from runalways import _policy
from runalways._main_script import main_script_target
from runalways._settings import Settings
from runalways._values import Holder, Target
from runalways.backends.base import Backend
from runalways.errors import AlreadyRunning, RunAlwaysError, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator

    from runalways._settings import RetryValue

__all__ = [
    "AlreadyRunning",
    "Backend",
    "Holder",
    "RunAlwaysError",
    "guard",
    "handover",
    "heartbeat",
    "held",
    "lock",
    "target",
    "token",
]


def target(path: str | None = None, name: str | None = None, chosen: Settings | None = None) -> Target:
    """The lock target: a lock file at ``path``, a named lock, or the main script.

    For the main script, ``chosen`` settings may ask for a private lock file instead
    (RUNALWAYS_LOCK, RUNALWAYS_IDENTITY).
    """
    if path is not None and name is not None:
        raise SettingError("give path or name, not both")
    named = _policy.named_target(chosen, path, name, path_given_as="path=")
    if named is not None:
        return named
    main = sys.modules.get("__main__")
    main_globals = vars(main) if main is not None else {}
    if chosen is None:
        return main_script_target(main_globals)
    return _policy.script_target(main_globals, chosen)


def guard(
    policy: str = _policy.ALWAYS,
    *,
    backend: str | None = None,
    silent: bool | None = None,
    retry: RetryValue = None,
    wait: float | None = None,
    path: str | None = None,
    name: str | None = None,
    identity: str | None = None,
    fork: str | None = None,
    conflict_exit: int | None = None,
    timeout: float | str | None = None,
    kill_grace: float | str | None = None,
    stale_after: float | str | None = None,
    once_per: float | str | None = None,
    once_per_unknown: str | None = None,
    metrics: str | None = None,
    ping: str | None = None,
    ping_on_skip: str | None = None,
) -> Backend | None:
    """Apply ``policy`` now; return the backend holding the lock.

    Another copy holds it: exit 0 ("always") or print ``A copy of '<script>' is already
    running (<holder>)`` and exit 1 ("alone"), or exit ``conflict_exit``; "queue" waits as the
    one pending run (or exits 0, merged into the one that waits), "replace" stops the copy
    that holds it and runs. RUNALWAYS_POLICY, when set, wins over ``policy``. Returns None
    when RUNALWAYS_SKIP says to skip. Calling it again for a lock this process holds
    returns the same backend. ``identity`` ("inode" or "path") and ``fork`` ("inherit"
    or "close") are RUNALWAYS_IDENTITY and RUNALWAYS_FORK. ``timeout`` (RUNALWAYS_TIMEOUT,
    a duration such as 90, "45m" or "2h") ends this process with SIGTERM at that deadline,
    and SIGKILL ``kill_grace`` (RUNALWAYS_KILL_GRACE, default 10) seconds later; ``stale_after``
    (RUNALWAYS_STALE_AFTER) reports a holder older than that instead of exiting silently.
    ``once_per`` (RUNALWAYS_ONCE_PER, a duration of a minute or more) runs the job once per
    period, on whichever host starts first; the period's later starts are skips, as when
    another copy holds the lock. ``once_per_unknown`` ("skip" or "run") decides when the
    server forgot whether the period ran. ``metrics`` (RUNALWAYS_METRICS, a directory),
    ``ping`` (RUNALWAYS_PING, a URL) and ``ping_on_skip`` ("log", "fail" or "none") report
    every start, skip and end of the job (docs/monitoring.md).
    """
    chosen = _policy.choose(
        os.environ,
        policy=policy,
        backend=backend,
        silent=silent,
        retry=retry,
        wait=wait,
        identity=identity,
        fork=fork,
        conflict_exit=conflict_exit,
        deadline=timeout,
        kill_grace=kill_grace,
        stale_after=stale_after,
        once_per=once_per,
        once_per_unknown=once_per_unknown,
        metrics=metrics,
        ping=ping,
        ping_on_skip=ping_on_skip,
    )
    wanted = target(path, name, chosen)
    for holding in held():
        if isinstance(holding, chosen.backend) and _same_target(holding.target, wanted):
            return holding
    if _policy.skipped(chosen, wanted.display):
        return None
    taken = _policy.enforce(chosen.policy or _policy.ALWAYS, wanted, chosen)
    _policy.arm_deadline(chosen)
    return taken


def _same_target(one: Target, other: Target) -> bool:
    if one.path is not None and other.path is not None:
        return os.path.realpath(one.path) == os.path.realpath(other.path)
    return one.path is None and other.path is None and one.name == other.name


@contextmanager
def lock(
    name: str | None = None,
    *,
    path: str | None = None,
    backend: str | None = None,
    retry: RetryValue = None,
    wait: float | None = None,
) -> Iterator[Backend]:
    """Hold a lock for the ``with`` block; raise AlreadyRunning if another process has it."""
    chosen = _policy.choose(os.environ, backend=backend, retry=retry, wait=wait)
    wanted = target(path, name, chosen)
    taken = _policy.take(wanted, chosen, stale=False)
    if isinstance(taken, _policy.Refused):
        holder = taken.holder()
        about = f" ({holder.describe()})" if holder is not None else ""
        raise AlreadyRunning(f"the lock for '{wanted.display}' is held by another process{about}", holder)
    try:
        yield taken
    finally:
        taken.release()


def held() -> list[Backend]:
    """The locks this process holds through ``import runalways``, ``import runalways.alone``
    and :func:`guard`, oldest first (not those of :func:`lock`, which its block owns).

    A plain start takes its lock in ``runalways/__init__.py`` without a backend object
    (the one module such a start loads); it is adopted here, as the ``fcntl`` backend
    holding the script, the first time anybody asks.
    """
    while runalways._plain_lock:
        from runalways.backends.flock import FlockBackend

        descriptor, script, display = runalways._plain_lock.pop()
        plain = Target(script, display=display, name=os.path.basename(script))
        _policy.guarding.insert(0, FlockBackend.adopt(plain, descriptor))
    return _policy.guarding


def handover(pid: int | None = None) -> None:
    """Hand the locks this process took with ``import runalways`` or guard() to ``pid``.

    For a job that daemonises with a backend whose lock names its holder (``pidfile``):
    call it in the daemon after fork(), with no argument, *before the parent exits* (let
    the parent wait for it, through a pipe), or in the parent with the child's pid. Locks
    that fork children share anyway (fcntl) need nothing; a backend that cannot hand its
    lock over raises LockFailed. A lock held with :func:`lock` is handed over with
    ``held.handover()``.
    """
    for holding in held():
        holding.handover(pid)


def token() -> int | None:
    """The fencing token of the lock this process holds, or None if its backend has none.

    A token grows with every acquisition of a lock (the ``postgres`` backend has one): pass
    it with each write to a resource that remembers the highest token it has seen and
    refuses lower ones, and a holder that lost its lock can no longer write there, not
    even a write already on its way. Under ``runalways run`` the command finds the token
    of the wrapper's lock in RUNALWAYS_TOKEN; this function reads it there too. A lock
    held with :func:`lock` has its own: ``with lock(...) as held: held.token``.
    """
    for holding in reversed(held()):
        if holding.token is not None:
            return holding.token
    inherited = os.environ.get("RUNALWAYS_TOKEN", "").strip()
    return int(inherited) if inherited.isdigit() else None


def heartbeat() -> None:
    """Mark progress: a start with RUNALWAYS_STALE_AFTER counts the holder's age from now.

    For a slow but healthy job (a long backup) that must not be reported as hung: call it
    in the job's loop. It is cheap (at most one file-time update a second, nothing
    otherwise), needs no write access to the script, and works for a script guarded by
    ``import runalways``, by :func:`guard` and for a command under ``runalways run``. A
    process that holds no lock does nothing.
    """
    from runalways._heartbeat import beat

    beat(held())
