"""The lockf, ofd and portalocker backends, beside fcntl: real processes, real locks.

Every lock here is taken by a real process through ``import runalways`` or the API;
nothing is mocked. Tests synchronise on lines the processes print and on /proc/locks,
never on sleeps, and every process has a timeout and is reaped.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from harness import as_nobody, directory_others_can_read, read_line, reap, send, wait_until

from runalways._values import Target
from runalways.backends import get_class
from runalways.backends.ofd import FLOCK_LAYOUT, OfdBackend

TIMEOUT = 30.0
NEW = ["lockf", "ofd", "portalocker"]
ALL = ["fcntl", *NEW]

#: What each backend really is on Linux, written out here rather than read from the code
#: under test: flock(2) for fcntl and portalocker, POSIX record locks for lockf and ofd.
FAMILY = {"fcntl": "flock", "portalocker": "flock", "lockf": "record", "ofd": "record"}
KIND = {"fcntl": "FLOCK", "portalocker": "FLOCK", "lockf": "POSIX", "ofd": "OFDLCK"}

#: A guarded job that holds the lock until its stdin closes; "reopen" makes it open and
#: close its own file, as a traceback or linecache would.
HOLDER = """import runalways
import sys
print("ready", flush=True)
for command in sys.stdin:
    if command.strip() == "reopen":
        with open(__file__) as me:
            me.read()
        print("reopened", flush=True)
"""

#: A job that daemonises: the parent exits at once, the child goes on holding (or not).
DAEMON = """import runalways
import os, sys
if os.fork():
    os._exit(0)
print("ready", os.getpid(), flush=True)
sys.stdin.read()
"""

#: Waits up to argv[3] seconds for a lock file with the API, then holds it until stdin closes.
WAITER = """import sys, runalways.api
from runalways.errors import AlreadyRunning
print("waiting", flush=True)
try:
    with runalways.api.lock(path=sys.argv[1], backend=sys.argv[2], wait=float(sys.argv[3])):
        print("got", flush=True)
        sys.stdin.read()
except AlreadyRunning:
    print("refused", flush=True)
"""


def environment(backend: str, locks: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    env.update(RUNALWAYS_BACKEND=backend, RUNALWAYS_SILENT="1", RUNALWAYS_DIR=str(locks))
    return env


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.locks = workdir / "locks"
        self.locks.mkdir(mode=0o700)
        self.started: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []  # grandchildren (daemons) to kill if still there

    def start(self, argv: list[str], backend: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: expect() must never read past the line it returns
            env=environment(backend, self.locks),
            cwd=self.workdir,
        )
        self.started.append(process)
        return process

    def run(self, argv: list[str], backend: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=environment(backend, self.locks),
            cwd=self.workdir,
            timeout=TIMEOUT,
        )

    def hold(self, job: Path, backend: str) -> subprocess.Popen[bytes]:
        process = self.start([sys.executable, str(job)], backend)
        expect(process, "ready")
        return process

    def second_copy_refused(self, job: Path, backend: str) -> bool:
        """Start another copy of ``job``: True if it exited 0 without running its body."""
        outcome = self.run([sys.executable, str(job)], backend)
        assert outcome.returncode == 0, outcome
        return outcome.stdout == ""

    def status(self, job: Path, backend: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "runalways", "status", "--backend", backend, str(job)], backend)

    def reap(self) -> None:
        reap(self.started)
        for pid in self.pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.reap()


def expect(process: subprocess.Popen[bytes], wanted: str) -> str:
    """Read lines until one starts with ``wanted``; fail at the end of output or after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        line = read_line(process, max(deadline - time.monotonic(), 0))
        if not line:
            _, stderr = process.communicate(timeout=TIMEOUT)
            raise AssertionError(f"ended (status {process.returncode}) before {wanted!r}: {stderr!r}")
        if line.startswith(wanted):
            return line.rstrip("\n")


def finish(process: subprocess.Popen[bytes]) -> int:
    """Close stdin (the holder then ends) and return its exit status."""
    process.communicate(timeout=TIMEOUT)
    return process.returncode


