"""R14: real faults at the worst moment, and fuzzed settings in whole processes.

The faults are real: a tmpfs that is full, a read-only bind mount, a descriptor limit, a
lock directory whose mode changes, a script deleted under its holder, a lock file
truncated or filled with garbage, a clock stepped back (libfaketime). The mounts are
made in a private mount namespace of the job (``unshare --mount``), so they need root,
as the suite runs in CI.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import fuzzing
import pytest
from harness import Outcome, Procs, as_nobody, finish, nobody_env, wait_for_line
from hypothesis import HealthCheck, given, settings

#: Whole-process fuzz runs: each is an interpreter start, so far fewer than in-process.
FUZZ_RUNS = 100

#: The job every fault case starts: a named lock, so the lock file is in RUNALWAYS_DIR.
JOB = [sys.executable, "-m", "runalways", "run", "--name", "job", "--", "echo", "ran"]


def ran_or_refused(outcome: Outcome) -> str:
    """Whether the job ran or was refused (one line, exit 2); anything else (a traceback, two lines) fails."""
    assert "Traceback" not in outcome.stderr, outcome
    if outcome.returncode == 0 and outcome.stdout == "ran\n":
        return "ran"
    errors = [line for line in outcome.stderr.splitlines() if "has been started at" not in line]
    assert outcome.returncode == 2 and len(errors) == 1 and errors[0].startswith("runalways"), outcome
    return "refused"


def locks_a_file(backend: str) -> bool:
    from runalways.backends import get_class

    return get_class(backend).capabilities.identity != "name"


def in_mount(procs: Procs, setup: str, directory: Path, job: list[str]) -> tuple[Outcome, list[str]]:
    """Run ``job`` with RUNALWAYS_DIR=``directory`` after ``setup`` (shell, $D is the directory)
    in a private mount namespace; return its outcome and what the directory holds after it."""
    listing = procs.workdir / "listing"
    script = f'set -e; D="$1"; shift; {setup}; set +e; "$@"; status=$?; ls -A "$D" > "{listing}"; exit $status'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(directory), *job]
    outcome = finish(procs.start(argv, env={"RUNALWAYS_DIR": str(directory)}))
    return outcome, sorted(listing.read_text().split())


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the fault cases mount file systems: run the suite as root, as CI does")


def without_a_blank_lock_directory(values: dict[str, str]) -> dict[str, str]:
    """``values`` without a blank RUNALWAYS_DIR, which counts as not set: the default lock
    directory of nobody is in the machine's /dev/shm, where a test must leave nothing."""
    return {key: value for key, value in values.items() if key != "RUNALWAYS_DIR" or value.strip()}


#: Takes the named lock "job" and dies holding it (SIGKILL: no clean-up runs).
_KILLED_HOLDER = "import os, runalways.api as api; api.lock(name='job').__enter__(); os.kill(os.getpid(), 9)"


@pytest.mark.clause("R15.2")
def test_a_full_tmpfs_is_one_line_or_a_run_and_leaves_no_partial_file(procs: Procs, backend: str) -> None:
    needs_root()
    directory = procs.workdir / "full"
    directory.mkdir()
    fill_bytes = 'mount -t tmpfs -o size=64k,mode=0700 full "$D"; dd if=/dev/zero of="$D/fill" bs=4k 2>/dev/null || :'
    outcome, left = in_mount(procs, fill_bytes, directory, JOB)
    # An empty lock file takes an inode and no block: kernel-lock backends still run; the
    # pidfile backend cannot write its pidfile.
    assert ran_or_refused(outcome) == ("refused" if backend == "pidfile" else "ran"), outcome
    assert left == ["fill"]
    fill_inodes = (
        'mount -t tmpfs -o size=1m,nr_inodes=8,mode=0700 full "$D"; '
        'i=0; while touch "$D/f$i" 2>/dev/null; do i=$((i+1)); done'
    )
    outcome, left = in_mount(procs, fill_inodes, directory, JOB)
    assert ran_or_refused(outcome) == ("refused" if locks_a_file(backend) else "ran"), outcome
    assert all(name.startswith("f") and name[1:].isdigit() for name in left), left
    # A holder killed while holding left its lock file; then the disk filled up. Taking
    # over the stale pidfile needs a claim file, which cannot be written: one line, and
    # nothing half-written beside the old file.
    # The shell reports a child killed by a signal ("Killed") on its stderr: not the job's.
    killed_holder = f"{{ {sys.executable} -c {shlex.quote(_KILLED_HOLDER)}; }} 2>/dev/null || :"
    mount, fill = fill_bytes.split("; ")
    outcome, left = in_mount(procs, f"{mount}; {killed_holder}; {fill}", directory, JOB)
    ran_or_refused(outcome)
    assert [name for name in left if name != "fill" and not name.startswith("job-")] == [], left


