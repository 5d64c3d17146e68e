"""Real processes for the benchmarks: spawned directly, timed, bounded, always reaped.

Every child is started with ``posix_spawn`` (no fork of the harness, so spawning costs
the same for every guard), watched through a pidfd (its exit is noticed the moment it
happens, without polling), killed by its own PID with SIGKILL when it overruns its
timeout, and reaped. :func:`reap_all` kills and reaps whatever is still running; the
harness calls it on every way out.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import time
from typing import Iterable, Mapping, Sequence

#: Seconds any one process may run before it is killed and the measurement counts as failed.
TIMEOUT = 30.0

_live: dict[int, Child] = {}


class Child:
    """One spawned process: its pid, a pidfd to wait on, and how it ended."""

    def __init__(self, pid: int, started: float) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        #: time.perf_counter() just before posix_spawn and just after the exit was reaped.
        self.started = started
        self.ended: float | None = None
        #: time.monotonic() when the harness saw the process exit (for event timelines).
        self.exited_at: float | None = None
        #: The exit status (negative: killed by that signal); None while running.
        self.returncode: int | None = None
        self.timed_out = False

    @property
    def running(self) -> bool:
        return self.returncode is None

    def reap(self) -> int:
        """Collect the exit status of a process that has exited (or block until it does)."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.ended = time.perf_counter()
            self.exited_at = time.monotonic()
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self.pidfd)
            _live.pop(self.pid, None)
        return self.returncode

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait up to ``timeout`` seconds for the exit; kill it by its PID after that."""
        if self.returncode is None:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            if not poller.poll(max(timeout, 0.0) * 1000):
                self.kill()
                self.timed_out = True
            return self.reap()
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal this process (only ever by its own PID, only while it is unreaped)."""
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    @property
    def wall(self) -> float:
        """Seconds from just before the spawn to the reaping."""
        assert self.ended is not None
        return self.ended - self.started


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    fds: Mapping[int, int] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> Child:
    """Start ``argv``. ``fds`` maps a descriptor number in the child to one of ours;
    stdin/stdout/stderr default to /dev/null."""
    wanted: dict[int, int | None] = {0: stdin, 1: stdout, 2: stderr, **(fds or {})}
    # Copies far above the target numbers: a dup2 onto its own number would leave
    # close-on-exec set, and one dup2 could overwrite the source of the next.
    copies = {
        number: fcntl.fcntl(ours, fcntl.F_DUPFD_CLOEXEC, 100) for number, ours in wanted.items() if ours is not None
    }
    actions: list[tuple[int, int, int] | tuple[int, int, str, int, int]] = []
    for number in wanted:
        if number in copies:
            actions.append((os.POSIX_SPAWN_DUP2, copies[number], number))
        else:
            actions.append((os.POSIX_SPAWN_OPEN, number, os.devnull, os.O_RDWR, 0))
    started = time.perf_counter()
    try:
        pid = os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions)
    finally:
        for copy in copies.values():
            os.close(copy)
    child = Child(pid, started)
    _live[pid] = child
    return child


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float = TIMEOUT, **kwargs: int | None) -> Child:
    """Spawn, wait (bounded), reap: the whole process, timed."""
    child = spawn(argv, env, **kwargs)  # type: ignore[arg-type]
    child.wait(timeout)
    return child


def capture(argv: Sequence[str], env: Mapping[str, str], timeout: float = TIMEOUT) -> tuple[Child, str, str]:
    """Run ``argv`` and return its stdout and stderr as text (bounded by ``timeout``)."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        child = spawn(argv, env, stdout=out_write, stderr=err_write)
    finally:
        os.close(out_write)
        os.close(err_write)
    chunks: dict[int, list[bytes]] = {out_read: [], err_read: []}
    open_fds = {out_read, err_read}
    deadline = time.monotonic() + timeout
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                child.kill()
                child.timed_out = True
                break
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.discard(fd)
        child.wait(max(deadline - time.monotonic(), 0.1))
    finally:
        os.close(out_read)
        os.close(err_read)
    text = b"".join(chunks[out_read]).decode(errors="replace"), b"".join(chunks[err_read]).decode(errors="replace")
    return child, text[0], text[1]


def wait_all(children: Iterable[Child], timeout: float = TIMEOUT) -> None:
    """Wait for every child, all within one ``timeout``; kill the ones still running then."""
    deadline = time.monotonic() + timeout
    for child in children:
        child.wait(deadline - time.monotonic())


def reap_all() -> None:
    """Kill (by PID) and reap every child of ours still running."""
    for child in list(_live.values()):
        child.kill()
        child.reap()


class Reports:
    """The read end of a pipe that job processes write ``TAG pid time`` lines to.

    Lines shorter than PIPE_BUF are written atomically, so many writers can share it.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._buffer = b""
        #: Every line received so far: (tag, pid, monotonic time in the child).
        self.lines: list[tuple[str, int, float]] = []

    def close_write(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_write()
        os.close(self.read_fd)

    def drain(self) -> list[tuple[str, int, float]]:
        """Read what has arrived, without blocking; return the new lines."""
        new: list[tuple[str, int, float]] = []
        while True:
            try:
                data = os.read(self.read_fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for line in complete:
            tag, pid, when = line.decode().split()
            new.append((tag, int(pid), float(when)))
        self.lines.extend(new)
        return new

    def wait_for(self, tag: str, pid: int | None, timeout: float, watch: Sequence[Child] = ()) -> float | None:
        """Wait up to ``timeout`` for a ``tag`` line (from ``pid``, if given); its time, or
        None when it did not come or a process in ``watch`` exited first."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        for child in watch:
            if child.running:
                poller.register(child.pidfd, select.POLLIN)
        while True:
            for line_tag, line_pid, when in self.drain():
                if line_tag == tag and (pid is None or line_pid == pid):
                    return when
            found = self.find(tag, pid)
            if found is not None:
                return found
            if any(not child.running or _exited(child) for child in watch):
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            poller.poll(left * 1000)

    def wait(self, timeout: float, watch: Sequence[Child] = ()) -> None:
        """Sleep until something arrives, a process in ``watch`` exits, or ``timeout`` passes."""
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        for child in watch:
            if child.running:
                poller.register(child.pidfd, select.POLLIN)
        poller.poll(max(timeout, 0.0) * 1000)

    def find(self, tag: str, pid: int | None) -> float | None:
        for line_tag, line_pid, when in self.lines:
            if line_tag == tag and (pid is None or line_pid == pid):
                return when
        return None


def _exited(child: Child) -> bool:
    """True (and the child reaped) if it has exited; never blocks."""
    poller = select.poll()
    poller.register(child.pidfd, select.POLLIN)
    if poller.poll(0):
        child.reap()
        return True
    return False


def exited(child: Child) -> bool:
    """Whether ``child`` has exited (reaping it if so), without blocking."""
    return not child.running or _exited(child)
