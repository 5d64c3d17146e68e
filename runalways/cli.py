"""The ``runalways`` command: guard any command, show who holds a lock, list backends.

    runalways run [--alone] [--wait S | --retry N[,S]] [--silent] [--backend NAME]
                  [--timeout DURATION [--kill-after DURATION]] [--stale-after DURATION]
                  [--lock PATH | --name NAME] -- COMMAND [ARGS...]
    runalways status [--json] [--stale-after DURATION] [--backend NAME] (SCRIPT | --lock PATH | --name NAME)
    runalways list [--json] [--stale-after DURATION]
    runalways backends [--json]
    runalways completion (bash | zsh)
    runalways --version

The exit statuses of each command are in :data:`EXIT_STATUSES`, which its ``--help``
prints and spec/SPEC.md's table of R11 repeats: ``run`` exits with the command's status
(124 when its deadline passed, 126 when it cannot run, 127 when it is not found, as
timeout(1) and shells do), and 4 when a stale copy holds the lock; ``status`` 0, 3 (as
``systemctl is-active``) or 4 (stale); every error of runalways itself prints one line
and exits 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

from runalways import __version__, _policy
from runalways._lockdir import earlier_holder, lock_file_target
from runalways._messages import fail, say
from runalways._settings import Settings, parse_deadline, parse_exit_code, parse_retry, parse_seconds
from runalways._values import Holder, Target
from runalways.backends._filelock import FileLockBackend
from runalways.backends.base import Backend
from runalways.errors import RunAlwaysError, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Callable, NoReturn, Sequence

NOT_RUNNING = 3
#: The exit status of status and of a start that find the holder stale (RUNALWAYS_STALE_EXIT for a start).
STALE = 4
#: The exit status of a command stopped at its deadline, as timeout(1)'s.
TIMED_OUT = 124
#: As POSIX shells, env(1), timeout(1) and flock(1): the command was found but cannot run,
#: or was not found at all. runalways's own errors keep status 2.
CANNOT_RUN = 126
NOT_FOUND = 127
READER_GONE = 128 + 13  # SIGPIPE

_USAGE_ERROR = ("2", "an error of runalways itself (a bad option or setting, a lock that fails): one line on stderr")
_READER_GONE = (str(READER_GONE), "the reader of the output went away (| head), as for SIGPIPE")

#: Every status each command can exit with: its --help lists them, and spec/SPEC.md's table
#: must list the same (spec/conformance/test_cli.py compares the two).
EXIT_STATUSES = {
    "run": [
        ("N", "the command's own status; 128+N when signal N killed it"),
        ("0", "another copy holds the lock (1 with --alone, N with --conflict-exit-code N)"),
        ("4", "another copy holds the lock and is stale (--stale-after; RUNALWAYS_STALE_EXIT)"),
        ("124", "the deadline passed (--timeout): the command was stopped"),
        _USAGE_ERROR,
        (str(CANNOT_RUN), "COMMAND was found but cannot run: no execute permission, not a program, a directory"),
        (str(NOT_FOUND), "COMMAND was not found"),
    ],
    "status": [
        ("0", "a copy holds the lock"),
        (str(NOT_RUNNING), "no copy holds it"),
        ("4", "the copy holding the lock is stale (--stale-after)"),
        _USAGE_ERROR,
        _READER_GONE,
    ],
    "list": [("0", "the list was printed (it may be empty)"), _USAGE_ERROR, _READER_GONE],
    "backends": [("0", "the list was printed"), _USAGE_ERROR, _READER_GONE],
    "completion": [("0", "the script was printed"), _USAGE_ERROR, _READER_GONE],
}

#: The reference documentation, which ``runalways --help`` points to (a test checks both ways).
DOCS = (
    ("docs/lock-files.md", "where lock files live, and why"),
    ("docs/hung-jobs.md", "stale holders, heartbeats, deadlines, the record of skips"),
    ("docs/backends.md", "what each backend's lock survives, and which to choose"),
    ("docs/cluster.md", "one copy across many hosts: postgres and redis"),
    ("docs/command-line.md", "run, status, list, backends, completion, exit statuses"),
    ("docs/api.md", "runalways.api: guard(), lock(), heartbeat(), token()"),
    ("docs/traps.md", "the traps other guards fall into"),
    ("docs/benchmarks.md", "start-up and hand-over against the peers"),
)

#: How status names a lock of a kind /proc/locks lists.
_LOCK_KINDS = {"FLOCK": "an flock", "POSIX": "a POSIX", "OFDLCK": "an OFD"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block: cron mails and logs stay readable.

        argparse quotes the arguments it refuses as given: a newline or a terminal escape
        sequence in one is shown escaped, so that the line stays one line and says what it was.
        """
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"{self.prog}: {shown} (see '{self.prog} --help')\n")