def locks_on(path: Path, waiting: bool = False) -> list[tuple[str, int]]:
    """(kind, pid) of the granted locks on ``path`` in /proc/locks, or of the waiters."""
    status = os.stat(path)
    wanted = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    found = []
    with open("/proc/locks") as listing:
        for line in listing:
            fields = line.split()
            is_waiter = fields[1] == "->"
            if is_waiter:
                del fields[1]
            if is_waiter == waiting and fields[5] == wanted:
                found.append((fields[1], int(fields[4])))
    return found


@pytest.fixture
def job(procs: Procs) -> Path:
    path = procs.workdir / "job.py"
    path.write_text(HOLDER)
    return path


@pytest.mark.parametrize("backend", NEW)
def test_one_copy_holds_the_lock_and_the_next_exits_0(procs: Procs, job: Path, backend: str) -> None:
    holder = procs.hold(job, backend)
    assert locks_on(job) == [(KIND[backend], holder.pid) if backend != "ofd" else ("OFDLCK", -1)]
    assert procs.second_copy_refused(job, backend)
    assert finish(holder) == 0
    assert locks_on(job) == []
    assert not procs.second_copy_refused(job, backend)  # free again once the holder ended


@pytest.mark.parametrize("backend", NEW)
def test_holder_opening_and_closing_its_file_keeps_the_lock_only_if_declared(
    procs: Procs, job: Path, backend: str
) -> None:
    holder = procs.hold(job, backend)
    send(holder, "reopen\n")
    expect(holder, "reopened")
    kept = locks_on(job) != []
    # lockf's lock belongs to the process: closing any descriptor of the file drops it.
    assert kept == (backend != "lockf")
    assert procs.second_copy_refused(job, backend) == kept
    assert kept == get_class(backend).capabilities.kept_when_file_closed
    finish(holder)


@pytest.mark.parametrize("backend", NEW)
def test_a_daemonised_child_keeps_the_lock_only_if_declared(procs: Procs, backend: str) -> None:
    job = procs.workdir / "daemon.py"
    job.write_text(DAEMON)
    parent = procs.start([sys.executable, str(job)], backend)
    child = int(expect(parent, "ready").split()[1])
    procs.pids.append(child)
    parent.wait(timeout=TIMEOUT)  # the process that took the lock is gone
    kept = procs.second_copy_refused(job, backend)
    # POSIX locks belong to the process that took them; flock and OFD locks to the open
    # file description, which the child shares.
    assert kept == (backend != "lockf")
    assert kept == get_class(backend).capabilities.kept_by_fork_child
    if kept:  # status names the child, not the parent that took the lock and exited
        status = procs.status(job, backend)
        assert status.returncode == 0 and f"is running: pid {child}, " in status.stdout, status
    finish(parent)  # closing the pipe ends the child, which shares it


@pytest.mark.parametrize("holding", ALL)
@pytest.mark.parametrize("starting", ALL)
def test_backends_exclude_each_other_only_within_one_lock_family(
    procs: Procs, job: Path, holding: str, starting: str
) -> None:
    holder = procs.hold(job, holding)
    # On Linux flock(2) and POSIX record locks are separate: a copy started with a backend
    # of the other family runs beside the holder. POSIX and OFD locks do conflict.
    assert procs.second_copy_refused(job, starting) == (FAMILY[holding] == FAMILY[starting])
    finish(holder)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with directory_others_can_read() as path:
        yield path


@pytest.mark.parametrize("backend", NEW)
def test_a_read_only_script_fails_with_one_line_naming_a_backend_that_works(
    procs: Procs, shared_dir: Path, backend: str
) -> None:
    job = shared_dir / "job.py"
    job.write_text("import runalways\nprint('body')\n")
    job.chmod(0o444)
    argv = [sys.executable, str(job)]
    if os.geteuid() == 0:  # root may write anything: run it as nobody
        argv = as_nobody(argv)
    outcome = procs.run(argv, backend)
    if not get_class(backend).capabilities.needs_write_access:
        assert (outcome.returncode, outcome.stdout) == (0, "body\n"), outcome
        return
    assert (outcome.returncode, outcome.stdout) == (2, ""), outcome
    assert outcome.stderr == (
        f"runalways: cannot open '{job}' to lock it: Permission denied; the {backend} backend needs write "
        "access to the file and the fcntl backend does not: "
        "use RUNALWAYS_BACKEND=fcntl (--backend fcntl on the command line)\n"
    )
    assert procs.run(argv, "fcntl").stdout == "body\n"  # and the backend it names does work


