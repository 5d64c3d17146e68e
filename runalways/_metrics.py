"""RUNALWAYS_METRICS: the job's metrics for Prometheus's textfile collector.

node_exporter's textfile collector (``--collector.textfile.directory=DIR``) reads every
``*.prom`` file in DIR at each scrape. Every start, skip, stale report and end of a job
rewrites its own file there, ``DIR/runalways_<name>.prom``: when the job last started,
ended and succeeded, how it last ended and how long it ran, whether it runs now or its
holder is stale, and counters of runs, skips and ends that were never reported.

The file is the record: each update reads the last one, changes what the event says and
writes the whole file anew, so counters survive from run to run. Two processes of a job
update it at once when a start is skipped while the holder starts or ends; the update
is serialised by an flock on a companion file (``DIR/.runalways_<name>.lock``) held for
the update only, and the new file is written beside the old one and renamed over it, so
a scrape sees the old file or the new one, never a torn one.

A directory that cannot be written is one warning line on stderr per process, and the
job goes on with its own exit status. Only ``os``, ``time`` and ``fcntl`` are loaded
(``zlib`` for a name that must be shortened or changed): an update costs a start well under
a millisecond, plus the ``fsync`` (nothing on a tmpfs, a few milliseconds on a disk).
"""

from __future__ import annotations

import os
import time

from runalways._messages import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways._values import Target
    from runalways.backends.base import Backend

#: The exit status written for a run that ended without a report: the next start that took
#: the lock found the file saying it still ran, so it was killed by a signal (SIGKILL, an
#: OOM kill, a stale holder killed, a deadline's kernel kill) or its host went down.
UNREPORTED = -1

#: The exit status written for a run that ended with a status the guard could not know
#: (``raise SystemExit(n)`` rather than ``sys.exit(n)``: docs/monitoring.md, "How the end is
#: known"): not 0, so that an alert on a failure fires, and not a status it may not have had.
UNKNOWN = -2

#: Each metric (after ``runalways_``), its type and its help, in the file's order. A
#: timestamp of 0 means never; ``last_exit_status`` and ``last_duration_seconds`` are
#: left out until a run's end was reported.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("last_start_timestamp_seconds", "gauge", "When the job's last run started (epoch seconds, 0 never)."),
    ("last_end_timestamp_seconds", "gauge", "When the job's last reported end happened (epoch seconds, 0 never)."),
    ("last_success_timestamp_seconds", "gauge", "When a run of the job last ended with exit status 0 (0 never)."),
    (
        "last_exit_status",
        "gauge",
        "The exit status of the job's last run; -1: it ended without a report; -2: it could not be known.",
    ),
    ("last_duration_seconds", "gauge", "How long the job's last reported run took, in seconds."),
    ("last_skip_timestamp_seconds", "gauge", "When a start of the job was last skipped (epoch seconds, 0 never)."),
    ("running", "gauge", "1 while a run of the job holds its lock, 0 once its end was reported."),
    ("stale", "gauge", "1 once a start found the job's holder held longer than RUNALWAYS_STALE_AFTER."),
    ("runs_total", "counter", "Runs of the job that took its lock."),
    ("skips_total", "counter", "Starts of the job that did not run: held by another copy, or the period's run done."),
    ("unreported_ends_total", "counter", "Runs of the job that ended without a report (killed by a signal)."),
)

#: What the file always has (0 when not yet known); the others appear once known.
_ALWAYS = frozenset(metric for metric, _, _ in METRICS) - {"last_exit_status", "last_duration_seconds"}

#: Characters kept as they are in the file's name: the rest become ``_``.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")

#: A name longer than this is shortened (and a hash of the whole of it added).
_LONGEST = 100

#: Seconds an update waits for another process's update of the same file.
LOCK_TIMEOUT = 5.0

#: The files this process could not write, each said once.
_warned: set[str] = set()


def job_name(target: Target) -> str:
    """The ``name`` label: the script's file name or the lock's name, or for ``runalways run``
    without ``--name`` (whose lock name is the program and its arguments joined by NULs) the command."""
    return target.display if "\0" in target.name else target.name


def file_stem(name: str) -> str:
    """``runalways_<name>``, safe for any file system: a name with other characters than
    letters, digits, ``_``, ``.`` and ``-``, or a long one, gets them replaced by ``_`` (shortened)
    and a hash of the whole name added, so that two names never share a file."""
    safe = "".join(character if character in _SAFE else "_" for character in name)
    if safe == name and len(name) <= _LONGEST:
        return f"runalways_{name}"
    import zlib

    digest = zlib.crc32(name.encode("utf-8", "surrogateescape"))
    return f"runalways_{safe[:_LONGEST]}-{digest:08x}"


def file_for(directory: str, target: Target) -> str:
    """The ``.prom`` file of the job that locks ``target``."""
    return os.path.join(directory, file_stem(job_name(target)) + ".prom")


def update(directory: str, event: str, backend: Backend, fields: dict[str, object]) -> None:
    """Rewrite the job's ``.prom`` file in ``directory`` for ``event``."""
    if event not in ("start", "skip", "stale", "exit"):
        return  # a kill or a deadline: the start or the end that follows says it
    name = job_name(backend.target)
    stem = file_stem(name)
    path = os.path.join(directory, stem + ".prom")
    try:
        lock = _locked(directory, stem)
        try:
            values = read(path)
            change(values, event, fields, round(time.time(), 3))
            _replace(path, render(name, values))
        finally:
            os.close(lock)
    except (OSError, ValueError) as error:  # ValueError: a path the system cannot take (a NUL)
        if path not in _warned:
            _warned.add(path)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            say(f"runalways: cannot write the metrics to {path!r}: {reason}")


