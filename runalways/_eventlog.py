"""RUNALWAYS_LOG: a record of every start, skip, stale holder, kill and deadline.

The always policy is silent in cron mail by design, so a skip leaves no trace; with
RUNALWAYS_LOG each one writes a logfmt line (``event=skip target=... holder_pid=...``)
to syslog (the journal on systemd hosts) or appends it to a file: one ``write`` of one
line on a descriptor opened with O_APPEND, so lines of concurrent starts never mix.
Never on stdout, never a changed exit status: a record that cannot be written is one
warning line on stderr, and the job goes on.

``runalways status --json`` reads a file record back (:func:`summary`).
"""

from __future__ import annotations

import os
import time

from runalways._messages import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways.backends.base import Backend

SYSLOG = "syslog"


def line(event: str, backend: Backend, fields: dict[str, object]) -> str:
    """``time=2026-11-29T10:00:00Z event=skip target=job.py lock=/srv/job.py pid=42 holder_pid=7``."""
    values: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "event": event,
        "target": backend.target.display,
        "lock": backend.lock_key(),
        "backend": backend.name,
        "pid": os.getpid(),
        **fields,
    }
    return " ".join(f"{key}={_quoted(value)}" for key, value in values.items() if value is not None)


def _quoted(value: object) -> str:
    text = str(value)
    if text and not any(character in text for character in ' "=\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def record(destination: str | None, event: str, backend: Backend, fields: dict[str, object]) -> None:
    """Append one line about ``event`` to the record at ``destination``; nothing when None."""
    if destination is None:
        return
    try:
        text = line(event, backend, fields)
        if destination == SYSLOG:
            import syslog

            syslog.openlog("runalways", syslog.LOG_PID, syslog.LOG_USER)
            priority = syslog.LOG_INFO if event in ("start", "skip", "exit") else syslog.LOG_WARNING
            syslog.syslog(priority, text)
            return
        descriptor = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(descriptor, (text + "\n").encode("utf-8", "surrogateescape"))
        finally:
            os.close(descriptor)
    except OSError as error:
        say(f"runalways: cannot write to RUNALWAYS_LOG={destination!r}: {error.strerror or error}")


def parse(text: str) -> dict[str, str]:
    """The fields of one logfmt line, unquoted."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(text):
        while at < len(text) and text[at] == " ":
            at += 1
        equals = text.find("=", at)
        if equals < 0:
            break
        key = text[at:equals]
        at = equals + 1
        if text[at : at + 1] == '"':
            value = []
            at += 1
            while at < len(text) and text[at] != '"':
                if text[at] == "\\" and at + 1 < len(text):
                    at += 1
                    value.append({"n": "\n", "t": "\t"}.get(text[at], text[at]))
                else:
                    value.append(text[at])
                at += 1
            at += 1
            fields[key] = "".join(value)
        else:
            end = text.find(" ", at)
            end = len(text) if end < 0 else end
            fields[key] = text[at:end]
            at = end
    return fields


def summary(path: str, lock: str) -> dict[str, object]:
    """From the record at ``path``, for ``lock``: the last start, the skips since it, and the last
    end: its exit status, how long the run took and when it ended."""
    last_start: str | None = None
    skips = 0
    last_exit: int | None = None
    last_end: str | None = None
    last_duration: float | None = None
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as record_file:
            for text in record_file:
                fields = parse(text.rstrip("\n"))
                if fields.get("lock") != lock:
                    continue
                event = fields.get("event")
                if event == "start":
                    last_start, skips = fields.get("time"), 0
                elif event == "skip":
                    skips += 1
                elif event == "exit" and fields.get("status", "").isdigit():
                    last_exit, last_end = int(fields["status"]), fields.get("time")
                    last_duration = _seconds(fields.get("duration"))
    except OSError:
        return {}
    return {
        "last_start": _epoch(last_start),
        "skips_since_start": skips,
        "last_exit_status": last_exit,
        "last_duration_seconds": last_duration,
        "last_end": _epoch(last_end),
    }


def _epoch(stamp: str | None) -> int | None:
    """``2026-11-29T10:00:00Z`` in epoch seconds."""
    # Imported here: calendar loads locale and re, some milliseconds that every start with
    # RUNALWAYS_LOG paid for a function only runalways status calls.
    import calendar

    try:
        return None if stamp is None else calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None


def _seconds(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
