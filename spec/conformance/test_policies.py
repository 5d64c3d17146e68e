"""R1, R2: the always and alone policies, as a user sees them."""

from __future__ import annotations

import re
import signal
import time

import pytest
from harness import HOLD, Procs, assert_already_running, finish, kill, lines, read_line, same_lock_as

START_LINE = re.compile(r"^'(?P<name>[^']*)' has been started at (?P<epoch>\d+)\n$")

#: A body that records that it ran: no line after the import may run in a loser.
MARK = """
import os, sys
with open(sys.argv[1], "a") as mark:
    mark.write(f"{os.getpid()}\\n")
"""


@pytest.mark.clause("R1.2")
def test_second_copy_exits_0_silently_and_runs_nothing(procs: Procs) -> None:
    job = procs.script("job.py", HOLD + MARK.replace("sys.argv[1]", "sys.argv[2]"))
    mark = procs.workdir / "ran"
    holder = procs.hold(job, "holder", mark)
    loser = procs.run_python(job, "loser", mark)
    assert (loser.returncode, loser.stdout, loser.stderr) == (0, "", "")
    finish(holder)
    assert len(list(lines(mark))) == 1  # the holder's body only


@pytest.mark.clause("R1.3")
def test_winner_says_it_started_with_argv0_as_given(procs: Procs) -> None:
    procs.script("sub/job.py", "print('body')\n")
    before = int(time.time())
    outcome = procs.run_python("./sub/job.py")
    after = int(time.time())
    assert outcome.returncode == 0 and outcome.stdout == "body\n"
    started = START_LINE.match(outcome.stderr)
    assert started is not None, outcome.stderr
    assert started["name"] == "./sub/job.py"
    assert before <= int(started["epoch"]) <= after


@pytest.mark.clause("R1.3", "R3.2")
@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_silent_winner_says_nothing(procs: Procs, value: str) -> None:
    job = procs.script("job.py", "print('body')\n")
    outcome = procs.run_python(job, env={"RUNALWAYS_SILENT": value})
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "body\n", "")


ENDINGS = {
    "normal exit": "",
    "exception": "raise RuntimeError('the job failed')\n",
    "os._exit": "import os; os._exit(7)\n",
    "SystemExit(3)": "raise SystemExit(3)\n",
}


@pytest.mark.clause("R1.4")
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_lock_is_held_until_the_holder_ends(procs: Procs, ending: str) -> None:
    job = procs.script("job.py", HOLD + ENDINGS[ending])
    holder = procs.hold(job)
    assert procs.run_python(job).returncode == 0  # refused while it runs
    finish(holder)
    follower = procs.hold(job)  # gets in once it has ended
    finish(follower)


@pytest.mark.clause("R1.4", "R8.1")
def test_lock_is_released_when_the_holder_is_killed(procs: Procs, capabilities: object) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    kill(holder, signal.SIGKILL)
    bound = capabilities.crash_release_seconds  # type: ignore[attr-defined]
    started = time.monotonic()
    while True:
        follower = procs.python(job)
        outcome_line = read_line(follower)
        if outcome_line == "ready\n":
            break
        finish(follower)
        assert time.monotonic() - started <= bound + 5, "the lock stayed taken after the holder was killed"
    finish(follower)


@pytest.mark.clause("R2.1")
@pytest.mark.parametrize("header", ["import runalways.alone\n", "from runalways import alone\n"])
def test_alone_second_copy_says_so_and_exits_1(procs: Procs, header: str) -> None:
    job = procs.script("job.py", HOLD + MARK.replace("sys.argv[1]", "sys.argv[2]"), header=header)
    mark = procs.workdir / "ran"
    holder = procs.hold(job, "holder", mark)
    loser = procs.run_python(job, "loser", mark)
    assert (loser.returncode, loser.stdout) == (1, "")
    assert_already_running(loser.stderr, str(job), holder.pid)
    started = finish(holder)
    assert START_LINE.match(started.stderr)
    assert len(list(lines(mark))) == 1


@pytest.mark.clause("R2.2", "R3.2")
def test_alone_silent_exits_1_without_a_word(procs: Procs) -> None:
    job = procs.script("job.py", header="import runalways.alone\n")
    holder = procs.hold(job)
    loser = procs.run_python(job, env={"RUNALWAYS_SILENT": "yes"})
    assert (loser.returncode, loser.stdout, loser.stderr) == (1, "", "")
    finish(holder)


@pytest.mark.clause("R2.3")
def test_always_and_alone_exclude_each_other_on_the_same_script(procs: Procs, capabilities: object) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    kind, value = same_lock_as(job, capabilities)
    alone = procs.run_python("-c", f"import runalways.api; runalways.api.guard('alone', {kind}={value!r})")
    assert alone.returncode == 1
    assert_already_running(alone.stderr, value, holder.pid)
    finish(holder)
