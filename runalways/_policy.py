"""The one module that decides what happens: continue, exit 0, exit 1, wait, or fail.

Two policies, after the Perl modules runalways ports:

* **always** (Sys::RunAlways): another copy holds the lock, so this one exits 0 without
  a word: cron starts the script every minute and one copy is always running.
* **alone** (Sys::RunAlone): another copy holds the lock, so this one says
  ``A copy of '<script>' is already running`` and exits 1.

Taking the lock prints ``'<script>' has been started at <epoch>`` unless silent. Any
error (a bad setting, no script file, a lock that fails for another reason than
contention) prints one line and exits 2. Backends never print or exit; this module does.

Only the main script is guarded. ``import runalways`` guards when, and only when, the
import statement that loads it is a plain ``import runalways`` (``as`` allowed) executed
by the code of the ``__main__`` module. Everything else guards nothing:

* a library or a test module importing runalways (its ``__name__`` is not ``__main__``);
* ``import runalways.api`` or ``from runalways import api`` (the statement names a
  submodule or imports names from the package);
* multiprocessing children under ``spawn`` and ``forkserver`` (and the forkserver
  process itself), which re-run the main script as ``__mp_main__``;
* the ``runalways`` console script and ``python -m runalways``.

Two exceptions keep that rule from failing silently. When something loads runalways
before the main script's own plain ``import runalways`` line (a library imported first),
that line would load nothing; the guard runs at the first load instead. And a packaged
tool's ``__main__`` is a generated launcher: the plain ``import runalways`` of the module
it imports its entry point from guards the tool (``_tool_launched``).

A plain start (the main script's own ``import runalways``, no setting) never gets here:
``runalways/__init__.py`` decides it alone, and hands this module every other start. The
import statement is read by that module's reader (its home is the package itself, as
the one module a plain start loads), and decoded with dis only where it cannot read it.

This module imports the settings parsers and the errors only when a setting is given or
something fails, and quotes its annotations rather than import ``__future__`` (about
0.1 ms a start each).
"""

import os
import sys
import time

from runalways import _importer as importer
from runalways import _read_import, _read_statement, _this_layout
from runalways.backends import default_name, get
from runalways.backends.base import Target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, FrameType
    from typing import Any, Dict, Iterator, Mapping, NoReturn, Optional, Tuple

    from runalways._settings import Retry, RetryValue
    from runalways.backends.base import Backend, Holder

    Statement = Tuple[str, Optional[Tuple[str, ...]]]

ALWAYS = "always"
ALONE = "alone"

#: Backends holding a lock for this process; kept referenced until the process ends.
held: "list[Backend]" = []


class Options:
    """Settings after the environment and the caller's keywords are merged and checked."""

    __slots__ = (
        "backend",
        "conflict_exit",
        "deadline",
        "fork",
        "identity",
        "kill_grace",
        "lock",
        "log",
        "on_stale",
        "silent",
        "skip",
        "stale_after",
        "stale_exit",
        "timeout",
    )

    def __init__(self, backend: "type[Backend]") -> None:
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
        #: Seconds the job may run before it gets SIGTERM (RUNALWAYS_TIMEOUT); None: no deadline.
        self.deadline: float | None = None
        #: Seconds from SIGTERM to SIGKILL, at a deadline and for a stale holder. The
        #: defaults here repeat _settings.KILL_GRACE and STALE_EXIT: a start without
        #: settings does not import _settings.
        self.kill_grace = 10.0
        #: A holder older than this many seconds (or its last heartbeat) is stale; None: never.
        self.stale_after: float | None = None
        #: "report" a stale holder and exit stale_exit, or "kill" it and run.
        self.on_stale = "report"
        self.stale_exit = 4
        #: "syslog" or a file that every start, skip, stale holder and deadline is recorded in.
        self.log: str | None = None


