"""Unit tests of the heartbeat's file: opened before a wait, written in place once the lock is held.

A start that waits opens its heartbeat's file before it waits (``prepare``), so that the
holder's exit wakes it to a write and nothing else. These cases are what can happen to
that file in the meantime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from runalways import _heartbeat
from runalways._values import Target
from runalways.backends.flock import FlockBackend


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlockBackend]:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    monkeypatch.setenv("RUNALWAYS_DIR", str(locks))
    script = tmp_path / "job.py"
    script.write_text("print('job')\n")
    # A process of its own: what an earlier test wrote is not this test's to find.
    monkeypatch.setattr(_heartbeat, "_files", {})
    monkeypatch.setattr(_heartbeat, "_written", {})
    monkeypatch.setattr(_heartbeat, "_opened", {})
    yield FlockBackend(Target(str(script), display="job.py", name="job.py"))
    for descriptor in _heartbeat._opened.values():
        os.close(descriptor)


def beat_file(backend: FlockBackend) -> Path:
    return Path(_heartbeat.file_for(backend))


def content(backend: FlockBackend) -> str:
    return beat_file(backend).read_text()


def test_a_beat_names_the_holder_in_a_content_of_one_width(backend: FlockBackend) -> None:
    _heartbeat.beat([backend], rate_limited=False)
    assert content(backend).strip() == str(os.getpid())
    assert len(content(backend)) == _heartbeat.WIDTH + 1


def test_preparing_opens_the_file_without_touching_the_holders_beat(backend: FlockBackend) -> None:
    path = beat_file(backend)
    path.write_text(f"{'4242':<{_heartbeat.WIDTH}}\n")
    os.utime(path, (1_000_000, 1_000_000))
    _heartbeat.prepare(backend)
    assert content(backend).strip() == "4242" and path.stat().st_mtime == 1_000_000
    _heartbeat.beat([backend], rate_limited=False)
    assert content(backend).strip() == str(os.getpid()) and path.stat().st_mtime > 1_000_000
    assert not _heartbeat._opened  # the descriptor opened before the wait is closed once written


def test_a_file_removed_while_the_start_waited_is_written_anew(backend: FlockBackend) -> None:
    _heartbeat.prepare(backend)
    beat_file(backend).unlink()  # a cleaner of the lock directory, while the start waits
    _heartbeat.beat([backend], rate_limited=False)
    assert content(backend).strip() == str(os.getpid())


def test_content_longer_than_a_beat_is_cut_not_left_behind_the_pid(backend: FlockBackend) -> None:
    beat_file(backend).write_text("1\n" * 40)
    _heartbeat.prepare(backend)
    _heartbeat.beat([backend], rate_limited=False)
    assert content(backend).strip() == str(os.getpid())


def test_an_earlier_versions_shorter_beat_is_overwritten_whole(backend: FlockBackend) -> None:
    beat_file(backend).write_text("7\n")  # "<pid>\n", as runalways wrote it before
    _heartbeat.beat([backend], rate_limited=False)
    assert content(backend).strip() == str(os.getpid())
