"""Chaos soak: an impatient cron and a saboteur against one guarded job, bounded in time.

A launcher starts the guarded job every few milliseconds (up to a cap of live copies), as
a cron gone wild would; a saboteur, at random moments, SIGKILLs or SIGTERMs a copy (the
body or a waiter), SIGSTOPs one for a random time and then SIGCONTs it, edits the job's
script in place, and touches and re-reads the lock directory. For a cluster backend the
copies reach their server through a proxy (tests/netproxy.py), and the saboteur also cuts
the network for a random time, shorter or longer than the lease, then restores it. Every
body appends ``start`` and ``end`` records (time, pid, start ticks; ``O_APPEND``, one
``write`` each) and, at its start, records an ``overlap`` for every earlier body that is
still alive and unfinished. The checker then proves from the records and the launcher's own:

* no two bodies ever ran at once (no ``overlap`` record, and no two body intervals with a
  known end intersect): a holder fenced by a cut or a stop was dead before the next began;
* availability: the share of the soak during which a body was running;
* the counts: starts, bodies, kills, stops, cuts, tracebacks (must be 0), and how each
  copy ended. A copy ends with 0 (it ran, or was kept out), or with the signal the soak
  sent it; a copy of a cluster backend that the saboteur interrupted (stopped, or alive
  at some moment of a cut) may also have been *fenced* (SIGKILL from its own lease
  timer, or from a renewal that found the lock gone) or have *failed closed* (exit 2 with
  the one line saying it could not reach the server, or that the server failed on the
  lock). Any other end is *unexpected* (must be none), listed with the copy's stderr.

The conformance suite runs a few seconds of it for every backend
(spec/conformance/test_soak.py). The long form, for every usable backend::

    python3 benchmarks/soak.py --seconds 300

writes its table into the chaos soak section of benchmarks/RESULTS.md (``--out`` names
another file), and exits 1 when a backend had an overlap, a traceback or an unexpected end.
The cluster backends run against servers of their own on 127.0.0.1, started and stopped by
the test suite's helpers.

The fleet mode (benchmarks/fleet.py) soaks RUNALWAYS_ONCE_PER: three hosts whose clocks
disagree fire ticks of a job that must run once per tick, never twice, never two at once::

    python3 benchmarks/soak.py --fleet --seconds 90

writes its own rows into the same section, keeping the others (and the other way round).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import soak_job
import soak_section

#: The guarded job. argv: the record file, how long the body runs.
JOB = soak_job.job(
    "time.time()",
    """record(f"{time.time():.6f} start {me} {ticks(me)[1]}")
