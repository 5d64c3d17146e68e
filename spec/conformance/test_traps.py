"""R12: the traps naive single-instance guards fall into, each closed and checked."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import (
    GATE,
    HOLD,
    TIMEOUT,
    Procs,
    as_nobody,
    finish,
    lines,
    nobody_env,
    read_line,
    same_lock_as,
    wait_for_line,
    wait_until,
)
from test_caveats import DAEMONISE, second_copy_refused

from runalways.backends import get_class
from runalways.backends._filelock import FileLockBackend

RUNALWAYS = [sys.executable, "-m", "runalways"]


@pytest.mark.clause("R12.1")
@pytest.mark.parametrize("policy", ["always", "alone"])
def test_a_conflict_exit_status_tells_already_running_from_failure(
    procs: Procs, capabilities: object, policy: str
) -> None:
    header = "import runalways\n" if policy == "always" else "import runalways.alone\n"
    job = procs.script("job.py", header=header)
    holder = procs.hold(job)
    loser = procs.run_python(job, env={"RUNALWAYS_CONFLICT_EXIT": "75"})
    assert (loser.returncode, loser.stdout) == (75, "")
    kind, value = same_lock_as(job, capabilities)
    lock = "--lock" if kind == "path" else "--name"
    wrapped = procs.run([*RUNALWAYS, "run", "--conflict-exit-code", "75", lock, value, "--", "true"])
    assert wrapped.returncode == 75
    bad = procs.run_python(job, env={"RUNALWAYS_CONFLICT_EXIT": "256"})
    assert bad.returncode == 2 and "from 0 to 255" in bad.stderr
    finish(holder)


PLUGIN = """
import errno, os
from runalways.backends.flock import FlockBackend

class Failing(FlockBackend):
    '''Fails to lock with the errno named in SPEC_ERRNO, as a file system may.'''
    name = "failing"

    def _lock(self, fd, blocking):
        code = getattr(errno, os.environ["SPEC_ERRNO"])
        raise OSError(code, os.strerror(code))