def options(
    environ: "Mapping[str, str]",
    *,
    backend: "str | None" = None,
    silent: "bool | None" = None,
    retry: "RetryValue" = None,
    wait: "float | None" = None,
    identity: "str | None" = None,
    fork: "str | None" = None,
    conflict_exit: "int | None" = None,
    deadline: "float | str | None" = None,
    kill_grace: "float | str | None" = None,
    stale_after: "float | str | None" = None,
    environment_wins: bool = True,
) -> "Options":
    """Merge the environment with the caller's keywords, checking both.

    For the import guard and the API the environment wins over the code, as
    SKIP/SILENT/RETRY_SYS_RUNALONE do in Perl, so an operator can change a deployed
    script's behaviour; on the command line the options typed win.
    """
    given = (backend, silent, retry, wait, identity, fork, conflict_exit, deadline, kill_grace, stale_after)
    if given == (None,) * len(given) and not any(key.startswith("RUNALWAYS_") for key in environ):
        # The common cron start: nothing to parse, so the parsers are not even imported.
        return Options(get(default_name()))
    from runalways import _settings
    from runalways.errors import SettingError

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
    code_deadline = None if deadline is None else _settings.parse_deadline(str(deadline), "timeout")
    code_grace = None if kill_grace is None else _settings.parse_seconds(str(kill_grace), "kill_grace")
    code_stale = None if stale_after is None else _settings.parse_deadline(str(stale_after), "stale_after")
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
    chosen.deadline = env.deadline if from_environment(env.deadline, code_deadline) else code_deadline
    grace = env.kill_grace if from_environment(env.kill_grace, code_grace) else code_grace
    chosen.kill_grace = _settings.KILL_GRACE if grace is None else grace
    chosen.stale_after = env.stale_after if from_environment(env.stale_after, code_stale) else code_stale
    if chosen.stale_after is None and (env.on_stale is not None or env.stale_exit is not None):
        raise SettingError(
            "RUNALWAYS_ON_STALE and RUNALWAYS_STALE_EXIT say what to do with a stale holder, "
            "but no limit says when one is stale: set RUNALWAYS_STALE_AFTER (such as 2h) too"
        )
    chosen.on_stale = env.on_stale or "report"
    if env.kill_grace is not None and chosen.deadline is None and chosen.on_stale != "kill":
        raise SettingError(
            "RUNALWAYS_KILL_GRACE is the time from SIGTERM to SIGKILL, but nothing here sends SIGTERM: "
            "set RUNALWAYS_TIMEOUT, or RUNALWAYS_STALE_AFTER with RUNALWAYS_ON_STALE=kill, too"
        )
    chosen.stale_exit = _settings.STALE_EXIT if env.stale_exit is None else env.stale_exit
    chosen.log = env.log
    return chosen


def _timeout(retry: "Retry | None") -> float:
    """Sys::RunAlone's retry N,S as a wait of up to N*S seconds.

    The waiter gets in the moment the lock is free rather than at the next S-second mark.
    """
    count, pause = retry or (0, 0.0)
    return count * pause


def script_target(main_globals: "dict[str, Any]", chosen: "Options") -> "Target":
    """The file to lock for the main script: the script itself unless RUNALWAYS_LOCK or
    RUNALWAYS_IDENTITY ask for a private lock file."""
    return lock_for_script(main_script_target(main_globals), chosen)


def lock_for_script(target: "Target", chosen: "Options") -> "Target":
    """``target``, a script, or the private lock file RUNALWAYS_LOCK or RUNALWAYS_IDENTITY choose for it."""
    if chosen.lock is None and chosen.identity == "inode":
        return target
    refuse_lock_file(chosen, "RUNALWAYS_LOCK" if chosen.lock is not None else "RUNALWAYS_IDENTITY=path")
    from runalways._lockdir import private_target

    return private_target(target, chosen.lock, chosen.identity)


def refuse_lock_file(chosen: "Options", what: str) -> None:
    """A lock file means nothing to a backend that locks a name: say so rather than ignore it."""
    if chosen.backend.capabilities.identity == "name":
        from runalways.errors import SettingError

        raise SettingError(
            f"{what} chooses a lock file, but the {chosen.backend.name} backend locks a name, "
            "the same on every host: name the lock with RUNALWAYS_NAME or --name instead"
        )


def skipped(chosen: "Options", display: str) -> bool:
    """RUNALWAYS_SKIP: 1 skips the check, 2 skips it and says so (as SKIP_SYS_RUNALONE)."""
    if chosen.skip == 2:
        _say(f"Skipping the runalways check for '{display}' (RUNALWAYS_SKIP=2)")
    return chosen.skip > 0