@pytest.mark.parametrize("backend", NEW)
def test_status_names_the_holder(procs: Procs, job: Path, backend: str) -> None:
    idle = procs.status(job, backend)
    assert (idle.returncode, idle.stdout) == (3, f"'{job}' is not running (backend {backend})\n")
    holder = procs.hold(job, backend)
    busy = procs.status(job, backend)
    assert busy.returncode == 0, busy
    # An OFD lock shows pid -1 in /proc/locks: the holder is found through fdinfo.
    assert busy.stdout.startswith(f"'{job}' is running: pid {holder.pid}, user "), busy.stdout
    assert busy.stdout.splitlines()[0].endswith(f"(backend {backend})")
    assert procs.second_copy_refused(job, backend)  # status took no lock, and lockf kept its own
    finish(holder)


@pytest.mark.parametrize("holding", ALL)
@pytest.mark.parametrize("asking", ALL)
def test_status_names_a_holder_of_another_kind_and_says_it_does_not_exclude(
    procs: Procs, job: Path, holding: str, asking: str
) -> None:
    holder = procs.hold(job, holding)
    outcome = procs.status(job, asking)
    assert outcome.returncode == 0, outcome
    line = outcome.stdout.splitlines()[0]
    if FAMILY[holding] == FAMILY[asking]:
        assert line.startswith(f"'{job}' is running: pid {holder.pid}, ") and line.endswith(f"(backend {asking})")
    else:
        kind = {"FLOCK": "an flock", "POSIX": "a POSIX", "OFDLCK": "an OFD"}[KIND[holding]]
        assert line.startswith(f"'{job}' is running: held with {kind} lock by pid {holder.pid}, user "), line
        assert line.endswith(f"(not excluded by the {asking} backend)")
    finish(holder)


@pytest.mark.parametrize("backend", NEW)
def test_waiting_blocks_in_the_kernel_and_gets_the_lock_when_freed(procs: Procs, backend: str) -> None:
    lock = procs.workdir / "shared.lock"
    holder = procs.start([sys.executable, "-c", WAITER, str(lock), backend, "0"], backend)
    expect(holder, "got")
    waiter = procs.start([sys.executable, "-c", WAITER, str(lock), backend, "60"], backend)
    expect(waiter, "waiting")
    # A blocked F_SETLKW / flock(LOCK_EX) shows in /proc/locks as a waiter ("->"): the
    # waiter sleeps in the kernel rather than polling.
    wait_until(lambda: [kind for kind, _ in locks_on(lock, waiting=True)] == [KIND[backend]], "a blocked waiter")
    finish(holder)
    expect(waiter, "got")
    finish(waiter)


@pytest.mark.parametrize("backend", NEW)
def test_waiting_gives_up_at_the_timeout(procs: Procs, backend: str) -> None:
    lock = procs.workdir / "shared.lock"
    holder = procs.start([sys.executable, "-c", WAITER, str(lock), backend, "0"], backend)
    expect(holder, "got")
    started = time.monotonic()
    waiter = procs.start([sys.executable, "-c", WAITER, str(lock), backend, "0.5"], backend)
    expect(waiter, "refused")
    assert time.monotonic() - started >= 0.5
    assert finish(waiter) == 0
    finish(holder)


LOCKS_ITSELF_AGAIN = """import runalways
import sys, runalways.api
from runalways.errors import AlreadyRunning
try:
    with runalways.api.lock(path=__file__):
        print("second lock granted", flush=True)
except AlreadyRunning as error:
    print("refused, held by", error.holder.pid if error.holder else None, flush=True)
print("ready", flush=True)
sys.stdin.read()
"""