def change(values: dict[str, float], event: str, fields: dict[str, object], now: float) -> None:
    """What ``event`` changes in the job's ``values`` (by metric, without ``runalways_``)."""

    def add(metric: str) -> None:
        values[metric] = values.get(metric, 0) + 1

    if event == "start":
        if values.get("running") == 1:
            # Only one run holds the lock, and each reports its end before letting go of
            # it: a start that took the lock after a run that never said it ended.
            add("unreported_ends_total")
            values["last_exit_status"] = UNREPORTED
        values["last_start_timestamp_seconds"] = _number(fields.get("started"), now)
        values["running"] = 1
        values["stale"] = 0
        add("runs_total")
    elif event == "skip":
        values["last_skip_timestamp_seconds"] = now
        add("skips_total")
    elif event == "stale":
        values["stale"] = 1
    elif event == "exit":
        status = _number(fields.get("status"), UNKNOWN)
        values["last_end_timestamp_seconds"] = now
        values["last_exit_status"] = status
        values["last_duration_seconds"] = _number(fields.get("duration"), 0)
        if status == 0:
            values["last_success_timestamp_seconds"] = now
        values["running"] = 0
        values["stale"] = 0


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def read(path: str) -> dict[str, float]:
    """The values of a job's file, by metric without ``runalways_``; none when it is missing.

    Lines that are not one of ours (a file damaged or edited by hand) are left out: the
    next update writes them anew, and counters start again from 0, which Prometheus reads
    as a counter reset.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as metrics_file:
            text = metrics_file.read(1 << 16)  # ours are about 2 KiB: anything far larger is not ours
    except FileNotFoundError:
        return {}
    known = {metric for metric, _, _ in METRICS}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("runalways_"):
            continue
        metric = line[len("runalways_") :].split("{", 1)[0].split(" ", 1)[0]
        number = line.rsplit(" ", 1)[-1]
        if metric in known:
            try:
                values[metric] = float(number)
            except ValueError:
                continue
    return values


def render(name: str, values: dict[str, float]) -> str:
    """The file's text: ``# HELP``, ``# TYPE`` and one sample of each metric, labelled ``name``."""
    label = f'{{name="{label_value(name)}"}}'
    lines = []
    for metric, kind, about in METRICS:
        if metric not in values and metric not in _ALWAYS:
            continue
        lines += [
            f"# HELP runalways_{metric} {about}",
            f"# TYPE runalways_{metric} {kind}",
            f"runalways_{metric}{label} {_shown(values.get(metric, 0))}",
        ]
    return "\n".join(lines) + "\n"


def label_value(text: str) -> str:
    """``text`` as a label value of the exposition format: UTF-8, and ``\\``, ``"`` and newlines escaped."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # a name that is not UTF-8
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _shown(value: float) -> str:
    """1, 0, -1 for whole numbers; 1764410400.123 for the others."""
    return str(int(value)) if value == int(value) else repr(value)


def _locked(directory: str, stem: str) -> int:
    """The companion lock file's descriptor, flocked: the job's file is ours to rewrite.

    Never deleted (a lock file removed while another process waits on it lets two in);
    opened read-only, which is enough for flock, so that one user's file lets another's in.
    """
    import fcntl

    from runalways._waiting import poll_until

    path = os.path.join(directory, f".{stem}.lock")
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def attempt() -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    # Polled rather than blocking: an update takes well under a millisecond, and a process
    # stopped in the middle of one (SIGSTOP) must cost the others a warning, not their run.
    if not attempt() and not poll_until(attempt, LOCK_TIMEOUT):
        os.close(descriptor)
        raise OSError(0, f"another process has been updating it for over {LOCK_TIMEOUT:g} s")
    return descriptor


def _replace(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``.

    The temporary file's name does not end in ``.prom``: the collector never reads it. Its
    name is fixed, as only the holder of the companion lock writes it. Readable by all: the
    collector runs as another user (prometheus), and the file says nothing that a process
    listing does not.
    """
    from runalways._replacing import replace_file

    folder, base = os.path.split(path)
    replace_file(path, text.encode("utf-8"), os.path.join(folder, f".{base}.tmp"), 0o644)


def last_outcome(directory: str, target: Target) -> dict[str, object]:
    """For ``runalways status --json``: what the job's file says of its last run; nothing without one."""
    try:
        values = read(file_for(directory, target))
    except (OSError, ValueError):
        return {}
    if not values:
        return {}

    def when(metric: str) -> float | None:
        return values.get(metric) or None  # 0: never

    status = values.get("last_exit_status")
    return {
        "last_start": when("last_start_timestamp_seconds"),
        "last_end": when("last_end_timestamp_seconds"),
        "last_success": when("last_success_timestamp_seconds"),
        "last_exit_status": None if status is None else int(status),
        "last_duration_seconds": values.get("last_duration_seconds"),
        "runs_total": int(values.get("runs_total", 0)),
        "skips_total": int(values.get("skips_total", 0)),
    }