def enforce(policy: str, target: "Target", chosen: "Options") -> "Backend":
    """Apply ``policy`` to ``target``: return holding the lock, or end the process."""
    backend = chosen.backend(target)
    taken = backend.take(chosen.timeout) or _stale_taken_over(backend, chosen)
    earlier = earlier_copy(backend) if taken else None
    if not taken or earlier is not None:
        record(chosen, "skip", backend)
        if policy == ALONE and not chosen.silent:
            # Say who holds it: "already running" alone leaves an operator guessing
            # whether a job hangs, or whether another user squats its lock.
            holder = earlier or backend.holder()
            about = "" if holder is None else f" ({holder.describe()})"
            _say(f"A copy of '{target.display}' is already running{about}")
        raise SystemExit(chosen.conflict_exit if chosen.conflict_exit is not None else int(policy == ALONE))
    held.append(backend)
    if chosen.fork == "close":
        backend.close_in_forked_children()
    if backend.unlocked is not None:  # never silently: the user chose to run unguarded
        _say(f"runalways: '{target.display}' runs without the lock: {backend.unlocked}")
    if backend.notice is not None and not chosen.silent:
        _say(f"runalways: {backend.notice}")
    if not chosen.silent:
        _say(f"'{target.display}' has been started at {int(time.time())}")
    record(chosen, "start", backend)
    if chosen.stale_after is not None or chosen.timeout != 0:
        # Taken after a wait or a kill, perhaps long after this process started: a
        # heartbeat now, or a start checking for stale holders would count this holder's
        # age from its process start and could take it for a hung one.
        from runalways._heartbeat import beat

        beat([backend], rate_limited=False)
    return backend


def earlier_copy(backend: "Backend") -> "Holder | None":
    """After ``backend`` took its lock: a copy of the job that runalways 0.1 started, holding
    the same lock file in 0.1's place (``_lockdir.earlier_holder``). The lock is then given
    back: that copy runs, so this one must not."""
    if "runalways._lockdir" not in sys.modules:  # only a lock file in the lock directory loads it
        return None
    from runalways._lockdir import earlier_holder

    found = earlier_holder(backend)
    if found is None:
        return None
    backend.release()
    return found[1]


def _stale_taken_over(backend: "Backend", chosen: "Options") -> bool:
    """RUNALWAYS_STALE_AFTER: report a holder held too long (exit), or kill it and take the lock (True)."""
    if chosen.stale_after is None:
        return False
    from runalways._stale import take_over

    return take_over(backend, chosen)


def record(chosen: "Options", event: str, backend: "Backend", **fields: object) -> None:
    """RUNALWAYS_LOG: one line about ``event`` in the job's record; nothing without the setting."""
    if chosen.log is not None:
        from runalways._eventlog import record as write

        write(chosen.log, event, backend, fields)


def arm_deadline(chosen: "Options") -> None:
    """RUNALWAYS_TIMEOUT for a guarded script (``runalways run`` keeps its own, on the command's process group)."""
    if chosen.deadline is None:
        return
    from runalways._fence import arm_deadline as arm

    try:
        arm(chosen.deadline, chosen.kill_grace)
    except OSError as error:
        from runalways.errors import SettingError

        raise SettingError(f"RUNALWAYS_TIMEOUT cannot be kept here: {error}") from None


def guard_import(policy: str, module: str, frame: "FrameType") -> None:
    """Run ``policy`` if the module whose frame this is was imported by the main script.

    Called from the bodies of ``runalways/__init__.py`` and ``runalways/alone.py``.
    Every error ends the process with one line and status 2, except in an interactive
    session, where it is raised so that the session survives.
    """
    main_globals = main_importer(frame, module)
    if main_globals is None:
        return
    try:
        chosen = options(os.environ)
        if not skipped(chosen, sys.argv[0] if sys.argv else ""):
            enforce(policy, script_target(main_globals, chosen), chosen)
            arm_deadline(chosen)
    except Exception as error:
        # runalways.errors is loaded only when something went wrong: every import of
        # a module costs each cron start, and this one is not needed when nothing fails.
        from runalways.errors import RunAlwaysError

        if isinstance(error, OSError) and not interactive():
            fail(system_failure(error))
        if not isinstance(error, RunAlwaysError) or interactive():
            raise
        fail(str(error))


