"""R16: RUNALWAYS_ONCE_PER, a job once per period on whichever host starts first.

Each "host" is a start in a UTS namespace of its own (``unshare --uts``, its host name)
whose wall clock libfaketime sets (``faketime``, on the starting process only: never on a
server). Cron fires by each host's own clock, so every host reads a time at or a little
after the tick's boundary, however far apart the hosts' clocks are: the starts below come
one after another, as hosts whose clocks disagree by seconds start the same tick. The
faked readings lie in the past: a lease's kernel timer armed under a faked clock in the
future misbehaves on some libfaketime versions. Monotonic clocks are never faked.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
from harness import HOLD, Outcome, Procs, finish, read_line, wait_for_line, wait_until

from runalways._eventlog import parse
from runalways._period import Run

CLUSTER = ("postgres", "redis")

#: The job: it appends its host's name to a file, one line per run.
JOB = """
import socket, sys
with open(sys.argv[1], "a") as runs:
    runs.write(socket.gethostname() + "\\n")
"""


class Case(NamedTuple):
    """A schedule: its period, the time zone of the hosts, a tick's boundary in local time,
    and how late a start may come (the time from the cron firing to the next boundary)."""

    period: str
    seconds: int
    tz: str
    boundary: str
    tolerance: int


DAY = 86400
CASES = {
    "every-minute": Case("1m", 60, "UTC", "2026-01-15 10:17:00", 60),
    "every-5-minutes": Case("5m", 300, "UTC", "2026-01-15 10:05:00", 300),
    "hourly": Case("1h", 3600, "UTC", "2026-01-15 07:00:00", 3600),
    "daily-midnight-utc": Case("1d", DAY, "UTC", "2026-01-15 00:00:00", DAY),
    "daily-noon-utc": Case("1d", DAY, "UTC", "2026-01-15 12:00:00", DAY // 2),
    # POSIX TZ strings, no time zone database needed: UTC+9 (east) and UTC-8 (west).
    "daily-midnight-east": Case("1d", DAY, "EAST-9", "2026-01-15 00:00:00", DAY),
    "daily-midnight-west": Case("1d", DAY, "WEST8", "2026-01-15 00:00:00", DAY),
}


def at(boundary: str, seconds: float) -> str:
    """The local time ``seconds`` after ``boundary``, as faketime takes it."""
    moment = datetime.datetime.fromisoformat(boundary) + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class Fleet:
    """Starts of one job as if on several hosts, each with its own name and clock."""

    def __init__(
        self, procs: Procs, period: str, tz: str = "UTC", policy: str = "runalways.alone", **settings: str
    ) -> None:
        self.procs = procs
        self.runs = procs.workdir / "runs"
        self.log = procs.workdir / "log"
        self.script = procs.script("job.py", JOB, header=f"import {policy}\n")
        self.env = {
            "TZ": tz,
            "RUNALWAYS_ONCE_PER": period,
            "RUNALWAYS_LOG": str(self.log),
            "NO_FAKE_STAT": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            **settings,
        }
        if procs.backend in CLUSTER:  # the servers are shared by the tests of a worker
            self.env["RUNALWAYS_NAME"] = f"job-{uuid.uuid4().hex[:12]}"

    def argv(self, host: str, clock: str | None, script: Path | None = None) -> list[str]:
        faketime = shutil.which("faketime")
        assert faketime is not None, "faketime (Debian package faketime) is needed: tests/system-packages.sh"
        name_it = 'hostname "$1" && shift && exec "$@"'
        faked = [faketime, "-f", clock] if clock is not None else []
        return ["unshare", "--uts", "sh", "-c", name_it, "sh", host, *faked, sys.executable, str(script or self.script)]

    def start(self, host: str, clock: str | None, **extra: str) -> Outcome:
        """Start the job on ``host`` whose wall clock reads ``clock`` (local time; None: the real one)."""
        faked = None if clock is None else f"@{clock}"
        return finish(self.procs.start([*self.argv(host, faked), str(self.runs)], env={**self.env, **extra}))

    def seed(self, case: Case) -> None:
        """The job ran the period before, its first run on the server (so it need not say whether
        a young server forgot one: R16.4)."""
        assert_ran(self.start("host-z", at(case.boundary, 1 - case.seconds), RUNALWAYS_ONCE_PER_UNKNOWN="run"))

    def ran(self) -> list[str]:
        return self.runs.read_text().split() if self.runs.exists() else []

    def events(self) -> list[tuple[str, str]]:
        """Each event of the record, with a skip's reason and an end's exit status."""
        if not self.log.exists():
            return []
        return [
            (fields["event"], fields.get("reason", fields.get("status", "")))
            for fields in map(parse, self.log.read_text().splitlines())
        ]


def assert_ran(outcome: Outcome) -> None:
    assert outcome.returncode == 0 and "has been started" in outcome.stderr, outcome


def assert_done(outcome: Outcome, host: str, ended: str = "which ended with exit status 0") -> None:
    """A skip of a period whose run was on ``host`` and ``ended`` so."""
    assert outcome.returncode == 1, outcome
    assert outcome.stderr.count("\n") == 1 and "already ran in this period" in outcome.stderr, outcome
    assert f"on {host}, pid " in outcome.stderr and f"{ended})" in outcome.stderr, outcome


#: The schedules every backend runs: a minute, and a day at midnight and at noon UTC. Where the
#: record lives is the backend's; which tick a start belongs to is the clock's alone, so the
#: other schedules (other periods, time zones east and west) run on one backend.
EVERY_BACKEND = ("every-minute", "daily-midnight-utc", "daily-noon-utc")
CLOCK_ONLY = tuple(name for name in CASES if name not in EVERY_BACKEND)


@pytest.mark.clause("R16.1", "R16.2", "R16.5")
@pytest.mark.parametrize("case", [CASES[name] for name in EVERY_BACKEND], ids=EVERY_BACKEND)
def test_hosts_whose_clocks_disagree_run_one_tick_once(procs: Procs, case: Case) -> None:
    one_tick_runs_once(procs, case)


@pytest.mark.clause("R16.2")
@pytest.mark.parametrize("case", [CASES[name] for name in CLOCK_ONLY], ids=CLOCK_ONLY)
def test_every_schedule_s_tick_runs_once_on_hosts_whose_clocks_disagree(fcntl_procs: Procs, case: Case) -> None:
    one_tick_runs_once(fcntl_procs, case)


def one_tick_runs_once(procs: Procs, case: Case) -> None:
    fleet = Fleet(procs, case.period, case.tz)
    fleet.seed(case)
    # The tick: host a's clock is seconds ahead of b's and c's, so it fires first; each
    # reads its own clock a moment after the boundary, the later ones as their cron fires.
    assert_ran(fleet.start("host-a", at(case.boundary, 0)))
    assert_done(fleet.start("host-b", at(case.boundary, 1)), "host-a")
    assert_done(fleet.start("host-c", at(case.boundary, 3)), "host-a")
    assert fleet.ran() == ["host-z", "host-a"]
    ran = [("start", ""), ("exit", "0")]
    assert fleet.events() == [*ran, *ran, ("skip", "done"), ("skip", "done")]


@pytest.mark.clause("R16.2")
@pytest.mark.parametrize("case", [CASES[name] for name in EVERY_BACKEND], ids=EVERY_BACKEND)
def test_consecutive_ticks_run_twice_even_after_a_late_start(procs: Procs, case: Case) -> None:
    consecutive_ticks_run_twice(procs, case)


@pytest.mark.clause("R16.2")
@pytest.mark.parametrize("case", [CASES[name] for name in CLOCK_ONLY], ids=CLOCK_ONLY)
def test_every_schedule_s_consecutive_ticks_run_twice(fcntl_procs: Procs, case: Case) -> None:
    consecutive_ticks_run_twice(fcntl_procs, case)


def consecutive_ticks_run_twice(procs: Procs, case: Case) -> None:
    fleet = Fleet(procs, case.period, case.tz)
    fleet.seed(case)
    # This tick's first start came late, within what the schedule tolerates ...
    late = case.tolerance * 0.8
    assert_ran(fleet.start("host-a", at(case.boundary, late)))
    assert_done(fleet.start("host-b", at(case.boundary, late + 1)), "host-a")
    # ... and is no reason to skip the next tick.
    assert_ran(fleet.start("host-b", at(case.boundary, case.seconds)))
    assert_done(fleet.start("host-c", at(case.boundary, case.seconds + 2)), "host-b")
    assert fleet.ran() == ["host-z", "host-a", "host-b"]


@pytest.mark.clause("R16.2")
def test_a_start_later_than_the_next_boundary_counts_as_the_next_period(procs: Procs) -> None:
    case = CASES["every-minute"]
    fleet = Fleet(procs, case.period, case.tz)
    fleet.seed(case)
    # Fired at the boundary, but started only after the next one: it runs as the next period ...
    assert_ran(fleet.start("host-a", at(case.boundary, case.seconds + 5)))
    # ... whose own tick is then a skip.
    assert_done(fleet.start("host-b", at(case.boundary, case.seconds + 7)), "host-a")
    assert fleet.ran() == ["host-z", "host-a"]


@pytest.mark.clause("R16.3")
def test_a_run_longer_than_the_period_keeps_the_next_ticks_out_as_held(procs: Procs) -> None:
    fleet = Fleet(procs, "1m")
    long_job = procs.script("long.py", HOLD)
    # Its first run on the server: a young server must not make it a skip (R16.4).
    first = {**fleet.env, "RUNALWAYS_ONCE_PER_UNKNOWN": "run"}
    holder = procs.start(fleet.argv("host-a", None, long_job), env=first)
    wait_for_line(holder, "ready")
    # The next tick, and the one after, on other hosts: the lock is held, whatever the period says.
    for host, clock in (("host-b", "+60s"), ("host-c", "+120s")):
        outcome = finish(procs.start(fleet.argv(host, clock, long_job), env=fleet.env))
        assert outcome.returncode == 0 and outcome.stdout == "", outcome
    assert finish(holder).returncode == 0
    assert fleet.events() == [("start", ""), ("skip", "held"), ("skip", "held"), ("exit", "0")]


@pytest.mark.clause("R16.1")
def test_a_skip_under_the_always_policy_is_silent_and_the_conflict_exit_applies(procs: Procs) -> None:
    case = CASES["daily-noon-utc"]
    fleet = Fleet(procs, case.period, case.tz, policy="runalways")
    fleet.seed(case)
    for extra, status in (({}, 0), ({"RUNALWAYS_CONFLICT_EXIT": "3"}, 3)):
        outcome = fleet.start("host-b", at(case.boundary, 61 - case.seconds), **extra)
        assert outcome.returncode == status and outcome.stdout == "" and outcome.stderr == "", outcome
    assert fleet.ran() == ["host-z"]
    assert fleet.events() == [("start", ""), ("exit", "0"), ("skip", "done"), ("skip", "done")]


@pytest.mark.clause("R16.1")
def test_a_skip_says_how_the_period_s_run_ended(procs: Procs) -> None:
    case = CASES["hourly"]
    failing = Fleet(procs, case.period, case.tz)
    failing.script = procs.script("failing.py", JOB + "sys.exit(3)\n", header="import runalways.alone\n")
    first = failing.start("host-a", at(case.boundary, 1), RUNALWAYS_ONCE_PER_UNKNOWN="run")
    assert first.returncode == 3 and "has been started" in first.stderr, first
    assert_done(failing.start("host-b", at(case.boundary, 5)), "host-a", "which ended with exit status 3")
    assert ("skip", "done") in failing.events() and ("exit", "3") in failing.events()
    # runalways run records its command's end the same way.
    command = procs.script("command.sh", "exit 5\n", header="#!/bin/sh\n")
    command.chmod(0o755)
    run = [sys.executable, "-m", "runalways", "run", "--alone", "--once-per", case.period, "--", str(command)]
    env = {**failing.env, "RUNALWAYS_ONCE_PER_UNKNOWN": "run"}
    ran = finish(procs.start(run, env=env))
    assert ran.returncode == 5, ran
    skipped = finish(procs.start(run, env=env))
    assert skipped.returncode == 1 and "which ended with exit status 5)" in skipped.stderr, skipped


@pytest.mark.clause("R16.5")
def test_the_record_beside_the_lock_is_replaced_whole_and_a_damaged_one_runs(local_procs: Procs) -> None:
    procs = local_procs  # the cluster backends keep the record on the server (R16.4)
    case = CASES["every-minute"]
    fleet = Fleet(procs, case.period, case.tz)
    assert_ran(fleet.start("host-a", at(case.boundary, 0)))
    records = sorted((procs.workdir / "locks").glob("*.period"))
    assert len(records) == 1, records
    assert list((procs.workdir / "locks").glob("*.tmp")) == []
    assert_done(fleet.start("host-b", at(case.boundary, 2)), "host-a")
    # Something else damaged it (a full disk, a stray write): the period cannot be told, the job runs.
    records[0].write_bytes(b"\0garbage")
    assert_ran(fleet.start("host-c", at(case.boundary, 4)))
    assert_done(fleet.start("host-b", at(case.boundary, 6)), "host-c")
    assert fleet.ran() == ["host-a", "host-c"]


@pytest.mark.clause("R16.6")
@pytest.mark.parametrize("value", ["soon", "0", "-5m", "30s", "59", "nan", "inf"])
def test_a_bad_period_is_one_line_and_exit_2(fcntl_procs: Procs, value: str) -> None:
    job = fcntl_procs.script("job.py", "print('body')\n")
    outcome = fcntl_procs.run_python(job, env={"RUNALWAYS_ONCE_PER": value})
    assert outcome.returncode == 2 and outcome.stdout == "", outcome
    assert outcome.stderr.startswith("runalways: RUNALWAYS_ONCE_PER=") and outcome.stderr.count("\n") == 1, outcome
    command = fcntl_procs.run([sys.executable, "-m", "runalways", "run", "--once-per", value, "--", "true"])
    assert command.returncode == 2 and command.stdout == "", command
    assert "--once-per" in command.stderr and command.stderr.count("\n") == 1, command
    unknown = fcntl_procs.run_python(job, env={"RUNALWAYS_ONCE_PER": "1h", "RUNALWAYS_ONCE_PER_UNKNOWN": "maybe"})
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown


@pytest.mark.clause("R16.4")
@pytest.mark.parametrize("unknown", ["skip", "run"])
@pytest.mark.parametrize("engine", ["redis", "postgres"])
def test_a_server_that_forgot_cannot_say_whether_the_period_ran(tmp_path: Path, engine: str, unknown: str) -> None:
    import servers

    with servers.aged(servers.SERVERS[engine](), 3) as server:
        procs = Procs(engine, tmp_path, {"RUNALWAYS_URL": server.url, "RUNALWAYS_TTL": "3"})
        try:
            fleet = Fleet(procs, "1d", "UTC", RUNALWAYS_ONCE_PER_UNKNOWN=unknown)
            noon = "2026-01-15 12:00:00"
            fleet.seed(CASES["daily-noon-utc"])
            assert_ran(fleet.start("host-a", at(noon, 0)))
            if engine == "postgres":  # a server restored without it: the record is lost
                import psycopg

                with psycopg.connect(server.url, autocommit=True) as conn:
                    conn.execute("DELETE FROM runalways_periods")
            server.restart()  # redis without persistence: the record is gone with the lock
            server.wait_until_older_than(3)
            outcome = fleet.start("host-b", at(noon, 10))
            if unknown == "skip":
                assert outcome.returncode == 1 and "may have run in this period" in outcome.stderr, outcome
                assert outcome.stderr.count("\n") == 1, outcome
                # Said once: the record of the period is written, the next start is a plain skip ...
                forgot = "which did not run: the server had forgotten whether the period ran"
                assert_done(fleet.start("host-c", at(noon, 12)), "host-b", forgot)
                expected = ["host-z", "host-a"]
            else:
                assert_ran(outcome)
                expected = ["host-z", "host-a", "host-b"]
            # ... and the next period runs.
            assert_ran(fleet.start("host-c", at(noon, DAY)))
            assert fleet.ran() == [*expected, "host-c"]
            reasons = [reason for event, reason in fleet.events() if event == "skip"]
            assert reasons == (["unknown", "done"] if unknown == "skip" else []), fleet.events()
        finally:
            procs.reap()


@pytest.mark.clause("R16.7")
def test_status_shows_the_period_s_run(procs: Procs) -> None:
    case = CASES["daily-noon-utc"]
    fleet = Fleet(procs, case.period, case.tz)
    status = [sys.executable, "-m", "runalways", "status", "--once-per", case.period]
    env = {key: value for key, value in fleet.env.items() if key.startswith(("RUNALWAYS_NAME", "RUNALWAYS_URL", "TZ"))}
    before = finish(procs.start([*status, "--json", str(fleet.script)], env=env))
    assert json.loads(before.stdout)["period"] is None, before
    fleet.seed(case)
    after = finish(procs.start([*status, "--json", str(fleet.script)], env=env))
    period = json.loads(after.stdout)["period"]
    assert (period["host"], period["period"]) == ("host-z", DAY), after
    assert isinstance(period["tick"], int) and isinstance(period["pid"], int) and period["started"] > 0, after
    assert period["status"] == 0 and period["ended"] >= period["started"], after
    text = finish(procs.start([*status, str(fleet.script)], env=env))
    assert text.stdout.count("period:") == 1 and " on host-z, pid " in text.stdout, text


#: The job, stopped where a test kills it: with INTERCEPT=before-the-record when its start,
#: holding the lock, is about to write the period's record (the backend's ``record_run``),
#: after-the-record once it has, before-the-rename (local backends) when the record's
#: temporary file is written and about to be renamed over the record. It prints where it is
#: and its pid, and waits for its stdin, which the test never closes: the test kills it.
INTERCEPTED = """
import os, socket, sys
import runalways.api
from runalways.backends import get_class

