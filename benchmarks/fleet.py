"""The chaos soak's fleet mode: RUNALWAYS_ONCE_PER on three "hosts" whose clocks disagree.

Three launchers, one per host, start the same guarded job with ``RUNALWAYS_ONCE_PER=1m``
at every tick. A real minute per tick would make a soak of a few ticks last an hour, so the
ticks are simulated: tick ``k``'s boundary is ``FIRST_BOUNDARY`` plus ``k`` minutes *of the
faked clocks*, while the ticks follow each other ``interval`` real seconds apart, in order.

**A host.** Each start runs in a UTS namespace of its own with the host's name (``unshare
--uts``, then ``hostname``), and with a wall clock that libfaketime sets on that process
only (never on a server): ``LD_PRELOAD`` of libfaketime with ``FAKETIME=@<reading>``, which
is what the ``faketime`` command does, without the ``faketime`` process that the command
leaves between its caller and the job (the saboteur's signals must reach the job itself).
Monotonic clocks are not faked (``FAKETIME_DONT_FAKE_MONOTONIC=1``); the job's body waits
with ``select()`` (libfaketime 0.9.10 makes ``time.sleep()`` fail in that mode), and its
records of when it ran are on the monotonic clock, which every process shares.

**The clocks.** Host ``h``'s clock is ``skew[h]`` whole seconds (0 to MAX_SKEW, drawn once
per soak; host-a's is 0) ahead of the slowest, and each start comes a random delay (0 to
MAX_DELAY whole seconds) late: at tick ``k`` a start reads ``boundary_k + skew[h] + delay``
and its clock runs on from there. That is the case of crons that fire at the same real
moment by clocks that disagree (the faster clocks read later); a cron that fires by its own
clock reads ``boundary_k + delay`` (host-a). Every reading, and the readings of a stopped
start that resumes, stays within ``MAX_SKEW + MAX_DELAY + the longest stop`` seconds of the
boundary, well inside the minute: R16.2's tolerance. The boundaries lie in the past, as in
spec/conformance/test_once_per.py: a cluster backend's lease timer misbehaves under a faked
clock in the future. The hosts' starts of a tick come concurrently, each at a random moment
within ``SPREAD`` real seconds of the tick.

**The job.** Its body records, on O_APPEND lines, its start and end (monotonic time, pid,
its process start ticks, the tick it was started for, the tick of its own faked clock, its
host), and an ``overlap`` for any earlier body still running, as the soak's job does; it
runs 0.02 to 0.3 s, or (LONG_BODIES of the starts) one to two and a half ticks, so that the
next tick finds the lock held. ``RUNALWAYS_LOG`` records each start's ``start`` event (the
period's record written, R16.1) and each skip with its reason (``held``, ``done`` with the
host and pid that ran the period, ``unknown``). The saboteur SIGKILLs (and now and then
SIGTERMs) a copy, half of the time one in its body, and SIGSTOPs one for a random time: a
start on its way to the lock becomes late, a holder holds longer. For a cluster backend the
stops stay under STOP_SHARE of the lease, shorter than a lease can lapse in, because the
lease's self-fence cannot work under libfaketime: libfaketime shifts the absolute deadline
given to ``timer_settime`` by the fake clock's offset, whatever the timer's clock, so the
fence's timer (CLOCK_BOOTTIME) armed by a process whose clock reads a past date fires months
late (measured with 0.9.10: armed 1 s ahead, not fired 3 s later, in either monotonic mode),
and a holder stopped past its lease would run on beside the next one. The plain soak, on
real clocks, stops holders past their lease and cuts the network; this one does neither.

**What the checker accepts.** The promise is *at most once per period*, and exactly once
when nothing stopped the period's run. A start *ran* tick ``k`` when its body started, when
it logged ``start``, or when a skip of the same tick named it (``ran_host``, ``ran_pid``) as
the period's run: a start killed after writing the record, before its body or during it,
still is that tick's run. Per tick:

* ``twice``: two or more runs. Must be 0.
* A tick without a run is accepted only when each of its starts was kept out by a holder
  (``held``: the previous tick's long body, or a start of the same tick that was then killed
  before it wrote the record), was killed by the saboteur, was fenced or failed closed (a
  cluster backend, with its one line: after a stop, or on a machine so loaded that a renewal
  came later than the lease), or is a *straggler*: a start so
  slow (a stop, a loaded machine) that the next tick ran before it took the lock; it then
  skips as done, naming the later tick's run. Real stragglers would read the next period on
  their own clock; here the ticks are only seconds apart. Otherwise it is ``missed``: must
  be 0.
* ``wrong``: a skip that names a run of an earlier tick or a process that is no start of
  this soak, a ``reason=unknown`` skip (the servers are aged and the first tick seeded), a
  ``held`` skip whose holder was not alive then (a cluster lock outlives its killed holder
  by up to the lease; a pidfile written on another host outlives it until a start on its own
  host, the only one that can tell its writer is dead, finds it), a body whose own clock read
  another tick than its start's. Must be 0.
* ``overlaps``: two bodies at once, as in the soak. Must be 0.

``python3 benchmarks/soak.py --fleet --seconds 90`` runs it for every usable backend (the
cluster ones against servers of their own) and writes its table into the chaos soak section
of benchmarks/RESULTS.md; spec/conformance/test_soak.py runs a few seconds of it.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
import glob
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import soak_job

#: The line of a cluster copy that fences itself, its lock lost (a renewal that found it gone),
#: and of one whose lock was lost before it could write the period's record (it does not run).
FENCED = re.compile(r"runalways: [^\n]*; killing '[^\n]*' to fence it\n")
LOST_BEFORE_RECORD = re.compile(r"runalways: the lock '[^\n]*' was lost before the record of its period was written\n")
#: Where libfaketime 0.9.10, preloaded without its ``faketime`` wrapper, leaves a shared memory
#: object and a semaphore named by the process's pid: a later ``faketime`` whose pid is the same
#: would fail ("sem_open: File exists"). The soak removes its starts' once they have ended.
FAKETIME_LEFTOVERS = ("/dev/shm/faketime_shm_{pid}", "/dev/shm/sem.faketime_sem_{pid}")
#: The hosts of the fleet; the seed's run (the tick before the first) is on host-z.
HOSTS = ("host-a", "host-b", "host-c")
SEED_HOST = "host-z"
#: The job's period, and its length in seconds.
PERIOD = "1m"
PERIOD_SECONDS = 60
#: The first tick's boundary, UTC (the hosts' time zone): in the past.
FIRST_BOUNDARY = datetime.datetime(2026, 1, 15, 0, 0)
#: The most a host's clock is ahead of the slowest, and the longest start delay, in seconds.
MAX_SKEW = 6
MAX_DELAY = 3
#: Real seconds between ticks, and over which the starts of a tick spread.
INTERVAL = 1.0
SPREAD = 0.3
#: The share of the runs whose body lasts longer than a tick.
LONG_BODIES = 0.1
#: Mean real seconds between the saboteur's kills, and between its stops.
KILL_EVERY = 2.0
STOP_EVERY = 3.0
#: The longest stop of a cluster backend's copy, as a share of its lease (renewed every third
#: of it): a stopped holder's lease never lapses (see above: no fence under libfaketime).
STOP_SHARE = 0.3
#: Seconds a start may take once the soak is over before it is killed.
WIND_DOWN = 30.0

#: The guarded job. argv: the record file, how long the body runs, the tick it was started for.
#: Its records go by the monotonic clock: the wall clock is the one libfaketime fakes.
JOB = soak_job.job(
    "time.monotonic()",
    """import select
