"""R9, R10: scripts the user cannot write, other users, and many copies at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from harness import TIMEOUT, Procs, as_nobody, finish, lines, nobody_env, read_line

Observe = Callable[[str, str], None]
NOBODY = 65534


@pytest.mark.clause("R9.1")
def test_a_read_only_script_can_be_guarded_as_declared(
    procs: Procs, capabilities: object, shared_dir: Path, observe: Observe
) -> None:
    if os.geteuid() != 0:
        pytest.fail("the permission cases run as root, to drop privileges to nobody")
    job = shared_dir / "job.py"
    job.write_text("import runalways\nprint('body')\n")
    job.chmod(0o444)  # read-only, and owned by root: nobody may read it, not write it
    outcome = procs.run(as_nobody([sys.executable, str(job)]), env=nobody_env(shared_dir))
    needs_write = capabilities.needs_write_access  # type: ignore[attr-defined]
    observe("read-only script owned by another user", "exit 2 with a message" if outcome.returncode else "guarded")
    if needs_write:
        assert outcome.returncode == 2 and outcome.stdout == ""
        assert outcome.stderr.startswith("runalways: ") and outcome.stderr.count("\n") == 1
        assert "RUNALWAYS_BACKEND=" in outcome.stderr  # names a backend that works
    else:
        assert (outcome.returncode, outcome.stdout) == (0, "body\n")
        assert outcome.stderr.startswith(f"'{job}' has been started at ")


@pytest.mark.clause("R9.2")
def test_another_user_who_can_read_the_script_can_hold_its_lock(
    procs: Procs, capabilities: object, shared_dir: Path, observe: Observe
) -> None:
    """The documented trap of locking the script itself: a reader can keep it from running."""
    job = shared_dir / "job.py"
    job.write_text("import runalways\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()\n")
    job.chmod(0o644)
    squatter = procs.start(as_nobody([sys.executable, str(job)]), env=nobody_env(shared_dir))
    squatting = read_line(squatter) == "ready\n"
    refused = procs.run([sys.executable, str(job)]).stdout == ""
    can_hold = capabilities.other_users_can_hold  # type: ignore[attr-defined]
    observe("script locked by another user who can read it", "blocked" if refused else "runs")
    assert refused == can_hold
    if can_hold:
        assert squatting
    finish(squatter)


STAMPEDE_BODY = """
import os, sys
with open(sys.argv[1], "a") as log:
    log.write(f"{os.getpid()}\\n")
os.read(int(sys.argv[2]), 1)  # hold the lock until the test says the round is over
"""

#: Each copy waits on the gate until all exist, then execs ``python job.py`` at once.
GATE = "import os, sys; os.read(int(sys.argv[1]), 1); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"

COPIES = 32
ROUNDS = 10


@pytest.mark.clause("R10.1")
def test_stampede_runs_exactly_one_body_per_round(procs: Procs, observe: Observe) -> None:
    job = procs.script("job.py", STAMPEDE_BODY)
    env = procs.env({"RUNALWAYS_SILENT": "1"})
    bodies = []
    for round_number in range(ROUNDS):
        log = procs.workdir / f"round{round_number}.log"
        gate_read, gate_write = os.pipe()
        hold_read, hold_write = os.pipe()
        argv = [sys.executable, "-c", GATE, str(gate_read), str(job), str(log), str(hold_read)]
        copies = [
            subprocess.Popen(argv, env=env, pass_fds=(gate_read, hold_read), stdout=subprocess.DEVNULL)
            for _ in range(COPIES)
        ]
        os.close(gate_read)
        os.close(hold_read)
        try:
            os.write(gate_write, b"go" * COPIES)
            deadline = time.monotonic() + TIMEOUT
            # Every loser must exit on its own while the winner still holds the lock.
            while sum(copy.poll() is not None for copy in copies) < COPIES - 1:
                assert time.monotonic() < deadline, "the losers did not all exit"
                time.sleep(0.01)
            bodies.append(len(list(lines(log))))
            assert [copy.returncode for copy in copies if copy.poll() is not None] == [0] * (COPIES - 1)
        finally:
            os.close(gate_write)
            os.close(hold_write)  # the round is over: the winner's body ends
            for copy in copies:
                try:
                    copy.wait(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    copy.kill()
                    copy.wait()
    observe(f"{COPIES} copies at once, {ROUNDS} rounds", f"bodies per round: {sorted(set(bodies))}")
    assert bodies == [1] * ROUNDS
