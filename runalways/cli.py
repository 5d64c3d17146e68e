"""The ``runalways`` command: guard any command, show who holds a lock, list backends.

    runalways run [--alone] [--wait S | --retry N[,S]] [--silent] [--backend NAME]
                  [--timeout DURATION [--kill-after DURATION]] [--stale-after DURATION]
                  [--lock PATH | --name NAME] -- COMMAND [ARGS...]
    runalways status [--json] [--stale-after DURATION] [--backend NAME] (SCRIPT | --lock PATH | --name NAME)
    runalways backends

Exit status: ``run`` exits with the command's status (128+N when signal N killed it,
124 when its deadline passed), 0 (or 1 with ``--alone``) when another copy holds the
lock, 4 when that copy is stale; ``status`` exits 0 when a copy holds the lock, 3 when
none does (as ``systemctl is-active``) and 4 when the holder is stale; every error
prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

from runalways import _policy
from runalways._lockdir import lock_file_target
from runalways._settings import parse_deadline, parse_exit_code, parse_retry, parse_seconds
from runalways.backends import get_class, names
from runalways.backends.base import Backend, Holder, Target
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

#: How status names a lock of a kind /proc/locks lists.
_LOCK_KINDS = {"FLOCK": "an flock", "POSIX": "a POSIX", "OFDLCK": "an OFD"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block: cron mails and logs stay readable."""
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


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


def _parser() -> _Parser:
    parser = _Parser(
        prog="runalways",
        description="Make sure exactly one copy of a job runs.",
        epilog="Settings also come from RUNALWAYS_* environment variables; see the README.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run",
        help="run COMMAND unless another copy of it holds the lock",
        description="Run COMMAND holding a lock; if another copy holds it, exit 0 (1 with --alone) at once. "
        "The default lock is the resolved command and its arguments.",
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
    )
    status.add_argument("script", nargs="?", metavar="SCRIPT", help="the guarded script")
    status.add_argument("--json", action="store_true", help="one JSON object, for monitoring")
    _add_stale_after(status)
    _add_backend_and_target(status)

    commands.add_parser("backends", help="list the backends and what their locks survive")
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
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "run":
            return _run(arguments)
        if arguments.command == "status":
            return _status(arguments)
        return _backends()
    except RunAlwaysError as error:
        _policy.fail(str(error))
    except BrokenPipeError:
        # The reader went away (`runalways backends | head`): no traceback, and no second
        # error when Python flushes stdout at exit. Exit as a program killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


def _run(arguments: argparse.Namespace) -> int:
    command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
    if not command:
        raise SettingError("no command to run; usage: runalways run [OPTIONS] -- COMMAND [ARGS...]")
    executable = shutil.which(command[0])
    if executable is None:
        raise SettingError(f"cannot run {command[0]!r}: command not found")
    chosen = _policy.options(
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
    return status


def _supervise(
    argv: list[str], shown: str, holding: Backend | None = None, chosen: _policy.Options | None = None
) -> int:
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

    from runalways._fence import die_with_parent

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
        raise SettingError(f"cannot run {shown!r}: {error.strerror}") from None
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


def _stop_at_deadline(
    child: subprocess.Popen[bytes], shown: str, chosen: _policy.Options, holding: Backend | None
) -> None:
    """SIGTERM to the command's process group, SIGKILL to what is left of it after the grace."""
    import signal
    import time

    assert chosen.deadline is not None
    from runalways._stale import duration

    shown = holding.target.display if holding is not None else shown
    _policy._say(
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


def _target(arguments: argparse.Namespace, chosen: _policy.Options) -> Target:
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
    chosen = _policy.options(
        os.environ, backend=arguments.backend, stale_after=arguments.stale_after, environment_wins=False
    )
    target = _target(arguments, chosen)
    asked = chosen.backend(target)
    holder = asked.holder()
    if arguments.json:
        return _status_json(asked, holder, chosen)
    backend = chosen.backend.name
    if holder is None:
        left = "" if asked.stale is None else f"; left behind by {asked.stale.describe()}"
        print(f"'{target.display}' is not running (backend {backend}){left}")
        if arguments.script and chosen.backend.capabilities.identity == "inode":
            return _status_of_replaced(target)
        return NOT_RUNNING
    if holder.excludes:
        print(f"'{target.display}' is running: {holder.describe()} (backend {backend})")
    else:  # a copy started with another backend: flock and POSIX locks do not exclude each other
        lock = _LOCK_KINDS.get(holder.kind or "", "another kind of")
        by = "by " if holder.pid is not None else ""
        held = f"held with {lock} lock {by}{holder.describe()}"
        print(f"'{target.display}' is running: {held} (not excluded by the {backend} backend)")
    if holder.command:
        print(f"  command: {holder.command}")
    if holder.excludes and chosen.stale_after is not None:
        from runalways._stale import age, duration

        held_for, _ = age(asked, holder)
        if held_for is not None and held_for > chosen.stale_after:
            print(f"  stale: held for {duration(held_for)}, longer than the limit of {duration(chosen.stale_after)}")
            return STALE
    return 0


def _status_json(asked: Backend, holder: Holder | None, chosen: _policy.Options) -> int:
    """One JSON object for monitoring: who holds the lock, since when, and whether it is stale."""
    import json

    from runalways._stale import age

    held = holder is not None and holder.excludes
    held_for, beat = age(asked, holder) if holder is not None and held else (None, None)
    stale = held_for is not None and chosen.stale_after is not None and held_for > chosen.stale_after
    lock_file = None if asked.capabilities.identity == "name" else os.path.abspath(asked.target.file())
    # A lock that only this machine's processes can hold has its holder here.
    host = holder.host if holder is not None and holder.host else None
    if held and host is None and not asked.capabilities.across_hosts:
        host = os.uname().nodename
    facts: dict[str, object] = {
        "target": asked.target.display,
        "backend": asked.name,
        "held": held,
        "pid": holder.pid if held and holder is not None else None,
        "user": holder.user if held and holder is not None else None,
        "host": host,
        "command": holder.command if held and holder is not None else None,
        "started": holder.since if held and holder is not None else None,
        "age_seconds": None if held_for is None else round(held_for, 3),
        "last_heartbeat": beat,
        "stale": stale,
        "stale_after": chosen.stale_after,
        "lock_file": lock_file,
        "log": chosen.log,
    }
    if chosen.log is not None and chosen.log != "syslog":
        from runalways._eventlog import summary

        facts.update(summary(chosen.log, asked.lock_key()))
    print(json.dumps(facts))
    if stale:
        return STALE
    return 0 if held else NOT_RUNNING


def _status_of_replaced(target: Target) -> int:
    """A copy may still run from a previous version of the script that was replaced."""
    from runalways import _proc

    assert target.path is not None
    orphans = _proc.replaced_holders(target.path)
    for holder in orphans:
        print(
            f"  but a copy started before the file was replaced still runs: {holder.describe()}; "
            "a new copy can start beside it (RUNALWAYS_IDENTITY=path keeps deploys out)"
        )
    return 0 if orphans else NOT_RUNNING


def _backends() -> int:
    for name in names():
        backend = get_class(name)
        reason = backend.unavailable()
        about = (sys.modules[backend.__module__].__doc__ or backend.__doc__ or "").strip()
        print(f"{name}: {'usable' if reason is None else 'unavailable: ' + reason}")
        print(f"  {about.splitlines()[0] if about else '(no description)'}")
        facts = backend.capabilities.as_dict()
        print("  " + ", ".join(f"{key}={value}" for key, value in facts.items()))
    return 0
