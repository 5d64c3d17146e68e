"""RESULTS.md and startup.png from the measurements, with the machine they were taken on.

RESULTS.md keeps the chaos soak's section (benchmarks/soak_section.py) of the file it replaces.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import guards as g
import phases as ph
import soak_section

PEER_PACKAGES = ("runalways", "tendo", "filelock", "portalocker", "fasteners", "pid", "matplotlib")

#: The targets: (what, limit).
STARTUP_LIMIT_MS = 1.0
FLOOR_MARGIN_MS = 0.5
#: How far a waiter's hand-over may lag the raw flock floor's, measured in the same run:
#: woken by the kernel, and woken by the server (a cluster backend, on loopback).
KERNEL_HANDOVER_MARGIN_MS = 0.5
SERVER_HANDOVER_MARGIN_MS = 3.0
#: A waiter that polls (the pidfile backend: no call blocks on a pidfile).
POLLING_HANDOVER_LIMIT_MS = 20.0


@dataclass
class Results:
    machine: dict[str, str]
    counts: ph.Counts
    quick: bool
    seed: int
    guards: list[g.Guard]
    startup: list[ph.Startup] = field(default_factory=list)
    stampede: list[ph.Stampede] = field(default_factory=list)
    handover: list[ph.Handover] = field(default_factory=list)
    crash: list[ph.Crash] = field(default_factory=list)
    cluster: dict[str, ph.Cluster] | None = None


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _command_version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({error})"
    return (done.stdout or done.stderr).strip().splitlines()[0]


def _source_revision() -> str:
    project = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(project), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(project), "status", "--porcelain", "--untracked-files=no", "--", "runalways"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes to runalways/" if dirty else "")


def machine_facts() -> dict[str, str]:
    versions = []
    for package in PEER_PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(versions) + f"; {_command_version(['flock', '--version'])}",
        "runalways source": _source_revision(),
        "load before": load_average(),
    }


def _ms(seconds: float | None, digits: int = 1) -> str:
    return "-" if seconds is None or seconds != seconds else f"{seconds * 1000:.{digits}f}"


def _num(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _default_key(results: Results) -> str | None:
    for guard in results.guards:
        if guard.is_runalways and not guard.is_wrapper and "RUNALWAYS_BACKEND" not in guard.env:
            return guard.key
    return None


# ---------------------------------------------------------------------------------------


def _targets(results: Results) -> list[tuple[str, str, bool | None, str]]:
    """(target, measured, met — None when not measured, why)."""
    rows: list[tuple[str, str, bool | None, str]] = []
    startup = {result.guard.key: result for result in results.startup if result.pairs}
    default = _default_key(results)
    if default in startup and results.startup:
        ours = startup[default]
        overhead = ours.paired_ms[0]
        # Modules the raw-flock floor imports too (fcntl) are no cost of runalways'.
        floor_modules = set(startup["rawflock"].import_tree) if "rawflock" in startup else set()
        why = ""
        if overhead > STARTUP_LIMIT_MS:
            why = (
                "the guard's imports alone cost "
                + _num(median_ms(ours.import_sums))
                + " ms: "
                + _costliest(ours, floor_modules)
            )
        rows.append(
            (
                f"`import runalways` adds ≤ {STARTUP_LIMIT_MS:g} ms",
                f"{overhead:+.2f} ms",
                overhead <= STARTUP_LIMIT_MS,
                why,
            )
        )
        if "rawflock" in startup:
            floor = startup["rawflock"].paired_ms[0]
            gap = overhead - floor
            rows.append(
                (
                    f"within {FLOOR_MARGIN_MS:g} ms of the raw-flock floor",
                    f"{gap:+.2f} ms ({overhead:+.2f} vs {floor:+.2f})",
                    gap <= FLOOR_MARGIN_MS,
                    ""
                    if gap <= FLOOR_MARGIN_MS
                    else "the difference is runalways' own imports: " + _costliest(ours, floor_modules),
                )
            )
        peers = [result for result in startup.values() if result.guard.group == "peer"]
        slower = [peer for peer in peers if overhead >= peer.paired_ms[0]]
        why = ""
        if slower:
            why = "not less than " + ", ".join(peer.guard.label for peer in slower)
            if any(peer.guard.key == "flock1" for peer in slower):
                why += " (flock(1) is a small C program: its fork and exec cost less than runalways' Python imports)"
        rows.append(("less than every peer", f"{len(peers) - len(slower)} of {len(peers)} peers", not slower, why))
    for result in results.stampede:
        if result.guard.is_runalways and result.held:
            exact = sum(1 for r in result.held if r.bodies == 1 and not r.timed_out)
            rows.append(
                (
                    f"stampede, {result.guard.label}: exactly one body every round",
                    f"{exact} of {len(result.held)} rounds",
                    exact == len(result.held),
                    "" if exact == len(result.held) else "see the stampede table",
                )
            )
    floors = {h.by_exit: h for h in results.handover if h.guard.key == "rawflock" and h.latencies}
    for handover in results.handover:
        if not handover.guard.is_runalways or not handover.latencies or handover.guard.is_wrapper:
            continue  # the command line's figure includes the job's own start; no target
        value = ph.median(handover.latencies) * 1000
        how = "released by exit" if handover.by_exit else "released at once"
        if handover.guard.kernel_wait or handover.guard.server_wait:
            floor_run = floors.get(handover.by_exit)
            if floor_run is None:
                continue
            margin = KERNEL_HANDOVER_MARGIN_MS if handover.guard.kernel_wait else SERVER_HANDOVER_MARGIN_MS
            base = ph.median(floor_run.latencies) * 1000
            met = value - base <= margin
            rows.append(
                (
                    f"hand-over ({how}), {handover.guard.label}: median within {margin:g} ms of the raw floor",
                    f"{value - base:+.2f} ms ({value:.2f} vs {base:.2f})",
                    met,
                    "" if met else f"the waiter is woken by {handover.guard.wait_doc}",
                )
            )
        else:
            met = value <= POLLING_HANDOVER_LIMIT_MS
            rows.append(
                (
                    f"hand-over ({how}), {handover.guard.label}: median ≤ {POLLING_HANDOVER_LIMIT_MS:g} ms",
                    f"{value:.2f} ms",
                    met,
                    "" if met else f"no wake-up; it waits by: {handover.guard.wait_doc}",
                )
            )
    return rows


def median_ms(values_us: list[float]) -> float:
    return ph.median(values_us) / 1000


def _costliest(result: ph.Startup, exclude: set[str], count: int = 4) -> str:
    """The ``count`` modules of the guard's imports with the largest self time, but ``exclude``."""
    own = sorted(
        (
            (ph.median([entry[0] for entry in runs]), name)
            for name, runs in result.import_tree.items()
            if name not in exclude
        ),
        reverse=True,
    )[:count]
    return ", ".join(f"{name} {microseconds / 1000:.2f} ms" for microseconds, name in own) + " (self time)"


