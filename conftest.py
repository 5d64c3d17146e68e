"""What tests/ and spec/ share: how many workers ``-n auto`` starts, and one PostgreSQL server,
one Redis server and one node exporter for each pytest process.

Each pytest-xdist worker starts its own (tests/servers.py), on first use, a lease old before
any test gets it (a younger server makes every new holder wait out the restart grace).
The cluster cases (tests/test_cluster.py) and the conformance suite's runs of the cluster
backends share them: every test uses lock names of its own, and none restarts, stops or
reconfigures these servers (a test that does starts a server of its own).

The node exporter's textfile collector reads one directory at every scrape: the metrics
cases (spec/conformance/test_metrics.py) write their jobs' files there, each under job
names of its own.

libfaketime's wrapper creates its semaphore and shared memory with O_EXCL under its own pid
and removes them when it ends; a wrapper killed outright leaves them behind, and a later
wrapper that gets the same pid then refuses to start ("sem_open: File exists"). The first
pytest process removes those of processes that are gone before any case starts one.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from servers import NodeExporter, PostgresServer, RedisServer, ServerProcess, aged


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller, once, before the workers start
        remove_faketime_leftovers()
        compile_runalways()


def compile_runalways() -> None:
    """Write runalways's bytecode once, before thousands of test processes start it.

    Where PYTHONDONTWRITEBYTECODE is set (as in many CI environments and containers), no
    start writes it, and every start compiled every module it loaded from source: half of a
    guarded start's 40 ms, and most of the suite's time. Bytecode is only read back when it
    matches its source, so this changes no outcome.
    """
    import compileall

    import runalways

    compileall.compile_dir(os.path.dirname(runalways.__file__), quiet=1)


def remove_faketime_leftovers(shm: str = "/dev/shm") -> None:
    """The semaphores and shared memory of libfaketime's wrappers whose process is gone."""
    try:
        names = os.listdir(shm)
    except OSError:
        return
    for name in names:
        if not name.startswith(("faketime_shm_", "sem.faketime_sem_")):
            continue
        pid = name.rpartition("_")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(shm, name))
            except OSError:
                pass  # another user's, or gone already


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: three pytest-xdist workers for two cores, where pytest-xdist starts two.

    Much of a case's time is spent waiting on the processes and servers it started (leases,
    heartbeats, deadlines, a stopped holder's fence): with one worker a core the cores sat
    idle about a third of the run, and a half more workers keep them busy. More than that
    gained little once the cores were full, and made the timing cases (a holder fenced
    within its lease on a loaded machine) fail now and then. PYTEST_XDIST_AUTO_NUM_WORKERS,
    when set, and ``-n logical`` still get pytest-xdist's own count.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or config.option.numprocesses == "logical":
        return None
    cores = len(os.sched_getaffinity(0))
    return cores + cores // 2


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ServerProcess]:
    with aged(PostgresServer()) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerProcess]:
    with aged(RedisServer()) as server:
        yield server


@pytest.fixture(scope="session")
def node_exporter() -> Iterator[NodeExporter]:
    with NodeExporter() as server:
        yield server