def _seconds(text: str) -> float:
    try:
        return parse_seconds(text, "--wait")
    except SettingError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _duration(option: str, positive: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return (parse_deadline if positive else parse_seconds)(text, option)
        except SettingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _exit_code(text: str) -> int:
    try:
        return parse_exit_code(text, "--conflict-exit-code")
    except SettingError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _retry(text: str) -> str:
    try:
        parse_retry(text, "--retry")
    except SettingError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _exit_statuses(command: str) -> str:
    """The ``exit status:`` section of a command's --help, as a manual page has one."""
    rows = EXIT_STATUSES[command]
    width = max(len(status) for status, _ in rows)
    return "exit status:\n" + "\n".join(f"  {status.ljust(width)}  {meaning}" for status, meaning in rows)


def _parser() -> _Parser:
    parser = _Parser(
        prog="runalways",
        description="Make sure exactly one copy of a job runs.",
        epilog="Settings also come from RUNALWAYS_* environment variables (see the README).\n"
        "Each command's --help lists its exit statuses.\n\nRead on, in the project's docs/:\n"
        + "\n".join(f"  {path:<22} {about}" for path, about in DOCS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"runalways {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run COMMAND unless another copy of it holds the lock",
        description="Run COMMAND holding a lock; if another copy holds it, exit 0 (1 with --alone) at once. "
        "The default lock is the resolved command and its arguments.",
        epilog=_exit_statuses("run"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--alone", action="store_true", help="exit 1 with a message when another copy runs")
    waiting = run.add_mutually_exclusive_group()
    waiting.add_argument("--wait", type=_seconds, metavar="SECONDS", help="wait up to SECONDS for the lock")
    waiting.add_argument("--retry", type=_retry, metavar="N[,S]", help="try N more times, S seconds apart (S=1)")
    run.add_argument("--silent", action="store_true", help="print no start or 'already running' line")
    run.add_argument(
        "--conflict-exit-code",
        type=_exit_code,
        metavar="N",
        help="exit N when another copy holds the lock (default 0, or 1 with --alone), as flock -E",
    )
    run.add_argument(
        "--timeout",
        type=_duration("--timeout"),
        metavar="DURATION",
        help="SIGTERM to the command's process group after DURATION (90, 45m, 2h, 1.5d); exit 124",
    )
    run.add_argument(
        "--kill-after",
        type=_duration("--kill-after", positive=False),
        metavar="DURATION",
        help="SIGKILL this long after the deadline's SIGTERM (default RUNALWAYS_KILL_GRACE, else 10 s)",
    )
    _add_stale_after(run)
    _add_backend_and_target(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")

    status = commands.add_parser(
        "status",
        help="say whether a copy holds the lock (exit 0) or not (exit 3)",
        description="Show whether a copy holds the lock, its pid, user and start time. Never takes the lock.",
        epilog=_exit_statuses("status"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("script", nargs="?", metavar="SCRIPT", help="the guarded script")
    status.add_argument("--json", action="store_true", help="one JSON object, for monitoring")
    _add_stale_after(status)
    _add_backend_and_target(status)

    listing = commands.add_parser(
        "list",
        help="list the locks runalways holds on this machine (root: of every user)",
        description="List every lock runalways holds on this machine, however it was taken (import guard, "
        "runalways run, the API), oldest first. Each entry is checked against the lock itself: a holder that "
        "is gone never appears. Root sees the locks of every user, others their own.",
        epilog=_exit_statuses("list"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--json", action="store_true", help="one JSON object a line, for scripts")
    _add_stale_after(listing)

    backends = commands.add_parser(
        "backends",
        help="list the backends and what their locks survive",
        description="List every backend: whether it works here, how it locks, and what its lock survives.",
        epilog=_exit_statuses("backends"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backends.add_argument("--json", action="store_true", help="print the declared capabilities as JSON, for scripts")

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a script that completes runalways's commands, options and backends. "
        "bash: source <(runalways completion bash); "
        "zsh: runalways completion zsh > ~/.zfunc/_runalways (a directory in $fpath).",
        epilog=_exit_statuses("completion"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")
    return parser


def _add_stale_after(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--stale-after",
        type=_duration("--stale-after"),
        metavar="DURATION",
        help="a holder older than this (or its last heartbeat) is stale: reported, exit 4",
    )


def _add_backend_and_target(command: argparse.ArgumentParser) -> None:
    command.add_argument("--backend", metavar="NAME", help="the locking backend (see 'runalways backends')")
    target = command.add_mutually_exclusive_group()
    target.add_argument("--lock", metavar="PATH", help="lock this file (created if missing)")
    target.add_argument("--name", metavar="NAME", help="lock a file of this name in the private lock directory")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Inside: from Python 3.14 argparse imports a module (_colorize) as it builds the
        # parser, which a full descriptor table refuses like any other file.
        arguments = _parser().parse_args(argv)
        if arguments.command == "run":
            return _run(arguments)
        if arguments.command == "status":
            return _status(arguments)
        if arguments.command == "list":
            return _list(arguments)
        if arguments.command == "completion":
            from runalways._completion import script

            sys.stdout.write(script(arguments.shell, _parser()))
            return 0
        return _backends(arguments.json)
    except RunAlwaysError as error:
        fail(str(error))
    except BrokenPipeError:
        # The reader went away (`runalways backends | head`): no traceback, and no second
        # error when Python flushes stdout at exit. Exit as a program killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return READER_GONE
    except OSError as error:
        # The system refused something runalways needed (a descriptor, memory, a module
        # file to import): one line, as for every other failure.
        fail(_policy.system_failure(error))


def _run(arguments: argparse.Namespace) -> int:
    command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
    if not command:
        raise SettingError("no command to run; usage: runalways run [OPTIONS] -- COMMAND [ARGS...]")
    executable = _program(command[0])
    chosen = _policy.choose(
        os.environ,
        backend=arguments.backend,
        silent=arguments.silent or None,
        retry=arguments.retry,
        wait=arguments.wait,
        conflict_exit=arguments.conflict_exit_code,
        deadline=arguments.timeout,
        kill_grace=arguments.kill_after,
        stale_after=arguments.stale_after,
        environment_wins=False,
    )
    if arguments.kill_after is not None and chosen.deadline is None and chosen.on_stale != "kill":
        raise SettingError("--kill-after is the grace after a deadline's SIGTERM: give --timeout too")
    display = shlex.join(command)
    if arguments.lock or arguments.name:
        target = _target(arguments, chosen)
        target.display = display  # messages name the command, whatever the lock is called
    else:
        # The same program with the same arguments is the same job, however it was
        # spelt: "./job.sh" and "/srv/job.sh" share a lock (run-one keys on the string).
        identity = "\0".join([os.path.realpath(executable), *command[1:]])
        target = Target(None, display=display, name=identity)
    policy = _policy.ALONE if arguments.alone else _policy.ALWAYS
    holding = None if _policy.skipped(chosen, display) else _policy.enforce(policy, target, chosen)
    status = _supervise([executable, *command[1:]], command[0], holding, chosen)
    if holding is not None:
        _policy.record(chosen, "exit", holding, status=status)
        holding.release()  # removes a lock file runalways named itself: none is left per argument
    return status


def _program(name: str) -> str:
    """The file ``name`` runs, looked up in PATH unless it has a slash, as a shell does.

    Checked before taking the lock: a command that cannot run exits 127 (not found) or 126
    (found, cannot run) with a line saying which, never 2, which is runalways's own error.
    """
    if "/" in name:
        if not os.path.exists(name):  # a dangling symbolic link too
            fail(f"cannot run {name!r}: no such file (not found)", NOT_FOUND)
        path = name
    else:
        found = shutil.which(name)  # executable files only, as the shell's search
        if found is None:
            fail(f"cannot run {name!r}: command not found in PATH", NOT_FOUND)
        path = found
    if os.path.isdir(path):
        fail(f"cannot run {name!r}: found, but it is a directory, not a program", CANNOT_RUN)
    if not os.access(path, os.X_OK):
        fail(f"cannot run {name!r}: found, but not executable (no execute permission)", CANNOT_RUN)
    return path


def _supervise(argv: list[str], shown: str, holding: Backend | None = None, chosen: Settings | None = None) -> int:
    """Run the command, pass on SIGINT/SIGTERM/SIGHUP, and return its exit status.

    The backend ``holding`` the lock may add to the command's environment (a fencing
    token). The command dies with us: if runalways is killed (SIGKILL, an OOM kill, a
    fence), the lock is gone, and a command running on without it would run beside the
    next copy (flock(1) avoids that by letting the command inherit the lock, which lets
    a daemon it leaves behind keep every later run out). With a deadline (``--timeout``)
    the command runs in a process group of its own, which gets SIGTERM at the deadline
    and SIGKILL after the grace: what the command started dies with it.
    """
    import signal
    import subprocess

    from runalways._kernel_kill import die_with_parent

    child: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child:
            child[0].send_signal(signum)
        else:  # arrived before the child existed: deliver it as soon as it does
            pending.append(signum)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for forwarded_signal in forwarded:
        signal.signal(forwarded_signal, forward)
    deadline = chosen.deadline if chosen is not None else None
    try:
        # The lock descriptor is close-on-exec: the command never holds the lock itself,
        # so a daemon it leaves behind cannot keep the next run out.
        child.append(
            subprocess.Popen(
                [shown, *argv[1:]],
                executable=argv[0],
                env=_command_environment(holding),
                preexec_fn=_in_child(die_with_parent() if holding is not None else None, deadline is not None),
            )
        )
    except OSError as error:
        # Found and executable, yet exec failed: the interpreter its #! line names is not
        # found (ENOENT: 127, as env(1) says), or it is not a program (ENOEXEC and the
        # like: 126). A resource the system refused runalways (EMFILE, ENOMEM, EAGAIN: no
        # descriptor or process to start it with) says nothing of the command: status 2.
        import errno

        if error.errno == errno.ENOENT:
            fail(f"cannot run {shown!r}: the interpreter its #! line names is not found", NOT_FOUND)
        if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN):
            fail(f"cannot start {shown!r}: the system refused a resource to start it with: {error.strerror}")
        fail(f"cannot run {shown!r}: found, but not a program ({error.strerror})", CANNOT_RUN)
    for signum in pending:
        child[0].send_signal(signum)
    if deadline is not None and chosen is not None:
        try:
            status = child[0].wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            _stop_at_deadline(child[0], shown, chosen, holding)
            return TIMED_OUT
    else:
        status = child[0].wait()
    return status if status >= 0 else 128 - status


def _command_environment(holding: Backend | None) -> dict[str, str] | None:
    """The command's environment: the backend's additions, and which lock its heartbeats are for.

    RUNALWAYS_HEARTBEAT is ``<pid of the holder> <lock key>``: runalways.api.heartbeat()
    in the command marks progress for this process's lock, and nothing is computed here
    for a command that never beats.
    """
    if holding is None:
        return None
    return {**os.environ, **holding.child_environment(), "RUNALWAYS_HEARTBEAT": f"{os.getpid()} {holding.lock_key()}"}


def _in_child(die: Callable[[], None] | None, own_group: bool) -> Callable[[], None] | None:
    """The command's ``preexec_fn``: die with runalways, and with a deadline, lead a process group."""
    if not own_group:
        return die

    def prepare() -> None:
        os.setpgid(0, 0)
        if die is not None:
            die()

    return prepare


def _stop_at_deadline(child: subprocess.Popen[bytes], shown: str, chosen: Settings, holding: Backend | None) -> None:
    """SIGTERM to the command's process group, SIGKILL to what is left of it after the grace."""
    import signal
    import time

    assert chosen.deadline is not None
    from runalways._settings import format_duration as duration

    shown = holding.target.display if holding is not None else shown
    say(
        f"runalways: '{shown}' ran past its deadline of {duration(chosen.deadline)}: "
        f"SIGTERM to its process group, SIGKILL {duration(chosen.kill_grace)} later; exit {TIMED_OUT}"
    )
    if holding is not None:
        _policy.record(chosen, "deadline", holding, command_pid=child.pid, status=TIMED_OUT)
    group = child.pid  # the command leads its own group
    _signal_group(group, signal.SIGTERM)
    ends = time.monotonic() + chosen.kill_grace
    # Until the grace ends or the whole group is gone: the command may exit at once and
    # leave a child of its own that ignores SIGTERM.
    pause = 0.005
    while time.monotonic() < ends:
        if child.poll() is not None and not _signal_group(group, 0):
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    _signal_group(group, signal.SIGKILL)
    child.wait()


def _signal_group(group: int, signum: int) -> bool:
    """Send ``signum`` to the process group; False when no process is left in it."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


def _target(arguments: argparse.Namespace, chosen: Settings) -> Target:
    if arguments.lock:
        _policy.refuse_lock_file(chosen, "--lock")
        return lock_file_target(arguments.lock, display=arguments.lock, name=os.path.basename(arguments.lock))
    if arguments.name:
        return Target(None, display=arguments.name, name=arguments.name)
    script = arguments.script
    if not os.path.isfile(script):
        raise SettingError(f"{script!r} is not a file; give the script a guarded copy runs from")
    # The lock the script takes under the same settings (RUNALWAYS_LOCK, RUNALWAYS_IDENTITY).
    return _policy.lock_for_script(Target(script, display=script, name=os.path.basename(script)), chosen)


def _status(arguments: argparse.Namespace) -> int:
    given = [bool(arguments.script), bool(arguments.lock), bool(arguments.name)]
    if sum(given) != 1:
        raise SettingError("give one of SCRIPT, --lock PATH or --name NAME")
    chosen = _policy.choose(
        os.environ, backend=arguments.backend, stale_after=arguments.stale_after, environment_wins=False
    )
    target = _target(arguments, chosen)
    asked = chosen.backend(target, chosen)
    holder = asked.holder()
    if arguments.json:
        return _status_json(asked, holder, chosen)
    backend = chosen.backend.name
    lock_file = asked.lock_file()
    # Say where it looked, unless that is the script itself: a lock file's place is what
    # tells "not running" from "looked in another place than the holder".
    where = "" if lock_file in (None, arguments.script) else f"\n  lock file: {lock_file}"
    if holder is None:
        earlier = earlier_holder(asked)
        if earlier is not None:
            path, holder = earlier
            print(f"'{target.display}' is running: {holder.describe()} (backend {backend}){where}")
            print(f"  it holds {path}, where runalways 0.1 kept lock files: new starts see it and do not run")
            return 0
        left = "" if asked.stale is None else f"; left behind by {asked.stale.describe()}"
        print(f"'{target.display}' is not running (backend {backend}){left}{where}")
        return 0 if _holders_of_removed_files(target, asked) else NOT_RUNNING
    if holder.excludes:
        print(f"'{target.display}' is running: {holder.describe()} (backend {backend}){where}")
    else:  # a copy started with another backend: flock and POSIX locks do not exclude each other
        lock = _LOCK_KINDS.get(holder.kind or "", "another kind of")
        by = "by " if holder.pid is not None else ""
        held = f"held with {lock} lock {by}{holder.describe()}"
        print(f"'{target.display}' is running: {held} (not excluded by the {backend} backend){where}")
    if holder.command:
        print(f"  command: {holder.command}")
    _holders_of_removed_files(target, asked)
    if holder.excludes and chosen.stale_after is not None:
        from runalways._heartbeat import age
        from runalways._settings import format_duration as duration

        held_for, _ = age(asked, holder)
        if held_for is not None and held_for > chosen.stale_after:
            print(f"  stale: held for {duration(held_for)}, longer than the limit of {duration(chosen.stale_after)}")
            return STALE
    return 0


def _status_json(asked: Backend, holder: Holder | None, chosen: Settings) -> int:
    """One JSON object for monitoring: who holds the lock, since when, and whether it is stale."""
    import json

    facts = _facts(asked, holder, chosen.stale_after)
    facts["log"] = chosen.log
    if chosen.log is not None and chosen.log != "syslog":
        from runalways._eventlog import summary

        facts.update(summary(chosen.log, asked.lock_key()))
    print(json.dumps(facts))
    if facts["stale"]:
        return STALE
    return 0 if facts["held"] else NOT_RUNNING


def _facts(asked: Backend, holder: Holder | None, stale_after: float | None) -> dict[str, object]:
    """What ``status --json`` and ``list --json`` say of one lock and its holder."""
    from runalways._heartbeat import age

    held = holder is not None and holder.excludes
    held_for, beat = age(asked, holder) if holder is not None and held else (None, None)
    # A lock that only this machine's processes can hold has its holder here.
    host = holder.host if holder is not None and holder.host else None
    if held and host is None and not asked.capabilities.across_hosts:
        host = os.uname().nodename
    known = holder if held else None
    return {
        "target": asked.target.display,
        "backend": asked.name,
        "held": held,
        "pid": None if known is None else known.pid,
        "user": None if known is None else known.user,
        "host": host,
        "command": None if known is None else known.command,
        "started": None if known is None else known.since,
        "age_seconds": None if held_for is None else round(held_for, 3),
        "last_heartbeat": beat,
        "stale": held_for is not None and stale_after is not None and held_for > stale_after,
        "stale_after": stale_after,
        "lock_file": None if asked.lock_file() is None else os.path.abspath(str(asked.lock_file())),
    }


def _holders_of_removed_files(target: Target, asked: Backend) -> bool:
    """Copies still holding a lock on a file that was at the lock's path: say so, loudly.

    A deploy that renames a new script over a running one, or a lock file deleted by hand
    or by a cleaner while its holder runs, leaves the holder locking a nameless file: the
    next start locks the file now at the path and runs beside it. No start can see that.
    """
    from runalways import _proc

    path = asked.lock_file()
    if path is None or not isinstance(asked, FileLockBackend):
        return False
    orphans = _proc.replaced_holders(path)
    for holder in orphans:
        if asked.target.create:
            print(f"  pid {holder.pid} holds a lock on a deleted file: another copy can start ({holder.describe()})")
        else:
            print(
                f"  but a copy started before the file was replaced still runs: {holder.describe()}; "
                "a new copy can start beside it (RUNALWAYS_IDENTITY=path keeps deploys out)"
            )
    return bool(orphans)


def _list(arguments: argparse.Namespace) -> int:
    """Every lock held here, oldest first: a table for people, or JSON lines."""
    from runalways._held_locks import held

    entries = []
    for backend, holder in held():
        facts = _facts(backend, holder, arguments.stale_after)
        facts["note"] = holder.note
        entries.append(facts)
    entries.sort(key=lambda facts: -float(facts["age_seconds"] or 0.0))  # type: ignore[arg-type]
    if arguments.json:
        import json

        for facts in entries:
            print(json.dumps(facts))
        return 0
    from runalways._settings import format_duration as duration

    rows = [("AGE", "PID", "USER", "BACKEND", "JOB", "COMMAND")]
    for facts in entries:
        age = facts["age_seconds"]
        notes = [str(facts["note"])] if facts["note"] else []
        if facts["stale"]:
            notes.append("stale")
        rows.append(
            (
                "?" if age is None else duration(float(age)),  # type: ignore[arg-type]
                str(facts["pid"]),
                str(facts["user"]),
                str(facts["backend"]),
                str(facts["target"]) + (f" ({'; '.join(notes)})" if notes else ""),
                str(facts["command"] or ""),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])
    return 0


def _backends(as_json: bool) -> int:
    from runalways import _listing

    print(_listing.as_json() if as_json else _listing.as_table())
    return 0
