"""R1.8: lazy imports (PEP 810) never defer the guard.

On a Python with lazy imports, ``import runalways`` would otherwise load nothing until the
script first uses the name, which a guarding script never does: the guard would never run and
every copy would run. Installing runalways puts a line in site-packages that keeps its imports
eager. On a Python without lazy imports the switches are ignored and the statement is not
Python, so these cases check what such a Python does with them instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pytest
from harness import Procs, assert_already_running, clean_environment, finish, read_line, wait_for_line

#: Whether this Python has lazy imports (CPython 3.15 and later).
LAZY_IMPORTS = hasattr(sys, "set_lazy_imports")

#: A holder that first says which lazy-imports mode its interpreter runs in, so that a case
#: can tell that the switch it gave was in force ("-" on a Python without lazy imports).
SAYS_MODE_AND_HOLDS = """
import sys
print(sys.get_lazy_imports() if hasattr(sys, "get_lazy_imports") else "-", flush=True)
print("ready", flush=True)
sys.stdin.read()
"""

#: Each way of making every import lazy: (extra interpreter options, extra environment).
EVERY_IMPORT_LAZY = {
    "PYTHON_LAZY_IMPORTS=all": ([], {"PYTHON_LAZY_IMPORTS": "all"}),
    "-X lazy_imports=all": (["-X", "lazy_imports=all"], {}),
}


def start(
    procs: Procs, script: Path, options: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python [options] <script>``, by default a plain start as cron makes it: no setting at all."""
    argv = [sys.executable, *options, script.name]
    return procs.start_as_given(argv, clean_environment() if env is None else env, cwd=script.parent)


@pytest.mark.clause("R1.8")
@pytest.mark.parametrize("switch", EVERY_IMPORT_LAZY)
def test_making_every_import_lazy_leaves_the_guard_at_the_import(fcntl_procs: Procs, switch: str) -> None:
    options, variables = EVERY_IMPORT_LAZY[switch]
    job = fcntl_procs.script("job.py", SAYS_MODE_AND_HOLDS)
    holder = start(fcntl_procs, job, options, clean_environment(variables))
    assert read_line(holder) == ("all\n" if LAZY_IMPORTS else "-\n")
    wait_for_line(holder, "ready")
    second = finish(start(fcntl_procs, job, options, clean_environment(variables)))
    assert (second.returncode, second.stdout, second.stderr) == (0, "", ""), second
    decided = finish(start(fcntl_procs, job, options, fcntl_procs.env(variables)))  # the policy module decides
    assert (decided.returncode, decided.stdout, decided.stderr) == (0, "", ""), decided
    held = finish(holder)
    assert held.returncode == 0 and held.stderr.startswith("'job.py' has been started at "), held


@pytest.mark.clause("R1.8")
def test_a_lazy_import_statement_never_defers_the_guard(fcntl_procs: Procs) -> None:
    always = fcntl_procs.script("job.py", header="lazy import runalways\n")
    alone = fcntl_procs.script("alone.py", header="lazy from runalways import alone\n")
    if not LAZY_IMPORTS:
        # Not Python here: such a script stops before its first line, so no copy runs unguarded.
        for script in (always, alone):
            outcome = finish(start(fcntl_procs, script))
            assert (outcome.returncode, outcome.stdout) == (1, ""), outcome
            assert "SyntaxError" in outcome.stderr, outcome
        return
    holder = start(fcntl_procs, always)
    wait_for_line(holder, "ready")
    second = finish(start(fcntl_procs, always))
    assert (second.returncode, second.stdout, second.stderr) == (0, "", ""), second
    assert finish(holder).stderr.startswith("'job.py' has been started at ")

    holder = start(fcntl_procs, alone)
    wait_for_line(holder, "ready")
    second = finish(start(fcntl_procs, alone))
    assert (second.returncode, second.stdout) == (1, ""), second
    assert_already_running(second.stderr, "alone.py", holder.pid)
    assert finish(holder).stderr.startswith("'alone.py' has been started at ")
