"""``runalways status`` and ``runalways list``: who holds a lock, told without taking it.

Both gather the same facts of a lock and its holder (:func:`_facts`), so that the JSON
of one lock from ``status --json`` and a line of ``list --json`` agree field by field;
the text for people is written from the holder itself, with what a monitor cannot
see: a copy left locking a file that is no longer at the lock's path.
"""

from __future__ import annotations

import os

from runalways import _policy
from runalways._lockdir import earlier_holder
from runalways._settings import Settings
from runalways._values import Holder, Target
from runalways.backends._filelock import FileLockBackend
from runalways.backends.base import Backend
from runalways.cli.parser import NOT_RUNNING, STALE, given_settings
from runalways.cli.target import lock_target
from runalways.errors import SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

#: How status names a lock of a kind /proc/locks lists.
_LOCK_KINDS = {"FLOCK": "an flock", "POSIX": "a POSIX", "OFDLCK": "an OFD"}


def status(arguments: argparse.Namespace) -> int:
    given = [bool(arguments.script), bool(arguments.lock), bool(arguments.name)]
    if sum(given) != 1:
        raise SettingError("give one of SCRIPT, --lock PATH or --name NAME")
    chosen = _policy.choose(os.environ, environment_wins=False, **given_settings(arguments, "status"))
    target = lock_target(arguments, chosen)
    asked = chosen.backend(target, chosen)
    holder = asked.holder()
    if arguments.json:
        return _status_json(asked, holder, chosen)
    status = _status_text(arguments, target, asked, holder, chosen)
    if chosen.once_per is not None:
        print(_period_line(asked, chosen.once_per))
    return status


def _period_line(asked: Backend, period: float) -> str:
    """``--once-per``: the period's run, in one line."""
    import time

    from runalways._period import tick
    from runalways._settings import format_duration

    last = asked.last_run()
    if last is None:
        return "  period: no run recorded"
    current = tick(time.time(), period)[0]
    this = "this period" if last.period == period and last.tick >= current else "an earlier period"
    return f"  period: ran in {this} ({format_duration(last.period)}) {last.describe()}"


def _status_text(
    arguments: argparse.Namespace, target: Target, asked: Backend, holder: Holder | None, chosen: Settings
) -> int:
    backend = chosen.backend.name
    lock_file = asked.lock_file()
    # Say where it looked, unless that is the script itself: a lock file's place is what
    # tells "not running" from "looked in another place than the holder".
    where = "" if lock_file in (None, arguments.script) else f"\n  lock file: {lock_file}"
    if holder is None:
        earlier = earlier_holder(asked)
        if earlier is not None:
            path, holder = earlier
            print(f"'{target.display}' is running: {holder.describe()} (backend {backend}){where}")
            print(f"  it holds {path}, where runalways 0.1 kept lock files: new starts see it and do not run")
            return 0
        left = "" if asked.stale is None else f"; left behind by {asked.stale.describe()}"
        print(f"'{target.display}' is not running (backend {backend}){left}{where}")
        return 0 if _holders_of_removed_files(target, asked) else NOT_RUNNING
    if holder.excludes:
        print(f"'{target.display}' is running: {holder.describe()} (backend {backend}){where}")
    else:  # a copy started with another backend: flock and POSIX locks do not exclude each other
        lock = _LOCK_KINDS.get(holder.kind or "", "another kind of")
        by = "by " if holder.pid is not None else ""
        held = f"held with {lock} lock {by}{holder.describe()}"
        print(f"'{target.display}' is running: {held} (not excluded by the {backend} backend){where}")
    if holder.command:
        print(f"  command: {holder.command}")
    _holders_of_removed_files(target, asked)
    if holder.excludes and chosen.stale_after is not None:
        from runalways._heartbeat import age
        from runalways._settings import format_duration as duration

        held_for, _ = age(asked, holder)
        if held_for is not None and held_for > chosen.stale_after:
            print(f"  stale: held for {duration(held_for)}, longer than the limit of {duration(chosen.stale_after)}")
            return STALE
    return 0


def _status_json(asked: Backend, holder: Holder | None, chosen: Settings) -> int:
    """One JSON object for monitoring: who holds the lock, since when, and whether it is stale."""
    import json

    found = _facts(asked, holder, chosen.stale_after)
    found["log"] = chosen.log
    if chosen.once_per is not None:
        last = asked.last_run()
        found["period"] = None if last is None else last.as_dict()
    if chosen.log is not None and chosen.log != "syslog":
        from runalways._eventlog import summary

        found.update(summary(chosen.log, asked.lock_key()))
    if chosen.metrics is not None:
        from runalways._metrics import file_for

        found["metrics"] = file_for(chosen.metrics, asked.target)
        _add_last_outcome(found, chosen.metrics, asked)
    print(json.dumps(found))
    if found["stale"]:
        return STALE
    return 0 if found["held"] else NOT_RUNNING


