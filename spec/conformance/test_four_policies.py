"""R19: what a start does when a copy runs: always, alone, queue, replace.

Every run of a job here writes ``start <pid>`` and ``end <pid>`` to a file, one line each,
appended: two runs that overlapped would interleave there. A run holds the lock until the
test closes its stdin, so which start runs, which waits and which is merged is decided by
the lock alone, and the test waits on the processes and on that file, never on a sleep.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import Procs, finish, lines, wait_for_line, wait_until

#: The body of a job that records its run: ``start``, ``ready`` once it runs, ``end`` when told to stop.
RUN = """
import os, sys
def mark(what):
    with open(sys.argv[1], "a") as runs:
        runs.write(f"{what} {os.getpid()}\\n")
mark("start")
print("ready", flush=True)
sys.stdin.read()
mark("end")
"""

#: A job that ignores SIGTERM: only SIGKILL ends it.
STUBBORN = """
import signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
sys.stdin.read()
"""

QUEUE = {"RUNALWAYS_POLICY": "queue"}
REPLACE = {"RUNALWAYS_POLICY": "replace", "RUNALWAYS_KILL_GRACE": "0.3"}


def runs(record: Path) -> list[tuple[str, int]]:
    """The runs' marks, in order, as ``(what, pid)``."""
    return [(what, int(pid)) for what, pid in (line.split() for line in lines(record))]


def assert_one_after_another(record: Path) -> list[int]:
    """Every run ended before the next began (the last may still run); the pids of the runs, in order."""
    marks = runs(record)
    assert [what for what, _ in marks] == (["start", "end"] * len(marks))[: len(marks)], marks
    assert all(marks[at][1] == marks[at + 1][1] for at in range(0, len(marks) - 1, 2)), marks
    return [pid for _, pid in marks[::2]]