"""


@pytest.mark.clause("R12.2")
@pytest.mark.parametrize("code", ["EAGAIN", "EWOULDBLOCK", "EACCES", "ENOLCK", "EBADF", "EIO", "ENOSYS", "EPERM"])
def test_only_would_block_means_another_copy_runs(fcntl_procs: Procs, code: str) -> None:
    """Through the registry: a backend registered by entry point whose lock call fails."""
    site = fcntl_procs.workdir / "site"
    (site / "spec_failing-1.0.dist-info").mkdir(parents=True)
    (site / "spec_failing.py").write_text(PLUGIN)
    (site / "spec_failing-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: spec-failing\n")
    (site / "spec_failing-1.0.dist-info" / "entry_points.txt").write_text(
        "[runalways.backends]\nfailing = spec_failing:Failing\n"
    )
    job = fcntl_procs.script("job.py", "print('body')\n")
    env = {"PYTHONPATH": str(site), "RUNALWAYS_BACKEND": "failing", "SPEC_ERRNO": code}
    outcome = fcntl_procs.run_python(job, env=env)
    if getattr(errno, code) in (errno.EAGAIN, errno.EACCES):
        assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", "")  # contention
        return
    assert (outcome.returncode, outcome.stdout) == (2, "")  # never exit 0 silently on an error
    message = outcome.stderr
    assert message.startswith("runalways: cannot lock ") and message.count("\n") == 1, message
    assert str(job) in message and code in message and "not another copy running" in message
    assert "RUNALWAYS_BACKEND=" in message or "runalways backends" in message


def refuses_lock_files(procs: Procs, capabilities: object, job: Path, env: dict[str, str]) -> bool:
    """A backend that locks a name refuses settings that choose a lock file (exit 2), and
    the case ends there; for the others it goes on."""
    if capabilities.identity != "name":  # type: ignore[attr-defined]
        return False
    refused = procs.run_python(job, env=env)
    assert refused.returncode == 2 and "backend locks a name" in refused.stderr, refused
    return True


@pytest.mark.clause("R12.3")
def test_the_private_lock_mode_cannot_be_held_by_another_user(
    procs: Procs, capabilities: object, shared_dir: Path
) -> None:
    job = shared_dir / "job.py"
    job.write_text("import runalways\n" + HOLD)
    job.chmod(0o644)
    if refuses_lock_files(procs, capabilities, job, {"RUNALWAYS_LOCK": "private"}):
        return
    # nobody holds the lock (with backends that let another user do so): the default mode is blocked ...
    squatter = procs.start(as_nobody([sys.executable, str(job)]), env=nobody_env(shared_dir))
    squatting = read_line(squatter) == "ready\n"
    if capabilities.other_users_can_hold:  # type: ignore[attr-defined]
        assert squatting and procs.run([sys.executable, str(job)]).stdout == ""
    # ... the private mode is not: its lock file is in a directory only this user may enter.
    private = procs.start([sys.executable, str(job)], env={"RUNALWAYS_LOCK": "private"})
    wait_for_line(private, "ready")
    lock_files = list((procs.workdir / "locks").iterdir())
    assert len(lock_files) == 1 and lock_files[0].name.startswith("job.py-")
    assert (lock_files[0].stat().st_mode & 0o777) == 0o600
    assert procs.run([sys.executable, str(job)], env={"RUNALWAYS_LOCK": "private"}).stdout == ""
    finish(private)
    finish(squatter)


@pytest.mark.clause("R12.3")
def test_a_lock_file_must_be_in_a_directory_only_the_user_can_write(
    procs: Procs, capabilities: object, tmp_path: Path
) -> None:
    job = procs.script("job.py", HOLD)
    if refuses_lock_files(procs, capabilities, job, {"RUNALWAYS_LOCK": str(tmp_path / "job.lock")}):
        return
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    refused = procs.run_python(job, env={"RUNALWAYS_LOCK": str(shared / "job.lock")})
    assert refused.returncode == 2 and "can be written by other users" in refused.stderr
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    (mine / "planted.lock").symlink_to(tmp_path / "target")
    planted = procs.run_python(job, env={"RUNALWAYS_LOCK": str(mine / "planted.lock")})
    assert planted.returncode == 2 and not (tmp_path / "target").exists()  # a symlink is never followed
    holder = procs.hold(job, env={"RUNALWAYS_LOCK": str(mine / "job.lock")})
    assert procs.run_python(job, env={"RUNALWAYS_LOCK": str(mine / "job.lock")}).stdout == ""
    assert procs.run_python(job).stdout == "ready\n"  # the script itself is not locked
    finish(holder)


def replace(script: Path) -> None:
    (script.parent / (script.name + ".new")).write_text(script.read_text() + "# new version\n")
    os.replace(script.parent / (script.name + ".new"), script)


@pytest.mark.clause("R12.4")
def test_identity_path_survives_a_deploy_that_replaces_the_script(procs: Procs, capabilities: object) -> None:
    job = procs.script("job.py")
    env = {"RUNALWAYS_IDENTITY": "path"}
    if refuses_lock_files(procs, capabilities, job, env):
        return
    holder = procs.hold(job, env=env)
    replace(job)
    assert procs.run_python(job, env=env).stdout == ""  # still the same job
    finish(holder)
    follower = procs.hold(job, env=env)
    finish(follower)


@pytest.mark.clause("R12.4")
def test_status_sees_a_copy_running_from_a_replaced_script(procs: Procs, capabilities: object) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    replace(job)
    status = procs.run([*RUNALWAYS, "status", str(job)])
    if capabilities.identity != "inode":  # type: ignore[attr-defined]
        assert status.returncode == 0  # the lock is keyed by path or name: still held
    else:
        assert status.returncode == 0, status
        assert "started before the file was replaced" in status.stdout and f"pid {holder.pid}" in status.stdout
    finish(holder)


@pytest.mark.clause("R12.5")
def test_lock_files_runalways_names_are_removed_at_release(procs: Procs) -> None:
    locks = procs.workdir / "locks"
    for day in ("2026-11-28", "2026-11-29"):  # a command run with a new argument every day
        assert procs.run([*RUNALWAYS, "run", "--silent", "--", "true", day]).returncode == 0
    with contextlib.suppress(FileNotFoundError):
        assert sorted(path.name for path in locks.iterdir()) == []


@pytest.mark.clause("R12.5")
def test_a_copy_that_waited_on_a_released_file_locks_the_new_one(procs: Procs) -> None:
    """The waiter wakes holding a lock on the file its holder removed: it must lock the new file."""
    first = procs.start([*RUNALWAYS, "run", "--name", "handed", "--", sys.executable, "-c", HOLD])
    wait_for_line(first, "ready")
    waiter = procs.start([*RUNALWAYS, "run", "--wait", "30", "--name", "handed", "--", sys.executable, "-c", HOLD])
    if issubclass(get_class(procs.backend), FileLockBackend):
        lock_file = next((procs.workdir / "locks").iterdir())
        wait_until(lambda: _waiters_on(lock_file) > 0, "the second copy to wait on the lock file")
    finish(first)
    wait_for_line(waiter, "ready")  # the waiter got in, and holds the lock at the file's path now
    late = procs.run([*RUNALWAYS, "run", "--name", "handed", "--", sys.executable, "-c", "print('ran')"])
    assert (late.returncode, late.stdout) == (0, ""), late
    finish(waiter)


def _waiters_on(path: Path) -> int:
    """Lock requests blocked on ``path``, from /proc/locks (a "->" after the number)."""
    status = path.stat()
    wanted = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    with open("/proc/locks") as listing:
        return sum(1 for line in listing if "->" in line.split()[:2] and wanted in line.split())


CHURN_BODY = (
    "import os, sys, time\n"
    "def log(event): open(sys.argv[1], 'a').write(f'{time.monotonic()} {os.getpid()} {event}\\n')\n"
    "log('start'); time.sleep(0.02); log('end')\n"
)


#: Rounds of 12 copies let go at once, each waiting for the lock and running a short body.
ROUNDS_OF_CHURN = 2


@pytest.mark.clause("R12.5")
def test_releases_racing_new_starts_never_let_two_run(procs: Procs) -> None:
    """The unlink-on-release race of tendo and others: short jobs, many starters, waiting."""
    log = procs.workdir / "churn.log"
    env = procs.env({"RUNALWAYS_SILENT": "1", "RUNALWAYS_RETRY": "100,0.1"})
    for _ in range(ROUNDS_OF_CHURN):
        gate_read, gate_write = os.pipe()
        argv = [sys.executable, "-c", GATE, str(gate_read), "-m", "runalways", "run", "--name", "churn", "--"]
        copies = [
            subprocess.Popen([*argv, sys.executable, "-c", CHURN_BODY, str(log)], env=env, pass_fds=(gate_read,))
            for _ in range(12)
        ]
        os.close(gate_read)
        os.write(gate_write, b"go" * 12)
        os.close(gate_write)
        try:
            assert [copy.wait(timeout=TIMEOUT) for copy in copies] == [0] * 12
        finally:
            for copy in copies:
                if copy.poll() is None:
                    copy.kill()
                    copy.wait()
    running = peak = 0
    for _, _, event in sorted(line.split() for line in lines(log)):
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    assert peak == 1 and len(list(lines(log))) == 2 * 12 * ROUNDS_OF_CHURN  # every copy ran, one at a time


@pytest.mark.clause("R12.6")
def test_fork_close_keeps_forked_children_out_of_the_lock(procs: Procs, capabilities: object) -> None:
    job = procs.script("job.py", DAEMONISE)
    parent = procs.python(job, env={"RUNALWAYS_FORK": "close"})
    wait_for_line(parent, "ready")
    parent.wait(timeout=TIMEOUT)
    assert not second_copy_refused(procs, job)  # the daemon runs on, without the lock
    finish(parent)


FORK_AND_WAIT = """
import os, sys
child = os.fork()
if child == 0:
    sys.exit(0)  # a child that ends normally, running its exit handlers
