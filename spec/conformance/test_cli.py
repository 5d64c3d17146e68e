"""R11: the ``runalways`` command line: run, status, backends, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from harness import TIMEOUT, Procs, assert_already_running, finish, kill, read_line, wait_for_line, wait_until

RUNALWAYS = [sys.executable, "-m", "runalways"]
HOLDER = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]


@pytest.mark.clause("R11.1")
def test_run_passes_on_the_exit_status(procs: Procs) -> None:
    outcome = procs.run([*RUNALWAYS, "run", "--silent", "--", "sh", "-c", "echo out; exit 7"])
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (7, "out\n", "")


@pytest.mark.clause("R11.1")
def test_run_alone_exits_1_with_the_message(procs: Procs) -> None:
    holder = procs.start([*RUNALWAYS, "run", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    loser = procs.run([*RUNALWAYS, "run", "--alone", "--name", "job", "--", "true"])
    assert loser.returncode == 1
    assert_already_running(loser.stderr, "true", holder.pid)
    finish(holder)


@pytest.mark.clause("R11.2")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_forwards_signals_and_reports_128_plus_n(procs: Procs, signum: int) -> None:
    # The command resets the signal to its default action, so the signal kills it.
    command = (
        f"import signal, sys; signal.signal({int(signum)}, signal.SIG_DFL); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    wrapper = procs.start([*RUNALWAYS, "run", "--silent", "--name", "signals", "--", sys.executable, "-c", command])
    wait_for_line(wrapper, "ready")
    wrapper.send_signal(signum)
    # Wait before closing stdin: at its end the command would exit 0 on its own.
    assert wrapper.wait(timeout=TIMEOUT) == 128 + signum
    finish(wrapper)


@pytest.mark.clause("R11.3")
def test_run_default_lock_is_the_resolved_command_and_its_arguments(procs: Procs) -> None:
    job = procs.script("job.sh", "echo ready\nread line\n", header="#!/bin/sh\n")
    job.chmod(0o755)
    holder = procs.start([*RUNALWAYS, "run", "--", "./job.sh", "a"])
    wait_for_line(holder, "ready")
    same = procs.run([*RUNALWAYS, "run", "--", str(job), "a"])  # another spelling of the same command
    assert (same.returncode, same.stdout) == (0, "")
    other_arguments = procs.run([*RUNALWAYS, "run", "--silent", "--", "./job.sh", "b"])
    assert other_arguments.stdout == "ready\n"
    finish(holder)


@pytest.mark.clause("R11.4")
def test_status_names_the_holder_and_exits_0(procs: Procs) -> None:
    job = procs.script("job.py")
    idle = procs.run([*RUNALWAYS, "status", str(job)])
    assert (idle.returncode, idle.stdout) == (3, f"'{job}' is not running (backend {procs.backend})\n")
    holder = procs.hold(job)
    busy = procs.run([*RUNALWAYS, "status", str(job)])
    assert busy.returncode == 0, busy
    assert busy.stdout.startswith(f"'{job}' is running: pid {holder.pid}, ")
    assert f"(backend {procs.backend})" in busy.stdout
    assert procs.run_python(job).stdout == ""  # status took no lock and left it held
    finish(holder)


@pytest.mark.clause("R11.4")
def test_status_of_a_named_lock(procs: Procs) -> None:
    holder = procs.start([*RUNALWAYS, "run", "--silent", "--name", "nightly", "--", *HOLDER])
    wait_for_line(holder, "ready")
    busy = procs.run([*RUNALWAYS, "status", "--name", "nightly"])
    assert busy.returncode == 0 and f"pid {holder.pid}" in busy.stdout
    finish(holder)
    assert procs.run([*RUNALWAYS, "status", "--name", "nightly"]).returncode == 3


@pytest.mark.clause("R11.5")
def test_backends_lists_each_backend_with_its_capabilities(procs: Procs) -> None:
    listing = procs.run([*RUNALWAYS, "backends"])
    assert listing.returncode == 0
    assert f"{procs.backend}: usable" in listing.stdout
    assert "kept_by_fork_child=" in listing.stdout and "identity=" in listing.stdout


BAD_COMMAND_LINES = [
    ["run"],
    ["run", "--", "no-such-command-here"],
    ["run", "--wait", "soon", "--", "true"],
    ["run", "--retry", "x", "--", "true"],
    ["run", "--wait", "1", "--retry", "1", "--", "true"],
    ["status"],
    ["status", "no-such-file.py"],
    ["frobnicate"],
    ["run", "--backend", "no-such-backend", "--", "true"],
    ["run", "--timeout", "soon", "--", "true"],
    ["run", "--kill-after", "5", "--", "true"],
    ["status", "--stale-after", "0", "--name", "job"],
]


@pytest.mark.clause("R11.6")
@pytest.mark.parametrize("argv", BAD_COMMAND_LINES, ids=" ".join)
def test_command_line_errors_are_one_line_and_exit_2(procs: Procs, argv: list[str]) -> None:
    outcome = procs.run([*RUNALWAYS, *argv])
    assert outcome.returncode == 2, outcome
    assert outcome.stderr.count("\n") == 1 and "Traceback" not in outcome.stderr, outcome.stderr


@pytest.mark.clause("R11.6")
def test_help_is_there_for_every_command(procs: Procs) -> None:
    for argv in ([], ["run"], ["status"], ["backends"]):
        outcome = procs.run([*RUNALWAYS, *argv, "--help"])
        assert outcome.returncode == 0 and "usage: runalways" in outcome.stdout


@pytest.mark.clause("R11.1")
def test_run_waits_for_the_lock(procs: Procs) -> None:
    holder = procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    waiter = procs.start([*RUNALWAYS, "run", "--silent", "--wait", "60", "--name", "job", "--", *HOLDER])
    assert waiter.poll() is None  # waiting, not refused
    finish(holder)
    wait_for_line(waiter, "ready")  # got in once the holder ended
    assert finish(waiter).returncode == 0


@pytest.mark.clause("R11.3")
def test_the_command_dies_with_runalways_and_never_runs_on_unguarded(procs: Procs) -> None:
    command = "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"
    wrapper = procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", sys.executable, "-c", command])
    command_pid = int(read_line(wrapper))
    kill(wrapper)  # SIGKILL: runalways cannot pass anything on, and its lock is gone
    # The kernel kills the command too, so a next start never runs beside it.
    wait_until(lambda: not os.path.exists(f"/proc/{command_pid}") or _zombie(command_pid), "the command to die")
    follower = procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", *HOLDER])
    wait_for_line(follower, "ready")
    finish(follower)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.clause("R11.6")
def test_a_reader_that_goes_away_gets_no_traceback(procs: Procs) -> None:
    reader_read, reader_write = os.pipe()
    os.close(reader_read)  # like `runalways backends | head -0`: nobody reads
    listing = subprocess.run(
        [*RUNALWAYS, "backends"], stdout=reader_write, stderr=subprocess.PIPE, env=procs.env(), timeout=TIMEOUT
    )
    os.close(reader_write)
    assert listing.returncode == 128 + signal.SIGPIPE and listing.stderr == b""
