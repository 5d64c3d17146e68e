"""Chaos soak: an impatient cron and a saboteur against one guarded job, bounded in time.

A launcher starts the guarded job every few milliseconds (up to a cap of live copies), as
a cron gone wild would; a saboteur, at random moments, SIGKILLs or SIGTERMs a copy (the
body or a waiter), SIGSTOPs one for a random time and then SIGCONTs it, edits the job's
script in place, and touches and re-reads the lock directory. Every body appends
``start`` and ``end`` records (time, pid, start ticks; ``O_APPEND``, one ``write`` each)
and, at its start, records an ``overlap`` for every earlier body that is still alive and
unfinished. The checker then proves from the records and the launcher's own:

* no two bodies ever ran at once (no ``overlap`` record, and no two body intervals with a
  known end intersect);
* availability: the share of the soak during which a body was running;
* the counts: starts, bodies, kills, stops, tracebacks (must be 0) and exit statuses
  that no action of the soak explains (must be 0).

The conformance suite runs a few seconds of it for every backend
(spec/conformance/test_soak.py). The long form, for every usable backend::

    python3 benchmarks/soak.py --seconds 300

writes its table into benchmarks/SOAK.md; the cluster backends run against servers of their
own on 127.0.0.1, started and stopped by the test suite's helpers.
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

#: The guarded job. argv: the record file, how long the body runs.
JOB = """import runalways
import os
import sys
import time


def ticks(pid):
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return fields[0].decode(), fields[19].decode()


def record(line):
    descriptor = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(descriptor, (line + "\\n").encode())
    os.close(descriptor)


me = os.getpid()
unfinished = {}
with open(sys.argv[1]) as records:
    for line in records:
        words = line.split()
        if words[1] == "start":
            unfinished[words[2]] = words[3]
        elif words[1] == "end":
            unfinished.pop(words[2], None)
for pid, started in unfinished.items():
    try:
        state, now = ticks(pid)
    except (OSError, IndexError):
        continue  # gone
    if now == started and state not in ("Z", "X"):
        record(f"{time.time():.6f} overlap {me} {pid}")
record(f"{time.time():.6f} start {me} {ticks(me)[1]}")
time.sleep(float(sys.argv[2]))
record(f"{time.time():.6f} end {me} 0")
"""

#: Exit statuses a copy may end with: it ran or was kept out (0), or the soak killed it.
EXPECTED = {0, -signal.SIGKILL, -signal.SIGTERM}


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
    overlaps: int = 0
    tracebacks: int = 0
    unexpected: list[str] = field(default_factory=list)
    availability: float = 0.0

    def row(self) -> str:
        return (
            f"| {self.backend} | {self.seconds / 60:.1f} | {self.starts} | {self.bodies} | {self.kills + self.terms} "
            f"| {self.stops} | {self.overlaps} | {self.availability:.1%} | {self.tracebacks} | {len(self.unexpected)} |"
        )


HEADER = (
    "| backend | minutes | starts | bodies | kills | stops | overlaps | availability | tracebacks | unexpected |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


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
    so that a stopped holder is fenced while another copy takes over.
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
    env.update({"RUNALWAYS_BACKEND": backend, "RUNALWAYS_DIR": str(locks), "RUNALWAYS_SILENT": "1"})
    env.update(settings or {})
    report = Report(backend, seconds)
    live: dict[int, subprocess.Popen[bytes]] = {}
    stopped: dict[int, float] = {}  # pid -> when to SIGCONT it
    ended: dict[int, float] = {}  # pid -> the time just before the soak killed it
    started_at = time.time()
    deadline = time.monotonic() + seconds

    def reap(process: subprocess.Popen[bytes]) -> None:
        live.pop(process.pid, None)
        stopped.pop(process.pid, None)
        status = process.returncode
        if status not in EXPECTED:
            report.unexpected.append(f"pid {process.pid}: status {status}")

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
            report.stops += 1
            return
        ended.setdefault(pid, before)
        os.kill(pid, signal.SIGCONT)  # a stopped copy must still get the signal now
        if signum == signal.SIGKILL:
            report.kills += 1
        else:
            report.terms += 1

    try:
        while time.monotonic() < deadline:
            for process in list(live.values()):
                if process.poll() is not None:
                    reap(process)
            now = time.monotonic()
            for pid, until in list(stopped.items()):
                if now >= until:
                    os.kill(pid, signal.SIGCONT)
                    del stopped[pid]
            if len(live) < cap:
                with open(logs / f"{report.starts}.err", "wb") as errors:
                    process = subprocess.Popen(
                        [sys.executable, str(script), str(records), f"{chance.uniform(0.02, 0.3):.3f}"],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=errors,
                        env=env,
                        cwd=workdir,
                    )
                live[process.pid] = process
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
                    os.utime(locks / entry, follow_symlinks=False)
            time.sleep(chance.uniform(0.001, 0.01))
    finally:
        for pid in list(stopped):
            os.kill(pid, signal.SIGCONT)
        for process in list(live.values()):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            reap(process)
    finished_at = time.time()
    _check(report, records.read_text().splitlines(), ended, started_at, finished_at)
    report.tracebacks = sum("Traceback" in path.read_text(errors="replace") for path in logs.iterdir())
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


@contextlib.contextmanager
def server_for(backend: str) -> Iterator[dict[str, str]]:
    """The settings a backend needs: for a cluster backend, a server of its own that the test
    suite's helpers start on 127.0.0.1 (and stop); nothing for the others."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    if backend == "postgres":
        import pgserver

        with pgserver.running(pgserver.required_bindir()) as server:
            pgserver.wait_until_older_than(server.url, LEASE_TTL)
            yield {"RUNALWAYS_URL": server.url, "RUNALWAYS_TTL": str(LEASE_TTL)}
    elif backend == "redis":
        import redisserver

        with redisserver.running(redisserver.required_binary()) as server:
            redisserver.wait_until_older_than(server.url, LEASE_TTL)
            yield {"RUNALWAYS_URL": server.url, "RUNALWAYS_TTL": str(LEASE_TTL)}
    else:
        yield {}


def main() -> int:
    from runalways.backends import get_class, names

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long each backend is soaked")
    parser.add_argument("--backend", action="append", help="soak only this backend (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("SOAK.md"))
    options = parser.parse_args()
    chosen = options.backend or [name for name in names() if get_class(name).unavailable() is None]
    import tempfile

    rows = []
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="runalways-soak-") as folder, server_for(name) as settings:
            longest_stop = 1.5 * LEASE_TTL if settings else 0.5
            report = soak(name, options.seconds, Path(folder), settings, longest_stop=longest_stop)
        print(report.row(), flush=True)
        rows.append(report.row())
    options.out.write_text(
        "# Chaos soak\n\n"
        f"`python3 benchmarks/soak.py --seconds {options.seconds:g}` on {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, CPython {sys.version.split()[0]}.\n\n" + HEADER + "\n" + "\n".join(rows) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
