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
    from typing import Mapping, NoReturn

    from runalways._settings import Retry, RetryValue
    from runalways.backends.base import Backend, Target

ALWAYS = "always"
ALONE = "alone"

#: Backends holding a lock for this process; kept referenced until the process ends.
held: list[Backend] = []


class Options:
    """Settings after the environment and the caller's keywords are merged and checked."""

    __slots__ = ("backend", "silent", "skip", "timeout")

    def __init__(self, backend: type[Backend], silent: bool | None, timeout: float | None, skip: int) -> None:
        self.backend = backend
        self.silent = bool(silent)
        #: How long to wait for the lock: 0 = one try, None = for ever.
        self.timeout = timeout
        self.skip = skip


def options(
    environ: Mapping[str, str],
    *,
    backend: str | None = None,
    silent: bool | None = None,
    retry: RetryValue = None,
    wait: float | None = None,
    environment_wins: bool = True,
) -> Options:
    """Merge the environment with the caller's keywords.

    For the import guard and the API the environment wins over the code, as
    SKIP/SILENT/RETRY_SYS_RUNALONE do in Perl, so an operator can change a deployed
    script's behaviour; on the command line the options typed win.
    """
    if retry is not None and wait is not None:
        raise SettingError("give retry or wait, not both (retry=N,S waits up to N*S seconds)")
    if wait is not None and not wait >= 0:
        raise SettingError(f"wait={wait!r} is not a number of seconds; use 0 or more (inf: for ever)")
    code_timeout = wait if retry is None else _timeout(_settings.parse_retry(retry, "retry"))
    env = _settings.FromEnvironment(environ)

    def from_environment(environment_value: object, code_value: object) -> bool:
        return environment_value is not None and (environment_wins or code_value is None)

    if from_environment(env.backend, backend):
        name, variable = str(env.backend), "RUNALWAYS_BACKEND"
    else:
        name, variable = backend or default_name(), "backend"
    backend_class = get(name, variable)
    _settings.check_unknown(environ, backend_class.settings)
    if from_environment(env.silent, silent):
        silent = env.silent
    timeout = _timeout(env.retry) if from_environment(env.retry, code_timeout) else code_timeout
    return Options(backend_class, silent, None if timeout == float("inf") else timeout or 0.0, env.skip)


def _timeout(retry: Retry | None) -> float:
    """Sys::RunAlone's retry N,S as a wait of up to N*S seconds.

    The waiter gets in the moment the lock is free rather than at the next S-second mark.
    """
    count, pause = retry or (0, 0.0)
    return count * pause


def take(target: Target, chosen: Options) -> Backend | None:
    """The backend holding the lock on ``target``, or None if another copy has it."""
    backend = chosen.backend(target)
    if backend.take(chosen.timeout):
        held.append(backend)
        return backend
    return None


def skipped(chosen: Options, display: str) -> bool:
    """RUNALWAYS_SKIP: 1 skips the check, 2 skips it and says so (as SKIP_SYS_RUNALONE)."""
    if chosen.skip == 2:
        _say(f"Skipping the runalways check for '{display}' (RUNALWAYS_SKIP=2)")
    return chosen.skip > 0


def enforce(policy: str, target: Target, chosen: Options) -> Backend:
    """Apply ``policy`` to ``target``: return holding the lock, or end the process."""
    backend = take(target, chosen)
    if backend is None:
        if policy == ALWAYS:
            raise SystemExit(0)
        if not chosen.silent:
            _say(f"A copy of '{target.display}' is already running")
        raise SystemExit(1)
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
            enforce(policy, _script.script_target(main_globals), chosen)
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