@pytest.mark.clause("R15.2")
def test_a_read_only_lock_directory_is_one_line(procs: Procs, backend: str) -> None:
    needs_root()
    directory = procs.workdir / "read-only"
    directory.mkdir(mode=0o700)
    (directory / "user-file").write_text("mine\n")
    read_only = 'mount --bind "$D" "$D"; mount -o remount,bind,ro "$D"'
    outcome, left = in_mount(procs, read_only, directory, JOB)
    assert ran_or_refused(outcome) == ("refused" if locks_a_file(backend) else "ran"), outcome
    assert left == ["user-file"] and (directory / "user-file").read_text() == "mine\n"
    if not locks_a_file(backend):
        return
    # A lock file made by an earlier run is there: a backend that can lock it read-only
    # runs (fcntl), the others refuse in one line; nothing in the directory changes.
    script = procs.script("job.py", "print('ran')\n")
    job = [sys.executable, str(script)]
    private = {"RUNALWAYS_DIR": str(directory), "RUNALWAYS_LOCK": "private"}
    assert procs.run(job, env=private).returncode == 0
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    outcome, left = in_mount(procs, read_only, directory, ["env", "RUNALWAYS_LOCK=private", *job])
    ran_or_refused(outcome)
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before


@pytest.mark.clause("R15.2")
@pytest.mark.parametrize("limit", [5, 6, 7, 8, 10])
def test_a_descriptor_table_too_small_is_one_line_or_a_run(procs: Procs, backend: str, limit: int) -> None:
    # Below 5 descriptors Python itself cannot start; from 5 up, whatever runalways cannot
    # open (the lock file, the command, the server's socket) is one line and exit 2.
    script = procs.script("job.py", "print('ran')\n")
    lock = {"RUNALWAYS_LOCK": "private"} if locks_a_file(backend) else {}
    for argv in ([*JOB], [sys.executable, str(script)]):
        outcome = finish(procs.start(["prlimit", f"--nofile={limit}:{limit}", *argv], env=lock))
        ran_or_refused(outcome)


#: ``runalways run`` with every module it needs loaded, then every descriptor taken.
_FULL_TABLE = """
import os, resource, sys
from runalways import cli
from runalways.backends import get_class
get_class(os.environ["RUNALWAYS_BACKEND"])  # the backend's module, loaded like the rest
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
taken = []
try:
    while True:
        taken.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
sys.exit(cli.main(["run", "--name", "job", "--", "echo", "ran"]))
"""


@pytest.mark.clause("R15.2")
def test_a_lock_file_that_cannot_be_opened_for_want_of_descriptors_is_one_line(procs: Procs, backend: str) -> None:
    outcome = procs.run([sys.executable, "-c", _FULL_TABLE])
    assert ran_or_refused(outcome) == "refused", outcome
    assert "Too many open files" in outcome.stderr, outcome
    assert not any((procs.workdir / "locks").iterdir())


@pytest.mark.clause("R15.2")
def test_a_lock_directory_whose_mode_changes_between_runs(procs: Procs, backend: str, shared_dir: Path) -> None:
    needs_root()
    directory = Path(nobody_env(shared_dir)["RUNALWAYS_DIR"])
    env = {"RUNALWAYS_DIR": str(directory)}
    expected = "refused" if locks_a_file(backend) else "ran"
    first = finish(procs.start(as_nobody(JOB), env=env))
    assert ran_or_refused(first) == "ran", first
    for mode, outcome in ((0o000, expected), (0o777, expected), (0o500, expected), (0o700, "ran")):
        directory.chmod(mode)
        assert ran_or_refused(finish(procs.start(as_nobody(JOB), env=env))) == outcome, oct(mode)
    assert os.listdir(directory) == []


@pytest.mark.clause("R15.2")
def test_a_script_deleted_while_its_holder_runs(procs: Procs, backend: str) -> None:
    script = procs.script("job.py")
    holder = procs.hold(script)
    script.unlink()
    outcome = finish(holder)
    assert outcome.returncode == 0 and outcome.stderr.startswith("'"), outcome
    assert outcome.stderr.count("\n") == 1, outcome
    assert not any((procs.workdir / "locks").iterdir())
    status = procs.run([sys.executable, "-m", "runalways", "status", str(script)])
    assert status.returncode == 2 and status.stderr.count("\n") == 1, status


