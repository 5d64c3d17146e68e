"""The measurements: start-up overhead, stampede, hand-over, crash release, cluster lock.

Each one starts real processes running real guards on real files, in a workspace of
its own (a job directory, a TMPDIR and a RUNALWAYS_DIR), and returns plain data for
:mod:`report`. Loops have fixed bounds and every process a timeout (:mod:`procs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import guards as g
import procs

#: Copies started at once in a stampede.
COPIES = 32
#: The body of a churn round: short, so that several copies may run one after another.
CHURN_BODY_SECONDS = 0.02
#: The job of the start-up runs needs os and sys bound for the preamble guards; both are
#: loaded before any script runs, so the bare job starts with the same line.
STARTUP_HEADER = "import os, sys\n"
#: A gate: wait until the harness closes the write end of fd 3, then exec the job at once.
GATE = 'read x <&3; exec 3<&- "$@"'


@dataclass
class Counts:
    startup_pairs: int
    warmups: int
    importtime_runs: int
    stampede_rounds: int
    churn_rounds: int
    handover_trials: int
    crash_repeats: int
    cluster_rounds: int

    @classmethod
    def full(cls) -> Counts:
        return cls(60, 3, 15, 10, 5, 30, 5, 50)

    @classmethod
    def quick(cls) -> Counts:
        return cls(4, 1, 3, 2, 1, 4, 1, 5)


@dataclass
class Context:
    python: str
    base_env: dict[str, str]
    root: Path
    counts: Counts
    rng: random.Random
    guards: list[g.Guard]
    log: Callable[[str], None]

    def measured(self) -> list[g.Guard]:
        return [guard for guard in self.guards if not guard.skipped]


class Workspace:
    """A job directory and a TMPDIR of one guard in one phase."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.job = self.dir / "job"
        self.tmp = self.dir / "tmp"
        for folder in (self.job, self.tmp):
            folder.mkdir(parents=True, mode=0o700)

    def write(self, name: str, text: str) -> Path:
        path = self.job / name
        path.write_text(text)
        return path

    def env(self, base: dict[str, str]) -> dict[str, str]:
        # No RUNALWAYS_DIR here: any setting takes runalways off its fast path, and the
        # job would not be measured as users run it. Guards that keep lock files in
        # runalways's lock directory get <tmp>/runalways (guards.environment).
        return {**base, "TMPDIR": str(self.tmp)}

    def files(self, skip: tuple[Path, ...] = ()) -> list[str]:
        """Every file in the workspace but ``skip``, as ``job/…``, ``tmp/…``; paths
        of the workspace inside a name (tendo mangles the script's path) become ``<path>``."""
        mangled = str(self.job).replace("/", "-")
        found = []
        for folder in (self.job, self.tmp):
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path not in skip:
                    name = str(path.relative_to(self.dir)).replace(mangled, "<path>")
                    folder_name, _, base = name.rpartition("/")
                    if len(base) > 44:  # a name made of the whole command line: keep its ends
                        name = f"{folder_name}/{base[:10]}…{base[-30:]}"
                    found.append(f"{name} ({path.stat().st_size} B)")
        return found

    def inodes(self) -> set[int]:
        found = set()
        for folder in (self.job, self.tmp):
            for path in folder.rglob("*"):
                with contextlib.suppress(FileNotFoundError):  # a guard's file, removed since it was listed
                    found.add(path.stat().st_ino)
        return found


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    at = (len(ordered) - 1) * fraction
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


# ---------------------------------------------------------------------------------------
# 1. Start-up overhead


