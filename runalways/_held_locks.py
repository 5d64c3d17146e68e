"""Every lock runalways holds on this machine, checked against the lock itself (``runalways list``).

Nothing is recorded when a lock is taken: every cron start would pay for it, and a record
outlives a holder that is killed. The list is made from what holds now:

* kernel locks (flock, POSIX, OFD) that Linux shows in the fdinfo of their descriptors,
  on a file in a lock directory (``--name``, ``runalways run``, ``RUNALWAYS_LOCK=private``,
  ``RUNALWAYS_IDENTITY=path``) or on the main script of the process that holds it (the
  import guard's default lock);
* pidfiles in the lock directories that name a live process (the ``pidfile`` backend).

A holder that is gone holds no kernel lock, and its pidfile is judged stale: it is never
listed. The lock directories are RUNALWAYS_DIR of this environment and the default ones
(for root, those of every account; others see their own locks). Cluster locks are not
listed: they are held on a server, for every host.
"""

from __future__ import annotations

import os

from runalways import _lockdir, _proc
from runalways._values import Holder, Target
from runalways.backends import get_class
from runalways.backends.base import Backend

#: The backend that takes each kind of kernel lock (flock is also portalocker's on Linux).
BACKEND_OF_KIND = {"FLOCK": "fcntl", "POSIX": "lockf", "OFDLCK": "ofd"}

DELETED = " (deleted)"


def lock_directories() -> list[str]:
    chosen = _lockdir.chosen_directory()
    folders = [os.path.abspath(chosen)] if chosen and os.path.isdir(chosen) else []
    return list(dict.fromkeys(folders + _lockdir.default_directories()))


def on_this_machine() -> list[tuple[Backend, Holder]]:
    """Each lock runalways holds here, as the backend that looks at it and its holder."""
    folders = set(lock_directories())
    found: list[tuple[Backend, Holder]] = []
    for kind, pid, path in _proc.held_lock_files():
        deleted = path.endswith(DELETED)
        real = path[: -len(DELETED)] if deleted else path
        if os.path.dirname(real) in folders:
            target = Target(real, display=_lock_name(real), name=_lock_name(real), create=True, private=True)
        elif _proc.runs_as_main_script(pid, real):
            target = Target(real, display=real, name=os.path.basename(real))
        else:
            continue
        holder = _proc.describe_process(pid)
        holder.kind = kind
        if deleted:
            holder.note = "its lock file was deleted: another copy can start"
        found.append((get_class(BACKEND_OF_KIND[kind])(target), holder))
    from runalways.backends import pidfile

    for folder in sorted(folders):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.endswith(".pid") and not name.startswith("."):
                path = os.path.join(folder, name)
                seen = pidfile.read(path)
                fields = (seen.fields if seen is not None else None) or {}
                shown = fields.get("script") or fields.get("name") or _lock_name(path)
                backend = pidfile.PidfileBackend(Target(path, display=shown, name=shown, create=True, private=True))
                live = backend.holder()
                if live is not None and live.pid is not None:
                    found.append((backend, live))
    return found


def _lock_name(path: str) -> str:
    """``nightly`` for ``…/nightly-0123456789abcdef.lock``: the readable part of a lock file's name."""
    stem, _, _ = os.path.basename(path).rpartition(".")
    readable, _, digest = stem.rpartition("-")
    return readable if len(digest) == 16 and readable else os.path.basename(path)
