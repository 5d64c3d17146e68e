"""Throw-away servers for the tests and the benchmarks: 127.0.0.1 only, a free port.

PostgreSQL and Redis for the cluster backends; Prometheus's node exporter, whose textfile
collector reads the metrics files runalways writes (RUNALWAYS_METRICS).

``ServerProcess`` holds all the mechanics: a directory of its own, a free port (or the same
one again on a restart), waiting until the server answers, stopping by the PID of the
server process we started (SIGKILL if it hangs, reaped either way), removal, and ageing.
``PostgresServer``, ``RedisServer`` and ``NodeExporter`` say only what differs: the
command, how to ask whether it answers, and how old it is.

Why our own rather than pytest-postgresql and pytest-redis (both evaluated):

* Root. The suite runs as root in CI, and initdb, pg_ctl and postgres refuse to run as
  root; pytest-postgresql runs them as the current user with no way to name another (its
  issues #341 and #455). Here, as root, initdb and postgres run as the ``postgres`` user
  (``Popen(user=...)``; with ``runuser`` in between, a stop left a zombie postmaster).
* The PID. pytest-postgresql starts the server through ``pg_ctl start``, which detaches
  the postmaster, so the process it holds is not the server: a test cannot signal the
  server (SIGHUP to reload pg_hba.conf, SIGSTOP to a replica) or reap it. Our server is
  our own child, signalled and reaped by its PID.
* Ending only what we started. Both libraries run their servers through mirakuru, which
  at the exit of any process that imported it SIGKILLs every process on the machine whose
  ``mirakuru_uuid`` variable merely contains that process's PID as a substring: as root,
  that can reach the servers of another test run beside ours.
* Settings and scopes. pytest-redis passes a fixed set of settings: no
  ``--maxmemory-policy`` or ``--replicaof``, and no way to turn snapshots off (its
  ``save=""`` leaves Redis's default save points), so a restart would bring the keys back,
  where the restart case needs a server that lost them. Both libraries' process fixtures
  are session-scoped and configured once, at import; the cases need servers of their own
  with other settings, restarted on the same port mid-test, and the benchmarks (the soak,
  ``benchmarks/run.py --servers``) start servers outside pytest.
* Ageing. A server younger than the lease makes every new holder wait out the restart
  grace; neither library knows of it (``wait_until_older_than``).

The PostgreSQL binaries come from ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``,
Redis's from ``redis-server`` (``valkey-server`` without it) on the PATH, the node
exporter from ``prometheus-node-exporter`` (``node_exporter`` without it); without them
the tests that need a server fail and say to install the package (tests/system-packages.sh
does). Redis runs without persistence (``--save '' --appendonly no``), so a restart
loses every key, as a crash of a server without persistence does.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Callable, Iterator, NoReturn, TypeVar

#: Seconds a server may take to start or stop, or its clock to advance, before we give up.
STARTUP_TIMEOUT = 30.0

Self = TypeVar("Self", bound="ServerProcess")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_aged(uptime: Callable[[], float], seconds: float) -> None:
    """Return once ``uptime()`` (the server's age, as it tells it) is at least ``seconds``."""
    deadline = time.monotonic() + seconds + STARTUP_TIMEOUT
    while (age := uptime()) < seconds:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server's clock does not advance")
        time.sleep(min(seconds - age, 0.5) + 0.01)


class ServerProcess:
    """One server process of ours in a temporary directory; ``url`` reaches it once started.

    A context manager: started on entry, stopped and removed on exit.
    """

    #: The engine's name in messages.
    label = "server"
    #: What stops the server at once; SIGKILL follows if it has not ended in STARTUP_TIMEOUT.
    stop_signal = signal.SIGTERM

    def __init__(self, popen_user: dict[str, Any] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"runalways-{self.label.lower()}-")
        self.log = os.path.join(self.dir, "server.log")
        #: Popen's user, group and extra_groups when the server runs as another user.
        self.popen_user = popen_user or {}
        if self.popen_user:
            shutil.chown(self.dir, self.popen_user["user"], self.popen_user["group"])
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- what each engine says -----------------------------------------------------------

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        """The server's command line, listening on ``self.port`` of 127.0.0.1 only."""
        raise NotImplementedError

    def answers(self) -> bool:
        """Whether the server takes a connection now (one try)."""
        raise NotImplementedError

    def uptime(self) -> float:
        """Seconds since the server started, as the backend reckons it."""
        raise NotImplementedError

    # -- the mechanics, shared -------------------------------------------------------------

    def start(self, port: int | None = None) -> None:
        """Start (again, on the same port when given), and return once it answers."""
        for attempt in range(3):  # a free port can be taken by someone else before we bind it
            self.port = port or free_port()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, **self.popen_user
                )
            if self._wait_ready():
                return
            self.stop()
            if port is not None or attempt == 2:
                break
        raise RuntimeError(f"the test {self.label} server did not start; see {self.log}:\n{self._log_tail()}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pause = 0.005
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.answers():
                return True
            time.sleep(pause)  # polls the server's own answer: backs off while it starts
            pause = min(pause * 2, 0.1)
        return False

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the running server's process (by its PID)."""
        assert self.process is not None and self.process.poll() is None, "the server is not running"
        self.process.send_signal(signum)

    def stop(self) -> None:
        """``stop_signal`` to the server we started, SIGKILL if it hangs; reaped either way."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a stopped server would not act on the signal
        process.send_signal(self.stop_signal)
        try:
            process.wait(timeout=STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STARTUP_TIMEOUT)

    def restart(self) -> None:
        """Stop, and start again on the same port."""
        self.stop()
        self.start(self.port)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def wait_until_older_than(self, seconds: float) -> None:
        """Return once the server is ``seconds`` old: a server younger than the lease makes
        every new holder wait out the restart grace."""
        wait_until_aged(self.uptime, seconds)

    def __enter__(self: Self) -> Self:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as log:
            return "".join(log.readlines()[-20:])
        return ""


def _fail(message: str) -> NoReturn:
    import pytest

    pytest.fail(message)


# -- PostgreSQL --------------------------------------------------------------------------


@functools.cache
def postgres_bindir() -> str | None:
    """Where initdb and postgres are, or None."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False)
        candidates.append(found.stdout.strip())

    def version(path: str) -> int:
        number = path.split("/")[-2]
        return int(number) if number.isdigit() else 0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if candidate and all(os.access(os.path.join(candidate, tool), os.X_OK) for tool in ("initdb", "postgres")):
            return candidate
    return None


def _postgres_user() -> dict[str, Any]:
    """Popen arguments that run the server as ``postgres`` when we are root (it refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root, and there is no 'postgres' user to run the test server as") from None
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


class PostgresServer(ServerProcess):
    """A PostgreSQL server in a data directory of its own (initdb'ed on creation), trust logins."""

    label = "PostgreSQL"
    stop_signal = signal.SIGINT  # fast shutdown

    def __init__(self, bin_directory: str | None = None) -> None:
        found = bin_directory or postgres_bindir()
        if found is None:
            _fail("no PostgreSQL server binaries: install the postgresql package (tests/system-packages.sh does)")
        self.bin = found
        super().__init__(_postgres_user())
        self.data = os.path.join(self.dir, "data")
        initdb = [os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust"]
        try:
            subprocess.run(
                [*initdb, "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120, **self.popen_user
            )
        except BaseException:
            self.remove()
            raise

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def command(self) -> list[str]:
        settings = {"listen_addresses": "127.0.0.1", "fsync": "off", "max_connections": "100"}
        given = [argument for name, value in settings.items() for argument in ("-c", f"{name}={value}")]
        return [os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(self.port), "-k", self.dir, *given]

    def answers(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def uptime(self) -> float:
        import psycopg

        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8").fetchone()
        assert row is not None
        return float(row[0])


# -- Redis -------------------------------------------------------------------------------


def redis_binary() -> str | None:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


class RedisServer(ServerProcess):
    """A Redis server without persistence; ``arguments`` are added to its command line."""

    label = "Redis"

    def __init__(self, *arguments: str, binary: str | None = None) -> None:
        found = binary or redis_binary()
        if found is None:
            _fail("no redis-server: install the redis-server package (tests/system-packages.sh does)")
        self.binary = found
        self.arguments = arguments
        #: The password given with --requirepass, which ``url`` then carries.
        self.password = arguments[arguments.index("--requirepass") + 1] if "--requirepass" in arguments else ""
        super().__init__()

    @property
    def url(self) -> str:
        login = f":{self.password}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        settings = {"bind": "127.0.0.1", "port": str(self.port), "dir": self.dir, "save": "", "appendonly": "no"}
        settings.update({"daemonize": "no", "protected-mode": "no"})
        given = [argument for name, value in settings.items() for argument in (f"--{name}", value)]
        return [self.binary, *given, *self.arguments]

    def answers(self) -> bool:
        import redis

        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as probe:
                probe.ping()
        except redis.AuthenticationError:  # a server with a password answers too
            return True
        except redis.ConnectionError:
            return False
        return True

    def uptime(self) -> float:
        """INFO's whole seconds, less one (they may round up)."""
        import redis

        with redis.Redis.from_url(self.url, socket_timeout=STARTUP_TIMEOUT) as client:
            return float(client.info("server")["uptime_in_seconds"]) - 1


# -- Prometheus's node exporter ---------------------------------------------------------


def node_exporter_binary() -> str | None:
    for name in ("prometheus-node-exporter", "node_exporter"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


class NodeExporter(ServerProcess):
    """A node exporter with its textfile collector alone, reading ``textfile_dir`` at each scrape.

    Every other collector is off (``--collector.disable-defaults``), and so are the
    exporter's own Go and process metrics: a scrape is then cheap, and what it serves is
    only what the files in the directory say, with ``node_textfile_scrape_error``.
    """

    label = "node_exporter"

    def __init__(self, binary: str | None = None) -> None:
        found = binary or node_exporter_binary()
        if found is None:
            _fail("no node exporter: install the prometheus-node-exporter package (tests/system-packages.sh does)")
        self.binary = found
        super().__init__()
        #: The collector's directory: RUNALWAYS_METRICS for the jobs whose metrics it serves.
        self.textfile_dir = os.path.join(self.dir, "textfile")
        os.mkdir(self.textfile_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.disable-exporter-metrics",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={self.textfile_dir}",
        ]

    def answers(self) -> bool:
        try:
            self.scrape(timeout=2)
        except OSError:
            return False
        return True

    def scrape(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """What Prometheus would get now: the text of ``GET /metrics``."""
        import urllib.request

        with urllib.request.urlopen(self.url, timeout=timeout) as response:
            text: str = response.read().decode("utf-8")
            return text


#: Each engine's server class, by the backend's name.
SERVERS: dict[str, type[ServerProcess]] = {"postgres": PostgresServer, "redis": RedisServer}


#: The cluster backends' lease in the test suites: short, so that lease cases stay fast.
LEASE_TTL = 3.0


@contextlib.contextmanager
def aged(server: Self, seconds: float = LEASE_TTL) -> Iterator[Self]:
    """``server`` started, once it is ``seconds`` old; removed on exit."""
    with server:
        server.wait_until_older_than(seconds)
        yield server
