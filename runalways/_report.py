"""Every event of a job, to every record the settings name: the log, the metrics, the ping.

A guard knows more about a cron job than any other tool on the host: when each run
began, whether a start was skipped and why, whether a holder is stale, and how the run
ended. :func:`report` hands each event to the records the settings ask for, and to no
other: RUNALWAYS_LOG (``runalways._eventlog``), RUNALWAYS_METRICS (``runalways._metrics``,
Prometheus's textfile collector) and RUNALWAYS_PING (``runalways._ping``, the
healthchecks protocol). A start without any of them never loads this module.

The events and their fields:

* ``start``: a run began, the lock taken. ``run_id`` (a random UUID, which pairs the
  run's start with its end in every record) and ``started`` (epoch seconds).
* ``skip``: a start did not run. ``reason``: ``held`` (another copy holds the lock),
  ``queued`` (RUNALWAYS_POLICY=queue: merged into the run that waits), ``done`` or
  ``unknown`` (the period's run, RUNALWAYS_ONCE_PER); for ``held`` and ``queued``, who
  holds it: ``holder_pid``, ``holder_host``, ``holder_age`` (seconds, or absent).
* ``stale`` and ``kill``: a holder held the lock too long (RUNALWAYS_STALE_AFTER), was
  reported, or killed; a ``kill`` with ``reason=replace`` stopped the copy that ran
  (RUNALWAYS_POLICY=replace).
* ``deadline``: RUNALWAYS_TIMEOUT ended the command.
* ``exit``: the run ended. ``run_id``, ``status`` (the exit status: 0 for a normal end,
  n for ``sys.exit(n)``, 1 for an uncaught exception; absent when it cannot be known, as
  ``runalways._ending`` tells), ``duration`` (seconds), and under
  ``runalways run`` with RUNALWAYS_PING, ``output``: the tail of what the command wrote.

No record ever fails the job or changes its exit status: each says one line on stderr
when it cannot be written or sent, and the job goes on.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from runalways._settings import Settings
    from runalways.backends.base import Backend


class Run:
    """One run of the job, from taking the lock to the end: what pairs its start with its end."""

    __slots__ = ("clock", "run_id", "started")

    def __init__(self) -> None:
        self.run_id = new_run_id()
        self.started = time.time()
        self.clock = time.monotonic()

    def duration(self) -> float:
        return round(time.monotonic() - self.clock, 3)


def new_run_id() -> str:
    """A random (version 4) UUID, without the cost of importing ``uuid`` at every start."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def begin(chosen: Settings, backend: Backend) -> Run:
    """The run that starts now, holding ``backend``'s lock: reported as ``start``."""
    run = Run()
    report(chosen, "start", backend, {"run_id": run.run_id, "started": round(run.started, 3)})
    return run


def end(chosen: Settings, backend: Backend, run: Run, status: int | None, output: bytes | None = None) -> None:
    """The run ended with ``status`` (None: not known, ``runalways._ending`` says when): reported
    as ``exit``, with its duration."""
    fields: dict[str, object] = {"run_id": run.run_id, "status": status, "duration": run.duration()}
    if output is not None:
        fields["output"] = output
    report(chosen, "exit", backend, fields)


def at_process_end(chosen: Settings, backend: Backend, run: Run) -> None:
    """For a guard that holds its lock until the process ends (the import guard, ``api.guard()``):
    report the run's end with the process's exit status, before the lock is released."""
    from runalways._ending import when_process_ends

    callback: Callable[[int | None], None] = lambda status: end(chosen, backend, run, status)  # noqa: E731
    when_process_ends(callback)


def report(chosen: Settings, event: str, backend: Backend, fields: dict[str, object]) -> None:
    """Hand one ``event`` with its ``fields`` to every record ``chosen`` names."""
    if event == "skip" and "holder_pid" not in fields:
        fields = {**holder_fields(backend), **fields}
    if chosen.log is not None:
        from runalways._eventlog import record

        record(chosen.log, event, backend, {key: value for key, value in fields.items() if key != "output"})
    if chosen.metrics is not None:
        from runalways._metrics import update

        update(chosen.metrics, event, backend, fields)
    if chosen.ping is not None:
        from runalways._ping import send

        send(chosen.ping, event, backend, fields, on_skip=chosen.ping_on_skip)


def holder_fields(backend: Backend) -> dict[str, object]:
    """Who kept a start out, and for how long it has held the lock (or since its last heartbeat)."""
    from runalways._heartbeat import age

    holder = backend.holder()
    if holder is None:
        return {}
    held_for, _ = age(backend, holder)
    return {
        "holder_pid": holder.pid,
        "holder_host": holder.host,
        "holder_age": None if held_for is None else round(held_for, 1),
    }
