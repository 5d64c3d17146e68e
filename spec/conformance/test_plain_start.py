"""R1.7: a plain start, which the package decides alone, is the start the policy module makes.

A cron start with nothing to decide (the main script's own ``import runalways``, no
``RUNALWAYS_*`` setting) never loads the policy module or a backend: ``runalways/__init__.py``
flocks the script itself. These cases run such starts with an environment that has no
setting at all, beside starts that the policy module decides with the ``fcntl`` backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import (
    Procs,
    as_nobody,
    assert_already_running,
    clean_environment,
    finish,
    kill,
    stampede,
    wait_for_line,
)


def plain(procs: Procs, script: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``python <script>`` started as cron would start it: no RUNALWAYS_* setting at all."""
    return procs.start_as_given([sys.executable, script.name], clean_environment(), cwd=cwd or script.parent)


def plain_holder(procs: Procs, script: Path) -> subprocess.Popen[bytes]:
    holder = plain(procs, script)
    wait_for_line(holder, "ready")
    return holder


@pytest.mark.clause("R1.7")
def test_a_plain_start_says_it_started_and_a_second_plain_copy_exits_0_silently(fcntl_procs: Procs) -> None:
    job = fcntl_procs.script("job.py")
    holder = plain_holder(fcntl_procs, job)
    second = finish(plain(fcntl_procs, job))
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    held = finish(holder)
    assert held.returncode == 0
    assert held.stderr.startswith("'job.py' has been started at ") and held.stderr.count("\n") == 1, held
    assert held.stderr.rstrip("\n").rsplit(" ", 1)[1].isdigit(), held


@pytest.mark.clause("R1.7")
def test_plain_starts_and_starts_with_settings_exclude_each_other(fcntl_procs: Procs) -> None:
    job = fcntl_procs.script("job.py")
    holder = plain_holder(fcntl_procs, job)
    decided = fcntl_procs.run_python(job)  # RUNALWAYS_BACKEND=fcntl: the policy module decides
    assert (decided.returncode, decided.stdout, decided.stderr) == (0, "", "")
    alone = fcntl_procs.run_python("-c", f"import runalways.api; runalways.api.guard('alone', path={str(job)!r})")
    assert alone.returncode == 1
    assert_already_running(alone.stderr, str(job), holder.pid)
    finish(holder)

    holder = fcntl_procs.hold(job)
    second = finish(plain(fcntl_procs, job))
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    finish(holder)


@pytest.mark.clause("R1.7")
def test_a_killed_plain_holder_lets_the_next_plain_start_in(fcntl_procs: Procs) -> None:
    job = fcntl_procs.script("job.py")
    kill(plain_holder(fcntl_procs, job), signal.SIGKILL)
    plain_holder(fcntl_procs, job)


@pytest.mark.clause("R1.7")
def test_a_plain_start_loads_no_module_of_runalways_but_the_package(fcntl_procs: Procs) -> None:
    """What a cron start pays for: the package and fcntl, nothing else of runalways, and
    none of the slow modules (dis decodes statements, importlib.metadata reads entry points)."""
    body = """
    import sys
    print(sorted(name for name in sys.modules if name.split(".")[0] == "runalways"))
    print(sorted({"dis", "opcode", "importlib.metadata"} & set(sys.modules)))
    """
    outcome = finish(plain(fcntl_procs, fcntl_procs.script("job.py", body)))
    assert (outcome.returncode, outcome.stdout) == (0, "['runalways']\n[]\n"), outcome
    assert "has been started at" in outcome.stderr


@pytest.mark.clause("R1.7")
def test_runalways_api_adopts_the_lock_of_a_plain_start(fcntl_procs: Procs) -> None:
    """guard() after a plain ``import runalways`` returns the lock this process holds: it does
    not lock the script a second time and find itself in the way."""
    body = """
    import runalways.api
    held = runalways.api.held()
    again = runalways.api.guard()
    print(len(held), type(again).__name__, again is held[0], again.lock_file() == __file__)
    """
    job = fcntl_procs.script("job.py", body)
    outcome = finish(plain(fcntl_procs, job))
    assert (outcome.returncode, outcome.stdout) == (0, "1 FlockBackend True True\n"), outcome


@pytest.mark.clause("R1.7")
def test_a_plain_start_that_cannot_open_its_script_is_the_policy_modules_one_line(
    fcntl_procs: Procs, shared_dir: Path
) -> None:
    """Anything but another copy holding the lock is handed to the policy module, which meets
    it afresh: here the script, readable when Python started it, is no longer readable."""
    if os.geteuid() != 0:
        pytest.fail("the permission cases run as root, to drop privileges to nobody")
    job = shared_dir / "job.py"
    job.write_text("import os\nos.chmod(__file__, 0)\nimport runalways\nprint('body')\n")
    os.chown(job, 65534, 65534)
    env = clean_environment({"HOME": str(shared_dir)})
    outcome = finish(fcntl_procs.start_as_given(as_nobody([sys.executable, str(job)]), env, cwd=shared_dir))
    assert (outcome.returncode, outcome.stdout) == (2, ""), outcome
    assert outcome.stderr == f"runalways: cannot open {str(job)!r} to lock it: Permission denied\n", outcome


@pytest.mark.clause("R1.7")
def test_a_stampede_of_plain_starts_runs_exactly_one_body_per_round(fcntl_procs: Procs) -> None:
    assert stampede(fcntl_procs, clean_environment(), rounds=5) == [1] * 5