@dataclass
class Startup:
    guard: g.Guard
    #: (bare seconds, guarded seconds) of each adjacent pair of runs.
    pairs: list[tuple[float, float]] = field(default_factory=list)
    failures: int = 0
    error: str = ""
    #: -X importtime: per run, the summed cumulative µs of the top-level imports the guard adds.
    import_sums: list[float] = field(default_factory=list)
    #: per top-level module the guard adds: its cumulative µs of each run.
    import_top: dict[str, list[float]] = field(default_factory=dict)
    #: every module under those: (self µs, cumulative µs, depth) of each run.
    import_tree: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)

    @property
    def guarded_ms(self) -> float:
        return median([pair[1] for pair in self.pairs]) * 1000

    @property
    def bare_ms(self) -> float:
        return median([pair[0] for pair in self.pairs]) * 1000

    @property
    def overhead_ms(self) -> float:
        """Median of the guarded runs minus median of their paired bare runs."""
        return self.guarded_ms - self.bare_ms

    @property
    def paired_ms(self) -> tuple[float, float, float]:
        """Median, 25th and 75th percentile of the per-pair differences."""
        diffs = [(guarded - bare) * 1000 for bare, guarded in self.pairs]
        return median(diffs), percentile(diffs, 0.25), percentile(diffs, 0.75)

    @property
    def ratios(self) -> tuple[float, float, float]:
        values = [guarded / bare for bare, guarded in self.pairs]
        return median(values), min(values, default=float("nan")), max(values, default=float("nan"))


def startup(ctx: Context) -> list[Startup]:
    """Guarded no-op job vs bare job, whole process, many interleaved pairs."""
    ws = Workspace(ctx.root, "startup")
    env = ws.env(ctx.base_env)
    bare_path = ws.write("job_bare.py", STARTUP_HEADER)
    bare_argv = [ctx.python, str(bare_path)]
    results: dict[str, Startup] = {}
    argvs: dict[str, list[str]] = {}
    envs: dict[str, dict[str, str]] = {}
    paths: dict[str, Path] = {}
    for guard in ctx.measured():
        if guard.group == "control":
            continue
        paths[guard.key] = ws.write(f"job_{guard.key}.py", g.script(guard, "", header=STARTUP_HEADER))
        argvs[guard.key] = g.command(guard, ctx.python, paths[guard.key])
        envs[guard.key] = g.environment(guard, env)
        results[guard.key] = Startup(guard)
    # Warm-up: byte code of everything the guards import is written and cached, and a
    # guard that does not work here is found before the timed runs.
    for _ in range(ctx.counts.warmups):
        procs.run(bare_argv, env)
        for key, argv in argvs.items():
            child, _, err = procs.capture(argv, envs[key])
            if child.returncode != 0 and not results[key].error:
                results[key].error = f"exit {child.returncode}: {err.strip().splitlines()[-1:] or ''}"
    keys = [key for key in argvs if not results[key].error]
    ctx.log(f"startup: {ctx.counts.startup_pairs} rounds of {len(keys)} guards, each paired with a bare run")
    for round_number in range(ctx.counts.startup_pairs):
        for key in ctx.rng.sample(keys, len(keys)):
            # Alternate which of the pair goes first, so neither always runs warmer.
            order = (bare_argv, argvs[key]) if round_number % 2 == 0 else (argvs[key], bare_argv)
            first = procs.run(order[0], envs[key] if order[0] is argvs[key] else env)
            second = procs.run(order[1], envs[key] if order[1] is argvs[key] else env)
            bare, guarded = (first, second) if order[0] is bare_argv else (second, first)
            if bare.returncode != 0 or guarded.returncode != 0:
                results[key].failures += 1
                continue
            results[key].pairs.append((bare.wall, guarded.wall))
    importtime(ctx, results, paths, envs, bare_path, env)
    return list(results.values())


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$")


