"""RUNALWAYS_ONCE_PER: a job runs once per period, on whichever host (or process) starts first.

**The tick.** A start computes the period it belongs to from its own host's wall clock,
in local time: ``tick = floor((time.time() + local UTC offset) / period)``. Cron fires by
that same clock, so every host reads a time in [boundary, boundary + start delay] at the
same tick, whatever the skew between the hosts' clocks; the server's clock is never
read (a host with a fast clock would land in the period before).

**The record.** One per job: the last period that ran (:class:`Run`). A start that holds
the lock runs when there is no record, when the record's tick is older than its own, or
when the period changed; else it is a skip, "done this period". The record is written
while the lock is held, before the job's body runs. Where it lives is the backend's
(:meth:`~runalways.backends.base.Backend.last_run`, ``record_run``): the file-based local
backends keep it in a file beside their lock in the lock directory (:func:`read_file`,
:func:`write_file`, replaced atomically), the cluster backends on their server.

**A server that forgets.** A missing record on a server younger than the time since the
period began (restarted without its data) cannot say whether the period ran: skip, and
write the record so that the next period runs (RUNALWAYS_ONCE_PER_UNKNOWN=run runs).

Loaded only by a start with the setting.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways.backends.base import Backend
    from runalways.errors import LockFailed

DONE = "done"
UNKNOWN = "unknown"


class Run:
    """The last period that ran: its tick and length, the host, pid and start of its run, and
    how that run ended (``ended``, the epoch of its end, is None until it reported one).
    ``forgot``: the start did not run, finding that the server had forgotten whether the
    period ran (RUNALWAYS_ONCE_PER_UNKNOWN=skip); its record keeps the period's later starts out."""

    __slots__ = ("ended", "forgot", "host", "period", "pid", "started", "status", "tick")

    def __init__(
        self,
        tick: int,
        period: float,
        host: str,
        pid: int,
        started: float,
        status: int | None = None,
        ended: float | None = None,
        forgot: bool = False,
    ) -> None:
        self.tick = tick
        self.period = period
        self.host = host
        self.pid = pid
        self.started = started
        #: Its exit status; None while it runs, if it ended without a report, or if its end
        #: could not tell the status (docs/monitoring.md, "How the end is known").
        self.status = status
        self.ended = ended
        self.forgot = forgot

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def as_dict(self) -> dict[str, object]:
        return {
            "tick": self.tick,
            "period": self.period,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "status": self.status,
            "ended": self.ended,
            "forgot": self.forgot,
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> Run | None:
        """The record in ``text``; None for anything that is not one (a damaged record runs the job)."""
        try:
            fields = json.loads(text)
            status, ended = fields.get("status"), fields.get("ended")
            return cls(
                int(fields["tick"]),
                float(fields["period"]),
                str(fields["host"]),
                int(fields["pid"]),
                float(fields["started"]),
                None if status is None else int(status),
                None if ended is None else float(ended),
                fields.get("forgot") is True,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def finished(self, status: int | None, ended: float) -> Run:
        """This run, ended at ``ended`` with ``status``."""
        return Run(self.tick, self.period, self.host, self.pid, self.started, status, ended, self.forgot)

    def describe(self) -> str:
        """Where and when it ran, and how it ended, as far as the record knows: asked by a start
        that holds the lock, so the run is over."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"at {when} on {self.host}, pid {self.pid}, {self.outcome()}"

    def outcome(self) -> str:
        if self.forgot:
            return "which did not run: the server had forgotten whether the period ran"
        if self.ended is None:
            return "which ended without a report (killed, or still running elsewhere)"
        if self.status is None:
            return "which ended with an exit status that could not be known"
        return f"which ended with exit status {self.status}"


class Skip:
    """Why a start that holds the lock does not run: ``done`` this period, or ``unknown``."""

    __slots__ = ("last", "reason")

    def __init__(self, reason: str, last: Run | None) -> None:
        self.reason = reason
        self.last = last

    def message(self, display: str, engine: str) -> str:
        if self.last is not None:
            return f"'{display}' already ran in this period ({self.last.describe()})"
        return (
            f"'{display}' may have run in this period: the {engine} server restarted since it began and keeps "
            "no record of it; not running (RUNALWAYS_ONCE_PER_UNKNOWN=run runs it)"
        )

    def fields(self) -> dict[str, object]:
        """For the job's log (RUNALWAYS_LOG)."""
        if self.last is None:
            return {"reason": self.reason, "holder_pid": None}
        return {
            "reason": self.reason,
            "holder_pid": None,
            "ran_host": self.last.host,
            "ran_pid": self.last.pid,
            "ran_status": self.last.status,
        }


def tick(now: float, period: float) -> tuple[int, float]:
    """The period ``now`` (epoch seconds) falls in, by the local wall clock, and the seconds since it began."""
    local = now + time.localtime(now).tm_gmtoff
    number = math.floor(local / period)
    return number, local - number * period


def check(backend: Backend, period: float, run_unknown: bool) -> Skip | Run:
    """With ``backend`` holding the lock: the period's record, written, to run; or why not."""
    now = time.time()
    current, since_start = tick(now, period)
    last = backend.last_run()
    if last is not None and last.period == period and last.tick >= current:
        return Skip(DONE, last)
    unknown = last is None and backend.forgot_within(since_start)
    forgot = unknown and not run_unknown
    run = Run(current, period, socket.gethostname(), os.getpid(), now, forgot=forgot)
    backend.record_run(run)
    return Skip(UNKNOWN, None) if forgot else run


def finish(backend: Backend, run: Run, status: int | None) -> None:
    """The period's ``run`` ended with ``status``: its record says so, for the period's later
    starts and for ``status``. Written while the lock is still held; a record that cannot be
    written is one line on stderr, and the exit status stays the job's."""
    from runalways.errors import LockFailed

    try:
        backend.record_run(run.finished(status, round(time.time(), 3)))
    except LockFailed as error:
        from runalways._messages import say

        say(f"runalways: the end of the period's run is not recorded: {error}")


# -- the file beside the lock, for the local backends --------------------------------------


def _file_for(key: str) -> str:
    from runalways._lockdir import companion_file

    return companion_file(key, "period", ".period")


def read_file(key: str) -> Run | None:
    """The record in the file beside the lock named ``key``; None when there is none (or it is damaged)."""
    path = _file_for(key)
    try:
        with open(path, "rb") as record:
            return Run.from_json(record.read(4096))
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _failure("read", path, error) from None


def write_file(key: str, run: Run) -> None:
    """Replace the record beside the lock named ``key``: a temporary file renamed over it, so a
    crash leaves the old record or the new one, never half of one; the next writer removes the
    temporary file a crash left."""
    path = _file_for(key)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        from runalways._replacing import replace_file

        _remove_leftovers(path)
        replace_file(path, run.to_json().encode(), temporary, 0o600)
    except OSError as error:
        raise _failure("write", path, error) from None


def _remove_leftovers(path: str) -> None:
    """Remove the temporary files (``<record>.<pid>.tmp``) of writers killed before their rename.

    Only the lock's holder writes the record, and a local lock is held until its holder dies:
    while this process holds it, every other such file is a dead writer's, whatever its pid."""
    folder, name = os.path.split(path)
    prefix, suffix = name + ".", ".tmp"
    for entry in os.listdir(folder):
        if entry.startswith(prefix) and entry.endswith(suffix) and entry[len(prefix) : -len(suffix)].isdigit():
            try:
                os.unlink(os.path.join(folder, entry))
            except FileNotFoundError:
                pass


def _failure(what: str, path: str, error: OSError) -> LockFailed:
    from runalways.errors import LockFailed

    return LockFailed(f"cannot {what} the record of the period at {path!r}: {error.strerror or error}")
