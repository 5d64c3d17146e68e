"""The one module that decides what happens: continue, exit 0, exit 1, wait, or fail.

Two policies, after the Perl modules runalways ports:

* **always** (Sys::RunAlways): another copy holds the lock, so this one exits 0 without
  a word: cron starts the script every minute and one copy is always running.
* **alone** (Sys::RunAlone): another copy holds the lock, so this one says
  ``A copy of '<script>' is already running`` and exits 1.

Taking the lock prints ``'<script>' has been started at <epoch>`` unless silent. Any
error (a bad setting, no script file, a lock that fails for another reason than
contention) prints one line and exits 2. Backends never print or exit; this module does.
"""

from __future__ import annotations

import os
import sys
import time

from runalways import _settings
from runalways.backends import default_name, get
from runalways.errors import RunAlwaysError, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, Mapping, NoReturn

    from runalways._settings import Retry, RetryValue
    from runalways.backends.base import Backend, Target

ALWAYS = "always"
ALONE = "alone"

#: Backends holding a lock for this process; kept referenced until the process ends.
held: list[Backend] = []


class Options:
    """Settings after the environment and the caller's keywords are merged and checked."""

    __slots__ = ("backend", "conflict_exit", "fork", "identity", "lock", "silent", "skip", "timeout")

    def __init__(self, backend: type[Backend]) -> None:
        self.backend = backend
        self.silent = False
        #: How long to wait for the lock: 0 = one try, None = for ever.
        self.timeout: float | None = 0.0
        self.skip = 0
        #: None, "private", or the path of a lock file to lock instead of the script.
        self.lock: str | None = None
        self.identity = "inode"
        self.fork = "inherit"
        #: The exit status when another copy holds the lock; None: the policy's own.
        self.conflict_exit: int | None = None


def options(
    environ: Mapping[str, str],
    *,
    backend: str | None = None,
    silent: bool | None = None,
    retry: RetryValue = None,
    wait: float | None = None,
    identity: str | None = None,
    fork: str | None = None,
    conflict_exit: int | None = None,
    environment_wins: bool = True,
) -> Options:
    """Merge the environment with the caller's keywords, checking both.

    For the import guard and the API the environment wins over the code, as
    SKIP/SILENT/RETRY_SYS_RUNALONE do in Perl, so an operator can change a deployed
    script's behaviour; on the command line the options typed win.
    """
    if retry is not None and wait is not None:
        raise SettingError("give retry or wait, not both (retry=N,S waits up to N*S seconds)")
    if wait is not None and not wait >= 0:
        raise SettingError(f"wait={wait!r} is not a number of seconds; use 0 or more (inf: for ever)")
    if identity is not None:
        identity = _settings.parse_choice(identity, "identity", _settings.IDENTITIES)
    if fork is not None:
        fork = _settings.parse_choice(fork, "fork", _settings.FORK_POLICIES)
    if conflict_exit is not None:
        conflict_exit = _settings.parse_exit_code(str(conflict_exit), "conflict_exit")
    code_timeout = wait if retry is None else _timeout(_settings.parse_retry(retry, "retry"))
    env = _settings.FromEnvironment(environ)

    def from_environment(environment_value: object, code_value: object) -> bool:
        return environment_value is not None and (environment_wins or code_value is None)

    if from_environment(env.backend, backend):
        name, variable = str(env.backend), "RUNALWAYS_BACKEND"
    else:
        name, variable = backend or default_name(), "backend"
    chosen = Options(get(name, variable))
    _settings.check_unknown(environ, chosen.backend.settings)
    chosen.silent = bool(env.silent if from_environment(env.silent, silent) else silent)
    timeout = _timeout(env.retry) if from_environment(env.retry, code_timeout) else code_timeout
    chosen.timeout = None if timeout == float("inf") else timeout or 0.0
    chosen.skip = env.skip
    chosen.lock = env.lock
    chosen.identity = (env.identity if from_environment(env.identity, identity) else identity) or "inode"
    chosen.fork = (env.fork if from_environment(env.fork, fork) else fork) or "inherit"
    chosen.conflict_exit = env.conflict_exit if from_environment(env.conflict_exit, conflict_exit) else conflict_exit
    return chosen


