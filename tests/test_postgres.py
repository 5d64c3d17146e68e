"""What only the postgres backend meets: a server that is there and refuses the login, with a real server.

The cases every cluster backend shares are in test_cluster.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from harness import wait_until
from servers import PostgresServer
from test_cluster import TTL, finish

SECRET = "s3cret-Pw"


@pytest.fixture(scope="module")
def guarded() -> Iterator[PostgresServer]:
    """A server where alice needs a password, mallory is rejected by pg_hba.conf, and bob does not exist."""
    with PostgresServer() as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE alice LOGIN PASSWORD '{SECRET}'")
            conn.execute("CREATE ROLE mallory LOGIN")
        hba = Path(server.data) / "pg_hba.conf"
        rules = "host all alice 127.0.0.1/32 scram-sha-256\nhost all mallory 127.0.0.1/32 reject\n"
        hba.write_text(rules + hba.read_text())
        server.signal(signal.SIGHUP)  # reload pg_hba.conf
        wait_until(lambda: "pg_hba.conf rejects" in refusal(server.port), "the server to reload pg_hba.conf")
        server.wait_until_older_than(TTL)
        yield server


def refusal(port: int) -> str:
    try:
        psycopg.connect(f"postgresql://mallory@127.0.0.1:{port}/postgres").close()
    except psycopg.OperationalError as error:
        return str(error)
    return ""


def run(url: str, tmp_path: Path) -> tuple[int, str, str]:
    script = tmp_path / "job.py"
    script.write_text("import runalways\nprint('body')\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RUNALWAYS_", "PG"))}
    # Not even RUNALWAYS_UNREACHABLE=run lets these through: the server is there, and said no.
    env.update(RUNALWAYS_BACKEND="postgres", RUNALWAYS_URL=url, RUNALWAYS_TTL=str(TTL), RUNALWAYS_UNREACHABLE="run")
    process = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    return finish(process)


@pytest.mark.parametrize(
    ("login", "database", "said"),
    [
        (f"alice:wrong-{SECRET}", "postgres", "password authentication failed"),
        ("alice", "postgres", "no password supplied"),
        ("bob", "postgres", 'role "bob" does not exist'),
        ("mallory", "postgres", "pg_hba.conf rejects"),
    ],
)
def test_a_refused_login_says_so_and_what_to_check(
    guarded: PostgresServer, tmp_path: Path, login: str, database: str, said: str
) -> None:
    returncode, stdout, stderr = run(f"postgresql://{login}@127.0.0.1:{guarded.port}/{database}", tmp_path)
    assert (returncode, stdout) == (2, "")
    assert stderr.startswith(f"runalways: the PostgreSQL server refused the login at 127.0.0.1:{guarded.port}/")
    assert said in stderr and "pg_hba.conf" in stderr and stderr.count("\n") == 1
    assert SECRET not in stderr


def test_a_missing_database_says_so(guarded: PostgresServer, tmp_path: Path) -> None:
    returncode, stdout, stderr = run(f"postgresql://alice:{SECRET}@127.0.0.1:{guarded.port}/nowhere", tmp_path)
    assert (returncode, stdout) == (2, "")
    assert stderr.startswith(
        f"runalways: no such database on the PostgreSQL server at 127.0.0.1:{guarded.port}/nowhere"
    )
    assert stderr.count("\n") == 1 and SECRET not in stderr


def test_the_right_password_runs(guarded: PostgresServer, tmp_path: Path) -> None:
    returncode, stdout, _ = run(f"postgresql://alice:{SECRET}@127.0.0.1:{guarded.port}/postgres", tmp_path)
    assert (returncode, stdout) == (0, "body\n")
