"""R4: only the main script's own ``import runalways`` guards anything."""

from __future__ import annotations

import sys

import pytest
from harness import HOLD, Procs, finish, read_line


@pytest.mark.clause("R4.1")
def test_a_library_importing_runalways_guards_nothing(procs: Procs) -> None:
    procs.script("helper_lib.py", "VALUE = 1\n")  # its first line: import runalways
    job = procs.script("job.py", HOLD, header="import helper_lib\n")
    first, second = procs.hold(job), procs.hold(job)  # both run: nothing is locked
    assert finish(first).stderr == "" and finish(second).stderr == ""


@pytest.mark.clause("R4.6")
@pytest.mark.parametrize("first", ["import helper_lib\n", "import runalways.api\n", "from runalways import api\n"])
def test_import_runalways_guards_even_when_runalways_was_loaded_before(procs: Procs, first: str) -> None:
    procs.script("helper_lib.py", "import runalways.api\n", header="")  # a library using the API
    job = procs.script("job.py", HOLD, header=first + "import runalways\n")
    holder = procs.hold(job)
    assert procs.run_python(job).stdout == ""  # the script's own import runalways still guards it
    finish(holder)


@pytest.mark.clause("R4.2")
@pytest.mark.parametrize(
    "header",
    [
        "import runalways.api\n",
        "from runalways import api\n",
        "from runalways.api import guard\n",
        "import runalways.cli\n",
    ],
)
def test_importing_a_submodule_for_its_api_guards_nothing(procs: Procs, header: str) -> None:
    job = procs.script("job.py", HOLD, header=header)
    first, second = procs.hold(job), procs.hold(job)
    assert finish(first).stderr == "" and finish(second).stderr == ""


TEST_MODULE = """
import os, pathlib, time
import runalways
import runalways.api

def test_imports_do_not_guard():
    # Both sessions must be inside this test at the same time.
    shared = pathlib.Path(os.environ["SESSIONS"])
    (shared / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(list(shared.iterdir())) < 2:
        assert time.monotonic() < deadline, "the other session never arrived"
        time.sleep(0.01)
    assert runalways.__version__
"""


@pytest.mark.clause("R4.3")
def test_pytest_sessions_are_never_guarded(procs: Procs) -> None:
    procs.script("test_uses_runalways.py", TEST_MODULE, header="")
    sessions_dir = procs.workdir / "sessions"
    sessions_dir.mkdir()
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "test_uses_runalways.py"]
    env = {"SESSIONS": str(sessions_dir)}
    sessions = [procs.python(*args, "--basetemp", str(procs.workdir / f"base{n}"), env=env) for n in (1, 2)]
    for outcome in [finish(session) for session in sessions]:
        assert outcome.returncode == 0, outcome
        assert "1 passed" in outcome.stdout and "runalways" not in outcome.stderr


@pytest.mark.clause("R4.4")
def test_the_command_line_never_guards_itself(procs: Procs) -> None:
    job = procs.script("job.py", HOLD, header="")
    runner = [sys.executable, "-m", "runalways", "run", "--name"]
    first = procs.start([*runner, "one", "--", sys.executable, job])
    second = procs.start([*runner, "two", "--", sys.executable, job])
    for process in (first, second):
        assert read_line(process) == "ready\n"
    listing = procs.run([sys.executable, "-m", "runalways", "backends"])
    assert listing.returncode == 0 and procs.backend in listing.stdout
    assert finish(first).returncode == 0 and finish(second).returncode == 0


POOL = """
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor

def square(n):
    return n * n

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    with context.Pool(2) as pool:
        print("pool", sum(pool.map(square, range(10))), flush=True)
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        print("executor", sum(executor.map(square, range(10))), flush=True)
    print("ready", flush=True)
    sys.stdin.read()
"""


@pytest.mark.clause("R4.5")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_are_not_guarded(procs: Procs, method: str) -> None:
    job = procs.script("job.py", POOL)
    holder = procs.python(job, method)
    assert holder.stdout is not None
    assert read_line(holder) == "pool 285\n"
    assert read_line(holder) == "executor 285\n"
    assert read_line(holder) == "ready\n"
    second = procs.run_python(job, method)  # the lock stayed with the parent
    assert (second.returncode, second.stdout) == (0, "")
    finish(holder)
