"""The line that keeps ``import runalways`` eager under lazy imports (spec/SPEC.md R1.8):
installed where site runs it, and costing an interpreter start nothing on any Python.

Site runs every line of a ``.pth`` file in site-packages that starts with ``import`` at every
start of every interpreter of the environment, whether it runs a guarded script or not.
"""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

from harness import TIMEOUT, clean_environment

SOURCE = Path(__file__).resolve().parent.parent / "runalways-eager-import.pth"


def site_directories() -> list[Path]:
    return [Path(directory) for directory in [*site.getsitepackages(), site.getusersitepackages()]]


def the_line() -> str:
    """The one line of the file that site runs: every other line is a comment."""
    lines = [line for line in SOURCE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("import "), lines
    return lines[0]


def python(*args: str) -> str:
    """Run this environment's interpreter; fail on any output to stderr (site reports a failing
    line there and goes on)."""
    ran = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, env=clean_environment(), cwd="/"
    )
    assert (ran.returncode, ran.stderr) == (0, ""), ran
    return ran.stdout


def test_the_environment_running_the_tests_has_the_line_in_site_packages() -> None:
    """An install that drops the file, or ships another version of it, fails here."""
    installed = [directory / SOURCE.name for directory in site_directories() if (directory / SOURCE.name).exists()]
    assert installed, f"{SOURCE.name} is in none of {[str(path) for path in site_directories()]}"
    assert all(path.read_text() == SOURCE.read_text() for path in installed), installed


def test_the_line_imports_nothing_and_keeps_only_runalways_eager() -> None:
    """The line, run as site runs it in a fresh interpreter (started without site, so that
    nothing else has run it): on a Python with lazy imports it installs a filter that refuses
    laziness to runalways and its submodules and asks the filter set before it about every
    other import; on any other Python it changes nothing."""
    probe = f"""
import sys
earlier = (lambda importer, name, fromlist=None: name != "json") if hasattr(sys, "set_lazy_imports_filter") else None
if earlier:
    sys.set_lazy_imports_filter(earlier)
modules, attributes = set(sys.modules), set(vars(sys))
exec({the_line()!r})
print(sorted(set(sys.modules) - modules), sorted(set(vars(sys)) ^ attributes))
if earlier:
    keeps = sys.get_lazy_imports_filter()
    print([keeps("job", name, None) for name in ("runalways", "runalways.alone", "runalways_x", "csv", "json")])
"""
    unchanged, *decisions = python("-S", "-c", probe).splitlines()
    assert unchanged == "[] []"  # no module loaded, no attribute of sys added or removed
    if hasattr(sys, "set_lazy_imports_filter"):
        assert decisions == ["[False, False, True, True, False]"]
    else:
        assert decisions == []


def test_an_interpreter_start_loads_no_module_of_runalways() -> None:
    """What every Python program of the environment pays for the line: no module."""
    shown = python("-c", "import sys; print(sorted(name for name in sys.modules if name.startswith('runalways')))")
    assert shown == "[]\n"
