"""The ``runalways`` command: guard any command, show who holds a lock, list backends.

    runalways run [--alone] [--wait S | --retry N[,S]] [--silent] [--backend NAME]
                  [--lock PATH | --name NAME] -- COMMAND [ARGS...]
    runalways status [--backend NAME] (SCRIPT | --lock PATH | --name NAME)
    runalways backends

Exit status: ``run`` exits with the command's status (128+N when signal N killed it),
0 (or 1 with ``--alone``) when another copy holds the lock; ``status`` exits 0 when a
copy holds the lock and 3 when none does (as ``systemctl is-active``); every error
prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

from runalways import _policy
from runalways._lockdir import earlier_holder, lock_file_target
from runalways._settings import parse_exit_code, parse_retry, parse_seconds
from runalways.backends import get_class, names
from runalways.backends.base import Backend, FileLockBackend, Target
from runalways.errors import RunAlwaysError, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn, Sequence

NOT_RUNNING = 3

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
    _add_backend_and_target(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")

    status = commands.add_parser(
        "status",
        help="say whether a copy holds the lock (exit 0) or not (exit 3)",
        description="Show whether a copy holds the lock, its pid, user and start time. Never takes the lock.",
    )
    status.add_argument("script", nargs="?", metavar="SCRIPT", help="the guarded script")
    _add_backend_and_target(status)

    commands.add_parser("backends", help="list the backends and what their locks survive")
    return parser


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
    except OSError as error:
        # The system refused something runalways needed (a descriptor, memory, a module
        # file to import): one line, as for every other failure.
        _policy.fail(_policy.system_failure(error))


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
        environment_wins=False,
    )
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
    status = _supervise([executable, *command[1:]], command[0], holding)
    if holding is not None:
        holding.release()  # removes a lock file runalways named itself: none is left per argument
    return status


def _supervise(argv: list[str], shown: str, holding: Backend | None = None) -> int:
    """Run the command, pass on SIGINT/SIGTERM/SIGHUP, and return its exit status.

    The backend ``holding`` the lock may add to the command's environment (a fencing
    token). The command dies with us: if runalways is killed (SIGKILL, an OOM kill, a
    fence), the lock is gone, and a command running on without it would run beside the
    next copy (flock(1) avoids that by letting the command inherit the lock, which lets
    a daemon it leaves behind keep every later run out).
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
    try:
        # The lock descriptor is close-on-exec: the command never holds the lock itself,
        # so a daemon it leaves behind cannot keep the next run out.
        child.append(
            subprocess.Popen(
                [shown, *argv[1:]],
                executable=argv[0],
                env={**os.environ, **holding.child_environment()} if holding is not None else None,
                preexec_fn=die_with_parent() if holding is not None else None,
            )
        )
    except OSError as error:
        raise SettingError(f"cannot run {shown!r}: {error.strerror}") from None
    for signum in pending:
        child[0].send_signal(signum)
    status = child[0].wait()
    return status if status >= 0 else 128 - status


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
    chosen = _policy.options(os.environ, backend=arguments.backend, environment_wins=False)
    target = _target(arguments, chosen)
    asked = chosen.backend(target)
    holder = asked.holder()
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
    return 0


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
        if target.create:
            print(f"  pid {holder.pid} holds a lock on a deleted file: another copy can start ({holder.describe()})")
        else:
            print(
                f"  but a copy started before the file was replaced still runs: {holder.describe()}; "
                "a new copy can start beside it (RUNALWAYS_IDENTITY=path keeps deploys out)"
            )
    return bool(orphans)


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