def test_lockf_refuses_a_second_lock_on_the_file_in_the_same_process(procs: Procs) -> None:
    # POSIX locks never conflict within a process: without a guard the second lock is
    # granted and its release silently drops the import guard's lock.
    job = procs.workdir / "job.py"
    job.write_text(LOCKS_ITSELF_AGAIN)
    holder = procs.start([sys.executable, str(job)], "lockf")
    assert expect(holder, "refused") == f"refused, held by {holder.pid}"
    expect(holder, "ready")
    assert locks_on(job) == [("POSIX", holder.pid)]
    assert procs.second_copy_refused(job, "lockf")
    finish(holder)


def test_the_ofd_struct_flock_covers_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "job.py"
    path.write_text("")
    held = OfdBackend(Target(str(path), display="job.py", name="job.py"))
    assert held.try_acquire()
    try:
        # A second description asks the kernel about the lock: it reads back our layout.
        other = os.open(path, os.O_RDWR)
        try:
            query = struct.pack(FLOCK_LAYOUT, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            answer = struct.unpack(FLOCK_LAYOUT, fcntl.fcntl(other, fcntl.F_OFD_GETLK, query))
        finally:
            os.close(other)
        assert answer == (fcntl.F_WRLCK, os.SEEK_SET, 0, 0, -1)  # whole file; OFD locks have no pid
        assert struct.calcsize(FLOCK_LAYOUT) == (32 if struct.calcsize("P") == 8 else 24)
        assert locks_on(path) == [("OFDLCK", -1)]
        with open("/proc/locks") as listing:
            assert any(line.split()[-2:] == ["0", "EOF"] and "OFDLCK" in line for line in listing)
    finally:
        held.release()
    assert locks_on(path) == []


def run_python(code: str, backend: str = "fcntl") -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    env["RUNALWAYS_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=True
    )


@pytest.mark.parametrize(("backend", "imported"), [("fcntl", False), ("lockf", False), ("portalocker", True)])
def test_portalocker_is_imported_only_when_its_backend_locks(procs: Procs, backend: str, imported: bool) -> None:
    job = procs.workdir / "job.py"
    job.write_text("import runalways\nimport sys\nprint('portalocker' in sys.modules)\n")
    assert procs.run([sys.executable, str(job)], backend).stdout == f"{imported}\n"
    listing = run_python(
        "import sys\nfrom runalways.cli import main\nmain(['backends'])\nprint('portalocker' in sys.modules)"
    )
    assert listing.stdout.endswith("\nFalse\n")  # `runalways backends` finds it without importing it


def test_portalocker_unavailable_says_how_to_install_it(procs: Procs) -> None:
    job = procs.workdir / "job.py"
    # A None entry in sys.modules is how Python spells "this module cannot be imported".
    job.write_text("import sys\nsys.modules['portalocker'] = None\nimport runalways\nprint('body')\n")
    outcome = procs.run([sys.executable, str(job)], "portalocker")
    assert (outcome.returncode, outcome.stdout) == (2, "")
    assert outcome.stderr == (
        "runalways: the portalocker backend cannot work here: "
        "the portalocker package is not installed (pip install portalocker)\n"
    )


def test_ofd_unavailable_without_f_ofd_setlk() -> None:
    outcome = run_python(
        "import fcntl\ndel fcntl.F_OFD_SETLK  # as on macOS and the BSDs\n"
        "from runalways.backends.ofd import OfdBackend\nprint(OfdBackend.unavailable())"
    )
    assert outcome.stdout.startswith("open file description locks (F_OFD_SETLK) are Linux-only; ")


@pytest.mark.parametrize("backend", NEW)
def test_a_script_held_open_for_writing_cannot_be_started_by_its_shebang(procs: Procs, backend: str) -> None:
    """The caveat of locking the script with a POSIX write lock: Linux refuses to execute a
    file any process has open for writing (ETXTBSY), so `./job.py` fails in the next copy
    instead of exiting 0; `python3 job.py` is unaffected."""
    job = procs.workdir / "job.py"
    job.write_text(f"#!{sys.executable}\n{HOLDER}")
    job.chmod(0o755)
    holder = procs.hold(job, backend)
    if get_class(backend).capabilities.needs_write_access:
        with pytest.raises(OSError, match="Text file busy"):
            procs.run([str(job)], backend)
    else:
        assert procs.run([str(job)], backend).stdout == ""
    assert procs.second_copy_refused(job, backend)  # run by the interpreter, it is refused as usual
    finish(holder)
