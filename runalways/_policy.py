"""The one module that decides what happens: continue, exit 0, exit 1, wait, or fail.

Four policies: two after the Perl modules runalways ports, two after the schedulers
operators know (Windows Task Scheduler's Queue and StopExisting, Kubernetes's Replace,
GitHub Actions' concurrency groups, run-one's run-this-one):

* **always** (Sys::RunAlways): another copy holds the lock, so this one exits 0 without
  a word: cron starts the script every minute and one copy is always running.
* **alone** (Sys::RunAlone): another copy holds the lock, so this one says
  ``A copy of '<script>' is already running`` and exits 1.
* **queue**: this start becomes the one pending run and waits for the running copy to end,
  or, when a pending run already waits, is merged into it and exits 0 (:func:`_queued`).
* **replace**: this start stops the running copy and takes its place (``runalways._stale``).

RUNALWAYS_POLICY chooses among them, over the policy of the face (the import line).

Taking the lock prints ``'<script>' has been started at <epoch>`` unless silent. Any
error (a bad setting, no script file, a lock that fails for another reason than
contention) prints one line and exits 2. Backends never print or exit; this module does.

Every face takes its lock through :func:`take`: the import guard (:func:`guard_import`),
``runalways.api.guard()`` and ``runalways run`` through :func:`enforce`, which applies a
policy to what :func:`take` found; ``runalways.api.lock()`` raises instead. Which import
statement loaded runalways, and which file is the main script, is
``runalways._main_script``'s to tell; the settings are ``runalways._settings``'s.

A plain start (the main script's own ``import runalways``, no setting) never gets here:
``runalways/__init__.py`` decides it alone, and hands this module every other start.
Quoted annotations rather than ``__future__``, and what only a failure or a setting needs
is imported when needed: each module a start imports costs it about 0.1 ms.
"""

import os
import sys
import time

from runalways import _main_script
from runalways._messages import fail, say
from runalways._settings import Settings, resolve
from runalways.backends import chosen_backend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, Mapping

    from runalways._main_script import Reader
    from runalways._names import Job
    from runalways._period import Run as PeriodRun
    from runalways._report import Run
    from runalways._values import Holder, Target
    from runalways.backends.base import Backend

ALWAYS = "always"
ALONE = "alone"
QUEUE = "queue"
REPLACE = "replace"
#: What the pending lock of a job is called, before the job's own lock key (RUNALWAYS_POLICY=queue).
PENDING = "pending:"

#: The locks this process took as a guard (import, ``api.guard()``, ``runalways run``),
#: oldest first; kept referenced until the process ends. ``api.held()`` shows them.
guarding: "list[Backend]" = []

#: The run each of those locks began, when a record is asked for: what pairs its end with its start.
_runs: "dict[Backend, Run]" = {}
#: The period's record each of those locks wrote (RUNALWAYS_ONCE_PER), for :func:`ended`.
_periods: "dict[Backend, PeriodRun]" = {}


def choose(environ: "Mapping[str, str]", *, environment_wins: bool = True, **given: object) -> Settings:
    """The settings of a start: ``environ`` merged with the code's keywords (or the options
    typed, with ``environment_wins=False``), by their names in :class:`~runalways._settings.Settings`."""
    return resolve(environ, given, chosen_backend, environment_wins=environment_wins)


def named_target(
    chosen: "Settings | None",
    path: "str | None",
    name: "str | None",
    *,
    path_given_as: str,
    name_given_as: str = "name",
    job: "Job | None" = None,
) -> "Target | None":
    """The lock a caller named: a lock file at ``path`` (given as ``path_given_as``: ``path=``,
    ``--lock``), or a lock called ``name`` (given as ``name_given_as``), its fields (``{1}``,
    ``{args}``, ``{script}``) filled in from ``job``; None when it named neither."""
    if path is not None:
        if chosen is not None:
            refuse_lock_file(chosen, path_given_as)
        from runalways._lockdir import lock_file_target

        return lock_file_target(path, display=path, name=os.path.basename(path))
    if name is not None:
        return name_target(name, name_given_as, job)
    return None


def name_target(template: str, where: str, job: "Job | None", display: "str | None" = None) -> "Target":
    """The lock called ``template`` (given as ``where``) with its fields filled in from ``job``
    (None: the main script's arguments); messages name it ``display``, else by that name."""
    from runalways._names import expand
    from runalways._values import Target

    name = expand(template, where, job if job is not None else script_job())
    return Target(None, display=display or name, name=name)