def _add_last_outcome(found: dict[str, object], metrics: str, asked: Backend) -> None:
    """Add what the job's metrics file (RUNALWAYS_METRICS, --metrics) says of its last run to
    ``found``: what the file does not know leaves what another record (the log) said."""
    from runalways._metrics import last_outcome

    for key, value in last_outcome(metrics, asked.target).items():
        if value is not None or found.get(key) is None:
            found[key] = value


def _facts(asked: Backend, holder: Holder | None, stale_after: float | None) -> dict[str, object]:
    """What ``status --json`` and ``list --json`` say of one lock and its holder."""
    from runalways._heartbeat import age

    held = holder is not None and holder.excludes
    held_for, beat = age(asked, holder) if holder is not None and held else (None, None)
    # A lock that only this machine's processes can hold has its holder here.
    host = holder.host if holder is not None and holder.host else None
    if held and host is None and not asked.capabilities.across_hosts:
        host = os.uname().nodename
    known = holder if held else None
    return {
        "target": asked.target.display,
        "backend": asked.name,
        "held": held,
        "pid": None if known is None else known.pid,
        "user": None if known is None else known.user,
        "host": host,
        "command": None if known is None else known.command,
        "started": None if known is None else known.since,
        "age_seconds": None if held_for is None else round(held_for, 3),
        "last_heartbeat": beat,
        "stale": held_for is not None and stale_after is not None and held_for > stale_after,
        "stale_after": stale_after,
        "lock_file": None if asked.lock_file() is None else os.path.abspath(str(asked.lock_file())),
    }


def _holders_of_removed_files(target: Target, asked: Backend) -> bool:
    """Copies still holding a lock on a file that was at the lock's path: say so, loudly.

    A deploy that renames a new script over a running one, or a lock file deleted by hand
    or by a cleaner while its holder runs, leaves the holder locking a nameless file: the
    next start locks the file now at the path and runs beside it. No start can see that.
    """
    from runalways import _proc

    path = asked.lock_file()
    if path is None or not isinstance(asked, FileLockBackend):
        return False
    orphans = _proc.replaced_holders(path)
    for holder in orphans:
        if asked.target.create:
            print(f"  pid {holder.pid} holds a lock on a deleted file: another copy can start ({holder.describe()})")
        else:
            print(
                f"  but a copy started before the file was replaced still runs: {holder.describe()}; "
                "a new copy can start beside it (RUNALWAYS_IDENTITY=path keeps deploys out)"
            )
    return bool(orphans)


def list_locks(arguments: argparse.Namespace) -> int:
    """Every lock held here, oldest first: a table for people, or JSON lines."""
    from runalways._held_locks import on_this_machine

    chosen = _policy.choose(os.environ, environment_wins=False, **given_settings(arguments, "list"))
    entries = []
    for backend, holder in on_this_machine():
        entry = _facts(backend, holder, chosen.stale_after)
        entry["note"] = holder.note
        if arguments.json and chosen.metrics is not None:
            _add_last_outcome(entry, chosen.metrics, backend)
        entries.append(entry)
    entries.sort(key=lambda entry: -float(entry["age_seconds"] or 0.0))  # type: ignore[arg-type]
    if arguments.json:
        import json

        for entry in entries:
            print(json.dumps(entry))
        return 0
    _print_table(entries)
    return 0


def _print_table(entries: list[dict[str, object]]) -> None:
    """``list`` for people: columns as wide as their longest cell, the command line last and unpadded."""
    from runalways._settings import format_duration as duration

    rows = [("AGE", "PID", "USER", "BACKEND", "JOB", "COMMAND")]
    for entry in entries:
        age = entry["age_seconds"]
        notes = [str(entry["note"])] if entry["note"] else []
        if entry["stale"]:
            notes.append("stale")
        rows.append(
            (
                "?" if age is None else duration(float(age)),  # type: ignore[arg-type]
                str(entry["pid"]),
                str(entry["user"]),
                str(entry["backend"]),
                str(entry["target"]) + (f" ({'; '.join(notes)})" if notes else ""),
                str(entry["command"] or ""),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])
