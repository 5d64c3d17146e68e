"""R4: only the main script's own ``import runalways`` guards anything."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

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


#: A tool as its author writes it: ``import runalways`` first in the module of its entry point.
MAIN = "\n\ndef main():\n    print('ready', flush=True)\n    sys.stdin.read()\n"
TOOL = {
    "mytool/__init__.py": "",
    "mytool/cli.py": "import runalways\nimport sys\n" + MAIN,
    "mytool/__main__.py": "from mytool.cli import main\n\nmain()\n",
    # A second tool of the package whose entry point uses a library that imports runalways.
    "mytool/helper.py": "import runalways\n",
    # A tool whose entry point imports a library that loads runalways before its own guard line.
    "mytool/uses_api.py": "import runalways.api\n",
    "mytool/late.py": "import sys\n\nimport mytool.uses_api\nimport runalways\n" + MAIN,
    "mytool/other.py": "import sys\n\nimport mytool.helper\n" + MAIN,
}
ENTRY_POINTS = (
    "[console_scripts]\nmytool = mytool.cli:main\nothertool = mytool.other:main\nlatetool = mytool.late:main\n"
)


def _wheel(folder: Path) -> Path:
    """The tool as a wheel, as a build backend would make it."""
    import base64
    import hashlib
    import zipfile

    info = "mytool-1.0.dist-info"
    files = {
        **TOOL,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: mytool\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: runalways-spec\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": ENTRY_POINTS,
    }
    wheel = folder / "mytool-1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            data = text.encode()
            archive.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return wheel


#: Seconds pip may take to install the tool: a second or two, much more on a loaded machine.
SETUP_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tool installed by pip into a virtual environment of its own, as pipx does: its bin/."""
    import runalways

    folder = tmp_path_factory.mktemp("tool")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=SETUP_TIMEOUT)
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-index"]
    subprocess.run([*install, "--no-deps", "-q", _wheel(folder)], check=True, timeout=SETUP_TIMEOUT)
    # runalways and what its backends need, as the tool's dependencies: this checkout and
    # the packages of the suite's own environment, on the tool environment's path.
    site = next((venv / "lib").glob("python3*/site-packages"))
    paths = [str(Path(runalways.__file__).resolve().parent.parent), *sysconfig.get_paths()["purelib"].split()]
    (site / "runalways-checkout.pth").write_text("\n".join(paths) + "\n")
    return venv / "bin"


@pytest.mark.clause("R4.7")
def test_an_installed_console_script_is_guarded(procs: Procs, tool: Path, capabilities: object) -> None:
    launcher = tool / "mytool"
    assert "from mytool.cli import main" in launcher.read_text()  # what pip generated
    # A backend that locks the launcher for writing makes Linux refuse to execute it (R1.1).
    interpreter = [tool / "python"] if capabilities.needs_write_access else []  # type: ignore[attr-defined]
    holder = procs.start([*interpreter, launcher])
    assert read_line(holder) == "ready\n"
    assert procs.run([*interpreter, launcher]).stdout == ""  # the second copy exits 0 and runs nothing
    # pipx puts a symbolic link to the launcher on PATH: the same tool, the same lock.
    linked = procs.workdir / "bin" / "mytool"
    linked.parent.mkdir()
    linked.symlink_to(launcher)
    again = procs.run([*interpreter, linked])
    assert (again.returncode, again.stdout, again.stderr) == (0, "", ""), again
    first = finish(holder)
    assert first.stderr.startswith(f"'{launcher}' has been started at "), first


@pytest.mark.clause("R4.7")
def test_python_dash_m_of_the_tool_package_is_guarded(procs: Procs, tool: Path) -> None:
    holder = procs.start([tool / "python", "-m", "mytool"])
    assert read_line(holder) == "ready\n"
    second = procs.run([tool / "python", "-m", "mytool"])
    assert (second.returncode, second.stdout) == (0, ""), second
    finish(holder)


@pytest.mark.clause("R4.7")
def test_a_library_of_a_tool_guards_nothing(procs: Procs, tool: Path) -> None:
    first, second = procs.start([tool / "othertool"]), procs.start([tool / "othertool"])
    assert read_line(first) == "ready\n" and read_line(second) == "ready\n"
    assert finish(first).stderr == "" and finish(second).stderr == ""


@pytest.mark.clause("R4.7")
def test_a_tool_whose_entry_point_loaded_runalways_before_its_guard_line_is_guarded(procs: Procs, tool: Path) -> None:
    holder = procs.start([tool / "python", tool / "latetool"])
    assert read_line(holder) == "ready\n"
    second = procs.run([tool / "python", tool / "latetool"])
    assert (second.returncode, second.stdout) == (0, ""), second
    finish(holder)
