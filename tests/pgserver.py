"""A throw-away PostgreSQL server for the tests: 127.0.0.1 only, a free port, stopped by PID.

The server binaries come from ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``;
without them the tests that need a server fail and say to install the ``postgresql``
package (the README's test command does). initdb and postgres refuse to run as root, so as root both run as
the ``postgres`` user, started directly (``Popen(user=...)``): with ``runuser`` in
between, stopping the server left a zombie postmaster behind. Each pytest-xdist worker
starts its own server (about a second), which keeps workers from disturbing each other
when a test restarts its server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Callable, Iterator

#: Seconds the server may take to start or stop before the fixture gives up.
STARTUP_TIMEOUT = 30.0


def bindir() -> str | None:
    """Where initdb and postgres are, or None."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False)
        candidates.append(found.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0)[
        ::-1
    ]
    for candidate in candidates:
        if candidate and all(os.access(os.path.join(candidate, tool), os.X_OK) for tool in ("initdb", "postgres")):
            return candidate
    return None


def required_bindir() -> str:
    """The server binaries' directory; fails the test, saying what to install, without them."""
    found = bindir()
    if found is None:
        import pytest

        pytest.fail("no PostgreSQL server binaries: install the postgresql package (the README's test command does)")
    return found


def server_uptime(url: str) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8").fetchone()
    assert row is not None
    return float(row[0])


def wait_until_older_than(url: str, seconds: float) -> None:
    wait_until_aged(lambda: server_uptime(url), seconds)


def wait_until_aged(uptime: Callable[[], float], seconds: float) -> None:
    """A server younger than the lease makes every new holder wait out the restart grace: let it age.

    ``uptime`` asks the server its age (each engine's own way); shared with redisserver.
    """
    deadline = time.monotonic() + seconds + STARTUP_TIMEOUT
    while (age := uptime()) < seconds:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server's clock does not advance")
        time.sleep(min(seconds - age, 0.5) + 0.01)


def stop_process(process: subprocess.Popen[bytes] | None, signum: int) -> None:
    """``signum`` to a server we started, SIGKILL if it hangs; reaped either way (shared with redisserver)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=STARTUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STARTUP_TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that run the server as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root, and there is no 'postgres' user to run the test server as") from None
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


class Server:
    """One PostgreSQL server in a temporary data directory; ``url`` reaches it."""

    def __init__(self, bin_directory: str) -> None:
        self.bin = bin_directory
        self.user = _as_server_user()
        self.data = tempfile.mkdtemp(prefix="runalways-pg-")
        if self.user:
            shutil.chown(self.data, "postgres", "postgres")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = os.path.join(self.data, "server.log")
        subprocess.run(
            [
                os.path.join(self.bin, "initdb"),
                "-D",
                self.data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            **self.user,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, port: int | None = None) -> None:
        """Start (again, on the same port when given), and return once it takes connections."""
        for attempt in range(3):  # a free port can be taken by someone else before we bind it
            self.port = port or free_port()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [
                        os.path.join(self.bin, "postgres"),
                        "-D",
                        self.data,
                        "-p",
                        str(self.port),
                        "-k",
                        self.data,
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "max_connections=100",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **self.user,
                )
            if self._wait_ready():
                return
            self.stop()
            if port is not None or attempt == 2:
                break
        raise RuntimeError(f"the test PostgreSQL server did not start; see {self.log}:\n{self._log_tail()}")

    def _wait_ready(self) -> bool:
        import psycopg

        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pause = 0.01
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
        return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster we started), SIGKILL if it hangs."""
        process, self.process = self.process, None
        stop_process(process, signal.SIGINT)

    def restart(self) -> None:
        self.stop()
        self.start(self.port)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as log:
            return "".join(log.readlines()[-20:])
        return ""


@contextlib.contextmanager
def running(bin_directory: str) -> Iterator[Server]:
    server = Server(bin_directory)
    try:
        server.start()
        yield server
    finally:
        server.remove()
