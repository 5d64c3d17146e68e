"""Heartbeats: a holder marks progress where other starts can read it without the lock.

One small file per lock in the private lock directory, named after the lock's key
(``<name>-<hash>.beat``): its content is the pid of the holder that beats (padded with
spaces to one width), its modification time the last beat. A start that finds the lock
held counts the holder's age from its last beat when the file names that holder and is
newer than its start, so a file left by an earlier holder never makes a new one look
fresh. The script itself is never written (it may be read-only), and the lock is never
touched. The directory is the user's own: a holder of another user, or on another host,
is aged by its start.

Loaded only by ``api.heartbeat()``, by a start that checks for a stale holder, and by a
start that waits for the lock (it beats once it holds it).
"""

from __future__ import annotations

import os
import time

from runalways._messages import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways._values import Holder
    from runalways.backends.base import Backend


#: At most one update a second: a heartbeat is meant to be called in a loop.
INTERVAL = 1.0

_next_beat = 0.0
#: Heartbeat file -> the pid written in it (later beats only update its time).
_written: dict[str, int] = {}
_files: dict[int, str] = {}
#: Heartbeat file -> a descriptor on it, opened before a wait for the lock (:func:`prepare`).
_opened: dict[str, int] = {}
_warned = False
#: The width of a heartbeat's content: every holder's pid fills the same bytes, so that a
#: new holder overwrites the last one's in place. Truncating the file instead frees its
#: block, a journalled change on ext4 that cost a woken waiter 0.1-0.5 ms of its hand-over.
WIDTH = 20


def file_for(backend: Backend) -> str:
    return _file_for_key(backend.lock_key())


def _file_for_key(key: str) -> str:
    from runalways._lockdir import companion_file

    return companion_file(key, "heartbeat", ".beat")


def prepare(backend: Backend) -> None:
    """Open ``backend``'s heartbeat before a wait for its lock: the start the holder's exit
    wakes then only writes to it (the hand-over's last steps: the lock directory, the
    machine id, the password database and the path are looked up before). The content
    is the holder's until then: it is opened, not written."""
    try:
        if id(backend) not in _files:
            _files[id(backend)] = file_for(backend)
        path = _files[id(backend)]
        if path not in _opened:
            _opened[path] = _open(path)
    except Exception as error:  # said by the beat itself, once the lock is held
        from runalways.errors import RunAlwaysError

        if not isinstance(error, (OSError, RunAlwaysError)):
            raise


def beat(locks: list[Backend], *, rate_limited: bool = True) -> None:
    """Mark progress for every lock this process holds, or for the lock of the ``runalways run`` around it."""
    global _next_beat
    now = time.monotonic()
    if rate_limited and now < _next_beat:
        return
    _next_beat = now + INTERVAL
    try:
        for holding in locks:
            if id(holding) not in _files:
                _files[id(holding)] = file_for(holding)
            _touch(_files[id(holding)], os.getpid())
        inherited = os.environ.get("RUNALWAYS_HEARTBEAT", "")
        if not locks and inherited:
            pid, _, key = inherited.partition(" ")
            if pid.isdigit() and key:
                if -1 not in _files:
                    _files[-1] = _file_for_key(key)
                _touch(_files[-1], int(pid))
    except Exception as error:  # a heartbeat that cannot be written never fails the job
        from runalways.errors import RunAlwaysError

        if not isinstance(error, (OSError, RunAlwaysError)):
            raise
        _warn(str(error))


def _touch(path: str, pid: int) -> None:
    if _written.get(path) == pid:
        try:
            os.utime(path)
            return
        except FileNotFoundError:
            pass
    content = b"%-*d\n" % (WIDTH, pid)
    descriptor = _opened.pop(path, None)
    if descriptor is None:
        descriptor = _open(path)
    try:
        os.pwrite(descriptor, content, 0)
        status = os.fstat(descriptor)
        if status.st_nlink == 0:
            # Opened before a wait, and removed since (a cleaner of the lock directory): a
            # beat written there is read by nobody. Write it where it is looked for.
            removed, descriptor = descriptor, _open(path)
            os.close(removed)
            os.pwrite(descriptor, content, 0)
            status = os.fstat(descriptor)
        if status.st_size > len(content):  # longer than any beat: not one, cut it
            os.ftruncate(descriptor, len(content))
    finally:
        os.close(descriptor)
    _written[path] = pid


def _open(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _warn(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        say(f"runalways: cannot record a heartbeat: {why}")


def last_beat(backend: Backend, holder: Holder) -> float | None:
    """Epoch seconds of ``holder``'s last heartbeat, or None when it has not beaten (or we cannot see it)."""
    if holder.pid is None or holder.host not in (None, os.uname().nodename):
        return None
    try:
        path = file_for(backend)
        status = os.stat(path)
        with open(path) as content:
            pid = content.read().strip()
    except (OSError, ValueError):
        return None
    except Exception as error:
        from runalways.errors import RunAlwaysError

        if isinstance(error, RunAlwaysError):
            return None
        raise
    if pid != str(holder.pid) or (holder.since is not None and status.st_mtime < holder.since - 1):
        return None
    return status.st_mtime


def age(backend: Backend, holder: Holder) -> tuple[float | None, float | None]:
    """``(seconds since the holder's start or last heartbeat, the last heartbeat)``; None where unknown."""
    beat = last_beat(backend, holder)
    known = [value for value in (holder.since, beat) if value is not None]
    if not known:
        return None, beat
    return max(time.time() - max(known), 0.0), beat