def script_job(script: "str | None" = None) -> "Job":
    """The arguments of the running script and its file name (``script``, else sys.argv[0]'s),
    which a lock name's fields take."""
    from runalways._names import Job

    argv = sys.argv or [""]
    return Job(argv[1:], script if script is not None else os.path.basename(argv[0]))


def script_target(main_globals: "dict[str, Any]", chosen: Settings) -> "Target":
    """The lock for the main script: the script itself unless RUNALWAYS_NAME, RUNALWAYS_LOCK or
    RUNALWAYS_IDENTITY ask for another."""
    return lock_for_script(_main_script.main_script_target(main_globals), chosen)


def lock_for_script(target: "Target", chosen: Settings, job: "Job | None" = None) -> "Target":
    """``target``, a script, or the lock RUNALWAYS_NAME names for it, or the private lock file
    RUNALWAYS_LOCK or RUNALWAYS_IDENTITY choose for it.

    ``job``: what RUNALWAYS_NAME's fields are filled in with (None: the running script's
    arguments, the script's file name). Messages keep naming the script as it was typed.
    """
    if chosen.lock_name is not None:
        job = job if job is not None else script_job(target.name)
        return name_target(chosen.lock_name, "RUNALWAYS_NAME", job, display=target.display)
    if chosen.lock is None and chosen.identity == "inode":
        return target
    refuse_lock_file(chosen, "RUNALWAYS_LOCK" if chosen.lock is not None else "RUNALWAYS_IDENTITY=path")
    from runalways._lockdir import private_target

    return private_target(target, chosen.lock, chosen.identity)


def refuse_lock_file(chosen: Settings, what: str) -> None:
    """A lock file means nothing to a backend that locks a name: say so rather than ignore it."""
    if chosen.backend.capabilities.identity == "name":
        from runalways.errors import SettingError

        raise SettingError(
            f"{what} chooses a lock file, but the {chosen.backend.name} backend locks a name, "
            "the same on every host: name the lock with RUNALWAYS_NAME or --name instead"
        )


def skipped(chosen: Settings, display: str) -> bool:
    """RUNALWAYS_SKIP: 1 skips the check, 2 skips it and says so (as SKIP_SYS_RUNALONE)."""
    if chosen.skip == 2:
        say(f"Skipping the runalways check for '{display}' (RUNALWAYS_SKIP=2)")
    return chosen.skip > 0


class Refused:
    """Another copy holds the lock: what :func:`take` found instead of taking it."""

    __slots__ = ("backend", "earlier", "reason")

    def __init__(self, backend: "Backend", earlier: "Holder | None", reason: str = "held") -> None:
        self.backend = backend
        #: A copy that runalways 0.1 started, holding the lock in its old place.
        self.earlier = earlier
        #: The skip's reason in the records: ``held``, or ``queued`` (merged into the pending run).
        self.reason = reason

    def holder(self) -> "Holder | None":
        """Who holds it, as far as the mechanism can tell: asked only when it is to be said."""
        return self.earlier or self.backend.holder()


def take(target: "Target", chosen: Settings, *, stale: bool = True) -> "Backend | Refused":
    """Take the lock on ``target`` as ``chosen`` says: the backend holding it, or :class:`Refused`.

    ``stale``: a holder older than RUNALWAYS_STALE_AFTER is reported (the process exits)
    or killed (the lock is taken) as RUNALWAYS_ON_STALE says; ``api.lock()``, which owns
    no process to end, leaves that to the guard.
    """
    backend = chosen.backend(target, chosen)
    taken = backend.take(chosen.timeout, lambda: _ready_to_hold(backend)) or (
        stale and _stale_taken_over(backend, chosen)
    )
    earlier = earlier_copy(backend) if taken else None
    if not taken or earlier is not None:
        return Refused(backend, earlier)
    return backend


def _ready_to_hold(backend: "Backend") -> None:
    """Before a wait for the lock: what a start that got it after a wait does, as far as it can
    be done now (its heartbeat's file found), so that the holder's exit wakes a start that is
    at its body in a few system calls."""
    from runalways._heartbeat import prepare

    prepare(backend)


