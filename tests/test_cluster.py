"""The cluster backends (postgres, redis) against real servers, with real processes: one suite for both.

Each pytest-xdist worker starts its own servers (tests/servers.py), one of each engine shared
with the conformance suite (the ``postgres_server`` and ``redis_server`` fixtures of conftest.py).
Every case runs once per engine. Holders are Python scripts guarded by
``import runalways``; they report on stdout once they hold the lock and append their side
effects to a shared file (O_APPEND, so the file's order is the order of the writes).
Tests wait on pipes, on process ends and on the server's own view of its clients, never
on a bare sleep. TTL is 3 s throughout.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import redis
from harness import read_line, reap, wait_until
from netproxy import Proxy
from servers import LEASE_TTL, PostgresServer, RedisServer, ServerProcess, free_port

from runalways.backends._lease import FENCE_AT
from runalways.backends.postgres import lock_key

TTL = LEASE_TTL
#: Seconds any one process may take before the test fails (and the process is killed).
TIMEOUT = 30.0

#: A guarded job. argv: effects file, then "hold" (until stdin closes) or "tick" (a side
#: effect every 5 ms, for at most 20 s).
JOB = """\
import runalways
import os, sys, time
import runalways.api

effects = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
me = os.getpid()
os.write(effects, f"start {me} {runalways.api.token()}\\n".encode())
print("ready", runalways.api.token(), flush=True)
if sys.argv[2] == "tick":
    stop = time.monotonic() + 20
    while time.monotonic() < stop:
        os.write(effects, f"tick {me}\\n".encode())
        time.sleep(0.005)
else:
    sys.stdin.read()
"""


class Engine:
    """What the cases need to know of one engine: its server, its URLs, its view of waiters."""

    #: The backend's name, and the engine's in messages.
    backend: str
    label: str
    #: A SIGKILLed holder (on the same host) is replaced within this many seconds.
    kill_release: float
    #: A copy on the same host takes the lock of a holder seen dead, before the server frees it.
    takes_over_dead_holder: bool

    #: The fixture of this engine's shared server (conftest.py).
    fixture: str

    def new_server(self) -> ServerProcess:
        """A server of the test's own (a context manager: started on entry, removed on exit)."""
        raise NotImplementedError

    def url(self, port: int, user: str = "", password: str = "") -> str:
        raise NotImplementedError

    def waiting(self, url: str, name: str) -> int:
        """Clients waiting on the server for the lock ``name``, as far as the server shows them."""
        raise NotImplementedError


class Postgres(Engine):
    backend, label = "postgres", "PostgreSQL"
    # SIGKILL closes the socket: the server ends the session, and frees the lock, at once.
    kill_release = 1.0
    takes_over_dead_holder = False

    fixture = "postgres_server"

    def new_server(self) -> ServerProcess:
        return PostgresServer()

    def url(self, port: int, user: str = "postgres", password: str = "") -> str:
        login = f"{user}:{password}" if password else user
        return f"postgresql://{login}@127.0.0.1:{port}/postgres"

    def waiting(self, url: str, name: str) -> int:
        classid, objid = lock_key(name)
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid"
                " AND objid = %s::oid AND objsubid = 2 AND NOT granted",
                (classid, objid & 0xFFFFFFFF),
            ).fetchone()
        assert row is not None
        return int(row[0])


class Redis(Engine):
    backend, label = "redis", "Redis"
    # The key outlives a killed holder; a copy on the same host sees the holder gone and
    # takes over at once, one on another host when the key expires (one TTL).
    kill_release = 1.0
    takes_over_dead_holder = True

    fixture = "redis_server"

    def new_server(self) -> ServerProcess:
        return RedisServer()

    def url(self, port: int, user: str = "", password: str = "") -> str:
        login = f"{user}:{password}@" if password else ""
        return f"redis://{login}127.0.0.1:{port}/0"

    def waiting(self, url: str, name: str) -> int:
        # A waiter blocks on the lock's wake-up list (BLPOP) between its takes.
        with redis.Redis.from_url(url, socket_timeout=TIMEOUT) as client:
            clients = client.client_list()
        return sum(entry.get("cmd") == "blpop" for entry in clients)


ENGINES = {engine.backend: engine for engine in (Postgres(), Redis())}


