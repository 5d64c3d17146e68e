"""R5: the explicit API, ``runalways.api.guard()`` and ``runalways.api.lock()``."""

from __future__ import annotations

import pytest
from harness import HOLD, Procs, finish, send, wait_for_line

GUARD_LATER = """
import sys
import runalways.api
print("before", flush=True)
runalways.api.guard(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.clause("R5.1")
@pytest.mark.parametrize(("policy", "status"), [("always", 0), ("alone", 1)])
def test_guard_applies_the_policy_at_run_time(procs: Procs, policy: str, status: int) -> None:
    job = procs.script("job.py", GUARD_LATER, header="")
    holder = procs.python(job, policy)
    wait_for_line(holder, "ready")
    loser = procs.run_python(job, policy)
    assert (loser.returncode, loser.stdout) == (status, "before\n")  # it ran up to guard(), no further
    finish(holder)


LOCK_BLOCK = """
import sys
import runalways.api
from runalways.errors import AlreadyRunning
try:
    with runalways.api.lock(name="report") as held:
        print("ready", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    sys.stdin.read()
except AlreadyRunning as error:
    print("refused:", error.holder.pid if error.holder else None, flush=True)
"""


@pytest.mark.clause("R5.2")
def test_lock_holds_for_the_block_and_raises_with_the_holder(procs: Procs) -> None:
    job = procs.script("job.py", LOCK_BLOCK, header="")
    holder = procs.python(job)
    wait_for_line(holder, "ready")
    refused = procs.run_python(job)
    assert refused.returncode == 0
    assert refused.stdout.startswith("refused:")
    if refused.stdout != "refused: None\n":  # the mechanism can tell who holds it
        assert refused.stdout == f"refused: {holder.pid}\n"
    assert holder.stdin is not None
    send(holder, "leave the block\n")
    wait_for_line(holder, "released")
    after = procs.python(job)
    wait_for_line(after, "ready")  # the block's end released it
    finish(after)
    finish(holder)


@pytest.mark.clause("R5.1")
def test_guard_after_import_runalways_is_the_same_lock(procs: Procs) -> None:
    job = procs.script("job.py", "import runalways.api\nrunalways.api.guard()\n" + HOLD)
    holder = procs.hold(job)
    assert procs.run_python(job).stdout == ""
    finish(holder)