def enforce(policy: str, target: "Target", chosen: Settings, *, until_exit: bool = True) -> "Backend":
    """Apply ``policy`` to ``target``: return holding the lock, or end the process.

    ``until_exit``: the lock is held until the process ends, whose exit status is the run's
    (the import guard, ``api.guard()``); ``runalways run`` reports its command's with :func:`ended`.
    """
    outcome = take(target, chosen)
    # Taken after a wait or a kill, perhaps long after this process started: a heartbeat
    # once it holds the lock, or a start checking for stale holders would count this
    # holder's age from its process start and could take it for a hung one.
    beats = chosen.stale_after is not None or chosen.timeout != 0
    if isinstance(outcome, Refused) and outcome.earlier is None and policy in (QUEUE, REPLACE):
        outcome = _queued(outcome, chosen) if policy == QUEUE else _replaced(outcome, chosen)
        beats = True
    if isinstance(outcome, Refused):
        record(chosen, "skip", outcome.backend, reason=outcome.reason)
        if policy == ALONE and not chosen.silent:
            # Say who holds it: "already running" alone leaves an operator guessing
            # whether a job hangs, or whether another user squats its lock.
            holder = outcome.holder()
            about = "" if holder is None else f" ({holder.describe()})"
            say(f"A copy of '{target.display}' is already running{about}")
        raise SystemExit(chosen.conflict_exit if chosen.conflict_exit is not None else int(policy == ALONE))
    backend = outcome
    if chosen.once_per is not None and backend.unlocked is None:
        _once_per_period(policy, target, chosen, backend, until_exit)
    guarding.append(backend)
    if chosen.fork == "close":
        backend.close_in_forked_children()
    if backend.unlocked is not None:  # never silently: the user chose to run unguarded
        say(f"runalways: '{target.display}' runs without the lock: {backend.unlocked}")
    if backend.notice is not None and not chosen.silent:
        say(f"runalways: {backend.notice}")
    if not chosen.silent:
        say(f"'{target.display}' has been started at {int(time.time())}")
    if chosen.recorded:
        from runalways import _report

        _runs[backend] = run = _report.begin(chosen, backend)
        if until_exit:
            _report.at_process_end(chosen, backend, run)
    if beats:
        from runalways._heartbeat import beat

        beat([backend], rate_limited=False)
    return backend


def _queued(refused: Refused, chosen: Settings) -> "Backend | Refused":
    """RUNALWAYS_POLICY=queue, the lock held: become the one pending run and wait, or be merged.

    A second lock, the job's pending lock (same backend, named :data:`PENDING` + the job's
    lock key), marks the one start that waits. Taken: wait for the job's lock (in the kernel
    for the local backends), and give the pending lock back once the job's lock is ours and
    before the run begins, so that a start arriving later becomes the next pending run and
    one arriving earlier was merged into a run that had not begun: no request is lost, no
    two runs overlap, no two wait. Held by another start: that start's run is still to
    come and covers this request, so this one is a skip (``queued``). A waiter killed while
    it waits loses its pending lock with its process (a lease: when it expires).
    """
    from runalways._values import Target

    backend = refused.backend
    key = backend.lock_key()
    pending = chosen.backend(Target(None, display=backend.target.display, name=PENDING + key), chosen)
    if not pending.try_acquire():
        return Refused(backend, None, "queued")
    try:
        _ready_to_hold(backend)
        # The copy may have ended between the two tries: the lock is taken at once then.
        if chosen.stale_after is None:
            taken = backend.acquire(None)
        else:
            # A hung holder would keep the pending run waiting for ever, and every later start
            # merged into it, without a word: look at the holder as a start does, now and then
            # (reported: the process exits, its pending lock with it; killed: the lock is ours).
            step = min(max(chosen.stale_after / 10, 1.0), 60.0)
            taken = False
            while not taken:
                taken = backend.acquire(step) or _stale_taken_over(backend, chosen)
    finally:
        pending.release()
    return backend if taken else refused


def _replaced(refused: Refused, chosen: Settings) -> "Backend | Refused":
    """RUNALWAYS_POLICY=replace, the lock held: stop the copy that holds it and take its place
    (``runalways._stale.replace``); Refused when another start replaced it at the same moment."""
    from runalways._stale import replace

    return refused.backend if replace(refused.backend, chosen) else refused


