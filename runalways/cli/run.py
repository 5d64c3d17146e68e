"""``runalways run``: run a command holding the lock, and end it with runalways.

In order: find the program (127 when it is not found, 126 when it cannot run, before
any lock is taken), take the lock as the import guard does, run the command with the
signals runalways receives passed on to it, and at a deadline stop its whole process
group: SIGTERM, then SIGKILL after the grace. The exit status is the command's own.
"""

from __future__ import annotations

import os
import shlex
import shutil

from runalways import _policy
from runalways._messages import fail, say
from runalways._settings import Settings
from runalways._values import Target
from runalways.backends.base import Backend
from runalways.cli.parser import CANNOT_RUN, NOT_FOUND, TIMED_OUT, given_settings
from runalways.errors import SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import subprocess
    from typing import Callable, NoReturn

    from runalways._names import Job


def run(arguments: argparse.Namespace) -> int:
    command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
    if not command:
        raise SettingError("no command to run; usage: runalways run [OPTIONS] -- COMMAND [ARGS...]")
    executable = _program(command[0])
    # --alone, --queue, --replace: the flag is the policy's name (one at most: argparse sees to it).
    flagged = (_policy.ALONE, _policy.QUEUE, _policy.REPLACE)
    typed = next((policy for policy in flagged if getattr(arguments, policy)), None)
    chosen = _policy.choose(os.environ, environment_wins=False, policy=typed, **given_settings(arguments, "run"))
    if arguments.kill_grace is not None and not chosen.sends_sigterm:
        raise SettingError("--kill-after is the grace after a deadline's SIGTERM: give --timeout (or --replace) too")
    display = shlex.join(command)
    named = _policy.named_target(
        chosen,
        arguments.lock or None,
        arguments.name or None,
        path_given_as="--lock",
        name_given_as="--name",
        job=_job(command) if arguments.name else None,
    )
    if named is not None:
        target = named
        target.display = display  # messages name the command, whatever the lock is called
    elif chosen.lock_name is not None:
        target = _policy.name_target(chosen.lock_name, "RUNALWAYS_NAME", _job(command), display=display)
    else:
        # The same program with the same arguments is the same job, however it was
        # spelt: "./job.sh" and "/srv/job.sh" share a lock (run-one keys on the string).
        identity = "\0".join([os.path.realpath(executable), *command[1:]])
        target = Target(None, display=display, name=identity)
    policy = chosen.policy or _policy.ALWAYS
    holding = None if _policy.skipped(chosen, display) else _policy.enforce(policy, target, chosen, until_exit=False)
    status, output = _supervise([executable, *command[1:]], command[0], holding, chosen)
    if holding is not None:
        _policy.ended(chosen, holding, status, output)
        holding.release()  # removes a lock file runalways named itself: none is left per argument
    return status


def _job(command: list[str]) -> Job:
    """What the fields of a lock name take under ``run``: the command's arguments and its file name."""
    from runalways._names import Job

    return Job(command[1:], os.path.basename(command[0]), "the command")


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


def _supervise(argv: list[str], shown: str, holding: Backend | None, chosen: Settings) -> tuple[int, bytes | None]:
    """Run the command, pass on SIGINT/SIGTERM/SIGHUP, and return its exit status, and with
    RUNALWAYS_PING the tail of its output (``runalways.cli.tee``; None without).

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
    tee = None
    if chosen.ping is not None and holding is not None:  # a run to report: its end's ping carries the output
        from runalways.cli.tee import Tee

        tee = Tee()

    def forward(signum: int, frame: object) -> None:
        if child:
            child[0].send_signal(signum)
        else:  # arrived before the child existed: deliver it as soon as it does
            pending.append(signum)

    for forwarded in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(forwarded, forward)
    # Made before the try below: a failure here is runalways's, not the command's exec.
    in_child = _in_child(die_with_parent() if holding is not None else None, chosen.deadline is not None)
    try:
        # The lock descriptor is close-on-exec: the command never holds the lock itself,
        # so a daemon it leaves behind cannot keep the next run out.
        child.append(
            subprocess.Popen(
                [shown, *argv[1:]],
                executable=argv[0],
                env=_command_environment(holding),
                preexec_fn=in_child,
                stdout=None if tee is None else tee.stdout,
                stderr=None if tee is None else tee.stderr,
            )
        )
    except OSError as error:
        _cannot_start(shown, error)
    finally:
        if tee is not None:
            tee.started()
    for signum in pending:
        child[0].send_signal(signum)
    status = _wait(child[0], shown, chosen, holding)
    return status, None if tee is None else tee.output()


def _wait(child: subprocess.Popen[bytes], shown: str, chosen: Settings, holding: Backend | None) -> int:
    """The command's exit status (128 + n for a signal n), or 124 once stopped at its deadline."""
    import subprocess

    if chosen.deadline is None:
        status = child.wait()
    else:
        try:
            status = child.wait(timeout=chosen.deadline)
        except subprocess.TimeoutExpired:
            _stop_at_deadline(child, shown, chosen, holding)
            return TIMED_OUT
    return status if status >= 0 else 128 - status


def _cannot_start(shown: str, error: OSError) -> NoReturn:
    """Found and executable, yet exec failed: say why, with the status a shell would give.

    The interpreter its #! line names is not found (ENOENT: 127, as env(1) says), or it is
    not a program (ENOEXEC and the like: 126). A resource the system refused runalways
    (EMFILE, ENOMEM, EAGAIN: no descriptor or process to start it with) says nothing of
    the command: status 2.
    """
    import errno

    if error.errno == errno.ENOENT:
        fail(f"cannot run {shown!r}: the interpreter its #! line names is not found", NOT_FOUND)
    if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN):
        fail(f"cannot start {shown!r}: the system refused a resource to start it with: {error.strerror}")
    fail(f"cannot run {shown!r}: found, but not a program ({error.strerror})", CANNOT_RUN)


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

    from runalways._settings import format_duration as duration
    from runalways._waiting import poll_until

    assert chosen.deadline is not None
    shown = holding.target.display if holding is not None else shown
    say(
        f"runalways: '{shown}' ran past its deadline of {duration(chosen.deadline)}: "
        f"SIGTERM to its process group, SIGKILL {duration(chosen.kill_grace)} later; exit {TIMED_OUT}"
    )
    if holding is not None:
        _policy.record(chosen, "deadline", holding, command_pid=child.pid, status=TIMED_OUT)
    group = child.pid  # the command leads its own group
    _signal_group(group, signal.SIGTERM)

    # The whole group, not only the command: it may exit at once and leave a child of its
    # own that ignores SIGTERM.
    def all_gone() -> bool:
        return child.poll() is not None and not _signal_group(group, 0)

    if poll_until(all_gone, chosen.kill_grace, longest=0.1, first=0.005):
        return
    _signal_group(group, signal.SIGKILL)
    child.wait()


def _signal_group(group: int, signum: int) -> bool:
    """Send ``signum`` to the process group; False when no process is left in it."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True