def system_failure(error: "OSError") -> str:
    """One line for an OSError nothing more specific caught: a full descriptor table while
    loading a backend's module, say. The guard runs before the script's own code, so it is
    the environment's, never the script's."""
    where = f" ({error.filename})" if error.filename else ""
    return f"the system refused what runalways needed to check the lock: {error.strerror or error}{where}"


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(message: str, status: int = 2) -> "NoReturn":
    """One line on stderr, then exit: never a traceback."""
    _say(f"runalways: {message}")
    raise SystemExit(status)


# Who imported runalways, and which file is the main script.


def import_statement(frame: "FrameType") -> "Statement | None":
    """``(module name, from-list)`` of the import statement ``frame`` is executing.

    Read as the plain start reads it; anything that reader cannot read (operands of 256
    and more, an unknown layout) is decoded with dis: correct, but importing dis alone
    costs several milliseconds, so never for an ordinary script.
    """
    return _read_import(frame) or _decoded_statement(frame)


def _decoded_statement(frame: "FrameType") -> "Statement | None":
    for start, offset, statement in _import_statements(frame.f_code):
        if frame.f_lasti in (start, offset):
            return statement
    return None


def _import_statements(code: "CodeType") -> "list[tuple[int, int, Statement]]":
    """``(start, offset, (module name, from-list))`` of every import statement in ``code``.

    ``start`` is where the instruction's EXTENDED_ARG prefixes begin: Python 3.9 and 3.10
    point ``f_lasti`` there, later versions at the IMPORT_NAME itself (``offset``). Read
    as the plain start reads one statement when every statement in ``code`` is laid out
    so (``import runalways.alone`` would otherwise cost every start of its script the
    milliseconds of importing dis), and decoded with dis when one is not.
    """
    layout = _this_layout()
    if layout:
        raw, found = code.co_code, []
        # Instructions (and the caches after some, opcode 0) are two bytes from 3.6 on,
        # so every even offset holds an opcode: no operand is taken for an IMPORT_NAME.
        for offset in range(0, len(raw), 2):
            if raw[offset] == layout[0]:
                statement = _read_statement(code, offset, layout)
                if statement is None:
                    break
                found.append((offset, offset, statement))
        else:
            return found
    return list(_decoded_import_statements(code))


def _decoded_import_statements(code: "CodeType") -> "Iterator[tuple[int, int, Statement]]":
    import dis

    fromlist = None  # the constant loaded just before each IMPORT_NAME
    start = None  # the first EXTENDED_ARG before the current instruction
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME":
            yield (instruction.offset if start is None else start), instruction.offset, (instruction.argval, fromlist)
        if instruction.opname == "EXTENDED_ARG":
            start = instruction.offset if start is None else start
        else:
            start = None
            fromlist = instruction.argval if instruction.opname.startswith("LOAD_CONST") else None


def _imported_later(frame: "FrameType", wanted: str) -> "dict[str, Any] | None":
    """The main script's globals if its code, further on, has a plain ``import <wanted>``.

    Something loaded runalways before that line did (a library imported first, or the
    script's own ``import runalways.api``), so the line itself would load nothing and
    guard nothing, silently. The guard runs now instead: the script asked for it.
    """
    main = None
    outer: FrameType | None = frame
    while outer is not None:  # the outermost module-level frame of __main__
        if outer.f_globals.get("__name__") == "__main__" and outer.f_code.co_name == "<module>":
            main = outer
        outer = outer.f_back
    if main is None or wanted not in main.f_code.co_names:  # the common case: no dis needed
        return None
    for _, offset, statement in _import_statements(main.f_code):
        if offset > main.f_lasti and statement == (wanted, None):
            return main.f_globals
    return None


def main_importer(frame: "FrameType", wanted: str) -> "dict[str, Any] | None":
    """The main script's globals if ``frame`` (a module being imported) was imported by
    ``import <wanted>`` in the main script, else None."""
    caller = importer(frame)
    if caller is None:
        return None
    if "." not in wanted:  # the package itself: only a plain ``import runalways [as x]``
        if caller.f_globals.get("__name__") == "__main__":
            if import_statement(caller) == (wanted, None):
                return caller.f_globals
            return _imported_later(caller, wanted)
        return _imported_later(caller, wanted) or _tool_launched(caller, wanted)
    if caller.f_globals.get("__name__") != "__main__":
        return None
    statement = import_statement(caller)
    if statement is None:
        return None
    name, fromlist = statement
    package, _, submodule = wanted.rpartition(".")
    if name == wanted or (name == package and fromlist is not None and submodule in fromlist):
        return caller.f_globals
    return None