os.waitpid(child, 0)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.clause("R12.6")
@pytest.mark.parametrize("fork", ["inherit", "close"])
def test_a_forked_child_ending_never_releases_the_parents_lock(procs: Procs, fork: str) -> None:
    job = procs.script("job.py", FORK_AND_WAIT)
    holder = procs.hold(job, env={"RUNALWAYS_FORK": fork})
    assert second_copy_refused(procs, job)
    finish(holder)


@pytest.mark.clause("R12.7")
def test_the_alone_message_says_who_holds_the_lock(procs: Procs) -> None:
    job = procs.script("job.py", header="import runalways.alone\n")
    holder = procs.hold(job)
    loser = procs.run_python(job)
    assert loser.returncode == 1
    assert f"A copy of '{job}' is already running (pid {holder.pid}" in loser.stderr, loser.stderr
    finish(holder)


@pytest.mark.clause("R12.3")
def test_status_finds_a_holder_of_a_private_lock_file(procs: Procs, capabilities: object) -> None:
    job = procs.script("job.py")
    env = {"RUNALWAYS_LOCK": "private"}
    if refuses_lock_files(procs, capabilities, job, env):
        return
    holder = procs.hold(job, env=env)
    status = procs.run([*RUNALWAYS, "status", str(job)], env=env)
    assert status.returncode == 0 and f"pid {holder.pid}" in status.stdout, status
    finish(holder)
    assert procs.run([*RUNALWAYS, "status", str(job)], env=env).returncode == 3
