"""The guards under test, each as the code (or command) a user would write.

Every guard does the same thing: take a non-blocking exclusive lock keyed on the job
script, exit 0 if another copy holds it, otherwise run the job. In wait mode it waits
for the lock instead (up to 60 s) with the guard's own documented way of waiting.

A guard is either a *preamble*, Python code at the top of the job script (split into
the part that imports the guard and the part that takes the lock, so that a waiter
can say "about to wait" in between), or a *wrapper*, a command that runs the
unguarded job (flock(1), ``runalways run``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

#: How long a waiter waits at most (seconds); the harness's own timeouts are shorter.
WAIT_SECONDS = 60


@dataclass(frozen=True)
class Guard:
    key: str
    #: How the tables name it.
    label: str
    #: "floor", "runalways", "peer" or "control".
    group: str
    #: How it is configured, for the tables.
    how: str = ""
    #: Preamble: the import, then the non-blocking lock (exits 0 when held).
    imports: str = ""
    lock: str = ""
    #: Wait mode: the blocking/polling lock; None when the guard cannot wait.
    wait: str | None = None
    #: Code that gives the lock up right away (after the holder timestamps its release).
    release: str = ""
    #: Wrapper commands; "{script}" and "{python}" are filled in.
    wrapper: tuple[str, ...] = ()
    wait_wrapper: tuple[str, ...] = ()
    #: Environment the guard needs (RUNALWAYS_BACKEND=...), and in wait mode.
    env: dict[str, str] = field(default_factory=dict)
    wait_env: dict[str, str] = field(default_factory=dict)
    #: A waiter sleeps in the kernel (/proc/locks shows it blocked) rather than polling.
    kernel_wait: bool = False
    #: A waiter is woken by its server when the holder lets go (a cluster backend).
    server_wait: bool = False
    #: How the guard waits, as its documentation says.
    wait_doc: str = ""
    #: Why this guard is not measured here (a backend unusable on this machine), or "".
    skipped: str = ""
    #: It keeps its lock file in runalways's lock directory (a pidfile, `runalways run`):
    #: the workspace gets one of its own, so that what is left behind stays inside it.
    lock_directory: bool = False

    @property
    def is_wrapper(self) -> bool:
        return bool(self.wrapper)

    @property
    def can_wait(self) -> bool:
        return bool(self.wait_wrapper) or self.wait is not None

    @property
    def is_runalways(self) -> bool:
        return self.group == "runalways"


#: Lines every job of the stampede, hand-over and crash runs starts with (the bare job too).
HEADER = "import os, sys, time\n"


def report(tag: str) -> str:
    """A line of job code that writes ``TAG pid monotonic-time`` to the report pipe.

    The pipe is the job's stdout (and its stdin is how the harness tells it to stop):
    ``runalways run`` closes every other descriptor before it starts the job.
    """
    return f'os.write(1, b"{tag} %d %.9f\\n" % (os.getpid(), time.monotonic()))\n'


def exit_on(call: str, exception: str) -> str:
    """``call``, exiting 0 when it raises ``exception`` (the guard's "another copy has it")."""
    return f"try:\n    {call}\nexcept {exception}:\n    sys.exit(0)\n"


def peers() -> list[Guard]:
    """The peers and the floors, configured as peer-benchmarks.md describes."""
    beside = '__file__ + ".lock"'
    return [
        Guard("bare", "bare `python job.py`", "control", how="no guard: the floor every overhead is taken against"),
        Guard(
            "rawflock",
            "raw `fcntl.flock` (floor)",
            "floor",
            how="`fcntl.flock(LOCK_EX|LOCK_NB)` on the script's own file",
            imports="import fcntl\n_fd = os.open(__file__, os.O_RDONLY | os.O_CLOEXEC)\n",
            lock=exit_on("fcntl.flock(_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "BlockingIOError"),
            wait="fcntl.flock(_fd, fcntl.LOCK_EX)\n",
            release="fcntl.flock(_fd, fcntl.LOCK_UN)\n",
            kernel_wait=True,
            wait_doc="kernel wake-up (`flock(LOCK_EX)`)",
        ),
        Guard(
            "tendo",
            "tendo",
            "peer",
            how="`singleton.SingleInstance()` (lockf on `$TMPDIR/<mangled path>.lock`)",
            imports="from tendo import singleton\n",
            lock=exit_on("_me = singleton.SingleInstance()", "singleton.SingleInstanceException"),
            wait_doc="none",
        ),
        Guard(
            "pid",
            "pid",
            "peer",
            how="`PidFile(piddir=$TMPDIR).create()` (flock + pid check)",
            imports="from pid import PidFile, PidFileError\n",
            lock='_pf = PidFile(piddir=os.environ["TMPDIR"])\n' + exit_on("_pf.create()", "PidFileError"),
            wait_doc="none",
        ),
        Guard(
            "fasteners",
            "fasteners",
            "peer",
            how="`InterProcessLock(<script>.lock).acquire(blocking=False)`",
            imports=f"import fasteners\n_lk = fasteners.InterProcessLock({beside})\n",
            lock="if not _lk.acquire(blocking=False):\n    sys.exit(0)\n",
            wait=f"if not _lk.acquire(blocking=True, timeout={WAIT_SECONDS}):\n    sys.exit(0)\n",
            release="_lk.release()\n",
            wait_doc="poll, linear back-off 0.01 s x attempt, max 0.1 s",
        ),
        Guard(
            "filelock",
            "filelock",
            "peer",
            how="`FileLock(<script>.lock).acquire(timeout=0)`",
            imports=f"from filelock import FileLock, Timeout\n_lk = FileLock({beside})\n",
            lock=exit_on("_lk.acquire(timeout=0)", "Timeout"),
            wait=exit_on(f"_lk.acquire(timeout={WAIT_SECONDS})", "Timeout"),
            release="_lk.release()\n",
            wait_doc="poll, `poll_interval` 0.05 s",
        ),
        Guard(
            "portalocker",
            "portalocker",
            "peer",
            how="`Lock(<script>.lock, fail_when_locked=True).acquire()`",
            imports="import portalocker\n",
            lock=f"_lk = portalocker.Lock({beside}, fail_when_locked=True)\n"
            + exit_on("_lk.acquire()", "portalocker.AlreadyLocked"),
            wait=f"_lk = portalocker.Lock({beside}, timeout={WAIT_SECONDS})\n"
            + exit_on("_lk.acquire()", "portalocker.AlreadyLocked"),
            release="_lk.release()\n",
            wait_doc="poll, `check_interval` 0.25 s",
        ),
        Guard(
            "flock1",
            "shell `flock -n` (util-linux)",
            "peer",
            how="`flock -n -E 0 job.py python job.py`",
            wrapper=("flock", "-n", "-E", "0", "{script}", "{python}", "{script}"),
            wait_wrapper=("flock", "-w", str(WAIT_SECONDS), "{script}", "{python}", "{script}"),
            kernel_wait=True,
            wait_doc="kernel wake-up (`flock -w`), then the job's own start",
        ),
    ]


#: How the runalways backends that do not block in the kernel wait.
WAITING = {
    "pidfile": "poll, back-off 1 ms doubling to 10 ms",
    "postgres": "the server's queue: `pg_advisory_lock` under `lock_timeout`, the token in the same statement",
    "redis": "the server: `BLPOP` on the lock's wake-up list, which the release pushes to",
}


def server_url(name: str) -> str:
    """The server a cluster backend is measured against: ``BENCHMARK_URL_<NAME>``, or for
    postgres ``RUNALWAYS_URL`` too; empty when none is given."""
    given = os.environ.get(f"BENCHMARK_URL_{name.upper()}", "")
    if not given and name == "postgres":
        given = os.environ.get("RUNALWAYS_URL", "")
    return given


def runalways_guards(runalways_command: str) -> list[Guard]:
    """One guard per registered runalways backend, plus the command line with the default one.

    Backends that cannot work here, and cluster backends without a server to talk to
    (``server_url``), are listed with the reason and not measured.
    """
    from runalways import _settings, backends
    from runalways.backends._filelock import FileLockBackend

    found: list[Guard] = []
    default = backends.default_name()
    for name in backends.names():
        try:
            backend = backends.get_class(name)
            reason = backend.unavailable() or ""
        except Exception as error:  # a third-party backend that fails to load is reported, not fatal
            skipped = f"cannot load: {error}"
            found.append(Guard(f"runalways-{name}", f"runalways `{name}`", "runalways", skipped=skipped))
            continue
        cluster = "RUNALWAYS_URL" in _settings.variables(backend)
        url = server_url(name) if cluster else ""
        if not reason and cluster and not url:
            reason = f"needs a server: BENCHMARK_URL_{name.upper()} is not set"
        env = {} if name == default else {"RUNALWAYS_BACKEND": name}
        if url:
            env = {**env, "RUNALWAYS_URL": url}
        kernel = issubclass(backend, FileLockBackend)
        found.append(
            Guard(
                f"runalways-{name}",
                f"runalways `{name}`" + (" (default)" if name == default else ""),
                "runalways",
                how="`import runalways`" + ("" if name == default else f", `RUNALWAYS_BACKEND={name}`"),
                imports="",
                lock="import runalways\n",
                wait="import runalways\n",
                # The import guard gives its lock up at exit; the holder of a hand-over
                # releases it at once instead, as exit would, without the interpreter's shutdown.
                release="for _held in runalways._policy.guarding:\n    _held.release()\n",
                env=env,
                wait_env={"RUNALWAYS_RETRY": f"{WAIT_SECONDS},1"},
                kernel_wait=kernel,
                server_wait=cluster,
                wait_doc=WAITING.get(name, "kernel wake-up (blocking lock call)" if kernel else "the backend's own"),
                skipped=reason,
                lock_directory=backend.capabilities.identity == "path",
            )
        )
    found.append(
        Guard(
            "runalways-run",
            "`runalways run` (command line)",
            "runalways",
            how="`runalways run -- python job.py`",
            wrapper=(runalways_command, "run", "--", "{python}", "{script}"),
            wait_wrapper=(runalways_command, "run", "--wait", str(WAIT_SECONDS), "--", "{python}", "{script}"),
            kernel_wait=True,
            wait_doc="kernel wake-up, then the job's own start",
            lock_directory=True,
        )
    )
    return found


def baseline(ref: str, project: Path, destination: Path) -> Guard:
    """The default guard as it was at the git revision ``ref``, measured in the same run as today's.

    Its sources are taken from git (``git archive``) and put first on PYTHONPATH, so that
    they shadow the installed wheel: a change can be shown not to slow the common start,
    side by side with the version before it, on the same machine under the same load.
    """
    import io
    import subprocess
    import tarfile

    archive = subprocess.run(
        ["git", "-C", str(project), "archive", "--format=tar", ref, "runalways"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as sources:
        sources.extractall(destination, filter="data")
    return Guard(
        f"runalways-at-{ref}",
        f"runalways `fcntl` at {ref} (before)",
        "runalways",
        how=f"`import runalways`, the sources of git revision {ref} first on PYTHONPATH",
        lock="import runalways\n",
        wait="import runalways\n",
        release="for _held in runalways._policy.guarding:\n    _held.release()\n",
        env={"PYTHONPATH": str(destination)},
        wait_env={"RUNALWAYS_RETRY": f"{WAIT_SECONDS},1"},
        kernel_wait=True,
        wait_doc="kernel wake-up (blocking lock call)",
    )


def script(guard: Guard, body: str, *, wait: bool = False, header: str = HEADER, waiting_tag: str = "") -> str:
    """The job script for ``guard``: header, guard (for preamble guards), body.

    ``waiting_tag``: in wait mode, a report line written between importing the guard
    and calling its lock (for ``import runalways``, which does both, before it).
    """
    if guard.is_wrapper or guard.group == "control":
        return header + body
    lock = guard.wait if wait else guard.lock
    assert lock is not None, guard.key
    waiting = report(waiting_tag) if waiting_tag else ""
    if guard.is_runalways:
        return header + waiting + lock + body
    return header + guard.imports + waiting + lock + body


def command(guard: Guard, python: str, path: Path, *, wait: bool = False) -> list[str]:
    """The argv that starts the job at ``path`` under ``guard``."""
    template: Sequence[str] = (guard.wait_wrapper if wait else guard.wrapper) or ("{python}", "{script}")
    argv = [part.format(python=python, script=str(path)) for part in template]
    # posix_spawn wants a path: find a bare command name on PATH (flock).
    argv[0] = shutil.which(argv[0]) or argv[0]
    return argv


def environment(guard: Guard, base: dict[str, str], *, wait: bool = False) -> dict[str, str]:
    env = dict(base)
    env.update(guard.env)
    if guard.lock_directory:
        env["RUNALWAYS_DIR"] = os.path.join(env["TMPDIR"], "runalways")
    if wait:
        env.update(guard.wait_env)
    return env