# ---------------------------------------------------------------------------------------


def _startup_section(results: Results) -> list[str]:
    counts = results.counts
    lines = [
        "## 1. Start-up overhead: guarded no-op job vs bare `python job.py`",
        "",
        f"{counts.startup_pairs} rounds; in each, every guard ran once paired with a bare run right before or after it "
        "(the order of guards shuffled, the order within a pair alternating), after "
        f"{counts.warmups} warm-up runs that also wrote the byte code. Whole-process wall time, spawn to reaping. "
        "**overhead** = median of the per-pair differences (25th-75th percentile); "
        "Δ medians = median guarded - median bare; ratio = median of the per-pair ratios (min-max). "
        f"**imports** = `python -X importtime job.py`: the cumulative time of the top-level imports the guard adds, "
        f"summed, median of {counts.importtime_runs} runs (the two costliest in brackets).",
        "",
        "| guard | guarded ms | bare ms | overhead ms | Δ medians ms | ratio | imports ms | pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(results.startup, key=lambda r: (r.guard.group != "floor", r.paired_ms[0] if r.pairs else 1e9))
    for result in ordered:
        if result.error or not result.pairs:
            lines.append(f"| {result.guard.label} | - | - | - | - | - | - | failed: {result.error or 'no run'} |")
            continue
        middle, low, high = result.paired_ms
        ratio, ratio_low, ratio_high = result.ratios
        if result.guard.is_wrapper:
            imports = "- (a command)"
        else:
            # What a guard costs is in its top-level imports; for runalways (always the top
            # level) in the modules right under it: the backend and the core.
            top = result.import_top
            if result.guard.is_runalways:
                top = {name: [run[1] for run in runs] for name, runs in result.import_tree.items() if runs[0][2] == 1}
            tops = sorted(((ph.median(v), k) for k, v in top.items()), reverse=True)[:2]
            imports = f"{median_ms(result.import_sums):.2f}"
            if tops:
                imports += " (" + ", ".join(f"{name} {value / 1000:.2f}" for value, name in tops) + ")"
        failures = f", {result.failures} failed" if result.failures else ""
        lines.append(
            f"| {result.guard.label} | {result.guarded_ms:.1f} | {result.bare_ms:.1f} | "
            f"**{middle:+.2f}** ({low:+.2f}…{high:+.2f}) | {result.overhead_ms:+.2f} | "
            f"{ratio:.2f} ({ratio_low:.2f}-{ratio_high:.2f}) | {imports} | {len(result.pairs)}{failures} |"
        )
    for guard in results.guards:
        if guard.skipped:
            lines.append(f"| {guard.label} | not measured: {guard.skipped} | | | | | | |")
    lines += ["", "![start-up overhead](startup.png)", ""]
    default = _default_key(results)
    # The default guard, and the same guard at the --baseline revision: before and after.
    measured = [
        result
        for result in results.startup
        if result.import_tree and (result.guard.key == default or result.guard.key.startswith("runalways-at-"))
    ]
    for result in sorted(measured, key=lambda result: result.guard.key != default):
        ours = sum(1 for name in result.import_tree if name.split(".")[0] == "runalways")
        lines += [
            f"### What `import runalways` imports: {result.guard.label}",
            "",
            "Every module the guard's import loads, as `-X importtime` prints them (a module after the "
            f"modules it imports; indentation = depth); median µs of {len(result.import_sums)} runs; "
            f"{ours} of them runalways's own.",
            "",
            "| module | self µs | cumulative µs |",
            "|---|---|---|",
        ]
        for name, runs in result.import_tree.items():
            depth = runs[0][2]
            own = ph.median([run[0] for run in runs])
            cumulative = ph.median([run[1] for run in runs])
            lines.append(f"| {'· ' * depth}`{name}` | {own:.0f} | {cumulative:.0f} |")
        lines.append("")
    return lines


def _stampede_section(results: Results) -> list[str]:
    counts = results.counts
    lines = [
        f"## 2. Stampede: {ph.COPIES} copies started at once",
        "",
        f"Each round starts {ph.COPIES} copies that wait on a pipe and exec the job together when the harness "
        "closes it. **Held rounds** "
        f"({counts.stampede_rounds}): the body holds on until every other copy has exited or started a body too, "
        "so a second body is two copies running at the same time. **Churn rounds** "
        f"({counts.churn_rounds}): the body lasts {ph.CHURN_BODY_SECONDS * 1000:.0f} ms, later legal runs may follow; "
        "an overlap is two bodies running at the same time. losers exited = median seconds from the gate opening until "
        "the last copy that ran no body had exited.",
        "",
        "| guard | held rounds with exactly one body | bodies/round (range) | losers exited s | "
        "churn: rounds with overlap | churn: bodies/round (range) | churn: all exited s | non-zero exits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results.stampede:
        held, churn = result.held, result.churn
        exact = sum(1 for r in held if r.bodies == 1 and not r.timed_out)
        bodies = [r.bodies for r in held]
        losers = [r.losers_exited for r in held if r.losers_exited is not None]
        churn_bodies = [r.bodies for r in churn]
        overlaps = sum(1 for r in churn if r.overlap)
        all_exited = [r.all_exited for r in churn if r.all_exited is not None]
        nonzero = sum(r.nonzero for r in held + churn)
        timeouts = sum(1 for r in held + churn if r.timed_out)
        lines.append(
            f"| {result.guard.label} | {exact}/{len(held)} | {_spread(bodies)} | "
            f"{_num(ph.median(losers)) if losers else '-'} | {overlaps}/{len(churn)} | {_spread(churn_bodies)} | "
            f"{_num(ph.median(all_exited)) if all_exited else '-'} | {nonzero}"
            + (f", {timeouts} rounds timed out" if timeouts else "")
            + " |"
        )
    lines.append("")
    return lines


def _spread(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{ph.median([float(v) for v in values]):g} ({min(values)}-{max(values)})"


def _handover_section(results: Results) -> list[str]:
    lines = [
        "## 3. Hand-over in wait mode",
        "",
        f"A chain of copies in wait mode (up to {g.WAIT_SECONDS} s): each is started while the one before holds the "
        "lock; once it waits (it reported reaching its lock call, and a kernel waiter shows in /proc/locks), the "
        "harness sleeps a seeded random 0.1-0.35 s, so the release lands at a random point of a poller's cycle, then "
        "tells the holder to let go. The holder writes `time.monotonic()` right before it lets go; the waiter "
        "right after its acquire returns. *Released at once*: the holder calls its guard's release right after "
        "its timestamp, so the figure is the waiter's side alone. *Released by exit*: the holder's script ends, "
        "as a job does, and its interpreter's shutdown and the guard's own exit work come in between. For the "
        "commands (flock(1), `runalways run`) the holder's job writes its timestamp as it ends and the command "
        "then releases; the waiter's figure includes starting the job's Python.",
        "",
        "| guard | trials | released at once: median ms | p90 ms | released by exit: median ms | p90 ms "
        "| waiter seen blocked in the kernel | waiting |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_guard: dict[str, dict[bool, ph.Handover]] = {}
    for result in results.handover:
        by_guard.setdefault(result.guard.key, {})[result.by_exit] = result

    def order(modes: dict[bool, ph.Handover]) -> float:
        first = modes.get(False) or modes[True]
        return ph.median(first.latencies) if first.latencies else 1e9

    for modes in sorted(by_guard.values(), key=order):
        cells = []
        trials = []
        for by_exit in (False, True):
            measured = modes.get(by_exit)
            if measured is None:
                cells += ["-", "-"]
                continue
            values = measured.latencies
            trials.append(f"{len(values)}" + (f" ({measured.error})" if measured.error else ""))
            cells += [f"**{_ms(ph.median(values), 2)}**", _ms(ph.percentile(values, 0.9), 2)]
        guard = next(iter(modes.values())).guard
        blocked = (
            " + ".join(f"{m.seen_blocked}/{len(m.latencies)}" for m in modes.values())
            if guard.kernel_wait
            else "- (no kernel wait)"
        )
        lines.append(f"| {guard.label} | {' + '.join(trials)} | {' | '.join(cells)} | {blocked} | {guard.wait_doc} |")
    cannot = [guard.label for guard in results.guards if not guard.can_wait and not guard.skipped]
    if cannot:
        lines += ["", "No wait mode: " + ", ".join(cannot) + "."]
    lines.append("")
    return lines


def _crash_section(results: Results) -> list[str]:
    lines = [
        "## 4. Crash release: the holder SIGKILLed, the next copy started at once",
        "",
        f"{results.counts.crash_repeats} repeats. next start = median ms from the SIGKILL until the next copy's body "
        "ran (it includes that copy's start-up). For the commands, either the job under the command is killed, or "
        "only the command itself, leaving its job running. Left behind = files in the job's directory and its "
        "TMPDIR (`tmp/`, where runalways's own lock directory is too) after the kill, and after a clean run in a "
        "fresh directory.",
        "",
        "| guard | killed | next start runs | next start ms | old job still running | left behind after kill | "
        "after a clean run |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results.crash:
        ran = [value for value in result.next_start if value is not None]
        killed = "the job" if result.variant == "job" else "only the command"
        both = f"**{result.both_ran}/{len(result.next_start)}**" if result.both_ran else "no"
        if not result.guard.is_wrapper or result.variant == "job":
            both = "-" if not result.both_ran else both
        note = f" ({result.error})" if result.error else ""
        lines.append(
            f"| {result.guard.label} | {killed} | {len(ran)}/{len(result.next_start)}{note} | "
            f"{_ms(ph.median(ran), 0) if ran else '-'} | {both} | {_files(result.left_after_kill)} | "
            f"{_files(result.left_after_clean)} |"
        )
    lines.append("")
    return lines


def _files(names: list[str]) -> str:
    return "nothing" if not names else ", ".join(f"`{name}`" for name in names)


def _cluster_section(results: Results) -> list[str]:
    lines = ["## 5. Cluster backends", ""]
    if results.cluster is None:
        return [*lines, "Not run (phase not selected).", ""]
    for name, cluster in results.cluster.items():
        if not cluster.measured:
            lines += [f"`{name}`: not measured: {cluster.why}.", ""]
            continue
        lines += [
            f'`runalways.api.lock(name=..., backend="{name}")`: {ph.CLUSTER_BACKENDS[name]}, release, '
            f"{len(cluster.acquire)} times in one process.",
            "",
            "| step | median ms | p90 ms | min-max ms |",
            "|---|---|---|---|",
        ]
        for step, values in (("acquire", cluster.acquire), ("release", cluster.release)):
            lines.append(
                f"| {step} | {_ms(ph.median(values), 2)} | {_ms(ph.percentile(values, 0.9), 2)} | "
                f"{_ms(min(values), 2)}-{_ms(max(values), 2)} |"
            )
        lines.append("")
    return lines


def markdown(results: Results) -> str:
    facts = results.machine
    lines = ["# runalways vs its peers: benchmark results", ""]
    if results.quick:
        lines += ["**A quick smoke run (`--quick`): too few runs to quote. Run without `--quick` for figures.**", ""]
    lines += [
        "Written by `python3 benchmarks/run.py`"
        + (" --quick" if results.quick else "")
        + f" (seed {results.seed}). Quote medians and ratios: the milliseconds move with the machine and its load.",
        "",
        *[f"- **{key}**: {value}" for key, value in facts.items()],
        "",
        "Every guard does the same: a non-blocking exclusive lock keyed on the job script, exit 0 when another copy "
        "holds it. runalways is installed from a wheel, as users get it; every guard runs in a clean environment "
        "(no `RUNALWAYS_*`, no `PYTHONDONTWRITEBYTECODE`) with the byte code written.",
        "",
        "| guard | how |",
        "|---|---|",
        *[
            f"| {guard.label} | {guard.how}" + (f"; **not measured**: {guard.skipped}" if guard.skipped else "") + " |"
            for guard in results.guards
        ],
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    targets = _targets(results)
    for target, measured, met, why in targets:
        verdict = "-" if met is None else ("yes" if met else f"**no**: {why}")
        lines.append(f"| {target} | {measured} | {verdict} |")
    if not targets:
        lines.append("| (no phase measured a target) | | |")
    lines.append("")
    if results.startup:
        lines += _startup_section(results)
    if results.stampede:
        lines += _stampede_section(results)
    if results.handover:
        lines += _handover_section(results)
    if results.crash:
        lines += _crash_section(results)
    lines += _cluster_section(results)
    return "\n".join(lines).rstrip() + "\n"


def chart(results: Results, path: Path) -> None:
    """Horizontal bars of the start-up overhead (median of the paired differences, IQR whiskers)."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.patches  # type: ignore[import-not-found,unused-ignore]
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    import matplotlib.ticker  # type: ignore[import-not-found,unused-ignore]

    measured = [r for r in results.startup if r.pairs and not r.error]
    measured.sort(key=lambda r: r.paired_ms[0], reverse=True)
    colours = {"runalways": "#2a7ab0", "floor": "#7f7f7f", "peer": "#d9822b", "control": "#bbbbbb"}
    labels = [r.guard.label.replace("`", "") for r in measured]
    values = [r.paired_ms[0] for r in measured]
    low = [max(r.paired_ms[0] - r.paired_ms[1], 0.0) for r in measured]
    high = [max(r.paired_ms[2] - r.paired_ms[0], 0.0) for r in measured]
    figure, axes = plt.subplots(figsize=(9, 0.42 * len(measured) + 1.6))
    axes.barh(labels, values, xerr=[low, high], color=[colours[r.guard.group] for r in measured], capsize=3)
    axes.set_xscale("symlog", linthresh=1.0)
    names = {"runalways": "runalways", "peer": "peers", "floor": "floor (raw flock)"}
    shown = [group for group in names if any(r.guard.group == group for r in measured)]
    handles = [matplotlib.patches.Patch(color=colours[group], label=names[group]) for group in shown]
    axes.legend(handles=handles, loc="upper right", fontsize=8)
    axes.axvline(STARTUP_LIMIT_MS, color="#2a7ab0", linestyle="--", linewidth=1)
    axes.text(STARTUP_LIMIT_MS, len(measured) - 0.4, " 1 ms target", color="#2a7ab0", fontsize=8, va="bottom")
    for position, (value, above) in enumerate(zip(values, high)):
        right = max(value + above, 0.0)
        axes.text(right * 1.1 + 0.08, position, f"{value:+.2f} ms", va="center", fontsize=8)
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    axes.set_xlabel("start-up overhead over a bare `python job.py`, ms (median of paired differences; symlog)")
    title = "Start-up overhead of single-instance guards"
    if results.quick:
        title += " (quick smoke run)"
    axes.set_title(f"{title}\n{results.machine['python']}, {results.machine['date']}", fontsize=10)
    axes.set_xlim(left=min(0.0, min(values, default=0.0)) - 0.1, right=max(values, default=1.0) * 2.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: Results, out: Path) -> None:
    """RESULTS.md and startup.png in ``out``; the chaos soak's section of an earlier RESULTS.md stays."""
    path = out / "RESULTS.md"
    text = markdown(results)
    soak = soak_section.read(path.read_text()) if path.exists() else None
    path.write_text(text if soak is None else soak_section.write(text, soak))
    if results.startup:
        chart(results, out / "startup.png")