def _tool_launched(caller: "FrameType", wanted: str) -> "dict[str, Any] | None":
    """The launcher's globals if ``caller`` runs for a tool's entry-point module that imports runalways plainly.

    A pip-installed console script runs a generated launcher as ``__main__``::

        from mytool.cli import main
        if __name__ == "__main__":
            sys.exit(main())

    so the ``import runalways`` that the tool's author put first in ``mytool/cli.py`` runs
    in a module that is not ``__main__``, and would guard nothing. It guards the tool
    (the launcher, the file cron runs) when it is a module-level statement of the module
    the ``__main__`` module is importing at that moment, and that ``__main__`` is the
    tool's launcher: a console or GUI script whose installed entry point names that
    module, or the ``__main__.py`` of that module's package (``python -m mytool``). As for
    the main script (R4.6), when something that module imported first loaded runalways,
    the guard runs then, on behalf of its own ``import runalways`` still to come. A
    library the tool imports, or one that an ordinary script imports, guards nothing.
    """
    entry, launcher = caller, importer(caller)
    while launcher is not None and launcher.f_globals.get("__name__") != "__main__":
        entry, launcher = launcher, importer(launcher)
    if launcher is None or entry.f_code.co_name != "<module>" or launcher.f_code.co_name != "<module>":
        return None
    module = str(entry.f_globals.get("__name__"))
    statement = import_statement(launcher)
    if statement is None or statement[0] != module:
        return None
    if entry is caller and import_statement(caller) == (wanted, None):
        pass  # the entry point's own plain ``import runalways``
    elif wanted not in entry.f_code.co_names or not any(
        offset > entry.f_lasti and found == (wanted, None) for _, offset, found in _import_statements(entry.f_code)
    ):
        return None
    spec = launcher.f_globals.get("__spec__")
    if spec is not None and spec.name.endswith(".__main__"):  # python -m package
        package = spec.name[: -len(".__main__")]
        return launcher.f_globals if module == package or module.startswith(package + ".") else None
    return launcher.f_globals if _console_script_of(module, launcher.f_globals) else None


def _console_script_of(module: str, launcher_globals: "dict[str, Any]") -> bool:
    """Whether an installed console or GUI script named as the launcher has its entry point in ``module``."""
    import re

    from runalways.backends import entry_points

    launcher = os.path.basename(str(launcher_globals.get("__file__") or ""))
    name = re.sub(r"(-script\.pyw?|\.exe)$", "", launcher)
    for group in ("console_scripts", "gui_scripts"):
        for entry in entry_points(group):
            if entry.name == name and entry.value.partition(":")[0].strip() == module:
                return True
    return False


def interactive() -> bool:
    """A REPL, ``python -i``, IPython or Jupyter: raise there instead of exiting."""
    import builtins

    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or hasattr(builtins, "__IPYTHON__")


def main_script_target(main_globals: "Dict[str, Any]") -> "Target":
    """The file that stands for the main script: what Sys::RunAlways's DATA handle was.

    The script's own file (``python script.py``, ``python ./link.py``, ``python -m
    pkg.mod``), the archive of a zipapp, the executable of a frozen application.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if getattr(sys, "frozen", False):
        path: str | None = sys.executable
    else:
        path = getattr(main_globals.get("__loader__"), "archive", None) or main_globals.get("__file__")
    if not path or path.startswith("<"):  # "<stdin>", "<string>": code with no file behind it
        from runalways.errors import NoScriptError

        raise NoScriptError(no_script_message(argv0))
    return Target(path, display=argv0 or path, name=os.path.basename(path))


def no_script_message(argv0: str) -> str:
    if argv0 == "-c":
        how = "Python was given the code with -c"
    elif argv0 in ("-", ""):
        how = "Python read the code from standard input or an interactive prompt"
    else:
        how = "the main module has no file (an embedded interpreter?)"
    return (
        f"no script file to lock: {how}; save the code in a file and run that file, "
        "or guard a command with 'runalways run -- COMMAND'"
    )