def lock_files(procs: Procs, script: Path, env: dict[str, str]) -> list[Path]:
    """The lock file of ``script`` under ``env``, as ``runalways status`` names it (none for a
    backend that locks a name). It may not exist: the pidfile backend removes its file at exit."""
    status = procs.run([sys.executable, "-m", "runalways", "status", str(script)], env=env)
    prefix = "  lock file: "
    return [Path(line[len(prefix) :]) for line in status.stdout.splitlines() if line.startswith(prefix)]


@pytest.mark.clause("R15.2")
@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage\n" * 50, b"pid=1\n"])
def test_a_lock_file_truncated_or_full_of_garbage_is_taken_over(procs: Procs, backend: str, content: bytes) -> None:
    script = procs.script("job.py", "print('ran')\n")
    # A backend that locks a name keeps no lock file: nothing to damage, and it still runs.
    env = {"RUNALWAYS_LOCK": "private"} if locks_a_file(backend) else {}
    first = procs.run([sys.executable, str(script)], env=env)
    assert first.returncode == 0 and first.stdout == "ran\n", first
    damaged = lock_files(procs, script, env)
    assert len(damaged) == int(locks_a_file(backend)), damaged
    for lock_file in damaged:
        lock_file.write_bytes(content)
        hour_ago = lock_file.stat().st_mtime - 3600
        os.utime(lock_file, (hour_ago, hour_ago))
    again = procs.run([sys.executable, str(script)], env=env)
    assert ran_or_refused(again) == "ran", again
    assert (procs.workdir / "job.py").read_text() == "import runalways\nprint('ran')\n"
    # The same content in a file the user named as the lock: runalways locks it or refuses
    # it in one line (the pidfile backend would have to replace it; postgres locks a name),
    # and never changes it.
    named = procs.workdir / "named" / "user.lock"
    named.parent.mkdir(mode=0o700)
    named.write_bytes(content)
    os.utime(named, (0, 0))  # old: not a file being written this moment
    outcome = procs.run([sys.executable, str(script)], env={"RUNALWAYS_LOCK": str(named)})
    kernel_lock = locks_a_file(backend) and backend != "pidfile"
    assert ran_or_refused(outcome) == ("ran" if kernel_lock else "refused"), outcome
    assert named.read_bytes() == content


