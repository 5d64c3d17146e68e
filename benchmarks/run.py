#!/usr/bin/env python3
"""Benchmark runalways against its peers: ``python3 benchmarks/run.py [--quick]``.

One command does everything. It makes (or refreshes) a virtual environment of its own,
``benchmarks/.venv``, with runalways installed as users get it, from a wheel (an editable
install's import hook would add milliseconds to every start), plus the peers of the
``benchmark`` extra; then it re-runs itself with that environment's Python and measures:

1. start-up overhead of a guarded no-op job over a bare one, and what each guard imports;
2. a stampede of 32 copies started at once;
3. hand-over latency in wait mode;
4. crash release: the holder SIGKILLed, the next copy started at once;
5. the cluster backends' acquire/release latency, where a server is given (``RUNALWAYS_URL`` or
   ``BENCHMARK_URL_POSTGRES`` for postgres, ``BENCHMARK_URL_REDIS`` for redis), or started:
   ``--servers`` starts a PostgreSQL and a Redis server of its own on 127.0.0.1 with the test
   suite's helpers (the postgresql and redis-server packages the test command installs).

It writes ``benchmarks/RESULTS.md`` and ``benchmarks/startup.png`` (``--quick``: a short
smoke run, written to ``benchmarks/.quick/`` so that it never replaces the real results).
The chaos soak's section of RESULTS.md, which ``benchmarks/soak.py`` writes, stays.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
EXTRAS = "benchmark,postgres,redis"
PHASES = ("startup", "stampede", "handover", "crash", "cluster")
#: Seconds the environment set-up may take (a first install downloads the peers).
SETUP_TIMEOUT = 600


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="benchmarks/run.py")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (results go to benchmarks/.quick/)")
    parser.add_argument("--out", type=Path, help="where RESULTS.md and startup.png go (default: benchmarks/)")
    parser.add_argument("--seed", type=int, default=20261124, help="seed of the random delays and orders")
    parser.add_argument(
        "--no-install", action="store_true", help="use benchmarks/.venv as it is (do not reinstall runalways)"
    )
    parser.add_argument(
        "--baseline",
        metavar="GIT-REF",
        help="also measure runalways as it was at this git revision, side by side (as 'runalways at REF')",
    )
    parser.add_argument(
        "--servers",
        action="store_true",
        help="measure the cluster backends against servers of its own on 127.0.0.1 (where no BENCHMARK_URL_* is set)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help="comma-separated phases to run (default: all)",
    )
    return parser.parse_args(argv)


def in_own_environment() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def set_up_environment() -> None:
    """Create benchmarks/.venv if needed and install runalways (from a wheel) and the peers."""
    if not VENV_PYTHON.exists():
        print(f"benchmarks: creating {VENV.relative_to(PROJECT)}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    with tempfile.TemporaryDirectory(prefix="runalways-bench-src-") as source:
        # Build from a copy of the sources: the work tree may be changing under us.
        for name in ("pyproject.toml", "README.md", "runalways-eager-import.pth"):
            shutil.copy2(PROJECT / name, Path(source) / name)
        shutil.copytree(PROJECT / "runalways", Path(source) / "runalways", ignore=shutil.ignore_patterns("__pycache__"))
        pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        print("benchmarks: installing runalways (wheel) and the peers", file=sys.stderr)
        subprocess.run([*pip, f"{source}[{EXTRAS}]"], check=True, timeout=SETUP_TIMEOUT, env=env)
        # Always the tree as it is now, even when the version number did not change.
        subprocess.run([*pip, "--force-reinstall", "--no-deps", source], check=True, timeout=SETUP_TIMEOUT, env=env)


def child_environment() -> dict[str, str]:
    """The environment of every measured process: ours, without RUNALWAYS_* settings and
    without the Python variables that change how an interpreter starts."""
    dropped = (
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONPROFILEIMPORTTIME",
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RUNALWAYS_") and key not in dropped and key != "VIRTUAL_ENV"
    }
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


def measure(options: argparse.Namespace) -> None:
    import guards
    import phases
    import procs
    import report

    counts = phases.Counts.quick() if options.quick else phases.Counts.full()
    out = options.out or (HERE / ".quick" if options.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    only = {name.strip() for name in options.only.split(",")}
    unknown = only - set(PHASES)
    if unknown:
        raise SystemExit(f"benchmarks: unknown phase {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"benchmarks [{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    phases.set_child_subreaper()
    machine = report.machine_facts()
    with tempfile.TemporaryDirectory(prefix="runalways-bench-") as root:
        found = guards.peers() + guards.runalways_guards(str(VENV / "bin" / "runalways"))
        if options.baseline:
            found.append(guards.baseline(options.baseline, PROJECT, Path(root) / "baseline"))
        ctx = phases.Context(
            python=sys.executable,
            base_env=child_environment(),
            root=Path(root),
            counts=counts,
            rng=random.Random(options.seed),
            guards=found,
            log=log,
        )
        results = report.Results(machine=machine, counts=counts, quick=options.quick, seed=options.seed, guards=found)
        try:
            if "startup" in only:
                results.startup = phases.startup(ctx)
            if "stampede" in only:
                results.stampede = phases.stampede(ctx)
            if "handover" in only:
                results.handover = phases.handover(ctx)
            if "crash" in only:
                results.crash = phases.crash(ctx)
            if "cluster" in only:
                results.cluster = phases.cluster(ctx)
        finally:
            procs.reap_all()
            phases.reap_orphans()
        results.machine["load after"] = report.load_average()
        results.machine["duration"] = f"{time.monotonic() - began:.0f} s"
        report.write(results, out)
    log(f"wrote {out / 'RESULTS.md'} and {out / 'startup.png'}")


def main(argv: list[str]) -> int:
    options = parse_arguments(argv)
    if not in_own_environment():
        if not options.no_install or not VENV_PYTHON.exists():
            set_up_environment()
        # Measure with the environment's own Python, where runalways and the peers live.
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *argv])
    with own_servers(options.servers):
        measure(options)
    return 0


@contextlib.contextmanager
def own_servers(wanted: bool) -> Iterator[None]:
    """--servers: a PostgreSQL and a Redis server for the cluster backends that no
    BENCHMARK_URL_* names, started (and stopped) by the test suite's helpers."""
    if not wanted:
        yield
        return
    sys.path.insert(0, str(PROJECT / "tests"))
    import servers

    from runalways._settings import DEFAULT_TTL

    with contextlib.ExitStack() as stack:
        started = {  # started together, so that they age together
            variable: stack.enter_context(server())
            for variable, server in (
                ("BENCHMARK_URL_POSTGRES", servers.PostgresServer),
                ("BENCHMARK_URL_REDIS", servers.RedisServer),
            )
            if not os.environ.get(variable)
        }
        for variable, started_server in started.items():
            # A server younger than the lease makes the first holders wait out its restart grace.
            started_server.wait_until_older_than(DEFAULT_TTL)
            os.environ[variable] = started_server.url
        yield


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
