"""Real processes for the conformance suite: scripts that really lock, and their outcomes.

Nothing here mocks a lock. Every process gets a timeout and is reaped by the ``procs``
fixture; tests synchronise on pipes (a holder prints ``ready`` once it holds the lock and
runs until its stdin closes) and on lock state, never on sleeps.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

#: Seconds any one process may take before the test fails (and the process is killed).
TIMEOUT = 30.0

#: The body of a holder: it reports that it holds the lock, then runs until told to stop.
HOLD = """
import sys
print("ready", flush=True)
sys.stdin.read()
"""


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any RUNALWAYS_* setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra or {})
    return env


class Outcome:
    """What a finished process did."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Outcome(returncode={self.returncode}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Procs:
    """Starts processes for one test and makes sure every one of them is gone after it."""

    def __init__(self, backend: str, workdir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.backend = backend
        self.workdir = workdir
        #: What the backend needs besides its name (the postgres backend: its server).
        self.settings = dict(settings or {})
        self.started: list[subprocess.Popen[bytes]] = []

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Each test gets its own private lock directory, so named locks of tests
        # running in parallel (or of two test runs at once) never meet.
        locks = self.workdir / "locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        return clean_environment(
            {"RUNALWAYS_BACKEND": self.backend, "RUNALWAYS_DIR": str(locks), **self.settings, **(extra or {})}
        )

    def script(self, name: str, body: str = HOLD, header: str = "import runalways\n") -> Path:
        """Write a script whose first line is ``header`` and whose rest is ``body``."""
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + textwrap.dedent(body))
        return path

    def start(
        self,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: read_line() must never read past the line it returns
            env=self.env(env),
            cwd=cwd or self.workdir,
        )
        self.started.append(process)
        return process

    def start_as_given(
        self, argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start with exactly ``env``: no private lock directory, no backend, nothing else added."""
        process = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=dict(env),
            cwd=cwd or "/",
        )
        self.started.append(process)
        return process

    def python(self, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, *args], env=env)

    def run(self, argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None) -> Outcome:
        """Run to completion (stdin closed at once) and return what it did."""
        return finish(self.start(argv, env=env))

    def run_python(self, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Outcome:
        return self.run([sys.executable, *args], env=env)

    def hold(self, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a holder and return once it holds the lock (it printed ``ready``)."""
        process = self.python(*args, env=env)
        wait_for_line(process, "ready")
        return process

    def reap(self) -> None:
        reap(self.started)


def reap(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill whichever of ``processes`` still run and collect every one of them."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        try:
            process.communicate(timeout=TIMEOUT)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            pass


def finish(process: subprocess.Popen[bytes], stdin: str = "") -> Outcome:
    """Close stdin (a holder then exits), wait with a timeout, and collect the output."""
    try:
        stdout, stderr = process.communicate(stdin.encode(), timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"process did not finish within {TIMEOUT} s: {stdout!r} {stderr!r}") from None
    return Outcome(process.returncode, stdout.decode(), stderr.decode())


def send(process: subprocess.Popen[bytes], text: str) -> None:
    assert process.stdin is not None
    process.stdin.write(text.encode())
    process.stdin.flush()


def read_line(process: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> str:
    """The next line of the process's stdout, or "" at its end; fails after ``timeout``.

    Reads a byte at a time from the unbuffered pipe, so that nothing after the line is
    swallowed into a buffer that select() cannot see.
    """
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = bytearray()
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([descriptor], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            process.kill()
            raise AssertionError(f"no complete line within {timeout} s (got {bytes(line)!r})")
        byte = os.read(descriptor, 1)
        if not byte:
            break
        line += byte
    return line.decode()


def wait_for_line(process: subprocess.Popen[bytes], expected: str, timeout: float = TIMEOUT) -> None:
    """Read stdout lines until one equals ``expected``; fail at the end of output or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        line = read_line(process, max(deadline - time.monotonic(), 0))
        if not line:
            outcome = finish(process)
            raise AssertionError(f"process ended (status {outcome.returncode}) before {expected!r}: {outcome!r}")
        if line.rstrip("\n") == expected:
            return


def wait_until(condition: object, what: str, timeout: float = TIMEOUT) -> None:
    """Poll a cheap condition (a file appearing, a lock state) until it holds."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def kill(process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
    process.send_signal(signum)
    process.wait(timeout=TIMEOUT)


def lines(path: Path) -> Iterator[str]:
    if path.exists():
        yield from path.read_text().splitlines()


def assert_already_running(stderr: str, display: str, holder_pid: int | None) -> None:
    """The alone policy's line: ``A copy of '<display>' is already running``, then what the
    mechanism knows of the holder in brackets; a pid it names must be the holder's."""
    line = f"A copy of '{display}' is already running"
    assert stderr.startswith(line) and stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    about = stderr[len(line) : -1]
    assert about == "" or (about.startswith(" (") and about.endswith(")")), stderr
    if "pid " in about and holder_pid is not None:
        assert f"pid {holder_pid}," in about + ",", stderr


#: The unprivileged user the permission cases run as.
NOBODY = 65534


def as_nobody(argv: list[str]) -> list[str]:
    """``argv`` run as the unprivileged user ``nobody`` (the tests run as root)."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to drop privileges"
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def nobody_env(shared: Path) -> dict[str, str]:
    """Settings for a process run as nobody: a private lock directory of its own."""
    locks = shared / "nobody-locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    os.chown(locks, NOBODY, NOBODY)
    return {"RUNALWAYS_DIR": str(locks)}


def same_lock_as(script: Path, capabilities: object) -> tuple[str, str]:
    """How another program names ``script``'s lock: ``("path", file)`` for backends that lock
    the file, ``("name", file name)`` for those that lock a name (identity "name")."""
    if capabilities.identity == "name":  # type: ignore[attr-defined]
        return "name", script.name
    return "path", str(script)


@contextlib.contextmanager
def directory_others_can_read() -> Iterator[Path]:
    """A directory the unprivileged user can read (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="runalways-spec-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


class Account(NamedTuple):
    """A local user the suite created, and its home (None: it has none)."""

    name: str
    uid: int
    gid: int
    home: Path | None


_account_numbers = itertools.count()


@contextlib.contextmanager
def local_account(homes: Path, *, home: bool = True, system: bool = False) -> Iterator[Account]:
    """A new local user (the suite runs as root), removed afterwards.

    With ``home``, its home is a directory of its own in ``homes``; without, the password
    database names ``/nonexistent``, as for ``nobody``. ``system`` gives it a uid below
    1000, as Debian gives ``www-data`` and the daemons' accounts.
    """
    if os.geteuid() != 0:
        raise AssertionError("this case runs as root, to create a local user")
    name = f"ra{os.getpid()}x{next(_account_numbers)}"
    folder = homes / name
    argv = ["useradd", "--user-group", "--shell", "/bin/sh", "--no-create-home"]
    argv += ["--home-dir", str(folder) if home else "/nonexistent", *(["--system"] if system else []), name]
    subprocess.run(argv, check=True, capture_output=True, timeout=TIMEOUT)
    try:
        import pwd

        entry = pwd.getpwnam(name)
        if home:
            folder.mkdir(mode=0o755)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        yield Account(name, entry.pw_uid, entry.pw_gid, folder if home else None)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=TIMEOUT)


def as_account(account: Account, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``argv`` run as ``account`` (the tests run as root)."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to drop privileges"
    return [
        setpriv,
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        *(os.fspath(arg) for arg in argv),
    ]


#: Mounts a tmpfs over /tmp in a new mount namespace, as systemd's PrivateTmp=yes gives a
#: unit a /tmp of its own, keeping visible the paths under /tmp that the job needs (the
#: interpreter or the project may live there).
_PRIVATE_TMP = r"""
set -e
stash=$1; shift
mount --bind /tmp "$stash"
mount -t tmpfs -o mode=1777 private-tmp /tmp
while [ "$1" != "--" ]; do
    mkdir -p "$1"; mount --bind "$stash/${1#/tmp/}" "$1"; shift
done
shift
exec "$@"
"""


def in_private_tmp(argv: Sequence[str | os.PathLike[str]], stash: Path) -> list[str]:
    """``argv`` run with a new, empty /tmp of its own (root only); ``stash`` is an empty directory."""
    import runalways

    needed = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    needed.add(os.path.dirname(os.path.dirname(os.path.realpath(runalways.__file__))))
    under_tmp = sorted(path for path in needed if path.startswith("/tmp/"))
    keep = [path for path in under_tmp if not any(path.startswith(other + "/") for other in under_tmp)]
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _PRIVATE_TMP, "sh", str(stash)]
    return [*unshare, *keep, "--", *(os.fspath(arg) for arg in argv)]


def with_machine_id(argv: Sequence[str | os.PathLike[str]], machine_id_file: Path) -> list[str]:
    """``argv`` run where /etc/machine-id says what ``machine_id_file`` says: another host (root only)."""
    mount = 'mount --bind "$0" /etc/machine-id && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(machine_id_file)]
    return [*unshare, *(os.fspath(arg) for arg in argv)]


STAMPEDE_BODY = """
import os, sys
with open(sys.argv[1], "a") as log:
    log.write(f"{os.getpid()}\\n")
os.read(int(sys.argv[2]), 1)  # hold the lock until the test says the round is over
"""

#: Each copy waits on the gate until all exist, then execs ``python job.py`` at once.
GATE = "import os, sys; os.read(int(sys.argv[1]), 1); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"

#: How many copies of the job start at the same instant in each round of a stampede.
STAMPEDE_COPIES = 32


def stampede(procs: Procs, env: Mapping[str, str], rounds: int, header: str = "import runalways\n") -> list[int]:
    """How many bodies ran in each of ``rounds`` rounds of STAMPEDE_COPIES copies let go at once.

    Every loser must exit 0 on its own while the winner still holds the lock; the winner's
    body then ends with the round.
    """
    job = procs.script("stampede.py", STAMPEDE_BODY, header=header)
    bodies = []
    for round_number in range(rounds):
        log = procs.workdir / f"round{round_number}.log"
        gate_read, gate_write = os.pipe()
        hold_read, hold_write = os.pipe()
        argv = [sys.executable, "-c", GATE, str(gate_read), str(job), str(log), str(hold_read)]
        copies = [
            subprocess.Popen(
                argv,
                env=dict(env),
                cwd=procs.workdir,
                pass_fds=(gate_read, hold_read),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(STAMPEDE_COPIES)
        ]
        os.close(gate_read)
        os.close(hold_read)
        try:
            os.write(gate_write, b"go" * STAMPEDE_COPIES)
            deadline = time.monotonic() + TIMEOUT
            while sum(copy.poll() is not None for copy in copies) < STAMPEDE_COPIES - 1:
                assert time.monotonic() < deadline, "the losers did not all exit"
                time.sleep(0.01)
            bodies.append(len(list(lines(log))))
            assert [copy.returncode for copy in copies if copy.poll() is not None] == [0] * (STAMPEDE_COPIES - 1)
        finally:
            os.close(gate_write)
            os.close(hold_write)  # the round is over: the winner's body ends
            for copy in copies:
                try:
                    copy.wait(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    copy.kill()
                    copy.wait()
    return bodies