@pytest.mark.clause("R15.3")
def test_a_lock_file_written_before_the_clock_was_stepped_back_is_taken_over(procs: Procs, backend: str) -> None:
    # A crash left a truncated lock file; then the clock went back an hour (NTP, a VM
    # restored). The next start's clock is an hour behind the file's mtime.
    faketime = shutil.which("faketime")
    assert faketime is not None, "faketime (Debian package faketime) is needed: tests/system-packages.sh"
    script = procs.script("job.py", "print('ran')\n")
    # A backend that locks a name keeps no lock file: nothing to damage, and it still runs.
    env = {"RUNALWAYS_LOCK": "private"} if locks_a_file(backend) else {}
    assert procs.run([sys.executable, str(script)], env=env).returncode == 0
    damaged = lock_files(procs, script, env)
    assert len(damaged) == int(locks_a_file(backend)), damaged
    for lock_file in damaged:
        lock_file.write_bytes(b"")
    stepped_back = [faketime, "-f", "-1h", sys.executable, str(script)]
    outcome = procs.run(stepped_back, env={**env, "NO_FAKE_STAT": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    assert ran_or_refused(outcome) == "ran", outcome
    # And a holder is still a holder to a start whose clock is an hour back.
    holder = procs.hold(procs.script("holder.py"), env=env)
    held = procs.run([faketime, "-f", "-1h", sys.executable, str(procs.workdir / "holder.py")], env=env)
    assert held.returncode == 0 and held.stdout == "" and held.stderr == "", held
    finish(holder)


@pytest.mark.clause("R15.2")
def test_a_fork_with_a_full_descriptor_table_prints_no_traceback(procs: Procs, backend: str) -> None:
    # The postgres backend's fork handler opened /dev/null in the child: with the table
    # full, "Exception ignored in" and a traceback on stderr.
    # From Python 3.12 os.fork() warns that the process has threads (a cluster backend's
    # lease is renewed by one): the job's own fork, not what this case looks at.
    body = """
    import os, resource, warnings
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    kept = []
    try:
        while True:
            kept.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    warnings.simplefilter("ignore", DeprecationWarning)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    print("ran")
    """
    outcome = procs.run_python(procs.script("forks.py", body))
    assert outcome.returncode == 0 and outcome.stdout == "ran\n", outcome
    assert outcome.stderr.count("\n") == 1 and "has been started at" in outcome.stderr, outcome


def in_time_namespace(argv: list[str]) -> list[str]:
    """``argv`` run in a new time namespace whose monotonic and boot-time clocks are a day ahead."""
    return ["unshare", "--time", "--monotonic", "86400", "--boottime", "86400", *argv]


@pytest.mark.clause("R15.3")
@pytest.mark.parametrize("holder_inside", [True, False], ids=["holder-inside", "holder-outside"])
def test_a_holder_in_another_time_namespace_keeps_a_start_out(procs: Procs, backend: str, holder_inside: bool) -> None:
    # /proc/PID/stat shows a start time offset by the reader's time namespace: the pidfile
    # backend took a holder in a container with a time namespace for a dead process, and a
    # start outside ran beside it.
    needs_root()
    script = procs.script("job.py")
    holding = [sys.executable, str(script)]
    holder = procs.start(in_time_namespace(holding) if holder_inside else holding)
    wait_for_line(holder, "ready")
    second = procs.run(holding if holder_inside else in_time_namespace(holding))
    assert second.returncode == 0 and second.stdout == "" and second.stderr == "", second
    ended = finish(holder)
    assert ended.returncode == 0 and ended.stderr.count("\n") == 1, ended


@pytest.mark.clause("R15.1")
@settings(
    max_examples=FUZZ_RUNS,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=fuzzing.environments())
def test_fuzzed_settings_in_a_whole_process(fcntl_procs: Procs, shared_dir: Path, values: dict[str, str]) -> None:
    # As nobody: a fuzzed RUNALWAYS_DIR or RUNALWAYS_LOCK of "/" or "/dev/zero" must not
    # make root create files there.
    needs_root()
    script = shared_dir / "fuzzed.py"
    if not script.exists():
        script.write_text("import runalways\nprint('ran')\n")
    env = {**fcntl_procs.env(), **nobody_env(shared_dir), **without_a_blank_lock_directory(values)}
    env["RUNALWAYS_URL"] = f"postgresql://user:{fuzzing.PASSWORD}@127.0.0.1:1/db"  # nothing listens on port 1
    process = subprocess.Popen(
        as_nobody([sys.executable, str(script)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Bytes: a value that is not UTF-8 reaches the process as it is (os.environb).
        env={os.fsencode(key): os.fsencode(value) for key, value in env.items()},
        cwd=shared_dir,
    )
    fcntl_procs.started.append(process)
    outcome = finish(process)
    assert fuzzing.PASSWORD not in outcome.stderr + outcome.stdout, outcome
    if outcome.returncode == 0 and outcome.stdout == "":  # RUNALWAYS_SKIP, or a RETRY that found it held
        return
    ran_or_refused(outcome)


@pytest.mark.clause("R15.1")
@settings(
    max_examples=FUZZ_RUNS // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=fuzzing.command_lines(["echo", "ran"]), values=fuzzing.environments())
def test_fuzzed_command_lines_in_a_whole_process(
    fcntl_procs: Procs, shared_dir: Path, argv: list[str], values: dict[str, str]
) -> None:
    needs_root()
    env = {**fcntl_procs.env(), **nobody_env(shared_dir), **without_a_blank_lock_directory(values)}
    env["RUNALWAYS_URL"] = f"postgresql://user:{fuzzing.PASSWORD}@127.0.0.1:1/db"
    process = subprocess.Popen(
        as_nobody([sys.executable, "-m", "runalways", *argv]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={os.fsencode(key): os.fsencode(value) for key, value in env.items()},
        cwd=shared_dir,
    )
    fcntl_procs.started.append(process)
    outcome = finish(process)
    assert "Traceback" not in outcome.stderr and fuzzing.PASSWORD not in outcome.stderr + outcome.stdout, outcome
    # The lock is free: the command runs (0), status says whether it runs (0 or 3), or one line and 2.
    assert outcome.returncode in (0, 2, 3), outcome
    if outcome.returncode == 2:
        ran_or_refused(outcome)