WHERE = os.environ.get("INTERCEPT")


def pause(where):
    print(where, os.getpid(), flush=True)
    sys.stdin.read()


backend = get_class(os.environ["RUNALWAYS_BACKEND"])
record_run = backend.record_run


def intercepted(self, run):
    if WHERE == "before-the-record":
        pause(WHERE)
    record_run(self, run)
    if WHERE == "after-the-record":
        pause(WHERE)


backend.record_run = intercepted
replace = os.replace


def replacing(source, destination, **flags):
    if WHERE == "before-the-rename" and str(destination).endswith(".period"):
        pause(WHERE)
    replace(source, destination, **flags)


os.replace = replacing
runalways.api.guard("alone")
with open(sys.argv[1], "a") as runs:
    runs.write(socket.gethostname() + "\\n")
"""


def intercepted_fleet(procs: Procs, case: Case) -> Fleet:
    fleet = Fleet(procs, case.period, case.tz)
    fleet.script = procs.script("job.py", INTERCEPTED, header="")
    return fleet


def start_and_kill(fleet: Fleet, host: str, clock: str, where: str) -> int:
    """Start the job on ``host``, let it reach ``where``, SIGKILL it there; its pid.

    The start runs under ``faketime``, whose own process waits for the job's: the job's pid is
    the one it prints, and that process is the one killed (the faketime process then ends)."""
    started = fleet.procs.start(
        [*fleet.argv(host, f"@{clock}"), str(fleet.runs)], env={**fleet.env, "INTERCEPT": where}
    )
    line = read_line(started)
    assert line.split()[:1] == [where], (line, finish(started))
    pid = int(line.split()[1])
    os.kill(pid, signal.SIGKILL)
    outcome = finish(started)  # faketime ends once the job is gone ("Caught Killed", exit 1)
    assert outcome.returncode != 0 and not os.path.exists(f"/proc/{pid}"), outcome
    return pid


def status(fleet: Fleet, host: str) -> dict[str, object]:
    """``runalways status --json --once-per`` of the job on ``host``: who holds its lock, and the
    period's record. On the host of a pidfile's writer: others cannot tell whether it is alive."""
    env = {key: value for key, value in fleet.env.items() if key.startswith(("RUNALWAYS_NAME", "TZ"))}
    name_it = 'hostname "$1" && shift && exec "$@"'
    argv = ["unshare", "--uts", "sh", "-c", name_it, "sh", host, sys.executable, "-m", "runalways", "status"]
    argv += ["--json", "--once-per", "1m", str(fleet.script)]
    found: dict[str, object] = json.loads(finish(fleet.procs.start(argv, env=env)).stdout)
    return found


@pytest.mark.clause("R16.5")
@pytest.mark.parametrize("where", ["before-the-record", "after-the-record"])
def test_a_start_killed_holding_the_lock_ran_the_period_once_its_record_is_written(procs: Procs, where: str) -> None:
    case = CASES["every-minute"]
    fleet = intercepted_fleet(procs, case)
    fleet.seed(case)
    start_and_kill(fleet, "host-a", at(case.boundary, 0), where)
    # A cluster lock outlives its killed holder by up to the lease, a local one dies with it
    # (a pidfile's writer is known dead on its own host: the next start there comes first).
    wait_until(lambda: not status(fleet, "host-a")["held"], "the killed start's lock to be free")
    record = status(fleet, "host-a")["period"]
    assert isinstance(record, dict), record
    if where == "before-the-record":
        # Its body never ran and no record says it did: the period's next start runs it.
        assert record["host"] == "host-z", record
        assert_ran(fleet.start("host-a", at(case.boundary, 2)))
        assert_done(fleet.start("host-b", at(case.boundary, 4)), "host-a")
        assert fleet.ran() == ["host-z", "host-a"]
    else:
        # At most once: the record says the period ran, though the body never did.
        assert (record["host"], record["ended"], record["status"]) == ("host-a", None, None), record
        killed = "which ended without a report (killed, or still running elsewhere)"
        assert_done(fleet.start("host-a", at(case.boundary, 2)), "host-a", killed)
        assert_done(fleet.start("host-b", at(case.boundary, 4)), "host-a", killed)
        assert fleet.ran() == ["host-z"]
    # Either way the next period runs.
    assert_ran(fleet.start("host-c", at(case.boundary, case.seconds)))


@pytest.mark.clause("R16.5")
def test_a_start_killed_before_renaming_its_record_leaves_the_old_one_whole_and_no_temporary_file(
    local_procs: Procs,
) -> None:
    procs = local_procs  # the cluster backends write their record in one statement on the server
    case = CASES["every-minute"]
    fleet = intercepted_fleet(procs, case)
    fleet.seed(case)
    locks = procs.workdir / "locks"
    (record,) = locks.glob("*.period")
    old = record.read_bytes()
    seeded = Run.from_json(old)
    assert seeded is not None and seeded.host == "host-z", old
    # Two starts of the period, each killed with its new record written whole to its
    # temporary file, not yet renamed: the record stays the old one, whole, and the second
    # start removed the first one's temporary file before writing its own.
    # (On one host: a pidfile left by a killed writer is known stale on its own host only.)
    for host, late in (("host-a", 0), ("host-a", 1)):
        pid = start_and_kill(fleet, host, at(case.boundary, late), "before-the-rename")
        temporary = locks / f"{record.name}.{pid}.tmp"
        written = Run.from_json(temporary.read_bytes())
        assert written is not None and (written.host, written.tick) == (host, seeded.tick + 1), written
        assert record.read_bytes() == old
        assert list(locks.glob("*.tmp")) == [temporary]
    # No record of this period: the next start runs it, and its write removes what the dead left.
    assert_ran(fleet.start("host-a", at(case.boundary, 2)))
    assert list(locks.glob("*.tmp")) == []
    replaced = Run.from_json(record.read_bytes())
    assert replaced is not None and (replaced.host, replaced.tick) == ("host-a", seeded.tick + 1), replaced
    assert_done(fleet.start("host-b", at(case.boundary, 4)), "host-a")
    assert fleet.ran() == ["host-z", "host-a"]