time.sleep(float(sys.argv[2]))
record(f"{time.time():.6f} end {me} 0")
""",
)

#: Where the helpers that start the cluster backends' servers, and the proxy, live.
TESTS = Path(__file__).resolve().parent.parent / "tests"
#: The share of the copies of a cluster backend whose body runs longer than the lease
#: (the others run 0.02 to 0.3 s): a holder that a cut or a stop finds in the middle of such
#: a body can only be fenced, and must be dead before the next body starts.
LONG_BODIES = 0.1
#: The "backend" that soaks the plain start: the default backend, with no RUNALWAYS_*
#: setting at all, as cron starts a job, so that runalways/__init__.py decides every start.
PLAIN = "plain"

#: When the saboteur first cuts the network, seconds into the soak: at a fixed point, so
#: that a soak of a few seconds has a cut too, after bodies had time to run.
FIRST_CUT = 2.0


@dataclass
class Report:
    backend: str
    seconds: float
    starts: int = 0
    bodies: int = 0
    kills: int = 0
    terms: int = 0
    stops: int = 0
    edits: int = 0
    #: None: no network to cut (a local backend).
    cuts: int | None = None
    fenced: int = 0
    fail_closed: int = 0
    overlaps: int = 0
    tracebacks: int = 0
    #: The stderr of each copy that printed a traceback, to show what it was.
    traceback_texts: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    availability: float = 0.0

    def row(self) -> str:
        network = "| — | — | — |" if self.cuts is None else f"| {self.cuts} | {self.fenced} | {self.fail_closed} |"
        return (
            f"| {self.backend} | {self.seconds / 60:.1f} | {self.starts} | {self.bodies} | {self.kills + self.terms} "
            f"| {self.stops} {network} {self.overlaps} | {self.availability:.1%} | {self.tracebacks} "
            f"| {len(self.unexpected)} |"
        )


HEADER = (
    "| backend | minutes | starts | bodies | kills | stops | cuts | fenced | fail-closed | overlaps | availability "
    "| tracebacks | unexpected |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Copy:
    """A started copy of the job, and what the saboteur did to it."""

    process: subprocess.Popen[bytes]
    stderr: Path
    #: time.time() just before it was started.
    born: float
    #: The signals the soak sent it to end it.
    signals: set[int] = field(default_factory=set)
    stopped: bool = False


def soak(
    backend: str,
    seconds: float,
    workdir: Path,
    settings: dict[str, str] | None = None,
    *,
    cap: int = 12,
    longest_stop: float = 0.5,
    seed: int | None = None,
) -> Report:
    """Run the soak for ``seconds`` against ``backend`` in ``workdir``; every process is reaped.

    ``longest_stop``: the longest SIGSTOP; for a cluster backend, longer than its lease,
    so that a stopped holder is fenced while another copy takes over. A cluster backend
    (``RUNALWAYS_URL`` in ``settings``) reaches its server through a proxy whose network
    the saboteur cuts, first at FIRST_CUT seconds, each time for up to twice the lease.
    """
    chance = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    locks = workdir / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    script = workdir / "job.py"
    script.write_text(JOB)
    records = workdir / "records"
    records.write_text("")
    logs = workdir / "stderr"
    logs.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    if backend != PLAIN:
        env.update({"RUNALWAYS_BACKEND": backend, "RUNALWAYS_DIR": str(locks), "RUNALWAYS_SILENT": "1"})
    env.update(settings or {})
    report = Report(backend, seconds)
    proxy = None
    lease = 0.0
    if "RUNALWAYS_URL" in env:  # a cluster backend: its network is the proxy's
        _import_test_helpers()
        from netproxy import Proxy

        from runalways._settings import from_environment

        lease = float(from_environment(env, "RUNALWAYS_TTL"))
        port = urlsplit(env["RUNALWAYS_URL"]).port
        if port is None:
            raise ValueError("the soak cuts the network of a server given as RUNALWAYS_URL=...://127.0.0.1:PORT/...")
        proxy = Proxy(port)
        env["RUNALWAYS_URL"] = proxy.reroute(env["RUNALWAYS_URL"])
        report.cuts = 0
    live: dict[int, Copy] = {}
    stopped: dict[int, float] = {}  # pid -> when to SIGCONT it
    ended: dict[int, float] = {}  # pid -> the time just before the soak killed it
    # The cuts: [time.time() just before the cut, just after the restore (inf until then)].
    cuts: list[list[float]] = []
    restore_at: float | None = None  # on time.monotonic(), while the network is cut
    started_at = time.time()
    deadline = time.monotonic() + seconds
    next_cut = time.monotonic() + FIRST_CUT

    def reap(copy: Copy) -> None:
        pid = copy.process.pid
        live.pop(pid, None)
        stopped.pop(pid, None)
        status = copy.process.returncode
        if status == 0 or (status < 0 and -status in copy.signals):
            return
        stderr = copy.stderr.read_text(errors="replace")
        gone = time.time()
        interrupted = proxy is not None and (
            copy.stopped or any(copy.born <= restored and gone >= cut for cut, restored in cuts)
        )
        if interrupted and status == -signal.SIGKILL:
            report.fenced += 1
        elif interrupted and status == 2 and soak_job.FAIL_CLOSED.fullmatch(stderr):
            report.fail_closed += 1
        else:
            said = " | ".join(stderr.strip().splitlines()[-5:])
            report.unexpected.append(f"pid {pid}: status {status}" + (f": {said}" if said else ""))

    def strike(signum: int) -> None:
        if not live:
            return
        pid = chance.choice(sorted(live))
        before = time.time()
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        if signum == signal.SIGSTOP:
            stopped[pid] = time.monotonic() + chance.uniform(0.05, longest_stop)
            live[pid].stopped = True
            report.stops += 1
            return
        ended.setdefault(pid, before)
        live[pid].signals.add(signum)
        os.kill(pid, signal.SIGCONT)  # a stopped copy must still get the signal now
        if signum == signal.SIGKILL:
            report.kills += 1
        else:
            report.terms += 1

    def cut_or_restore() -> None:
        nonlocal restore_at, next_cut
        assert proxy is not None and report.cuts is not None
        now = time.monotonic()
        if restore_at is None and now >= next_cut:
            cuts.append([time.time(), float("inf")])
            proxy.cut()
            restore_at = now + chance.uniform(0.1, 2 * lease)
            report.cuts += 1
        elif restore_at is not None and now >= restore_at:
            proxy.restore()
            cuts[-1][1] = time.time()
            restore_at = None
            next_cut = now + chance.uniform(lease, 3 * lease)

    try:
        while time.monotonic() < deadline:
            for copy in list(live.values()):
                if copy.process.poll() is not None:
                    reap(copy)
            now = time.monotonic()
            for pid, until in list(stopped.items()):
                if now >= until:
                    os.kill(pid, signal.SIGCONT)
                    del stopped[pid]
            if proxy is not None:
                cut_or_restore()
            if len(live) < cap:
                body = chance.uniform(0.02, 0.3)
                if proxy is not None and chance.random() < LONG_BODIES:
                    # Ending by the soak's end all the same: the soak is bounded.
                    body = min(chance.uniform(lease, 2 * lease), max(deadline - time.monotonic(), body))
                errors_path = logs / f"{report.starts}.err"
                born = time.time()
                with open(errors_path, "wb") as errors:
                    process = subprocess.Popen(
                        [sys.executable, str(script), str(records), f"{body:.3f}"],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=errors,
                        env=env,
                        cwd=workdir,
                    )
                live[process.pid] = Copy(process, errors_path, born)
                report.starts += 1
            action = chance.random()
            if action < 0.02:
                strike(signal.SIGKILL)
            elif action < 0.03:
                strike(signal.SIGTERM)
            elif action < 0.04:
                strike(signal.SIGSTOP)
            elif action < 0.05:  # an edit in place keeps the file, and so the lock
                with open(script, "r+") as edited:
                    edited.seek(0, os.SEEK_END)
                    edited.write(f"# edited at {time.time()}\n")
                report.edits += 1
            elif action < 0.06:
                for entry in os.listdir(locks):
                    # A pidfile, a claim or a disposable lock file may be gone since listdir().
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(locks / entry, follow_symlinks=False)
            time.sleep(chance.uniform(0.001, 0.01))
    finally:
        for pid in list(stopped):
            os.kill(pid, signal.SIGCONT)
        if proxy is not None and restore_at is not None:  # the copies still running need their server
            proxy.restore()
            cuts[-1][1] = time.time()
        for copy in list(live.values()):
            try:
                copy.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                copy.process.kill()
                copy.process.wait()
            reap(copy)
        if proxy is not None:
            proxy.close()
    finished_at = time.time()
    _check(report, records.read_text().splitlines(), ended, started_at, finished_at)
    for path in sorted(logs.iterdir()):
        text = path.read_text(errors="replace")
        if "Traceback" in text:
            report.tracebacks += 1
            report.traceback_texts.append(text)
    return report


def _check(report: Report, lines: list[str], ended: dict[int, float], started: float, finished: float) -> None:
    """Overlaps and availability from the bodies' records and the soak's kills."""
    begins: dict[int, float] = {}
    ends: dict[int, float] = {}
    for line in lines:
        when, event, who, _ = line.split()
        if event == "start":
            begins[int(who)] = float(when)
        elif event == "end":
            ends[int(who)] = float(when)
        elif event == "overlap":
            report.overlaps += 1
    report.bodies = len(begins)
    intervals = []
    for pid, begin in begins.items():
        end = ends.get(pid, ended.get(pid))
        if end is not None:
            intervals.append((begin, end))
    intervals.sort()
    for (_, first_end), (second_begin, _) in zip(intervals, intervals[1:]):
        if second_begin < first_end:
            report.overlaps += 1
    covered, reach = 0.0, started
    for begin, end in intervals:
        if end > reach:
            covered += end - max(begin, reach)
            reach = end
    report.availability = covered / max(finished - started, 1e-9)


#: The lease of the cluster backends in the soak: short, as in the test suite.
LEASE_TTL = 3.0


def _import_test_helpers() -> None:
    """Make the test suite's helpers (servers, proxy) importable, as pytest's pythonpath does."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