def parse_importtime(text: str) -> list[tuple[int, str, float, float]]:
    """(depth, module, self µs, cumulative µs) of each line, in the order printed (post-order)."""
    found = []
    for line in text.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            found.append(((len(match.group(3)) - 1) // 2, match.group(4), float(match.group(1)), float(match.group(2))))
    return found


def importtime(
    ctx: Context,
    results: dict[str, Startup],
    paths: dict[str, Path],
    envs: dict[str, dict[str, str]],
    bare_path: Path,
    env: dict[str, str],
) -> None:
    """``python -X importtime job.py``: what each preamble guard adds to the bare job's imports."""
    keys = [key for key, result in results.items() if not result.guard.is_wrapper and not result.error]
    ctx.log(f"importtime: {ctx.counts.importtime_runs} runs of {len(keys)} guards")
    baseline: set[str] = set()
    for _ in range(2):
        _, _, err = procs.capture([ctx.python, "-X", "importtime", str(bare_path)], env)
        baseline |= {name for depth, name, _, _ in parse_importtime(err) if depth == 0}
    for _ in range(ctx.counts.importtime_runs):
        for key in ctx.rng.sample(keys, len(keys)):
            child, _, err = procs.capture([ctx.python, "-X", "importtime", str(paths[key])], envs[key])
            if child.returncode != 0:
                results[key].failures += 1
                continue
            lines = parse_importtime(err)
            total = 0.0
            subtree: list[tuple[int, str, float, float]] = []
            for depth, name, own, cumulative in lines:
                subtree.append((depth, name, own, cumulative))
                if depth != 0:
                    continue
                if name not in baseline:
                    total += cumulative
                    results[key].import_top.setdefault(name, []).append(cumulative)
                    for sub_depth, sub_name, sub_own, sub_cumulative in subtree:
                        results[key].import_tree.setdefault(sub_name, []).append((sub_own, sub_cumulative, sub_depth))
                subtree = []
            results[key].import_sums.append(total)


# ---------------------------------------------------------------------------------------
# 2. Stampede


@dataclass
class Round:
    bodies: int
    overlap: bool
    #: Seconds from opening the gate until the last copy that ran no body had exited.
    losers_exited: float | None
    #: Seconds from opening the gate until every copy had exited.
    all_exited: float | None
    nonzero: int
    timed_out: bool


@dataclass
class Stampede:
    guard: g.Guard
    held: list[Round] = field(default_factory=list)
    churn: list[Round] = field(default_factory=list)
    error: str = ""


def stampede(ctx: Context) -> list[Stampede]:
    results = []
    for guard in ctx.measured():
        result = Stampede(guard)
        ws = Workspace(ctx.root, f"stampede-{guard.key}")
        held_body = g.report("S") + "os.read(0, 1)\n" + g.report("E")
        churn_body = g.report("S") + f"time.sleep({CHURN_BODY_SECONDS})\n" + g.report("E")
        held_path = ws.write("job_held.py", g.script(guard, held_body))
        churn_path = ws.write("job_churn.py", g.script(guard, churn_body))
        ctx.log(f"stampede: {guard.key}")
        for _ in range(ctx.counts.stampede_rounds):
            result.held.append(stampede_round(ctx, guard, ws, held_path, held=True))
        for _ in range(ctx.counts.churn_rounds):
            result.churn.append(stampede_round(ctx, guard, ws, churn_path, held=False))
        results.append(result)
    return results


def stampede_round(ctx: Context, guard: g.Guard, ws: Workspace, path: Path, *, held: bool) -> Round:
    """32 copies wait on a gate, then exec the job at once.

    ``held``: the body holds on until every other copy has exited or started a body of
    its own, so a second body in a round is two copies running at the same time.
    Otherwise the body lasts 20 ms and later legal runs are possible; overlaps are
    counted from the bodies' start and end times.
    """
    reports = procs.Reports()
    gate_read, gate_write = os.pipe()
    hold_read, hold_write = os.pipe()
    argv = ["/bin/sh", "-c", GATE, "gate", *g.command(guard, ctx.python, path)]
    env = g.environment(guard, ws.env(ctx.base_env))
    copies: list[procs.Child] = []
    timed_out = False
    try:
        for _ in range(COPIES):
            copies.append(procs.spawn(argv, env, fds={3: gate_read}, stdin=hold_read, stdout=reports.write_fd))
        os.close(gate_read)
        gate_read = -1
        reports.close_write()
        opened = time.monotonic()
        os.close(gate_write)
        gate_write = -1
        deadline = opened + procs.TIMEOUT
        while True:
            reports.drain()
            running = [copy for copy in copies if not procs.exited(copy)]
            bodies = sum(1 for tag, _, _ in reports.lines if tag == "S")
            if not running or (held and COPIES - len(running) + bodies >= COPIES):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            poller = select.poll()
            poller.register(reports.read_fd, select.POLLIN)
            for copy in running:
                poller.register(copy.pidfd, select.POLLIN)
            poller.poll(left * 1000)
        exits = [copy.exited_at for copy in copies if copy.exited_at is not None]
        losers_exited = (max(exits) - opened) if held and exits else None
        os.close(hold_write)
        hold_write = -1
        procs.wait_all(copies, procs.TIMEOUT)
        reports.drain()
        all_exits = [copy.exited_at for copy in copies if copy.exited_at is not None]
        starts = {pid: when for tag, pid, when in reports.lines if tag == "S"}
        ends = {pid: when for tag, pid, when in reports.lines if tag == "E"}
        intervals = sorted((start, ends.get(pid, float("inf"))) for pid, start in starts.items())
        overlap = any(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:]))
        if not held:
            # zip of neighbours misses a long body overlapping a later, non-adjacent one.
            overlap = any(b[0] < a[1] for i, a in enumerate(intervals) for b in intervals[i + 1 :])
        return Round(
            bodies=len(starts),
            overlap=overlap,
            losers_exited=losers_exited if held else None,
            all_exited=(max(all_exits) - opened) if all_exits and not held else None,
            nonzero=sum(1 for copy in copies if copy.returncode != 0),
            timed_out=timed_out or any(copy.timed_out for copy in copies),
        )
    finally:
        for fd in (gate_read, gate_write, hold_read, hold_write):
            if fd >= 0:
                os.close(fd)
        for copy in copies:
            copy.kill()
            copy.reap()
        reports.close()


