"""R9, R10: scripts the user cannot write, other users, and many copies at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pytest
from harness import STAMPEDE_COPIES, Procs, as_nobody, finish, nobody_env, read_line, stampede

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


ROUNDS = 10

#: Backends whose every start imports a client library (psycopg, redis-py; portalocker imports
#: redis-py when it is installed): a copy costs ten times the CPU of a kernel-lock start, and ten
#: rounds of 32 of them took a third of a core's share of the suite. Their exclusion is the
#: server's (or the same kernel lock's), raced by as many copies in each round; the chaos soak
#: races them for minutes.
HEAVY_STARTS = {"postgres": 3, "redis": 3, "portalocker": 3}


@pytest.mark.clause("R10.1")
def test_stampede_runs_exactly_one_body_per_round(procs: Procs, observe: Observe) -> None:
    rounds = HEAVY_STARTS.get(procs.backend, ROUNDS)
    bodies = stampede(procs, procs.env({"RUNALWAYS_SILENT": "1"}), rounds)
    seen = f"bodies per round: {sorted(set(bodies))} ({rounds} rounds)"
    observe(f"{STAMPEDE_COPIES} copies at once, round after round", seen)
    assert bodies == [1] * rounds
