"""Conformance suite set-up: one run per backend, real processes, clause bookkeeping.

``pytest spec`` runs every case for every registered backend that can work on this
machine; ``pytest spec --backend NAME`` (repeatable) runs a chosen one, such as a
third-party backend registered under the ``runalways.backends`` entry-point group.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest
import servers
from harness import Procs, directory_others_can_read

from runalways.backends import get_class, names

#: Where the matrix generator (spec/matrix.py) collects observed outcomes.
MATRIX_OUT = "SPEC_MATRIX_OUT"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        default=[],
        metavar="NAME",
        help="run the conformance suite for this backend only (repeatable; default: every usable one)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(*ids): the SPEC.md clauses this test verifies")


def chosen_backends(config: pytest.Config) -> list[str]:
    chosen: list[str] = config.getoption("--backend")
    if chosen:
        return chosen
    return [name for name in names() if get_class(name).unavailable() is None]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", chosen_backends(metafunc.config))
    if "cluster_backend" in metafunc.fixturenames:
        # A case about what a cluster backend's server does: the backends whose lock is on one.
        cluster = [name for name in chosen_backends(metafunc.config) if get_class(name).capabilities.across_hosts]
        metafunc.parametrize("cluster_backend", cluster)
    if "local_backend" in metafunc.fixturenames:
        # A case about what a backend keeps on this host: the backends whose lock is local.
        local = [name for name in chosen_backends(metafunc.config) if not get_class(name).capabilities.across_hosts]
        metafunc.parametrize("local_backend", local)


#: The cluster backends' lease in the suite: short, so that lease cases stay fast.
LEASE_TTL = servers.LEASE_TTL


@pytest.fixture(scope="session")
def postgres_settings(postgres_server: servers.ServerProcess) -> dict[str, str]:
    """The postgres backend's settings: this worker's PostgreSQL server (the root conftest.py's)."""
    return {"RUNALWAYS_URL": postgres_server.url, "RUNALWAYS_TTL": str(LEASE_TTL)}


@pytest.fixture(scope="session")
def redis_settings(redis_server: servers.ServerProcess) -> dict[str, str]:
    """The redis backend's settings: this worker's Redis server (the root conftest.py's)."""
    return {"RUNALWAYS_URL": redis_server.url, "RUNALWAYS_TTL": str(LEASE_TTL)}


#: The fixture giving each cluster backend its server.
SERVER_SETTINGS = {"postgres": "postgres_settings", "redis": "redis_settings"}


@pytest.fixture
def procs(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    settings: dict[str, str] = request.getfixturevalue(SERVER_SETTINGS[backend]) if backend in SERVER_SETTINGS else {}
    started = Procs(backend, tmp_path, settings)
    try:
        yield started
    finally:
        started.reap()


@pytest.fixture
def local_procs(local_backend: str, tmp_path: Path) -> Iterator[Procs]:
    """Processes for a case about what a backend keeps on this host, run for each local backend."""
    started = Procs(local_backend, tmp_path)
    try:
        yield started
    finally:
        started.reap()


@pytest.fixture
def cluster_procs(cluster_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    """Processes for a case about a cluster backend's server, run for each cluster backend."""
    started = Procs(cluster_backend, tmp_path, request.getfixturevalue(SERVER_SETTINGS[cluster_backend]))
    try:
        yield started
    finally:
        started.reap()


@pytest.fixture
def fcntl_procs(tmp_path: Path) -> Iterator[Procs]:
    """Processes for a case about the registry or the core, run once rather than per backend."""
    started = Procs("fcntl", tmp_path)
    try:
        yield started
    finally:
        started.reap()


@pytest.fixture
def exit_releasing_procs(tmp_path: Path, redis_settings: dict[str, str]) -> Iterator[Procs]:
    """Processes for a case about a lock given back by an ``atexit`` handler rather than by the
    process's end: the redis backend's (a postgres lock goes with its connection, a file lock
    with the process)."""
    started = Procs("redis", tmp_path, redis_settings)
    try:
        yield started
    finally:
        started.reap()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with directory_others_can_read() as path:
        yield path


@pytest.fixture
def capabilities(backend: str) -> object:
    return get_class(backend).capabilities


@pytest.fixture
def observe(backend: str, request: pytest.FixtureRequest) -> object:
    """Record an observed outcome for spec/MATRIX.md: ``observe("case", "outcome")``."""

    def record(case: str, outcome: str) -> None:
        destination = os.environ.get(MATRIX_OUT)
        if destination:
            with open(destination, "a") as out:
                out.write(json.dumps({"backend": backend, "case": case, "outcome": outcome}) + "\n")

    return record