def _once_per_period(policy: str, target: "Target", chosen: Settings, backend: "Backend", until_exit: bool) -> None:
    """RUNALWAYS_ONCE_PER, holding the lock: return to run (the period's record written), or
    give the lock back and end the process as a skip, the period's run done (or unknown).
    The run's end goes into the record too, so that the period's later starts can say how it ended."""
    from runalways._period import Run, check, finish

    found = check(backend, chosen.once_per, chosen.once_per_unknown == "run")  # type: ignore[arg-type]
    if isinstance(found, Run):
        if until_exit:
            from runalways._ending import when_process_ends

            when_process_ends(lambda status: finish(backend, found, status))
        else:
            _periods[backend] = found
        return
    backend.release()
    record(chosen, "skip", backend, **found.fields())
    if policy == ALONE and not chosen.silent:
        say(found.message(target.display, getattr(backend, "engine", backend.name)))
    raise SystemExit(chosen.conflict_exit if chosen.conflict_exit is not None else int(policy == ALONE))


def earlier_copy(backend: "Backend") -> "Holder | None":
    """After ``backend`` took its lock: a copy of the job that runalways 0.1 started, holding
    the same lock file in 0.1's place (``_lockdir.earlier_holder``). The lock is then given
    back: that copy runs, so this one must not."""
    # Only a lock file runalways names, in the lock directory, can have had another place.
    if not backend.target.create or "runalways._lockdir" not in sys.modules:
        return None
    from runalways._lockdir import earlier_holder

    found = earlier_holder(backend)
    if found is None:
        return None
    backend.release()
    return found[1]


def _stale_taken_over(backend: "Backend", chosen: Settings) -> bool:
    """RUNALWAYS_STALE_AFTER: report a holder held too long (exit), or kill it and take the lock (True)."""
    if chosen.stale_after is None:
        return False
    from runalways._stale import take_over

    return take_over(backend, chosen)


def record(chosen: Settings, event: str, backend: "Backend", **fields: object) -> None:
    """One event of the job for the records the settings name (RUNALWAYS_LOG, RUNALWAYS_METRICS,
    RUNALWAYS_PING: ``runalways._report``); nothing, and nothing loaded, without them."""
    if chosen.recorded:
        from runalways._report import report

        report(chosen, event, backend, fields)


def ended(chosen: Settings, backend: "Backend", status: int, output: "bytes | None" = None) -> None:
    """The run that holds ``backend`` (taken by :func:`enforce` with ``until_exit=False``) ended with ``status``."""
    period = _periods.pop(backend, None)
    if period is not None:
        from runalways._period import finish

        finish(backend, period, status)
    run = _runs.pop(backend, None)
    if run is not None:
        from runalways._report import end

        end(chosen, backend, run, status, output)


def arm_deadline(chosen: Settings) -> None:
    """RUNALWAYS_TIMEOUT for a guarded script (``runalways run`` keeps its own, on the command's process group)."""
    if chosen.deadline is None:
        return
    from runalways._kernel_kill import arm_deadline as arm

    try:
        arm(chosen.deadline, chosen.kill_grace)
    except OSError as error:
        from runalways.errors import SettingError

        raise SettingError(f"RUNALWAYS_TIMEOUT cannot be kept here: {error}") from None


def guard_import(policy: str, module: str, frame: "FrameType", reader: "Reader") -> None:
    """Run ``policy`` if the module whose frame this is was imported by the main script.

    Called from the bodies of ``runalways/__init__.py`` and ``runalways/alone.py``, which
    hand in the package's import-statement reader. Every error ends the process with one
    line and status 2, except in an interactive session, where it is raised so that the
    session survives.
    """
    main_globals = _main_script.main_importer(frame, module, reader)
    if main_globals is None:
        return
    try:
        chosen = choose(os.environ)
        if not skipped(chosen, sys.argv[0] if sys.argv else ""):
            enforce(chosen.policy or policy, script_target(main_globals, chosen), chosen)
            arm_deadline(chosen)
    except Exception as error:
        # runalways.errors is loaded only when something went wrong: every import of
        # a module costs each cron start, and this one is not needed when nothing fails.
        from runalways.errors import RunAlwaysError

        interactive = _main_script.interactive()
        if isinstance(error, OSError) and not interactive:
            fail(system_failure(error))
        if not isinstance(error, RunAlwaysError) or interactive:
            raise
        fail(str(error))


def system_failure(error: "OSError") -> str:
    """One line for an OSError nothing more specific caught: a full descriptor table while
    loading a backend's module, say. The guard runs before the script's own code, so it is
    the environment's, never the script's."""
    where = f" ({error.filename})" if error.filename else ""
    return f"the system refused what runalways needed to check the lock: {error.strerror or error}{where}"