import socket

reading = int(time.time() // PERIOD_SECONDS)
record(f"{time.monotonic():.6f} start {me} {ticks(me)[1]} {sys.argv[3]} {reading} {socket.gethostname()}")
select.select([], [], [], float(sys.argv[2]))
record(f"{time.monotonic():.6f} end {me} 0")
""".replace("PERIOD_SECONDS", str(PERIOD_SECONDS)),
)


def libfaketime() -> str:
    """The path of libfaketime, which the ``faketime`` command preloads."""
    for pattern in (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError("libfaketime is needed (Debian package faketime): sh tests/system-packages.sh")


def boundary(tick: int) -> int:
    """The epoch second at which ``tick`` (a number of periods since the epoch, UTC) begins."""
    return tick * PERIOD_SECONDS


def first_tick() -> int:
    return calendar.timegm(FIRST_BOUNDARY.timetuple()) // PERIOD_SECONDS


def reading(epoch: int) -> str:
    """``epoch`` as libfaketime's absolute start time, in UTC."""
    return "@" + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


@dataclass
class Start:
    """One start of the job on one host, for one tick, and what the saboteur did to it."""

    process: subprocess.Popen[bytes]
    host: str
    tick: int
    stderr: Path
    #: time.monotonic() just before it was started, and when it was found ended.
    born: float
    gone: float = math.inf
    signals: set[int] = field(default_factory=set)
    stopped: bool = False


@dataclass
class FleetReport:
    backend: str
    seconds: float
    ticks: int = 0
    starts: int = 0
    bodies: int = 0
    runs: int = 0
    least: int = 0
    most: int = 0
    #: Ticks without a run, accepted: some start was held (by a long body, or by a start
    #: of the tick killed before its record), or every start was killed.
    held_ticks: int = 0
    killed_ticks: int = 0
    stragglers: int = 0
    twice: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    kills: int = 0
    stops: int = 0
    #: Cluster copies that fenced themselves or failed closed, with their one line.
    fenced: int = 0
    overlaps: int = 0
    tracebacks: int = 0
    traceback_texts: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def failed(self) -> bool:
        return bool(self.twice or self.missed or self.wrong or self.overlaps or self.tracebacks or self.unexpected)

    def row(self) -> str:
        return (
            f"| {self.backend} | {self.seconds / 60:.1f} | {self.ticks} | {self.starts} | {self.runs} | {self.bodies} "
            f"| {self.least}/{self.most} | {self.held_ticks} | {self.killed_ticks} | {self.stragglers} "
            f"| {len(self.twice)} | {len(self.missed)} | {len(self.wrong)} | {self.kills} | {self.stops} "
            f"| {self.fenced} | {self.overlaps} | {self.tracebacks} | {len(self.unexpected)} |"
        )


HEADER = (
    "| backend | minutes | ticks | starts | runs | bodies | runs per tick (min/max) | no run: held | no run: killed "
    "| stragglers | twice | missed | wrong | kills | stops | fenced | overlaps | tracebacks | unexpected |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)

LEGEND = (
    "Fleet mode (`--fleet`): RUNALWAYS_ONCE_PER=1m on three hosts (a UTS namespace and a host name each) "
    f"whose clocks libfaketime sets up to {MAX_SKEW} s apart, each start {MAX_DELAY} s late at most; the ticks "
    "are consecutive minutes of the faked clocks, fired one real second apart, the hosts' starts of a tick "
    "concurrent. ticks: ticks fired; runs: starts that ran their tick (the body started, or the period's record "
    "was written: a start killed after that still ran it); bodies: bodies that started; runs per tick: fewest "
    "and most over the ticks (most must be 1); no run: ticks without a run because every start was held by a "
    "long body of an earlier tick (or by a start of the tick killed before its record), or was killed (SIGKILL, "
    "SIGTERM), or fenced itself or failed closed (cluster backends); stragglers: starts the next tick overtook, "
    "skipping as done; "
    "twice: ticks run twice; missed: ticks without a run that nothing explains; wrong: a skip naming an earlier "
    "tick's run, a hold by no live holder, an unknown skip, a body reading another tick; "
    "twice, missed, wrong, overlaps, tracebacks and unexpected must be 0; "
    "stops: SIGSTOPs of up to 1.5 s (cluster backends: 0.3 of the lease, which cannot be fenced under "
    "libfaketime); fenced: cluster copies that fenced themselves or failed closed with their one line (the lock "
    "lost before the record, the server unreachable: a stop, or a loaded machine); "
    "unexpected: any other end than exit 0 or the saboteur's "
    "signal."
)


def fleet_soak(
    backend: str,
    seconds: float,
    workdir: Path,
    settings: dict[str, str] | None = None,
    *,
    interval: float = INTERVAL,
    longest_stop: float = 1.5,
    seed: int | None = None,
) -> FleetReport:
    """Fire ticks of the job every ``interval`` seconds for ``seconds`` against ``backend``
    in ``workdir``, with the saboteur; every process is reaped. ``settings``: what the backend
    needs (a cluster backend's RUNALWAYS_URL and RUNALWAYS_TTL, its server aged past the lease).
    ``longest_stop``: the longest SIGSTOP, at most STOP_SHARE of a cluster backend's lease."""
    chance = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    locks = workdir / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    script = workdir / "job.py"
    script.write_text(JOB)
    records = workdir / "records"
    records.write_text("")
    log = workdir / "log"
    logs = workdir / "stderr"
    logs.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RUNALWAYS_", "FAKETIME"))}
    env.pop("LD_PRELOAD", None)
    env.update(
        {
            "RUNALWAYS_BACKEND": backend,
            "RUNALWAYS_DIR": str(locks),
            "RUNALWAYS_SILENT": "1",
            "RUNALWAYS_ONCE_PER": PERIOD,
            "RUNALWAYS_LOG": str(log),
            "TZ": "UTC",
            "NO_FAKE_STAT": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            **(settings or {}),
        }
    )
    lease = 0.0
    if "RUNALWAYS_URL" in env:
        from runalways._settings import from_environment

        lease = float(from_environment(env, "RUNALWAYS_TTL"))
        longest_stop = min(longest_stop, STOP_SHARE * lease)
    preload = libfaketime()
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError("unshare (util-linux) is needed")
    report = FleetReport(backend, seconds)
    skew = {host: 0 if host == HOSTS[0] else chance.randint(0, MAX_SKEW) for host in HOSTS}
    starts: list[Start] = []
    live: dict[int, Start] = {}
    stopped: dict[int, float] = {}  # pid -> when to SIGCONT it, on time.monotonic()
    ended: dict[int, float] = {}  # pid -> time.monotonic() just before the soak killed it
    in_body: set[int] = set()
    read_up_to = 0

    def start(host: str, tick: int, clock: int, body: float, **extra: str) -> Start:
        errors_path = logs / f"{len(starts)}.err"
        name_it = 'hostname "$1" && shift && exec "$@"'
        argv = [unshare, "--uts", "sh", "-c", name_it, "sh", host, "env", f"LD_PRELOAD={preload}"]
        argv += [f"FAKETIME={reading(clock)}", sys.executable, str(script), str(records), f"{body:.3f}", str(tick)]
        born = time.monotonic()
        with open(errors_path, "wb") as errors:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env={**env, **extra},
                cwd=workdir,
            )
        started = Start(process, host, tick, errors_path, born)
        starts.append(started)
        live[process.pid] = started
        return started

    def reap(started: Start) -> None:
        live.pop(started.process.pid, None)
        stopped.pop(started.process.pid, None)
        started.gone = time.monotonic()
        for leftover in FAKETIME_LEFTOVERS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover.format(pid=started.process.pid))

    def follow_bodies() -> None:
        nonlocal read_up_to
        with open(records, "rb") as lines:
            lines.seek(read_up_to)
            new = lines.read()
        complete = new[: new.rfind(b"\n") + 1]
        read_up_to += len(complete)
        for line in complete.decode().splitlines():
            words = line.split()
            if words[1] == "start":
                in_body.add(int(words[2]))
            elif words[1] == "end":
                in_body.discard(int(words[2]))

    def strike(signum: int) -> None:
        bodies = sorted(pid for pid in in_body if pid in live)
        candidates = bodies if bodies and chance.random() < 0.5 else sorted(live)
        if not candidates:
            return
        pid = chance.choice(candidates)
        before = time.monotonic()
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        if signum == signal.SIGSTOP:
            stopped[pid] = before + chance.uniform(0.05, longest_stop)
            live[pid].stopped = True
            report.stops += 1
            return
        ended.setdefault(pid, before)
        live[pid].signals.add(signum)
        os.kill(pid, signal.SIGCONT)  # a stopped copy must still get the signal now
        report.kills += 1

    def body_length() -> float:
        if chance.random() < LONG_BODIES:
            return chance.uniform(1.0, 2.5) * interval
        return chance.uniform(0.02, 0.3)

    first = first_tick()
    # The tick before the first: the job's first run on the server, which a server younger
    # than the time since the period began would otherwise make an "unknown" skip (R16.4).
    seeded = start(SEED_HOST, first - 1, boundary(first - 1) + 1, 0.01, RUNALWAYS_ONCE_PER_UNKNOWN="run")
    try:
        seeded.process.wait(timeout=WIND_DOWN)
    finally:
        if seeded.process.poll() is None:
            seeded.process.kill()
            seeded.process.wait()
        reap(seeded)
    if seeded.process.returncode != 0:
        raise RuntimeError(f"the seed's start failed: {seeded.stderr.read_text(errors='replace')}")

    began = time.monotonic()
    deadline = began + seconds
    next_tick = began
    pending: list[tuple[float, str, int]] = []  # (when, host, tick number from the first)
    number = 0
    next_kill = began + chance.expovariate(1 / KILL_EVERY)
    next_stop = began + chance.expovariate(1 / STOP_EVERY)
    try:
        while True:
            now = time.monotonic()
            if now >= deadline and not pending:
                break
            if now >= next_tick and now < deadline:
                for host in HOSTS:
                    pending.append((now + chance.uniform(0, SPREAD), host, number))
                number += 1
                next_tick += interval
            for due in [item for item in pending if item[0] <= now]:
                pending.remove(due)
                _, host, k = due
                clock = boundary(first + k) + skew[host] + chance.randint(0, MAX_DELAY)
                start(host, first + k, clock, body_length())
            for started in list(live.values()):
                if started.process.poll() is not None:
                    reap(started)
            for pid, until in list(stopped.items()):
                if now >= until:
                    os.kill(pid, signal.SIGCONT)
                    del stopped[pid]
            follow_bodies()
            if now >= next_kill:
                strike(signal.SIGTERM if chance.random() < 0.25 else signal.SIGKILL)
                next_kill = now + chance.expovariate(1 / KILL_EVERY)
            if now >= next_stop:
                strike(signal.SIGSTOP)
                next_stop = now + chance.expovariate(1 / STOP_EVERY)
            time.sleep(0.005)
    finally:
        for pid in list(stopped):
            os.kill(pid, signal.SIGCONT)
        for started in list(live.values()):
            try:
                started.process.wait(timeout=WIND_DOWN)
            except subprocess.TimeoutExpired:
                started.process.kill()
                started.process.wait()
            reap(started)
    report.ticks = number
    report.starts = len(starts) - 1
    _check(report, starts, records, log, ended, lease, outlived_on_other_hosts=backend == "pidfile")
    for path in sorted(logs.iterdir()):
        text = path.read_text(errors="replace")
        if "Traceback" in text:
            report.tracebacks += 1
            report.traceback_texts.append(text)
    return report