@pytest.fixture(scope="session", params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Engine:
    return ENGINES[request.param]


@pytest.fixture(scope="session")
def server(engine: Engine, request: pytest.FixtureRequest) -> ServerProcess:
    """This worker's server of the engine, a TTL old (shared; no test here restarts it)."""
    shared: ServerProcess = request.getfixturevalue(engine.fixture)
    return shared


@pytest.fixture
def own_server(engine: Engine) -> Iterator[ServerProcess]:
    """A server of this test's own, for a test that restarts it."""
    with engine.new_server() as started:
        yield started


class Jobs:
    """Guarded processes of one test, all on one lock name; every one is reaped afterwards."""

    def __init__(self, engine: Engine, url: str, workdir: Path) -> None:
        self.engine = engine
        self.url = url
        self.workdir = workdir
        self.name = f"job-{uuid.uuid4().hex[:12]}"
        self.script = workdir / "job.py"
        self.script.write_text(JOB)
        self.effects = workdir / "effects"
        self.started: list[subprocess.Popen[bytes]] = []

    def env(self, url: str | None = None, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("RUNALWAYS_", "PG"))}
        # Heartbeats of a copy that took the lock after a wait go to the lock directory:
        # one of the test's own, never the home of the user running the suite.
        locks = self.workdir / "locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        env.update(
            RUNALWAYS_DIR=str(locks),
            RUNALWAYS_BACKEND=self.engine.backend,
            RUNALWAYS_URL=url or self.url,
            RUNALWAYS_TTL=str(TTL),
            RUNALWAYS_NAME=self.name,
            RUNALWAYS_SILENT="1",
        )
        env.update(extra)
        return env

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env
        )
        self.started.append(process)
        return process

    def job(self, mode: str = "hold", url: str | None = None, **extra: str) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, str(self.script), str(self.effects), mode], self.env(url, **extra))

    def holder(self, mode: str = "hold", url: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
        """A job that holds the lock, and its token."""
        process = self.job(mode, url)
        return process, token_of(read_line(process))

    def waiter(self) -> subprocess.Popen[bytes]:
        """A job waiting on the server for the lock (RUNALWAYS_RETRY), once it waits."""
        before = self.engine.waiting(self.url, self.name)
        process = self.job("hold", RUNALWAYS_RETRY="60,0.5")
        wait_until(
            lambda: self.engine.waiting(self.url, self.name) > before or process.poll() is not None,
            "the contender to wait on the lock",
        )
        return process

    def effect_lines(self) -> list[str]:
        return self.effects.read_text().splitlines() if self.effects.exists() else []

    def after_start_of(self, pid: int) -> list[str]:
        """The side effects written after the job ``pid`` wrote its start line."""
        lines = self.effect_lines()
        starts = [index for index, line in enumerate(lines) if line.startswith(f"start {pid} ")]
        assert starts, f"job {pid} never started: {lines[-5:]}"
        return lines[starts[0] + 1 :]

    def reap(self) -> None:
        reap(self.started)


@pytest.fixture
def jobs(engine: Engine, server: ServerProcess, tmp_path: Path) -> Iterator[Jobs]:
    started = Jobs(engine, server.url, tmp_path)
    try:
        yield started
    finally:
        started.reap()


def token_of(line: str) -> int:
    assert line.startswith("ready "), f"not holding the lock: {line!r}"
    return int(line.split()[1])


def finish(process: subprocess.Popen[bytes], stdin: bytes = b"") -> tuple[int, str, str]:
    stdout, stderr = process.communicate(stdin, timeout=TIMEOUT)
    return process.returncode, stdout.decode(), stderr.decode()


#: How late died_before_line() may see a death: its polling step, plus scheduling on a
#: loaded machine. The exact check is the effects file: no side effect of the old holder
#: after the new one started.
SEEN_LATE = 0.1


def died_before_line(holder: subprocess.Popen[bytes], other: subprocess.Popen[bytes]) -> tuple[float, float]:
    """(when ``holder`` was seen dead, when ``other`` printed its line), both on time.monotonic().

    Polled every 5 ms, so the holder's death is seen at most 5 ms late; after the line, for
    SEEN_LATE more (inf if it is still not seen dead then).
    """
    assert other.stdout is not None
    deadline = time.monotonic() + TIMEOUT
    died = ready = float("inf")
    while ready == float("inf"):
        if time.monotonic() > deadline:
            raise AssertionError("the other copy never got the lock")
        if died == float("inf") and holder.poll() is not None:
            died = time.monotonic()
        if select.select([other.stdout.fileno()], [], [], 0.005)[0]:
            read_line(other)
            ready = time.monotonic()
    # The kernel closes a killed holder's sockets (which frees its lock) before its parent
    # can see it dead: the other copy may print its line in between. A death seen within
    # SEEN_LATE of the line is what the callers allow for, so look for it that long.
    while died == float("inf") and time.monotonic() <= ready + SEEN_LATE:
        if holder.poll() is not None:
            died = time.monotonic()
        else:
            time.sleep(0.005)  # polls the holder's state, as the loop above does
    return died, ready


def next_request(proxy: Proxy, client: subprocess.Popen[bytes]) -> None:
    """Wait until a request of the client through ``proxy`` reaches the server (or the client ends)."""
    before = proxy.sent_upstream
    wait_until(lambda: proxy.sent_upstream > before or client.poll() is not None, "a request to reach the server")


# -- one holder ------------------------------------------------------------------------


def test_two_contenders_exactly_one_holds(jobs: Jobs) -> None:
    first, second = jobs.job(), jobs.job()
    wait_until(lambda: first.poll() is not None or second.poll() is not None, "one contender to give up")
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    assert finish(loser) == (0, "", "")
    token_of(read_line(winner))
    assert winner.poll() is None
    assert finish(winner)[0] == 0


def test_stampede_of_16_runs_one(jobs: Jobs) -> None:
    # Each contender imports its client first and waits for the go, so they hit the server together.
    client = {"postgres": "psycopg", "redis": "redis"}[jobs.engine.backend]
    starter = jobs.workdir / "stampede.py"
    starter.write_text(f"import sys, {client}\nsys.stdin.readline()\nexec(open(sys.argv[3]).read())\n")
    started = [
        jobs.start([sys.executable, str(starter), str(jobs.effects), "hold", str(jobs.script)], jobs.env())
        for _ in range(16)
    ]
    for process in started:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
    wait_until(lambda: sum(process.poll() is not None for process in started) >= 15, "15 contenders to give up")
    running = [process for process in started if process.poll() is None]
    assert len(running) == 1
    token_of(read_line(running[0]))
    for process in started:
        if process is not running[0]:
            assert finish(process) == (0, "", "")
    assert finish(running[0])[0] == 0
    starts = [line for line in jobs.effect_lines() if line.startswith("start ")]
    assert len(starts) == 1 and starts[0].startswith(f"start {running[0].pid} ")


def test_sigkill_frees_the_lock_within_a_second_on_the_same_host(jobs: Jobs) -> None:
    holder, _ = jobs.holder()
    waiter = jobs.waiter()
    killed = time.monotonic()
    holder.kill()
    token_of(read_line(waiter))
    assert time.monotonic() - killed < jobs.engine.kill_release


def test_status_names_host_pid_and_since(jobs: Jobs) -> None:
    backend = jobs.engine.backend
    status = [sys.executable, "-m", "runalways", "status", "--backend", backend, "--name", jobs.name]
    assert subprocess.run(status, env=jobs.env(), capture_output=True, timeout=TIMEOUT).returncode == 3
    holder, _ = jobs.holder()
    shown = subprocess.run(status, env=jobs.env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert shown.returncode == 0, shown.stderr
    assert f"is running: pid {holder.pid}, host {socket.gethostname()[:30]}" in shown.stdout
    # redis knows how long the lease has left; postgres's server keeps no such number.
    lease = r", lease \d+\.\d s left" if backend == "redis" else ""
    since = rf", since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d{lease} \(backend {backend}\)"
    assert re.search(since, shown.stdout), shown.stdout
    finish(holder)
    assert subprocess.run(status, env=jobs.env(), capture_output=True, timeout=TIMEOUT).returncode == 3


# -- fencing ---------------------------------------------------------------------------


def test_stopped_holder_is_fenced_and_does_nothing_after_sigcont(jobs: Jobs) -> None:
    holder, _ = jobs.holder("tick")
    waiter = jobs.waiter()
    stopped = time.monotonic()
    holder.send_signal(signal.SIGSTOP)
    died, got_in = died_before_line(holder, waiter)
    holder.send_signal(signal.SIGCONT)
    assert holder.wait(timeout=TIMEOUT) == -signal.SIGKILL  # the kernel timer, even while stopped
    # Killed at its deadline (0.8 TTL after its last heartbeat, < TTL/3 before the stop):
    # the lock came free when the process died, before the server's lease ran out.
    assert died <= got_in + SEEN_LATE
    # The lower bound is the safety property; the upper one only says "about the TTL",
    # with room for a loaded machine.
    assert FENCE_AT * TTL - TTL / 3 - 0.2 < got_in - stopped < 3 * TTL
    assert [line for line in jobs.after_start_of(waiter.pid) if line == f"tick {holder.pid}"] == []


def test_network_cut_fences_the_holder_before_another_starts(jobs: Jobs, server: ServerProcess) -> None:
    with Proxy(server.port) as proxy:
        holder, _ = jobs.holder("tick", url=jobs.engine.url(proxy.port))
        waiter = jobs.waiter()
        cut = time.monotonic()
        proxy.cut()
        died, got_in = died_before_line(holder, waiter)
        assert holder.wait(timeout=TIMEOUT) == -signal.SIGKILL
        seen = f"holder seen dead {died - cut:.2f} s after the cut, other in at {got_in - cut:.2f} s"
        assert died < got_in + SEEN_LATE, seen
        # postgres: the server let the other in only when the lease (idle_session_timeout)
        # ran out; redis: a copy on the same host saw the fenced holder dead, or the key expired.
        freed = FENCE_AT * TTL if jobs.engine.takes_over_dead_holder else TTL
        assert freed - TTL / 3 - 0.2 < got_in - cut < 3 * TTL
        assert [line for line in jobs.after_start_of(waiter.pid) if line == f"tick {holder.pid}"] == []


def test_network_cut_shorter_than_the_fence_keeps_the_holder_and_its_lock(jobs: Jobs, server: ServerProcess) -> None:
    with Proxy(server.port) as proxy:
        holder, _ = jobs.holder(url=proxy.reroute(jobs.url))
        # Cut just after a renewal went through: the holder's deadline is 0.8 TTL away.
        next_request(proxy, holder)
        proxy.cut()
        wait_until(proxy.held, "the next renewal to be held by the cut")
        at_cut = proxy.sent_upstream
        proxy.restore()
        wait_until(lambda: proxy.sent_upstream > at_cut or holder.poll() is not None, "the held renewal to arrive")
        # Two more renewals on the same streams take the holder past the deadline it had
        # at the cut: the late one arrived whole, and the next ones moved the deadline on.
        next_request(proxy, holder)
        next_request(proxy, holder)
        assert holder.poll() is None, finish(holder)
        assert finish(jobs.job()) == (0, "", "")  # kept out: the lock is still the holder's
        assert finish(holder) == (0, "", "")


def test_a_renewal_cut_off_at_exit_ends_without_a_traceback(jobs: Jobs, server: ServerProcess) -> None:
    """The 300 s chaos soak found a redis copy that printed a traceback as it ended: at exit,
    release() closes the connection under a renewal stuck on a cut network, and the client
    library failed in the heartbeat thread with an error of its own making."""
    with Proxy(server.port) as proxy:
        holder, _ = jobs.holder(url=proxy.reroute(jobs.url))
        next_request(proxy, holder)
        proxy.cut()
        wait_until(proxy.held, "the next renewal to be held by the cut")
        assert finish(holder) == (0, "", "")  # the job ends: its lease is given up at exit


def test_command_of_runalways_run_dies_with_the_fenced_wrapper(jobs: Jobs) -> None:
    ticker = jobs.workdir / "ticker.py"
    ticker.write_text(JOB.replace("import runalways\n", "", 1))  # the command is not guarded itself
    wrapped = [sys.executable, "-m", "runalways", "run", "--name", jobs.name, "--"]
    wrapper = jobs.start([*wrapped, sys.executable, str(ticker), str(jobs.effects), "tick"], jobs.env())
    token_of(read_line(wrapper))  # the command's runalways.api.token() read RUNALWAYS_TOKEN
    child_pid = int(jobs.effect_lines()[0].split()[1])
    waiter = jobs.waiter()
    wrapper.send_signal(signal.SIGSTOP)
    died_before_line(wrapper, waiter)
    wrapper.send_signal(signal.SIGCONT)
    assert wrapper.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert [line for line in jobs.after_start_of(waiter.pid) if line == f"tick {child_pid}"] == []


def test_server_restart_while_held_never_overlaps(engine: Engine, own_server: ServerProcess, tmp_path: Path) -> None:
    """For redis, a restart of a server without persistence: the lock and the token counter are lost."""
    jobs = Jobs(engine, own_server.url, tmp_path)
    try:
        own_server.wait_until_older_than(TTL)
        holder, before = jobs.holder("tick")
        restarted = time.monotonic()
        own_server.restart()
        contender = jobs.job()
        died, got_in = died_before_line(holder, contender)
        assert holder.wait(timeout=TIMEOUT) == -signal.SIGKILL
        assert died < got_in + SEEN_LATE
        # The new holder waited until the server was a TTL old.
        assert got_in - restarted >= TTL - 0.2
        assert [line for line in jobs.after_start_of(contender.pid) if line == f"tick {holder.pid}"] == []
        start = next(line for line in jobs.effect_lines() if line.startswith(f"start {contender.pid} "))
        assert int(start.split()[2]) > before
        _, _, stderr = finish(holder)
        assert "killing" in stderr or stderr == ""
    finally:
        jobs.reap()


# -- tokens, settings, errors ----------------------------------------------------------


def test_tokens_strictly_increase_and_reach_the_command_of_runalways_run(jobs: Jobs) -> None:
    tokens = []
    for _ in range(3):
        holder, token = jobs.holder()
        finish(holder)
        tokens.append(token)
    show = "import runalways.api; print(runalways.api.token())"
    wrapped = [sys.executable, "-m", "runalways", "run", "--name", jobs.name, "--", sys.executable, "-c", show]
    ran = subprocess.run(wrapped, env=jobs.env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert ran.returncode == 0, ran.stderr
    tokens.append(int(ran.stdout))
    # The default lock of `runalways run` (the resolved command and its arguments) works too.
    ran = subprocess.run(wrapped[:4] + wrapped[6:], env=jobs.env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert ran.returncode == 0, ran.stderr
    tokens.append(int(ran.stdout))
    assert tokens == sorted(set(tokens)), tokens


def test_unreachable_server_exits_2_without_the_password(jobs: Jobs) -> None:
    secret = "s3cret-Pw"
    url = jobs.engine.url(free_port(), "alice", secret)
    returncode, stdout, stderr = finish(jobs.job(url=url, PGPASSWORD=secret))
    label = jobs.engine.label
    assert returncode == 2
    assert stdout == "" and not jobs.effects.exists()
    assert stderr.startswith(f"runalways: cannot reach the {label} server at 127.0.0.1:")
    assert stderr.count("\n") == 1 and secret not in stderr
    # Chosen by the operator: run without the lock (and without a token).
    runs = jobs.job(url=url, RUNALWAYS_UNREACHABLE="run")
    assert read_line(runs) == "ready None\n"
    returncode, _, stderr = finish(runs)
    assert f"runs without the lock: cannot reach the {label} server" in stderr and secret not in stderr


@pytest.mark.parametrize(
    ("variable", "value"), [("RUNALWAYS_TTL", "2"), ("RUNALWAYS_TTL", "soon"), ("RUNALWAYS_UNREACHABLE", "maybe")]
)
def test_bad_settings_are_one_line_and_exit_2(jobs: Jobs, variable: str, value: str) -> None:
    returncode, stdout, stderr = finish(jobs.job(**{variable: value}))
    assert (returncode, stdout) == (2, "")
    assert stderr.startswith(f"runalways: {variable}={value!r}") and stderr.count("\n") == 1


def test_fork_child_never_holds_the_lock(jobs: Jobs) -> None:
    forker = jobs.workdir / "forker.py"
    forker.write_text(
        textwrap.dedent(
            """\
            import runalways
            import os, sys
            # A child that exits normally must not end the parent's session on its way out.
            child = os.fork()
            if child == 0:
                sys.exit(0)
            os.waitpid(child, 0)
            print("forked", flush=True)
            sys.stdin.readline()
            # A child that outlives its parent must not keep the lock.
            if os.fork() == 0:
                print("child", os.getpid(), flush=True)
                sys.stdin.read()
                os._exit(0)
            os._exit(0)
            """
        )
    )
    parent = jobs.start([sys.executable, str(forker)], jobs.env())
    assert read_line(parent) == "forked\n"
    assert finish(jobs.job()) == (0, "", "")  # the parent still holds it
    waiter = jobs.waiter()
    assert parent.stdin is not None
    parent.stdin.write(b"go\n")
    child_pid = int(read_line(parent).split()[1])
    parent.wait(timeout=TIMEOUT)
    token_of(read_line(waiter, timeout=1.0))
    os.kill(child_pid, 0)  # still running, and not holding the lock
    parent.stdin.close()
    wait_until(lambda: not os.path.exists(f"/proc/{child_pid}"), "the forked child to end")


def test_only_the_chosen_backend_imports_its_client_and_ctypes(tmp_path: Path) -> None:
    script = tmp_path / "light.py"
    script.write_text(
        "import runalways\nimport sys\nprint(sorted({'psycopg', 'redis', 'ctypes'} & set(sys.modules)))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    ran = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert ran.stdout == "[]\n", ran.stderr
