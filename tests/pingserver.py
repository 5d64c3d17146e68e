"""A monitor for the tests: an HTTP server on 127.0.0.1 speaking the healthchecks ping protocol.

Run as a process of its own (``python tests/pingserver.py MODE RECORD``), it prints the port it
listens on, then serves until killed, writing one JSON line to RECORD for every request
before answering it (so a request answered is a request on record): ``method``, ``path``
(without the check's secret: ``/start``, ``/log``, ``/fail``, ``/3``, or ``""`` for the
success ping), ``rid``, ``body`` and ``user_agent``. Its modes:

* ``ok``: answers ``200 OK``, as healthchecks does;
* ``error``: answers ``500`` to everything;
* ``hang``: accepts, reads and records the request, and never answers.

:class:`PingServer` starts one for a test and ends it (by its pid, reaped), and
:func:`refusing_port` gives a port on which a connection is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

#: Seconds the server may take to say its port.
STARTUP_TIMEOUT = 30.0

#: The path under which the check's secret is: ``/ping/<uuid>``.
PREFIX = "/ping/"


class PingServer:
    """One monitor process of ours: ``url`` is the check's ping URL, ``requests()`` what it received."""

    def __init__(self, mode: str, directory: Path) -> None:
        self.mode = mode
        #: The check's secret, which must never be shown whole.
        self.secret = str(uuid.uuid4())
        self.record = directory / f"pings-{mode}-{self.secret}.jsonl"
        self.record.write_text("")
        self.process = subprocess.Popen(
            [sys.executable, __file__, mode, str(self.record)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], STARTUP_TIMEOUT)
        line = self.process.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the ping server did not start: {line!r}")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}{self.secret}"

    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far, oldest first."""
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STARTUP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def ping_server(mode: str, directory: Path) -> Iterator[PingServer]:
    server = PingServer(mode, directory)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port of 127.0.0.1 bound and never listened on, for the time of the block: a connection is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_HEAD = do_GET

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith(PREFIX):
            path = path[len(PREFIX) :].partition("/")[2]
            path = "/" + path if path else ""
        query = parse_qs(parts.query)
        entry = {
            "method": self.command,
            "path": path,
            "rid": query.get("rid", [None])[0],
            "body": body.decode("utf-8", "surrogateescape"),
            "user_agent": self.headers.get("User-Agent"),
        }
        with self.server.lock, open(self.server.record, "a") as record:
            record.write(json.dumps(entry) + "\n")
        if self.server.mode == "hang":
            threading.Event().wait()  # never answers; the process is killed at the end
        status = 500 if self.server.mode == "error" else 200
        answer = b"OK" if status == 200 else b"server error"
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode: str
    record: str
    lock: threading.Lock


def main(mode: str, record: str) -> None:
    if mode not in ("ok", "error", "hang"):
        raise SystemExit(f"unknown mode {mode!r}")
    server = _Server(("127.0.0.1", 0), _Handler)
    server.mode, server.record, server.lock = mode, record, threading.Lock()
    os.write(1, f"{server.server_address[1]}\n".encode())
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