def _check(
    report: FleetReport,
    starts: list[Start],
    records: Path,
    log: Path,
    ended: dict[int, float],
    lease: float,
    *,
    outlived_on_other_hosts: bool,
) -> None:
    """Runs per tick, overlaps and how each start ended, from the bodies' records, the job's log and the soak's own."""
    from runalways._eventlog import parse

    by_pid = {started.process.pid: started for started in starts}
    by_host_pid = {(started.host, started.process.pid): started for started in starts}
    begins: dict[int, float] = {}
    ends: dict[int, float] = {}
    for line in records.read_text().splitlines():
        words = line.split()
        when, event, pid = float(words[0]), words[1], int(words[2])
        if event == "start":
            begins[pid] = when
            if words[4] != words[5]:
                report.wrong.append(f"pid {pid} started for tick {words[4]} read tick {words[5]} on its clock")
        elif event == "end":
            ends[pid] = when
        elif event == "overlap":
            report.overlaps += 1
    report.bodies = len(begins) - 1  # not the seed's
    intervals = sorted((begin, ends.get(pid, ended.get(pid, math.nan))) for pid, begin in begins.items())
    known = [(begin, end) for begin, end in intervals if not math.isnan(end)]
    for (_, first_end), (second_begin, _) in zip(known, known[1:]):
        if second_begin < first_end:
            report.overlaps += 1

    ran: dict[int, set[int]] = {}  # tick -> pids that ran it
    skipped: dict[int, str] = {}  # pid -> reason
    stragglers: set[int] = set()
    for started in starts:
        ran.setdefault(started.tick, set())
        if started.process.pid in begins:
            ran[started.tick].add(started.process.pid)
    for fields in map(parse, log.read_text().splitlines() if log.exists() else []):
        pid = int(fields["pid"])
        started_by = by_pid.get(pid)
        if started_by is None:
            report.wrong.append(f"a log line of pid {pid}, which no start of the soak has: {fields}")
            continue
        if fields["event"] == "start":
            ran[started_by.tick].add(pid)
            continue
        if fields["event"] != "skip":
            continue
        reason = fields.get("reason", "")
        skipped[pid] = reason
        if reason == "done":
            runner = by_host_pid.get((fields.get("ran_host", ""), int(fields.get("ran_pid", "0"))))
            if runner is None:
                report.wrong.append(f"pid {pid} (tick {started_by.tick}) named a run that no start made: {fields}")
            elif runner.tick == started_by.tick:
                ran[runner.tick].add(runner.process.pid)
            elif runner.tick > started_by.tick:
                stragglers.add(pid)
            else:
                report.wrong.append(
                    f"pid {pid} (tick {started_by.tick}) skipped as done by the run of tick {runner.tick}: {fields}"
                )
        elif reason == "held":
            holder = by_pid.get(int(fields.get("holder_pid", "0") or "0"))
            # A lock on a server outlives its dead holder by up to the lease; a pidfile, on
            # the hosts other than its writer's, until a start on the writer's host.
            across = outlived_on_other_hosts and holder is not None and holder.host != started_by.host
            outlived = math.inf if across else lease
            if "holder_pid" in fields and (
                holder is None or not (holder.born <= started_by.gone and started_by.born <= holder.gone + outlived)
            ):
                report.wrong.append(f"pid {pid} (tick {started_by.tick}) held by no live holder: {fields}")
        else:
            report.wrong.append(f"pid {pid} (tick {started_by.tick}) skipped: {fields}")
    report.stragglers = len(stragglers)

    seed_tick = starts[0].tick
    excuses: dict[int, list[str]] = {}
    ran_any = set().union(*ran.values())
    for started in starts:
        pid = started.process.pid
        excuse = _how_it_ended(report, started, pid in ran_any or pid in skipped)
        if pid in ran_any:
            excuse = "ran"
        elif pid in skipped:
            excuse = "straggler" if pid in stragglers else skipped[pid]
        excuses.setdefault(started.tick, []).append(excuse)
    counts = []
    for tick, pids in sorted(ran.items()):
        if tick == seed_tick:
            continue
        counts.append(len(pids))
        report.runs += len(pids)
        if len(pids) > 1:
            hosts = sorted(by_pid[pid].host for pid in pids)
            report.twice.append(f"tick {tick} ran {len(pids)} times: {hosts}")
        elif not pids:
            why = excuses.get(tick, [])
            if "held" in why and all(excuse in ("held", "killed", "straggler") for excuse in why):
                report.held_ticks += 1
            elif why and all(excuse in ("killed", "straggler") for excuse in why):
                report.killed_ticks += 1
            else:
                report.missed.append(f"tick {tick} ran nowhere: {why}")
    report.least = min(counts, default=0)
    report.most = max(counts, default=0)


def _how_it_ended(report: FleetReport, started: Start, accounted: bool) -> str:
    """``ended`` (exit 0 after a run or a skip), ``killed`` (by the saboteur; or a cluster copy
    fenced, or failing closed, with its one line), or ``unexpected`` (listed in the report)."""
    status = started.process.returncode
    if status is not None and status < 0 and -status in started.signals:
        return "killed"
    if status == 0 and accounted:
        return "ended"
    stderr = started.stderr.read_text(errors="replace")
    closed = status == 2 and (soak_job.FAIL_CLOSED.fullmatch(stderr) or LOST_BEFORE_RECORD.fullmatch(stderr))
    if closed or (status == -signal.SIGKILL and FENCED.fullmatch(stderr)):
        report.fenced += 1
        return "killed"
    said = " | ".join(stderr.strip().splitlines()[-5:])
    what = "exit 0 without a run or a skip" if status == 0 else f"status {status}"
    report.unexpected.append(f"{started.host} pid {started.process.pid}: {what}" + (f": {said}" if said else ""))
    return "unexpected"
