"""How a guarded run ended, on the record: runalways._ending (spec/SPEC.md R17.5).

Real processes: each job is a script whose first line is ``import runalways``, started
with RUNALWAYS_LOG, that ends one way; its ``event=exit`` line must carry the status its
parent really saw, and the job's own status and stderr must be what they are without
runalways. Every process has a timeout and is reaped.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest
from harness import Outcome, Procs, kill, wait_for_line

from runalways._ending import exit_status
from runalways._eventlog import parse

#: The first line of a job run without runalways: as long as ``import runalways``, so
#: that the line numbers of a traceback are the same.
UNGUARDED = "import os\n"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs("fcntl", tmp_path)
    try:
        yield started
    finally:
        started.reap()


def records(log: Path) -> list[dict[str, str]]:
    return [parse(line) for line in log.read_text().splitlines()] if log.exists() else []


def exits(log: Path) -> list[dict[str, str]]:
    return [fields for fields in records(log) if fields["event"] == "exit"]


def run_job(procs: Procs, body: str, name: str = "job.py", header: str = "import runalways\n") -> tuple[Outcome, Path]:
    log = procs.workdir / (name + ".log")
    script = procs.script(name, body, header=header)
    return procs.run_python(script, env={"RUNALWAYS_LOG": str(log)}), log


def without_start_line(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if "has been started at" not in line)


#: Each way a job ends: its body, and the status its parent sees.
ENDINGS = {
    "runs to its end": ("x = 1\n", 0),
    "sys.exit()": ("import sys\nsys.exit()\n", 0),
    "sys.exit(3)": ("import sys\nsys.exit(3)\n", 3),
    "sys.exit(256)": ("import sys\nsys.exit(256)\n", 0),
    "sys.exit(-1)": ("import sys\nsys.exit(-1)\n", 255),
    "sys.exit(2**70)": ("import sys\nsys.exit(2**70)\n", 255),
    "sys.exit(True)": ("import sys\nsys.exit(True)\n", 1),
    "sys.exit('message')": ("import sys\nsys.exit('the job failed')\n", 1),
    "exit(4)": ("exit(4)\n", 4),
    "quit()": ("quit()\n", 0),
    "an uncaught exception": ("raise ValueError('boom')\n", 1),
    "sys.exit in a function": ("import sys\ndef main():\n    sys.exit(6)\nmain()\n", 6),
    "sys.exit deep in functions": (
        "import sys\ndef inner():\n    sys.exit(7)\ndef main():\n    inner()\nmain()\n",
        7,
    ),
    "argparse's error": (
        "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--n', type=int)\n"
        "parser.parse_args(['--n', 'x'])\n",
        2,
    ),
    "sys.exit caught, then a normal end": (
        "import sys\ntry:\n    sys.exit(2)\nexcept SystemExit:\n    pass\n",
        0,
    ),
    "sys.exit caught, then an exception": (
        "import sys\ntry:\n    sys.exit(2)\nexcept SystemExit:\n    pass\nraise KeyError('k')\n",
        1,
    ),
    "sys.exit in a thread": (
        "import sys, threading\nthread = threading.Thread(target=sys.exit, args=(5,))\nthread.start()\nthread.join()\n",
        0,
    ),
}


@pytest.mark.parametrize("ending", ENDINGS, ids=list(ENDINGS))
def test_the_exit_line_carries_the_status_the_parent_sees(procs: Procs, ending: str) -> None:
    body, status = ENDINGS[ending]
    guarded, log = run_job(procs, body)
    unguarded, _ = run_job(procs, body, name="plain.py", header=UNGUARDED)

    assert guarded.returncode == unguarded.returncode == status
    assert without_start_line(guarded.stderr) == unguarded.stderr.replace("plain.py", "job.py")
    [start] = [fields for fields in records(log) if fields["event"] == "start"]
    [end] = exits(log)
    assert end["status"] == str(status)
    assert end["run_id"] == start["run_id"]
    assert end["pid"] == start["pid"]
    assert float(end["duration"]) >= 0


def test_an_uncaught_exception_is_still_printed_once(procs: Procs) -> None:
    guarded, log = run_job(procs, "def main():\n    raise ValueError('boom')\nmain()\n")
    assert guarded.returncode == 1
    assert guarded.stderr.count("Traceback (most recent call last):") == 1
    assert guarded.stderr.rstrip().endswith("ValueError: boom")
    assert exits(log)[0]["status"] == "1"


def test_sys_exit_with_a_message_still_prints_it(procs: Procs) -> None:
    guarded, log = run_job(procs, "import sys\nsys.exit('the job failed')\n")
    assert without_start_line(guarded.stderr) == "the job failed\n"
    assert exits(log)[0]["status"] == "1"


def test_an_uncaught_keyboard_interrupt_is_130_as_its_sigint(procs: Procs) -> None:
    guarded, log = run_job(procs, "raise KeyboardInterrupt\n")
    # Python ends by killing itself with SIGINT: the parent sees the signal, a shell 130.
    assert guarded.returncode == -signal.SIGINT
    assert guarded.stderr.rstrip().endswith("KeyboardInterrupt")
    assert exits(log)[0]["status"] == "130"


def test_guard_called_in_a_function_reports_the_end_of_the_script(procs: Procs) -> None:
    body = "import sys\nimport runalways.api\ndef main():\n    runalways.api.guard()\n    sys.exit(14)\nmain()\n"
    guarded, log = run_job(procs, body, header="")
    assert guarded.returncode == 14
    [end] = exits(log)
    assert end["status"] == "14"


def test_guard_called_in_a_function_that_returns(procs: Procs) -> None:
    body = "import runalways.api\ndef main():\n    runalways.api.guard()\nmain()\nx = [1]\n"
    guarded, log = run_job(procs, body, header="")
    assert guarded.returncode == 0
    assert exits(log)[0]["status"] == "0"


def test_a_forked_child_that_exits_is_not_the_run(procs: Procs) -> None:
    body = """
        import os, sys
        child = os.fork()
        if child == 0:
            sys.exit(11)
        os.waitpid(child, 0)
        sys.exit(12)
    """
    guarded, log = run_job(procs, body)
    assert guarded.returncode == 12
    [end] = exits(log)
    assert end["status"] == "12"
    assert end["pid"] == records(log)[0]["pid"]


def test_a_child_of_multiprocessing_that_ends_is_not_the_run(procs: Procs) -> None:
    body = """
        import multiprocessing, sys
        if __name__ == "__main__":
            context = multiprocessing.get_context("fork")
            worker = context.Process(target=sys.exit, args=(9,))
            worker.start()
            worker.join(30)
            sys.exit(worker.exitcode + 10)
    """
    guarded, log = run_job(procs, body)
    assert guarded.returncode == 19
    assert [end["status"] for end in exits(log)] == ["19"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_job_killed_by_a_signal_writes_no_exit_line(procs: Procs, signum: int) -> None:
    log = procs.workdir / "job.log"
    script = procs.script("job.py", 'import sys\nprint("ready", flush=True)\nsys.stdin.read()\n')
    holder = procs.python(script, env={"RUNALWAYS_LOG": str(log)})
    wait_for_line(holder, "ready")
    kill(holder, signum)
    assert holder.returncode == -signum
    assert [fields["event"] for fields in records(log)] == ["start"]


def test_os_exit_writes_no_exit_line(procs: Procs) -> None:
    guarded, log = run_job(procs, "import os\nos._exit(5)\n")
    assert guarded.returncode == 5
    assert exits(log) == []


#: Ends by a SystemExit of 5 that ``sys.exit`` did not raise, or whose way out cannot be
#: followed: the status is not known.
UNKNOWABLE = {
    "raise SystemExit": "raise SystemExit(5)\n",
    "raise SystemExit(main())": "def main():\n    return 5\nraise SystemExit(main())\n",
    "converted here": "import sys\ntry:\n    sys.exit(2)\nexcept SystemExit:\n    raise SystemExit(5)\n",
    "converted deeper": """
        import sys
        def check():
            try:
                sys.exit(2)
            except SystemExit:
                raise SystemExit(5)
        check()
    """,
    "caught, then another raised at the same place": """
        import sys
        def step(attempt):
            if attempt == 0:
                sys.exit(2)
            raise SystemExit(5)
        for attempt in (0, 1):
            try:
                step(attempt)
            except SystemExit:
                if attempt:
                    raise
    """,
    "through a finally": "import sys\ntry:\n    sys.exit(5)\nfinally:\n    pass\n",
}


@pytest.mark.parametrize("body", UNKNOWABLE.values(), ids=list(UNKNOWABLE))
def test_a_status_that_cannot_be_known_is_not_guessed(procs: Procs, body: str) -> None:
    guarded, log = run_job(procs, body)
    assert guarded.returncode == 5
    [end] = exits(log)
    assert "status" not in end  # the end is recorded, with no status rather than a wrong one
    assert "duration" in end


@pytest.mark.parametrize(
    ("code", "status"),
    [(None, 0), (0, 0), (3, 3), (255, 255), (256, 0), (-1, 255), (True, 1), (2**70, 255), ("x", 1), ((1, 2), 1)],
)
def test_exit_status_of_a_code(code: object, status: int) -> None:
    assert exit_status(code) == status


def test_exit_status_matches_this_python(tmp_path: Path) -> None:
    """The rule above against the interpreter that runs the tests, for the codes it takes."""
    for code in ("None", "3", "256", "-1", "2**70", "True", "'x'"):
        outcome = Procs("fcntl", tmp_path).run_python("-c", f"import sys; sys.exit({code})")
        assert outcome.returncode == exit_status(eval(code)), code


def test_importing_it_loads_nothing_heavy(tmp_path: Path) -> None:
    probe = "import sys, runalways._ending; print(' '.join(sorted(sys.modules)))"
    outcome = Procs("fcntl", tmp_path).run_python("-c", probe)
    loaded = set(outcome.stdout.split())
    assert not loaded & {"threading", "inspect", "traceback", "dis", "opcode", "typing"}, sys.version
