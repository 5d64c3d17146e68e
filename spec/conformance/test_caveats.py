"""R6, R8: what counts as the same script, and what the lock survives.

Where backends legitimately differ, the test reads the backend's declared capability
and checks it in both directions: a lock declared lost must really be lost, one
declared kept must really be kept. Each observation also goes to spec/MATRIX.md.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Callable

import pytest
from harness import Procs, finish, kill, send, wait_for_line

Observe = Callable[[str, str], None]


def second_copy_refused(procs: Procs, *argv: str | os.PathLike[str]) -> bool:
    """Start another copy: True if it was refused (exit 0, no body), False if it got in."""
    outcome = procs.run_python(*argv)
    assert outcome.returncode == 0, outcome
    return outcome.stdout == ""


def shared_by(identity: str, kind: str) -> bool:
    """Whether a backend of this identity shares the lock through a link of this kind."""
    return {"inode": True, "path": kind == "symlink", "name": False}[identity]


@pytest.mark.clause("R6.1")
@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_links_share_the_lock_as_the_identity_says(
    procs: Procs, capabilities: object, observe: Observe, kind: str
) -> None:
    job = procs.script("job.py")
    link = procs.workdir / "other" / "link.py"
    link.parent.mkdir()
    if kind == "symlink":
        link.symlink_to(job)
    else:
        os.link(job, link)
    holder = procs.hold(job)
    refused = second_copy_refused(procs, link)
    observe(f"{kind} to a running script", "shares the lock" if refused else "separate lock")
    assert refused == shared_by(capabilities.identity, kind)  # type: ignore[attr-defined]
    finish(holder)


@pytest.mark.clause("R6.2")
def test_a_copy_elsewhere_and_another_script_run_alongside(procs: Procs) -> None:
    job = procs.script("job.py")
    other = procs.script("other.py")
    copy = procs.workdir / "copies" / "copy.py"
    copy.parent.mkdir()
    shutil.copy(job, copy)
    holder = procs.hold(job)
    assert not second_copy_refused(procs, other)
    assert not second_copy_refused(procs, copy)
    finish(holder)


@pytest.mark.clause("R6.3")
def test_editing_a_running_script_in_place_keeps_the_lock(procs: Procs, observe: Observe) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    with open(job, "a") as script:  # same inode, as `echo >> job.py` or an editor saving in place
        script.write("# edited\n")
    refused = second_copy_refused(procs, job)
    observe("script edited in place", "kept" if refused else "lost")
    assert refused
    finish(holder)


@pytest.mark.clause("R6.4")
def test_replacing_a_running_script_behaves_as_declared(procs: Procs, capabilities: object, observe: Observe) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    replacement = procs.workdir / "job.py.new"
    replacement.write_text(job.read_text() + "# new version\n")
    os.replace(replacement, job)  # what editors, rsync and deploy tools do
    refused = second_copy_refused(procs, job)
    observe("script replaced by rename", "kept" if refused else "lost: a second copy starts")
    assert refused == capabilities.kept_when_replaced  # type: ignore[attr-defined]
    finish(holder)


OPENS_ITSELF = """
import linecache, sys, traceback
print("ready", flush=True)
sys.stdin.readline()
with open(__file__) as me:  # the job reads its own source ...
    me.read()
linecache.checkcache(); linecache.getline(__file__, 1)
try:
    raise ValueError("logged")
except ValueError:
    traceback.format_exc()  # ... and formats a traceback, which reads it too
print("reopened", flush=True)
sys.stdin.read()
"""


@pytest.mark.clause("R8.2")
def test_holder_opening_and_closing_its_own_file_behaves_as_declared(
    procs: Procs, capabilities: object, observe: Observe
) -> None:
    job = procs.script("job.py", OPENS_ITSELF)
    holder = procs.hold(job)
    assert holder.stdin is not None
    send(holder, "go\n")
    wait_for_line(holder, "reopened")
    refused = second_copy_refused(procs, job)
    observe("holder opens and closes its own file", "kept" if refused else "lost")
    assert refused == capabilities.kept_when_file_closed  # type: ignore[attr-defined]
    finish(holder)


DAEMONISE = """
import os, sys
if os.fork():
    os._exit(0)  # the parent exits at once, as a daemonising job does
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.clause("R8.3")
def test_a_daemonised_child_keeps_the_lock_as_declared(procs: Procs, capabilities: object, observe: Observe) -> None:
    job = procs.script("job.py", DAEMONISE)
    parent = procs.python(job)
    wait_for_line(parent, "ready")  # the child says it; the parent is gone or going
    parent.wait(timeout=30)
    refused = second_copy_refused(procs, job)
    observe("fork, parent exits (daemonise)", "child keeps the lock" if refused else "lock lost")
    assert refused == capabilities.kept_by_fork_child  # type: ignore[attr-defined]
    finish(parent)  # closing the pipe ends the child, which shares it


SPAWNS_CHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import sys; print('child', flush=True); sys.stdin.read()"],
                         stdin=subprocess.PIPE)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.clause("R8.4")
def test_a_subprocess_child_never_keeps_the_lock(procs: Procs, observe: Observe) -> None:
    job = procs.script("job.py", SPAWNS_CHILD)
    holder = procs.hold(job)
    wait_for_line(holder, "child")
    kill(holder)  # the parent dies; its child lives on
    refused = second_copy_refused(procs, job)
    observe("holder killed, subprocess child lives on", "child keeps the lock" if refused else "lock free")
    assert not refused


EXECS = """
import os, sys
os.execv(sys.executable, [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"])
"""


@pytest.mark.clause("R8.5")
def test_exec_keeps_the_lock_as_declared(procs: Procs, capabilities: object, observe: Observe) -> None:
    job = procs.script("job.py", EXECS)
    holder = procs.hold(job)  # "ready" comes from the exec'd program, same pid
    refused = second_copy_refused(procs, job)
    observe("holder calls os.exec*", "kept" if refused else "lost")
    assert refused == capabilities.kept_across_exec  # type: ignore[attr-defined]
    finish(holder)


@pytest.mark.clause("R8.1")
def test_sigterm_and_sigkill_release_the_lock(procs: Procs) -> None:
    job = procs.script("job.py")
    for signum in (signal.SIGTERM, signal.SIGKILL):
        holder = procs.hold(job)
        kill(holder, signum)
        assert holder.returncode == -signum
        follower = procs.hold(job)
        finish(follower)
