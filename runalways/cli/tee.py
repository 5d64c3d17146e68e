"""With RUNALWAYS_PING, ``runalways run`` keeps the tail of its command's output for the end's ping.

The command's stdout and stderr are pipes, read by a thread of runalways that passes every
byte on at once, unchanged, to runalways's own stdout and stderr (the terminal, cron's mail,
a file: wherever they went), and keeps the last :data:`~runalways._ping.BODY_LIMIT` bytes of
both, in the order they came, as runitor sends them. Read as soon as they arrive and
written whole: nothing waits for a full buffer or a newline.

What changes for the command: its stdout and stderr are pipes, not the terminal (a program
may buffer its output, or leave out colours, as it does under cron). Once the command has
ended, what it left behind that still holds the pipes gets :data:`GRACE` to finish writing;
what it writes later is lost. Without RUNALWAYS_PING none of this happens: the command
writes to runalways's own descriptors.
"""

from __future__ import annotations

import os
import select
import threading
import time

from runalways._ping import BODY_LIMIT, tail

#: Seconds the output is still passed on after the command ended, while something it started
#: keeps the pipes open.
GRACE = 0.5

#: Bytes read at once: what a pipe holds.
_CHUNK = 65536


class Tee:
    """The command's two pipes, and the thread that passes their output on and keeps its tail."""

    def __init__(self) -> None:
        self._out_read, self.stdout = os.pipe()
        self._err_read, self.stderr = os.pipe()
        self._kept = bytearray()
        self._ended_at: float | None = None
        self._thread = threading.Thread(target=self._pass_on, name="runalways-tee", daemon=True)

    def started(self) -> None:
        """The command has the pipes' write ends (or failed to start): close ours, pass its output on."""
        os.close(self.stdout)
        os.close(self.stderr)
        self._thread.start()

    def output(self) -> bytes:
        """After the command ended: the tail of what it wrote, once it is all passed on (or :data:`GRACE` later)."""
        self._ended_at = time.monotonic()
        self._thread.join(GRACE + 0.5)  # the thread looks at the time at least every 0.1 s
        return tail(bytes(self._kept), BODY_LIMIT)

    def _pass_on(self) -> None:
        destinations = {self._out_read: 1, self._err_read: 2}
        poller = select.poll()
        for source in destinations:
            poller.register(source, select.POLLIN)
        try:
            while destinations:
                ended_at = self._ended_at
                if ended_at is not None and time.monotonic() - ended_at > GRACE:
                    return
                for source, _ in poller.poll(100):  # 100 ms: to see the command's end, not to wait for data
                    data = os.read(source, _CHUNK)
                    if data:
                        self._keep(data)
                    if not data or not _write_all(destinations[source], data):
                        # At its end; or ours cannot be written to (a reader gone: EPIPE): the
                        # pipe is closed, so the command's next write fails as it would have
                        # on ours (`runalways run -- yes | head` ends).
                        poller.unregister(source)
                        del destinations[source]
                        os.close(source)
        finally:
            for source in destinations:
                os.close(source)

    def _keep(self, data: bytes) -> None:
        self._kept += data
        if len(self._kept) > 4 * BODY_LIMIT:
            del self._kept[: -2 * BODY_LIMIT]  # room for a character cut in two, trimmed at the end


def _write_all(descriptor: int, data: bytes) -> bool:
    """Write all of ``data``, as fast as ``descriptor`` takes it; False when it cannot be written to."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(descriptor, view)
        except BlockingIOError:  # ours is non-blocking (a terminal another program set so): wait, never drop
            select.select([], [descriptor], [])
            continue
        except OSError:
            return False
        view = view[written:]
    return True
