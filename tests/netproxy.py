"""A TCP proxy in front of a test server, whose network can be cut and restored.

A cut is a partition that heals. While the network is cut nothing passes, in either
direction, and nothing is closed: no FIN, no RST, as when a cable is pulled. No byte is
lost either: the proxy only stops pumping, the kernel's buffers hold what was sent (as
TCP would retransmit it), so after ``restore()`` every stream goes on intact and whatever
was sent during the cut arrives late. A connection made during a cut gets no further than
the proxy's kernel (the handshake completes, nothing else happens) until the restore.

One thread pumps every connection; it ends when the proxy is closed. The cluster tests
(tests/test_cluster.py) and the chaos soak (benchmarks/soak.py) use it.
"""

from __future__ import annotations

import select
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

#: Bytes a direction holds before the proxy stops reading its source: the source's
#: kernel buffers then hold the rest, as a slow network would.
BUFFERED = 1 << 20
#: Seconds the pump waits for sockets before it looks at the cut and the stop again.
TICK = 0.05


class _Link:
    """A client's connection and the proxy's own to the server, and what is on its way between them."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        #: Bytes read from sockets[i] that sockets[1 - i] has not taken yet.
        self.pending = (bytearray(), bytearray())
        #: sockets[i] said it sends no more (EOF).
        self.ended = [False, False]
        #: sockets[i] was told, once its pending bytes were sent, that no more come.
        self.shut = [False, False]
        #: One end reset the connection: it is over for both.
        self.broken = False

    def done(self) -> bool:
        return self.broken or all(self.shut)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``server_port``; ``cut()`` and ``restore()`` the network between.

    ``sent_upstream`` counts the bytes that reached the server: a test waits on it to see
    a client's request go through.
    """

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.sent_upstream = 0
        self._links: list[_Link] = []
        self._forwarding = True
        #: Held while bytes move: once cut() returns, nothing more passes.
        self._moving = threading.Lock()
        self._stopped = threading.Event()
        self._pump = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._pump.start()

    def reroute(self, url: str) -> str:
        """``url`` of the server (on 127.0.0.1) made to go through the proxy; its login stays."""
        parts = urlsplit(url)
        login, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{login}{at}127.0.0.1:{self.port}"))

    def cut(self) -> None:
        with self._moving:
            self._forwarding = False

    def restore(self) -> None:
        with self._moving:
            self._forwarding = True

    def held(self) -> bool:
        """Something waits to pass: bytes sent, or a connection made, since the pump last moved."""
        with self._moving:
            if any(link.pending[0] or link.pending[1] for link in self._links):
                return True
            open_ends = [link.sockets[side] for link in self._links for side in (0, 1) if not link.ended[side]]
            return bool(select.select([self.listener, *open_ends], [], [], 0)[0])

    def close(self) -> None:
        self._stopped.set()
        self._pump.join(timeout=5)
        for link in self._links:
            link.close()
        self._links.clear()
        self.listener.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pump ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self._forwarding:
                self._stopped.wait(TICK)
                continue
            readable: list[socket.socket] = [self.listener]
            writable: list[socket.socket] = []
            for link in self._links:
                for side in (0, 1):
                    if not link.ended[side] and len(link.pending[side]) < BUFFERED:
                        readable.append(link.sockets[side])
                    if link.pending[side]:
                        writable.append(link.sockets[1 - side])
            ready, ready_to_write, _ = select.select(readable, writable, [], TICK)
            with self._moving:
                if self._forwarding:  # not cut while select() waited
                    self._move(set(ready), set(ready_to_write))

    def _move(self, ready: set[socket.socket], ready_to_write: set[socket.socket]) -> None:
        if self.listener in ready:
            self._accept()
        for link in list(self._links):
            try:
                for side in (0, 1):
                    if link.sockets[side] in ready:
                        self._receive(link, side)
                    if link.pending[side] and (link.sockets[1 - side] in ready_to_write or link.sockets[side] in ready):
                        self._send(link, side)
                    if link.ended[side] and not link.pending[side] and not link.shut[1 - side]:
                        link.sockets[1 - side].shutdown(socket.SHUT_WR)
                        link.shut[1 - side] = True
            except OSError:  # an end reset it (a killed client, a server gone): over for both
                link.broken = True
            if link.done():
                link.close()
                self._links.remove(link)

    def _receive(self, link: _Link, side: int) -> None:
        try:
            data = link.sockets[side].recv(65536)
        except BlockingIOError:
            return
        if data:
            link.pending[side].extend(data)
        else:
            link.ended[side] = True

    def _send(self, link: _Link, side: int) -> None:
        try:
            sent = link.sockets[1 - side].send(link.pending[side])
        except BlockingIOError:
            return
        del link.pending[side][:sent]
        if side == 0:
            self.sent_upstream += sent

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server_port), timeout=5)
            except OSError:  # no server: the client sees its connection end, as it would without the proxy
                client.close()
                continue
            client.setblocking(False)
            upstream.setblocking(False)
            self._links.append(_Link(client, upstream))
