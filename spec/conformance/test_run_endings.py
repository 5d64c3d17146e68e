"""R17.5: how a run ended, on the record, for every backend.

A job guarded with RUNALWAYS_LOG ends one way; its ``event=exit`` line carries the status
its parent saw (none when that cannot be known), and is written while the lock is still
held. tests/test_ending.py goes through every way of ending on the fcntl backend.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from harness import Procs, finish, kill, wait_for_line

from runalways._eventlog import parse
from runalways.backends import get_class

#: A way to end, and what the parent sees of it (as a shell shows it: 130 for SIGINT).
ENDINGS = {
    "to its end": ("x = 1\n", 0),
    "sys.exit(3)": ("import sys\nsys.exit(3)\n", 3),
    "an uncaught exception": ("raise ValueError('boom')\n", 1),
    "an uncaught KeyboardInterrupt": ("raise KeyboardInterrupt\n", 128 + signal.SIGINT),
}


def records(log: Path) -> list[dict[str, str]]:
    return [parse(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.clause("R17.5")
def test_the_exit_line_carries_the_status_the_parent_saw(procs: Procs) -> None:
    for number, (ending, (body, status)) in enumerate(ENDINGS.items()):
        log = procs.workdir / f"job{number}.log"
        script = procs.script(f"job{number}.py", body)
        outcome = procs.run_python(script, env={"RUNALWAYS_LOG": str(log)})
        seen = outcome.returncode if outcome.returncode >= 0 else 128 - outcome.returncode
        assert seen == status, (ending, outcome)
        events = records(log)
        assert [fields["event"] for fields in events] == ["start", "exit"], ending
        assert events[1]["status"] == str(status), ending
        assert events[1]["run_id"] == events[0]["run_id"]
        assert float(events[1]["duration"]) >= 0


@pytest.mark.clause("R17.5")
def test_a_status_that_cannot_be_known_is_left_out(procs: Procs) -> None:
    log = procs.workdir / "job.log"
    script = procs.script("job.py", "raise SystemExit(5)\n")
    assert procs.run_python(script, env={"RUNALWAYS_LOG": str(log)}).returncode == 5
    [start, end] = records(log)
    assert end["event"] == "exit"
    assert "status" not in end
    assert end["run_id"] == start["run_id"]


@pytest.mark.clause("R17.5")
def test_a_killed_job_and_a_forked_child_write_no_exit_line(procs: Procs) -> None:
    log = procs.workdir / "job.log"
    body = """
        import os, sys
        child = os.fork()
        if child == 0:
            sys.exit(0)
        os.waitpid(child, 0)
        print("ready", flush=True)
        sys.stdin.read()
    """
    holder = procs.python(procs.script("job.py", body), env={"RUNALWAYS_LOG": str(log)})
    wait_for_line(holder, "ready")
    kill(holder, signal.SIGKILL)
    assert [fields["event"] for fields in records(log)] == ["start"]


@pytest.mark.clause("R17.5")
def test_the_exit_line_is_written_before_the_lease_is_given_back(exit_releasing_procs: Procs) -> None:
    procs = exit_releasing_procs
    assert getattr(get_class(procs.backend), "release_at_exit", False), "a lock given back at exit is this case"
    log = procs.workdir / "job.log"
    # The job marks the release in the same record, asking the server who holds the lock then.
    body = f"""
        import os, sys
        import runalways.api
        [lease] = runalways.api.held()
        release = lease.release
        def marked_release():
            descriptor = os.open({str(log)!r}, os.O_WRONLY | os.O_APPEND)
            os.write(descriptor, b"event=released holder_pid=%d\\n" % lease.holder().pid)
            os.close(descriptor)
            release()
        lease.release = marked_release
        print("ready", flush=True)
        sys.stdin.read()
        sys.exit(3)
    """
    env = {"RUNALWAYS_LOG": str(log), "RUNALWAYS_NAME": f"ending-{os.getpid()}-{procs.workdir.name}"}
    holder = procs.python(procs.script("job.py", body), env=env)
    wait_for_line(holder, "ready")
    assert finish(holder).returncode == 3
    events = records(log)
    assert [fields["event"] for fields in events] == ["start", "exit", "released"]
    assert events[1]["status"] == "3"
    assert events[2]["holder_pid"] == str(holder.pid)  # still this job's after the exit line