@contextlib.contextmanager
def server_for(backend: str) -> Iterator[dict[str, str]]:
    """The settings a backend needs: for a cluster backend, a server of its own that the test
    suite's helpers start on 127.0.0.1 (and stop); nothing for the others."""
    _import_test_helpers()
    import servers

    if backend in servers.SERVERS:
        with servers.aged(servers.SERVERS[backend](), LEASE_TTL) as server:
            yield {"RUNALWAYS_URL": server.url, "RUNALWAYS_TTL": str(LEASE_TTL)}
    else:
        yield {}


#: What the columns count, under the table.
LEGEND = (
    "plain: the default backend started with no RUNALWAYS_* setting, as cron starts a job; "
    "kills: SIGKILL and SIGTERM the saboteur sent; stops: its SIGSTOPs (a cluster holder for longer than its "
    "lease); cuts: its network cuts, shorter or longer than the lease (cluster backends only); fenced: copies "
    "killed by their own lease after a stop or a cut; fail-closed: copies that exited 2 saying the server could "
    "not be reached or failed on the lock, during or after a cut or a stop; availability: the share of the soak "
    "during which a body ran; unexpected: exits that nothing the saboteur did explains."
)


def main() -> int:
    from runalways.backends import get_class, names

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long each backend is soaked")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="the fleet mode: RUNALWAYS_ONCE_PER on three hosts whose clocks disagree (benchmarks/fleet.py)",
    )
    parser.add_argument(
        "--backend", action="append", help=f"soak only this backend (repeatable; {PLAIN}: the plain start, no setting)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).with_name("RESULTS.md"),
        help="the file whose chaos soak section the table replaces, or is appended to (default: %(default)s)",
    )
    options = parser.parse_args()
    usable = [name for name in names() if get_class(name).unavailable() is None]
    if options.fleet:
        return fleet_main(options.backend or usable, options.seconds, options.out, named=bool(options.backend))
    chosen = options.backend or [PLAIN, *usable]
    import tempfile

    rows = []
    failed = False
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="runalways-soak-") as folder, server_for(name) as settings:
            longest_stop = 1.5 * LEASE_TTL if settings else 0.5
            report = soak(name, options.seconds, Path(folder), settings, longest_stop=longest_stop)
        print(report.row(), flush=True)
        for line in report.unexpected:
            print(f"  unexpected: {line}", file=sys.stderr)
        for text in report.traceback_texts:
            print("  traceback:\n" + text, file=sys.stderr)
        failed = failed or bool(report.overlaps or report.tracebacks or report.unexpected)
        rows.append(report.row())
    command = "python3 benchmarks/soak.py" + "".join(f" --backend {name}" for name in options.backend or [])
    section = (
        "## Chaos soak\n\n"
        f"`{command} --seconds {options.seconds:g}` on {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, CPython {sys.version.split()[0]}.\n\n"
        + HEADER
        + "\n"
        + "\n".join(rows)
        + "\n\n"
        + LEGEND
    )
    previous = options.out.read_text() if options.out.exists() else ""
    options.out.write_text(soak_section.write(previous, section))
    print(f"wrote the chaos soak section of {options.out}", file=sys.stderr)
    return 1 if failed else 0


