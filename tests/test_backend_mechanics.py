"""Unit tests of the shared file-lock mechanics: contention vs failure, waiting, holders.

The lock holders here are real processes holding real locks.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from runalways import _proc
from runalways._values import Target
from runalways.backends.flock import FlockBackend
from runalways.errors import LockFailed

HOLD = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
    "print('held', flush=True); sys.stdin.read()"
)


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.py"
    path.write_text("print('job')\n")
    return path


@pytest.fixture
def holder(lock_file: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.communicate(timeout=30)


def backend_for(path: Path) -> FlockBackend:
    return FlockBackend(Target(str(path), display=path.name, name=path.name))


def test_contention_is_false_not_an_error(lock_file: Path, holder: subprocess.Popen[str]) -> None:
    assert backend_for(lock_file).try_acquire() is False


def test_the_lock_is_taken_and_released(lock_file: Path) -> None:
    backend = backend_for(lock_file)
    assert backend.try_acquire() is True
    assert backend_for(lock_file).try_acquire() is False  # another open file description
    backend.release()
    assert backend_for(lock_file).try_acquire() is True


class Refusing(FlockBackend):
    """A backend whose lock call fails with a chosen errno, as a file system may."""

    failure = 0

    def _lock(self, fd: int, blocking: bool) -> None:
        raise OSError(self.failure, os.strerror(self.failure))


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES])
def test_only_would_block_answers_mean_another_copy(lock_file: Path, code: int) -> None:
    backend = Refusing(Target(str(lock_file), display="job.py", name="job.py"))
    backend.failure = code
    assert backend.try_acquire() is False


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EIO, errno.ENOSYS, errno.EPERM, errno.EINVAL])
def test_any_other_error_is_a_failure_that_says_what_to_do(lock_file: Path, code: int) -> None:
    backend = Refusing(Target(str(lock_file), display="job.py", name="job.py"))
    backend.failure = code
    with pytest.raises(LockFailed) as raised:
        backend.try_acquire()
    message = str(raised.value)
    assert str(lock_file) in message and errno.errorcode[code] in message
    assert "not another copy running" in message and "runalways backends" in message


def test_a_file_that_cannot_be_opened_says_so(tmp_path: Path) -> None:
    with pytest.raises(LockFailed, match=r"cannot open .*missing.py.* to lock it: No such file"):
        backend_for(tmp_path / "missing.py").try_acquire()


def test_waiting_gives_up_at_the_deadline_and_restores_the_alarm(
    lock_file: Path, holder: subprocess.Popen[str]
) -> None:
    def previous_handler(signum: int, frame: object) -> None:
        raise AssertionError("the caller's own alarm must not fire during the wait")

    old = signal.signal(signal.SIGALRM, previous_handler)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        started = time.monotonic()
        assert backend_for(lock_file).acquire(0.2) is False
        assert 0.2 <= time.monotonic() - started < 5
        assert signal.getsignal(signal.SIGALRM) is previous_handler
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20 < remaining <= 30  # the caller's timer is back, less the time waited
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_waiting_gets_the_lock_when_the_holder_lets_go(lock_file: Path, holder: subprocess.Popen[str]) -> None:
    backend = backend_for(lock_file)
    releaser = threading.Timer(0.1, holder.kill)
    releaser.start()
    try:
        assert backend.acquire(30) is True
    finally:
        releaser.cancel()
    assert backend_for(lock_file).try_acquire() is False


def test_waiting_from_another_thread_falls_back_to_polling(lock_file: Path, holder: subprocess.Popen[str]) -> None:
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(backend_for(lock_file).acquire(30)))
    waiter.start()
    holder.kill()
    waiter.join(timeout=30)
    assert outcome == [True]


def test_the_holder_is_read_from_proc_locks(lock_file: Path, holder: subprocess.Popen[str]) -> None:
    found = backend_for(lock_file).holder()
    assert found is not None and found.pid == holder.pid
    assert found.user == _proc.user_name(os.getuid())
    assert found.since is not None and abs(found.since - time.time()) < 120
    assert found.command is not None and "fcntl" in found.command


def test_nobody_holds_a_free_lock(lock_file: Path) -> None:
    assert backend_for(lock_file).holder() is None


def test_proc_locks_lists_this_process_lock(lock_file: Path) -> None:
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        status = os.stat(lock_file)
        assert ("FLOCK", os.getpid()) in (_proc.lock_holders(status.st_dev, status.st_ino) or [])
    finally:
        os.close(fd)
