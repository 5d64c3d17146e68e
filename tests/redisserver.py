"""A throw-away Redis server for the tests: 127.0.0.1 only, a free port, no persistence, stopped by PID.

The binary is ``redis-server`` on the PATH (Debian's ``redis-server`` package, which the
README's test command installs when missing); Valkey's ``valkey-server`` is taken when
there is no ``redis-server``. Persistence is off (``--save '' --appendonly no``), so a
restart loses every key, as a crash of a server without persistence does. Each
pytest-xdist worker starts its own server (milliseconds).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Iterator

from pgserver import free_port, stop_process, wait_until_aged

#: Seconds the server may take to start or stop before the fixture gives up.
STARTUP_TIMEOUT = 30.0


def required_binary() -> str:
    """The server binary; fails the test, saying what to install, without one."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    import pytest

    pytest.fail("no redis-server: install the redis-server package (the README's test command does)")


class Server:
    """One Redis server in a temporary directory; ``url`` reaches it."""

    def __init__(self, binary: str, *arguments: str) -> None:
        self.binary = binary
        self.arguments = arguments
        self.dir = tempfile.mkdtemp(prefix="runalways-redis-")
        self.log = os.path.join(self.dir, "server.log")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        #: The password given with --requirepass, which ``url`` then carries.
        self.password = arguments[arguments.index("--requirepass") + 1] if "--requirepass" in arguments else ""

    @property
    def url(self) -> str:
        login = f":{self.password}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> None:
        """Start (again, on the same port when given), and return once it answers."""
        for attempt in range(3):  # a free port can be taken by someone else before we bind it
            self.port = port or free_port()
            command = [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                *self.arguments,
            ]
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            self.stop()
            if port is not None or attempt == 2:
                break
        raise RuntimeError(f"the test Redis server did not start; see {self.log}")

    def _wait_ready(self) -> bool:
        import redis

        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pause = 0.005
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as probe:
                    probe.ping()
                    return True
            except redis.AuthenticationError:  # a server with a password answers too
                return True
            except redis.ConnectionError:
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
        return False

    def stop(self) -> None:
        """SIGTERM to the server we started (no persistence: it just exits), SIGKILL if it hangs."""
        process, self.process = self.process, None
        stop_process(process, signal.SIGTERM)

    def restart(self) -> None:
        self.stop()
        self.start(self.port)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def uptime(url: str) -> float:
    """The server's age as the backend reckons it: INFO's whole seconds, less one (they may round up)."""
    import redis

    with redis.Redis.from_url(url, socket_timeout=STARTUP_TIMEOUT) as client:
        return float(client.info("server")["uptime_in_seconds"]) - 1


def wait_until_older_than(url: str, seconds: float) -> None:
    wait_until_aged(lambda: uptime(url), seconds)


@contextlib.contextmanager
def running(binary: str, *arguments: str) -> Iterator[Server]:
    server = Server(binary, *arguments)
    try:
        server.start()
        yield server
    finally:
        server.remove()
