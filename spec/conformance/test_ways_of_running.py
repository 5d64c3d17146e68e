"""R1.1: the file that is locked, for every way a Python script can be started."""

from __future__ import annotations

import errno
import os
import stat
import sys
import zipapp
from typing import Callable

import pytest
from harness import HOLD, Procs, finish, read_line


@pytest.mark.clause("R1.1")
def test_python_script_path(procs: Procs) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    assert procs.run_python(job).stdout == ""
    finish(holder)


@pytest.mark.clause("R1.1")
def test_relative_symlink_locks_the_script_it_points_to(procs: Procs, capabilities: object) -> None:
    job = procs.script("real/job.py")
    (procs.workdir / "link.py").symlink_to("real/job.py")
    holder = procs.hold("./link.py")
    refused = procs.run_python(job).stdout == ""
    # identity "inode"/"path": the link is the script; "name": link.py is another name.
    assert refused == (capabilities.identity != "name")  # type: ignore[attr-defined]
    finish(holder)


@pytest.mark.clause("R1.1")
def test_python_dash_m_locks_the_module_file(procs: Procs) -> None:
    procs.script("pkg/__init__.py", "", header="")
    module = procs.script("pkg/job.py")
    holder = procs.hold("-m", "pkg.job")
    assert holder.stderr is not None
    assert procs.run_python("-m", "pkg.job").stdout == ""
    assert procs.run_python(module).stdout == ""  # the same file, run by path
    outcome = finish(holder)
    assert outcome.stderr.startswith(f"'{module}' has been started at ")  # argv[0] of -m is the file


@pytest.mark.clause("R1.1")
def test_zipapp_locks_the_archive(procs: Procs) -> None:
    source = procs.workdir / "app"
    source.mkdir()
    (source / "__main__.py").write_text("import runalways\n" + HOLD)
    archive = procs.workdir / "app.pyz"
    zipapp.create_archive(source, archive)
    holder = procs.hold(archive)
    assert procs.run_python(archive).stdout == ""
    assert finish(holder).stderr.startswith(f"'{archive}' has been started at ")


@pytest.mark.clause("R1.1")
def test_shebang_execution(procs: Procs, capabilities: object, observe: Callable[[str, str], None]) -> None:
    job = procs.script("job.py", header=f"#!{sys.executable}\nimport runalways\n")
    job.chmod(job.stat().st_mode | stat.S_IXUSR)
    holder = procs.start(["./job.py"])
    assert read_line(holder) == "ready\n"
    if capabilities.needs_write_access:  # type: ignore[attr-defined]
        # The holder keeps its script open for writing, and Linux refuses to execute a
        # file that is open for writing: the second start fails instead of exiting 0.
        with pytest.raises(OSError) as refused:
            procs.run(["./job.py"])
        assert refused.value.errno == errno.ETXTBSY
        observe("second start of a running ./job.py (shebang)", "refused by the kernel: Text file busy")
    else:
        assert procs.run(["./job.py"]).stdout == ""
        observe("second start of a running ./job.py (shebang)", "exits 0")
    assert finish(holder).stderr.startswith("'./job.py' has been started at ")


@pytest.mark.clause("R1.1", "R11.1")
def test_command_wrapper(procs: Procs) -> None:
    job = procs.script("job.sh", "echo ready\nread line\n", header="#!/bin/sh\n")
    job.chmod(0o755)
    wrapper = [sys.executable, "-m", "runalways", "run", "--", "./job.sh"]
    holder = procs.start(wrapper)
    assert read_line(holder) == "ready\n"
    loser = procs.run(wrapper)
    assert (loser.returncode, loser.stdout, loser.stderr) == (0, "", "")
    outcome = finish(holder, stdin="done\n")
    assert outcome.returncode == 0 and outcome.stderr.startswith("'./job.sh' has been started at ")
    assert os.path.exists(job)