# ---------------------------------------------------------------------------------------
# 3. Hand-over in wait mode


@dataclass
class Handover:
    guard: g.Guard
    #: How the holder lets go: False, a release call right after its timestamp; True, by
    #: ending (its interpreter's shutdown, and the guard's own exit work, come in between).
    by_exit: bool = False
    #: Seconds from the holder's timestamp right before its release to the waiter's
    #: timestamp right after its acquire returned.
    latencies: list[float] = field(default_factory=list)
    #: Trials where a kernel waiter was seen blocked in /proc/locks before the release.
    seen_blocked: int = 0
    error: str = ""


def blocked_waiter(ws: Workspace) -> bool:
    """Whether /proc/locks lists a blocked lock request ("->") on a file of ``ws``."""
    inodes = ws.inodes()
    with open("/proc/locks") as locks:
        for line in locks:
            if "->" not in line:
                continue
            for part in line.split():
                pieces = part.split(":")
                if len(pieces) == 3 and pieces[2].isdigit() and int(pieces[2]) in inodes:
                    return True
    return False


def handover(ctx: Context) -> list[Handover]:
    results = []
    for guard in ctx.measured():
        if not guard.can_wait or guard.group == "control":
            continue
        # A command releases when its job has ended: it has the exit's figure only.
        for by_exit in (True,) if guard.is_wrapper else (False, True):
            ctx.log(f"handover: {guard.key}" + (" (released by exit)" if by_exit else ""))
            results.append(handover_chain(ctx, guard, by_exit=by_exit))
    return results


