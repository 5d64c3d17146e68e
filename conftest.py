"""What tests/ and spec/ share: one PostgreSQL and one Redis server for each pytest process.

Each pytest-xdist worker starts its own (tests/servers.py), on first use, a lease old before
any test gets it (a younger server makes every new holder wait out the restart grace).
The cluster cases (tests/test_cluster.py) and the conformance suite's runs of the cluster
backends share them: every test uses lock names of its own, and none restarts, stops or
reconfigures these servers (a test that does starts a server of its own).
"""

from __future__ import annotations

from typing import Iterator

import pytest
from servers import PostgresServer, RedisServer, ServerProcess, aged


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ServerProcess]:
    with aged(PostgresServer()) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerProcess]:
    with aged(RedisServer()) as server:
        yield server