def fleet_main(chosen: list[str], seconds: float, out: Path, *, named: bool) -> int:
    """``--fleet``: the fleet mode for each backend in ``chosen`` (``named``: given on the command
    line), its rows into ``out``."""
    import tempfile

    import fleet

    rows = []
    failed = False
    load_before = os.getloadavg()[0]
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="runalways-fleet-") as folder, server_for(name) as settings:
            report = fleet.fleet_soak(name, seconds, Path(folder), settings)
        print(report.row(), flush=True)
        for line in [*report.twice, *report.missed, *report.wrong]:
            print(f"  {line}", file=sys.stderr)
        for line in report.unexpected:
            print(f"  unexpected: {line}", file=sys.stderr)
        for text in report.traceback_texts:
            print("  traceback:\n" + text, file=sys.stderr)
        failed = failed or report.failed()
        rows.append(report.row())
    command = "python3 benchmarks/soak.py --fleet" + "".join(f" --backend {name}" for name in chosen if named)
    part = (
        "### Fleet mode: once per period\n\n"
        f"`{command} --seconds {seconds:g}` on {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, CPython {sys.version.split()[0]}; load average (1 min) "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after.\n\n"
        + fleet.HEADER
        + "\n"
        + "\n".join(rows)
        + "\n\n"
        + fleet.LEGEND
    )
    previous = out.read_text() if out.exists() else ""
    out.write_text(soak_section.write_fleet(previous, part))
    print(f"wrote the fleet mode's rows of the chaos soak section of {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