def handover_chain(ctx: Context, guard: g.Guard, *, by_exit: bool = False) -> Handover:
    """A chain of copies: each waits for the one before it, then holds for the next.

    Copy k+1 is started while copy k holds the lock; once it waits (it said so, and a
    kernel waiter shows up blocked in /proc/locks), the harness sleeps a seeded random
    0.1-0.35 s, so that the release falls at a random point of a poller's cycle, then
    tells copy k to release: k writes its timestamp and releases at once (``by_exit``:
    ends, as a job does); k+1 writes its own the moment its acquire returns.
    """
    result = Handover(guard, by_exit=by_exit)
    ws = Workspace(ctx.root, f"handover-{guard.key}" + ("-exit" if by_exit else ""))
    body = g.report("A") + "os.read(0, 1)\n" + g.report("R")
    if not by_exit:
        body += guard.release + "os._exit(0)\n"
    path = ws.write("job.py", g.script(guard, body, wait=True, waiting_tag="W"))
    argv = g.command(guard, ctx.python, path, wait=True)
    env = g.environment(guard, ws.env(ctx.base_env), wait=True)
    reports = procs.Reports()
    chain: list[tuple[procs.Child, int]] = []  # (process, write end of its stdin)
    acquired: dict[int, float] = {}  # job pid -> A time, in the order they came

    def start() -> procs.Child:
        stdin_read, stdin_write = os.pipe()
        try:
            child = procs.spawn(argv, env, stdin=stdin_read, stdout=reports.write_fd)
        finally:
            os.close(stdin_read)
        chain.append((child, stdin_write))
        return child

    def next_acquired(child: procs.Child, timeout: float) -> tuple[int, float] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reports.drain()
            for tag, pid, when in reports.lines:
                if tag == "A" and pid not in acquired:
                    acquired[pid] = when
                    return pid, when
            if procs.exited(child):
                return None
            reports.wait(deadline - time.monotonic(), [child])
        return None

    try:
        first = start()
        holder = next_acquired(first, procs.TIMEOUT)
        if holder is None:
            result.error = "the first copy never got the lock"
            return result
        for _ in range(ctx.counts.handover_trials):
            waiter = start()
            if not guard.is_wrapper and reports.wait_for("W", waiter.pid, procs.TIMEOUT, [waiter]) is None:
                result.error = "a waiter never got to its lock call"
                break
            if guard.kernel_wait:
                deadline = time.monotonic() + 10
                while not blocked_waiter(ws) and time.monotonic() < deadline and not procs.exited(waiter):
                    time.sleep(0.002)
                result.seen_blocked += blocked_waiter(ws)
            time.sleep(0.1 + ctx.rng.uniform(0.0, 0.25))
            previous, release = chain[-2]
            os.write(release, b"x")
            taken = next_acquired(waiter, procs.TIMEOUT)
            released = reports.wait_for("R", holder[0], procs.TIMEOUT)
            previous.wait(procs.TIMEOUT)
            if taken is None or released is None:
                result.error = f"a hand-over failed (waiter exit {waiter.returncode})"
                break
            result.latencies.append(taken[1] - released)
            holder = taken
        return result
    finally:
        for child, stdin_write in chain:
            os.close(stdin_write)  # end of input: a holder reads b"" and releases
            child.wait(procs.TIMEOUT)
        reports.close()


# ---------------------------------------------------------------------------------------
# 4. Crash release


@dataclass
class Crash:
    guard: g.Guard
    variant: str
    #: Per repeat: seconds from the SIGKILL until the next copy's body ran, None if it did not run.
    next_start: list[float | None] = field(default_factory=list)
    #: Repeats in which the old job still ran when the new copy's body started.
    both_ran: int = 0
    left_after_kill: list[str] = field(default_factory=list)
    left_after_clean: list[str] = field(default_factory=list)
    error: str = ""


def crash(ctx: Context) -> list[Crash]:
    results = []
    for guard in ctx.measured():
        if guard.group == "control":
            continue
        variants = ["job", "wrapper"] if guard.is_wrapper else ["job"]
        for variant in variants:
            ctx.log(f"crash: {guard.key} ({variant} killed)")
            results.append(crash_guard(ctx, guard, variant))
    return results


def crash_guard(ctx: Context, guard: g.Guard, variant: str) -> Crash:
    """SIGKILL the holder (the job, or only the wrapper around it), start the next copy at once."""
    result = Crash(guard, variant)
    ws = Workspace(ctx.root, f"crash-{guard.key}-{variant}")
    body = g.report("A") + "os.read(0, 1)\n"
    path = ws.write("job.py", g.script(guard, body))
    argv = g.command(guard, ctx.python, path)
    env = g.environment(guard, ws.env(ctx.base_env))
    reports = procs.Reports()
    open_fds: list[int] = []
    seen: set[int] = set()

    def start() -> tuple[procs.Child, int]:
        stdin_read, stdin_write = os.pipe()
        open_fds.append(stdin_write)
        try:
            return procs.spawn(argv, env, stdin=stdin_read, stdout=reports.write_fd), stdin_write
        finally:
            os.close(stdin_read)

    def body_started(child: procs.Child, timeout: float) -> tuple[int, float] | None:
        deadline = time.monotonic() + timeout
        while True:
            reports.drain()
            for tag, pid, when in reports.lines:
                if tag == "A" and pid not in seen:
                    seen.add(pid)
                    return pid, when
            left = deadline - time.monotonic()
            if left <= 0 or procs.exited(child):
                return None
            reports.wait(left, [child])

    try:
        for repeat in range(ctx.counts.crash_repeats):
            holder, _ = start()
            started = body_started(holder, procs.TIMEOUT)
            if started is None:
                result.error = f"the holder did not start its job (exit {holder.wait()})"
                break
            job_pid = started[0]
            orphan = _Orphan(job_pid) if guard.is_wrapper else None
            killed_at = time.monotonic()
            if variant == "job" and orphan is not None:
                orphan.kill()  # the job under the wrapper; the wrapper then exits on its own
                holder.wait(procs.TIMEOUT)
            else:
                holder.kill()
                holder.reap()
            if repeat == 0:
                result.left_after_kill = ws.files(skip=(path,))
            new, new_stdin = start()
            got_in = body_started(new, 10.0)
            result.next_start.append(None if got_in is None else got_in[1] - killed_at)
            if got_in is not None and orphan is not None and orphan.alive():
                result.both_ran += 1
            if orphan is not None:
                orphan.kill()
            os.close(new_stdin)
            open_fds.remove(new_stdin)
            new.wait(procs.TIMEOUT)
        # A clean run in a fresh workspace: what a copy leaves behind when it ends normally.
        clean = Workspace(ctx.root, f"clean-{guard.key}-{variant}")
        clean_path = clean.write("job.py", g.script(guard, body))
        clean_env = g.environment(guard, clean.env(ctx.base_env))
        child = procs.run(g.command(guard, ctx.python, clean_path), clean_env, stdout=reports.write_fd)
        if child.returncode != 0:
            result.error = result.error or f"a clean run exited {child.returncode}"
        result.left_after_clean = clean.files(skip=(clean_path,))
        return result
    finally:
        for fd in open_fds:
            os.close(fd)
        procs.reap_all()
        reports.close()