def _timeout(retry: Retry | None) -> float:
    """Sys::RunAlone's retry N,S as a wait of up to N*S seconds.

    The waiter gets in the moment the lock is free rather than at the next S-second mark.
    """
    count, pause = retry or (0, 0.0)
    return count * pause


def script_target(main_globals: dict[str, Any], chosen: Options) -> Target:
    """The file to lock for the main script: the script itself unless RUNALWAYS_LOCK or
    RUNALWAYS_IDENTITY ask for a private lock file."""
    from runalways import _script

    target = _script.script_target(main_globals)
    if chosen.lock is None and chosen.identity == "inode":
        return target
    refuse_lock_file(chosen, "RUNALWAYS_LOCK" if chosen.lock is not None else "RUNALWAYS_IDENTITY=path")
    from runalways._lockdir import private_target

    return private_target(target, chosen.lock, chosen.identity)


def refuse_lock_file(chosen: Options, what: str) -> None:
    """A lock file means nothing to a backend that locks a name: say so rather than ignore it."""
    if chosen.backend.capabilities.identity == "name":
        raise SettingError(
            f"{what} chooses a lock file, but the {chosen.backend.name} backend locks a name, "
            "the same on every host: name the lock with RUNALWAYS_NAME or --name instead"
        )


def skipped(chosen: Options, display: str) -> bool:
    """RUNALWAYS_SKIP: 1 skips the check, 2 skips it and says so (as SKIP_SYS_RUNALONE)."""
    if chosen.skip == 2:
        _say(f"Skipping the runalways check for '{display}' (RUNALWAYS_SKIP=2)")
    return chosen.skip > 0


def enforce(policy: str, target: Target, chosen: Options) -> Backend:
    """Apply ``policy`` to ``target``: return holding the lock, or end the process."""
    backend = chosen.backend(target)
    if not backend.take(chosen.timeout):
        if policy == ALONE and not chosen.silent:
            # Say who holds it: "already running" alone leaves an operator guessing
            # whether a job hangs, or whether another user squats its lock.
            holder = backend.holder()
            about = "" if holder is None else f" ({holder.describe()})"
            _say(f"A copy of '{target.display}' is already running{about}")
        raise SystemExit(chosen.conflict_exit if chosen.conflict_exit is not None else int(policy == ALONE))
    held.append(backend)
    if chosen.fork == "close":
        backend.close_in_forked_children()
    if backend.unlocked is not None:  # never silently: the user chose to run unguarded
        _say(f"runalways: '{target.display}' runs without the lock: {backend.unlocked}")
    if not chosen.silent:
        _say(f"'{target.display}' has been started at {int(time.time())}")
    return backend


def guard_import(policy: str, module: str, frame: FrameType) -> None:
    """Run ``policy`` if the module whose frame this is was imported by the main script.

    Called from the bodies of ``runalways/__init__.py`` and ``runalways/alone.py``.
    Every error ends the process with one line and status 2, except in an interactive
    session, where it is raised so that the session survives.
    """
    from runalways import _script

    main_globals = _script.main_importer(frame, module)
    if main_globals is None:
        return
    try:
        chosen = options(os.environ)
        if not skipped(chosen, sys.argv[0] if sys.argv else ""):
            enforce(policy, script_target(main_globals, chosen), chosen)
    except RunAlwaysError as error:
        if _script.interactive():
            raise
        fail(str(error))


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(message: str, status: int = 2) -> NoReturn:
    """One line on stderr, then exit: never a traceback."""
    _say(f"runalways: {message}")
    raise SystemExit(status)