def exited(starts: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    return [start for start in starts if start.poll() is not None]


def settle(starts: list[subprocess.Popen[bytes]], merged: int) -> subprocess.Popen[bytes]:
    """Wait until ``merged`` of ``starts`` exited, merged into the pending run (exit 0, not a
    word); the one left waits as that run."""
    wait_until(lambda: len(exited(starts)) == merged, f"{merged} starts merged into the pending run")
    for start in exited(starts):
        outcome = finish(start)
        assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", ""), outcome
    waiting = [start for start in starts if start.poll() is None]
    assert len(waiting) == 1, waiting
    return waiting[0]


@pytest.mark.clause("R19.1", "R19.2")
def test_a_burst_during_a_run_is_one_follow_up_and_a_start_during_it_one_more(procs: Procs) -> None:
    job = procs.script("job.py", RUN)
    record = procs.workdir / "runs"
    holder = procs.hold(job, record, env=QUEUE)
    burst = [procs.python(job, record, env=QUEUE) for _ in range(5)]
    follow_up = settle(burst, merged=4)
    assert assert_one_after_another(record) == [holder.pid]  # it waits: it has not run
    assert finish(holder).returncode == 0
    wait_for_line(follow_up, "ready")
    # During the follow-up: one more pending run, the start after it merged into that one.
    later = [procs.python(job, record, env=QUEUE) for _ in range(2)]
    one_more = settle(later, merged=1)
    outcome = finish(follow_up)
    assert outcome.returncode == 0 and "has been started at" in outcome.stderr, outcome
    wait_for_line(one_more, "ready")
    assert finish(one_more).returncode == 0
    assert assert_one_after_another(record) == [holder.pid, follow_up.pid, one_more.pid]


@pytest.mark.clause("R19.2")
@pytest.mark.parametrize("round_", range(2))
def test_starts_arriving_as_the_copy_ends_run_once_and_wait_once(procs: Procs, round_: int) -> None:
    # The race of the naive queue: the runner lets go while newcomers mark themselves pending.
    # Whatever the order, one runs, one waits, one is merged, and the one that waits runs next.
    job = procs.script("job.py", RUN)
    record = procs.workdir / "runs"
    holder = procs.hold(job, record, env=QUEUE)
    assert holder.stdin is not None
    holder.stdin.close()  # it ends now, while the newcomers arrive
    newcomers = [procs.python(job, record, env=QUEUE) for _ in range(3)]
    assert holder.wait(timeout=30) == 0
    wait_until(lambda: len(exited(newcomers)) == 1 and len(runs(record)) == 3, "one run, one pending, one merged")
    (merged,) = exited(newcomers)
    assert (merged.returncode, finish(merged).stderr) == (0, "")
    running = next(start for start in newcomers if start.pid == runs(record)[2][1])
    waiting = next(start for start in newcomers if start not in (merged, running))
    assert finish(running).returncode == 0
    wait_for_line(waiting, "ready")
    assert finish(waiting).returncode == 0
    assert assert_one_after_another(record) == [holder.pid, running.pid, waiting.pid]


@pytest.mark.clause("R19.3")
def test_a_pending_start_killed_while_it_waits_leaves_the_place_to_the_next(local_procs: Procs) -> None:
    procs = local_procs
    job = procs.script("job.py", RUN)
    record = procs.workdir / "runs"
    holder = procs.hold(job, record, env=QUEUE)
    pending = settle([procs.python(job, record, env=QUEUE) for _ in range(2)], merged=1)
    pending.kill()
    pending.wait(timeout=30)
    successor = settle([procs.python(job, record, env=QUEUE) for _ in range(2)], merged=1)
    assert finish(holder).returncode == 0
    wait_for_line(successor, "ready")
    assert finish(successor).returncode == 0
    assert assert_one_after_another(record) == [holder.pid, successor.pid]


@pytest.mark.clause("R19.3")
def test_a_pending_start_reports_a_holder_that_hangs_rather_than_wait_for_ever(fcntl_procs: Procs) -> None:
    procs = fcntl_procs
    job = procs.script("job.py", RUN)
    record = procs.workdir / "runs"
    queue = {**QUEUE, "RUNALWAYS_STALE_AFTER": "2"}
    holder = procs.hold(job, record, env=QUEUE)
    pending = procs.python(job, record, env=queue)  # young holder: it waits as the pending run ...
    assert pending.wait(timeout=30) == 4  # ... until the holder is older than the limit
    outcome = finish(pending)
    assert "is it hung?" in outcome.stderr and outcome.stderr.count("\n") == 1, outcome
    assert holder.poll() is None  # reported, not killed
    successor = procs.python(job, record, env=QUEUE)  # the pending place is free again
    assert finish(holder).returncode == 0
    wait_for_line(successor, "ready")
    assert finish(successor).returncode == 0
    assert assert_one_after_another(record) == [holder.pid, successor.pid]


@pytest.mark.clause("R19.4")
def test_a_merged_start_is_on_the_record_as_queued(fcntl_procs: Procs) -> None:
    procs = fcntl_procs
    job = procs.script("job.py", RUN)
    record, log = procs.workdir / "runs", procs.workdir / "log"
    queue = {**QUEUE, "RUNALWAYS_LOG": str(log)}
    holder = procs.hold(job, record, env=queue)
    pending = settle([procs.python(job, record, env=queue) for _ in range(2)], merged=1)
    skips = [line for line in lines(log) if "event=skip" in line]
    assert len(skips) == 1 and "reason=queued" in skips[0], skips
    finish(holder)
    wait_for_line(pending, "ready")
    finish(pending)


@pytest.mark.clause("R19.5")
def test_replace_stops_a_holder_that_ignores_sigterm_and_runs(procs: Procs) -> None:
    job = procs.script("job.py", STUBBORN)
    log = procs.workdir / "log"
    holder = procs.hold(job)
    started = time.monotonic()
    replacing = procs.python(job, env={**REPLACE, "RUNALWAYS_LOG": str(log)})
    wait_for_line(replacing, "ready")
    assert holder.wait(timeout=30) == -signal.SIGKILL  # SIGTERM ignored: killed after the grace
    assert time.monotonic() - started >= 0.3
    outcome = finish(replacing)
    assert outcome.returncode == 0, outcome
    assert f"'{job}' replaced the copy that ran (pid {holder.pid}" in outcome.stderr, outcome
    kills = [line for line in lines(log) if "event=kill" in line]
    assert len(kills) == 1 and "reason=replace" in kills[0] and f"holder_pid={holder.pid}" in kills[0], kills


@pytest.mark.clause("R19.6")
def test_two_replacing_starts_at_once_leave_exactly_one_copy_running(procs: Procs) -> None:
    job = procs.script("job.py", RUN)
    record = procs.workdir / "runs"
    holder = procs.hold(job, record)
    racers = [procs.python(job, record, env=REPLACE) for _ in range(2)]
    assert holder.wait(timeout=30) == -signal.SIGTERM
    # Either both stopped the holder and one took the lock (the other exits 0, as a start
    # finding the lock held), or the later one replaced the earlier: one is left, running.
    wait_until(lambda: len(exited(racers)) == 1, "one of the two replacing starts to end")
    (gone,) = exited(racers)
    (survivor,) = [racer for racer in racers if racer is not gone]
    assert gone.returncode in (0, -signal.SIGTERM), finish(gone)
    wait_until(lambda: ("start", survivor.pid) in runs(record), "the survivor to run")
    assert survivor.poll() is None
    assert finish(survivor).returncode == 0
    pids = [pid for what, pid in runs(record) if what == "start"]
    assert pids[0] == holder.pid and pids[-1] == survivor.pid, pids


@pytest.mark.clause("R19.7")
def test_replace_refuses_a_holder_of_another_user_in_one_line(fcntl_procs: Procs, shared_dir: Path) -> None:
    from harness import as_nobody, nobody_env

    job = shared_dir / "job.py"
    job.write_text("import runalways\n" + STUBBORN)
    job.chmod(0o644)
    holder = fcntl_procs.start(as_nobody([sys.executable, str(job)]), env=nobody_env(shared_dir))
    wait_for_line(holder, "ready")
    outcome = fcntl_procs.run_python(job, env=REPLACE)
    assert outcome.returncode == 2, outcome
    assert outcome.stderr.startswith(f"runalways: cannot replace the copy of '{job}' that holds the lock (pid ")
    assert outcome.stderr.endswith("of another user: not killed\n") and outcome.stderr.count("\n") == 1, outcome
    assert holder.poll() is None
    finish(holder)


@pytest.mark.clause("R19.8")
def test_the_environment_chooses_the_policy_over_the_import_line_and_the_command_line_over_both(
    fcntl_procs: Procs,
) -> None:
    procs = fcntl_procs
    alone = procs.script(
        "alone.py", "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n", header="import runalways.alone\n"
    )
    holder = procs.hold(alone, env={"RUNALWAYS_SILENT": "1"})
    quiet = procs.run_python(alone, env={"RUNALWAYS_POLICY": "always"})
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    loud = procs.run_python(alone, env={"RUNALWAYS_POLICY": "alone"})
    assert loud.returncode == 1 and "is already running" in loud.stderr
    finish(holder)
    command = [sys.executable, "-m", "runalways", "run", "--name", "job"]
    sleeper = procs.start([*command, "--", sys.executable, "-c", "print('ready', flush=True); input()"])
    wait_for_line(sleeper, "ready")
    typed = procs.run([*command, "--alone", "--", "true"], env=QUEUE)
    assert typed.returncode == 1 and "A copy of 'true' is already running" in typed.stderr, typed
    finish(sleeper)


@pytest.mark.clause("R19.9")
@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"RUNALWAYS_POLICY": "later"}, "RUNALWAYS_POLICY='later' is not one of the choices"),
        ({**QUEUE, "RUNALWAYS_RETRY": "3"}, "RUNALWAYS_POLICY=queue waits for the running copy itself"),
    ],
)
def test_a_bad_policy_is_one_line_and_exit_2(fcntl_procs: Procs, settings: dict[str, str], said: str) -> None:
    job = fcntl_procs.script("job.py", "print('body')\n")
    outcome = fcntl_procs.run_python(job, env=settings)
    assert outcome.returncode == 2 and outcome.stdout == "", outcome
    assert outcome.stderr.startswith(f"runalways: {said}") and outcome.stderr.count("\n") == 1, outcome


@pytest.mark.clause("R19.10")
def test_runalways_run_queues_and_replaces_a_command(fcntl_procs: Procs) -> None:
    procs = fcntl_procs
    record = procs.workdir / "runs"
    job = procs.script("job.py", RUN, header="")
    command = [sys.executable, "-m", "runalways", "run", "--name", "job"]
    holder = procs.start([*command, "--", sys.executable, job, record])
    wait_for_line(holder, "ready")
    burst = [procs.start([*command, "--queue", "--", sys.executable, job, record]) for _ in range(3)]
    follow_up = settle(burst, merged=2)
    finish(holder)
    wait_for_line(follow_up, "ready")
    replacing = procs.start([*command, "--replace", "--kill-after", "0.3", "--", sys.executable, job, record])
    wait_for_line(replacing, "ready")
    assert follow_up.wait(timeout=30) != 0  # stopped: SIGTERM, passed on to its command
    assert finish(replacing).returncode == 0
    starts = [what for what, _ in runs(record)]
    assert starts == ["start", "end", "start", "start", "end"], runs(record)