class _Orphan:
    """The job under a wrapper: not our child, but started by us; watched through a pidfd."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.gone = False

    def alive(self) -> bool:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not self.gone and not poller.poll(0)

    def kill(self) -> None:
        if self.gone:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        poller.poll(5000)
        try:  # the harness is a child subreaper: an orphaned job is reparented to it
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        os.close(self.pidfd)
        self.gone = True


# ---------------------------------------------------------------------------------------
# 5. Cluster backend

CLUSTER_PROBE = """
import json, sys, time
import runalways.api

rounds, backend = int(sys.argv[1]), sys.argv[2]
acquire, release = [], []
for number in range(rounds):
    started = time.perf_counter()
    context = runalways.api.lock(name="runalways-benchmark", backend=backend)
    context.__enter__()
    taken = time.perf_counter()
    context.__exit__(None, None, None)
    acquire.append(taken - started)
    release.append(time.perf_counter() - taken)
print(json.dumps({"acquire": acquire, "release": release}))
"""

#: The cluster backends, and what their acquire does.
CLUSTER_BACKENDS = {
    "postgres": "connect, take the advisory lock",
    "redis": "connect, check the server (CONFIG GET, INFO), run the take script",
}


@dataclass
class Cluster:
    measured: bool
    why: str = ""
    acquire: list[float] = field(default_factory=list)
    release: list[float] = field(default_factory=list)


def cluster(ctx: Context) -> dict[str, Cluster]:
    """Acquire/release latency of each cluster backend, in one process."""
    measured: dict[str, Cluster] = {}
    for name in CLUSTER_BACKENDS:
        found = [guard for guard in ctx.guards if guard.key == f"runalways-{name}"]
        if not found:
            measured[name] = Cluster(False, f"no `{name}` backend is registered")
            continue
        if found[0].skipped:
            measured[name] = Cluster(False, found[0].skipped)
            continue
        ctx.log(f"cluster: {name} acquire/release")
        ws = Workspace(ctx.root, f"cluster-{name}")
        probe = ws.write("probe.py", CLUSTER_PROBE)
        env = g.environment(found[0], ws.env(ctx.base_env))
        env.pop("RUNALWAYS_BACKEND", None)
        command = [ctx.python, str(probe), str(ctx.counts.cluster_rounds), name]
        child, out, err = procs.capture(command, env, timeout=120)
        if child.returncode != 0:
            measured[name] = Cluster(False, f"the probe failed: {err.strip().splitlines()[-1:]}")
            continue
        data = json.loads(out)
        measured[name] = Cluster(True, "", data["acquire"], data["release"])
    return measured


def set_child_subreaper() -> None:
    """Orphans of our wrappers' jobs become our children, so they are reaped, never left."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
