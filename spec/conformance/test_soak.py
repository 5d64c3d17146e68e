"""R10.2: a storm of starts, kills, stops, edits and network cuts never runs two bodies at once (benchmarks/soak.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fleet import fleet_soak
from harness import Procs
from soak import PLAIN, soak

#: Seconds of the short form each backend gets in the suite; the long form is
#: ``python3 benchmarks/soak.py --seconds 300``.
SECONDS = 4.0

#: Seconds of the fleet mode each backend gets in the suite, and its ticks' interval; the long
#: form is ``python3 benchmarks/soak.py --fleet --seconds 90``.
FLEET_SECONDS = 3.0
FLEET_INTERVAL = 0.6

#: The least share of the soak a body must have been running, for the local backends and
#: for the cluster ones (whose every start connects to a server, whose stopped holder keeps
#: the job out until it is fenced, and whose network is cut from soak.FIRST_CUT seconds on,
#: for up to twice the lease). The saboteur kills, stops and starves the job on
#: purpose, and the suite shares two cores with other tests: these floors catch a guard
#: that keeps every copy out, not a slow machine (portalocker's slow import came in at
#: 0.06 to 0.08 of 4 s with the load at 15 and more on 2 cores).
FLOOR = {False: 0.05, True: 0.02}


@pytest.mark.clause("R10.2")
def test_a_chaos_soak_never_runs_two_bodies_at_once(procs: Procs, capabilities: object, tmp_path: Path) -> None:
    ttl = float(procs.settings.get("RUNALWAYS_TTL", "0"))
    # A cluster holder stopped for longer than its lease is fenced while another takes over.
    report = soak(procs.backend, SECONDS, tmp_path / "soak", procs.settings, longest_stop=max(0.5, 1.5 * ttl))
    assert report.overlaps == 0, report
    assert report.tracebacks == 0 and report.unexpected == [], report
    across_hosts = capabilities.across_hosts  # type: ignore[attr-defined]
    # A cluster backend's network was cut (and restored) at least once; a local one has none.
    assert (report.cuts is not None and report.cuts > 0) if across_hosts else report.cuts is None, report
    assert report.bodies > 0 and report.availability >= FLOOR[across_hosts], report


@pytest.mark.clause("R1.7", "R10.2")
def test_a_chaos_soak_of_plain_starts_never_runs_two_bodies_at_once(tmp_path: Path) -> None:
    """The same storm for starts with no setting at all, which runalways/__init__.py decides alone."""
    report = soak(PLAIN, SECONDS, tmp_path / "soak")
    assert report.overlaps == 0, report
    assert report.tracebacks == 0 and report.unexpected == [], report
    assert report.bodies > 0 and report.availability >= FLOOR[False], report


@pytest.mark.clause("R16.8")
def test_a_fleet_soak_runs_each_tick_at_most_once_and_never_two_bodies_at_once(procs: Procs, tmp_path: Path) -> None:
    """Three hosts whose clocks disagree fire ticks of a job with RUNALWAYS_ONCE_PER, under the saboteur."""
    settings = dict(procs.settings)
    if "RUNALWAYS_URL" in settings:  # the worker's server is shared: a job of its own
        settings["RUNALWAYS_NAME"] = f"fleet-{uuid.uuid4().hex[:12]}"
    report = fleet_soak(procs.backend, FLEET_SECONDS, tmp_path / "fleet", settings, interval=FLEET_INTERVAL)
    assert report.twice == [] and report.missed == [] and report.wrong == [], report
    assert report.overlaps == 0 and report.tracebacks == 0 and report.unexpected == [], report
    assert report.ticks >= 4 and report.runs >= 1 and report.most == 1, report
