"""What only the redis backend meets: eviction, logins, ACLs, replicas; each with a real redis-server.

The cases every cluster backend shares are in test_cluster.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import redis
import servers
from harness import read_line, reap, wait_until
from servers import RedisServer
from test_cluster import TIMEOUT, TTL, finish, token_of

from runalways.backends.redis import ACL_NEEDED

SECRET = "s3cret-Pw"

JOB = (
    "import runalways\nimport runalways.api, sys\nprint('ready', runalways.api.token(), flush=True)\nsys.stdin.read()\n"
)


class Runner:
    def __init__(self, workdir: Path) -> None:
        self.script = workdir / "job.py"
        self.script.write_text(JOB)
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, url: str, **extra: str) -> subprocess.Popen[bytes]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
        env.update(
            {"RUNALWAYS_BACKEND": "redis", "RUNALWAYS_URL": url, "RUNALWAYS_TTL": str(TTL), "RUNALWAYS_SILENT": "1"}
        )
        env.update(extra)
        process = subprocess.Popen(
            [sys.executable, str(self.script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        self.started.append(process)
        return process

    def run(self, url: str, **extra: str) -> tuple[int, str, str]:
        return finish(self.start(url, **extra))


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    started = Runner(tmp_path)
    try:
        yield started
    finally:
        reap(started.started)


def aged(*arguments: str) -> contextlib.AbstractContextManager[RedisServer]:
    """A server old enough that no take waits out the restart grace."""
    return servers.aged(RedisServer(*arguments), TTL)


@pytest.fixture(scope="module")
def locked_down() -> Iterator[RedisServer]:
    """A server with a password, and ACL users of limited rights."""
    with aged("--requirepass", SECRET) as server:
        yield server


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=SECRET, socket_timeout=TIMEOUT)


def one_line(stderr: str) -> None:
    assert stderr.startswith("runalways: ") and stderr.count("\n") == 1, stderr
    assert SECRET not in stderr


def test_an_evicting_server_is_refused_unless_allowed(runner: Runner) -> None:
    with aged("--maxmemory-policy", "allkeys-lru") as server:
        returncode, stdout, stderr = runner.run(server.url)
        assert (returncode, stdout) == (2, "")
        one_line(stderr)
        assert "maxmemory-policy allkeys-lru" in stderr and "RUNALWAYS_REDIS_EVICTION=allow" in stderr
        allowed = runner.start(server.url, RUNALWAYS_REDIS_EVICTION="allow")
        token_of(read_line(allowed))
        assert finish(allowed)[0] == 0


def test_a_wrong_password_is_a_refused_login_not_an_unreachable_server(
    runner: Runner, locked_down: RedisServer
) -> None:
    for login in (f":wrong-{SECRET}@", ""):  # WRONGPASS, NOAUTH
        url = f"redis://{login}127.0.0.1:{locked_down.port}/0"
        # Not even RUNALWAYS_UNREACHABLE=run lets it through: the server is there, and said no.
        returncode, stdout, stderr = runner.run(url, RUNALWAYS_UNREACHABLE="run")
        assert (returncode, stdout) == (2, "")
        one_line(stderr)
        assert stderr.startswith(f"runalways: the Redis server at 127.0.0.1:{locked_down.port}/0 refused the login")
        assert "check the user name and password in RUNALWAYS_URL" in stderr


@pytest.mark.parametrize(
    ("user", "keys", "commands"),
    [
        ("elsewhere", ["other:*"], ["+@all"]),  # NOPERM on the keys
        ("scripts-only", ["runalways:*"], ["+@scripting", "+wait"]),  # the script's own commands refused
    ],
)
def test_an_acl_that_forbids_the_lock_says_what_the_user_needs(
    runner: Runner, locked_down: RedisServer, user: str, keys: list[str], commands: list[str]
) -> None:
    admin(locked_down).acl_setuser(user, enabled=True, passwords=[f"+{SECRET}"], keys=keys, commands=commands)
    returncode, stdout, stderr = runner.run(f"redis://{user}:{SECRET}@127.0.0.1:{locked_down.port}/0")
    assert (returncode, stdout) == (2, "")
    one_line(stderr)
    assert "the Redis server's ACL does not let this user take the lock" in stderr and ACL_NEEDED in stderr


def test_an_acl_user_with_what_the_readme_lists_holds_the_lock(runner: Runner, locked_down: RedisServer) -> None:
    needed = ACL_NEEDED.split()
    admin(locked_down).acl_setuser(
        "least",
        enabled=True,
        passwords=[f"+{SECRET}"],
        keys=[rule for rule in needed if rule.startswith("~")],
        commands=[rule for rule in needed if rule.startswith("+")],
    )
    holder = runner.start(f"redis://least:{SECRET}@127.0.0.1:{locked_down.port}/0", RUNALWAYS_SILENT="")
    token_of(read_line(holder))
    returncode, _, stderr = finish(holder)
    assert returncode == 0 and "runalways:" not in stderr, stderr


def test_without_config_and_info_it_says_so_once_and_runs(runner: Runner, locked_down: RedisServer) -> None:
    admin(locked_down).acl_setuser(
        "jobs", enabled=True, passwords=[f"+{SECRET}"], keys=["runalways:*"], commands=["+@all", "-config", "-info"]
    )
    url = f"redis://jobs:{SECRET}@127.0.0.1:{locked_down.port}/0"
    holder = runner.start(url, RUNALWAYS_SILENT="")
    token_of(read_line(holder))
    returncode, _, stderr = finish(holder)
    assert returncode == 0
    notices = [line for line in stderr.splitlines() if line.startswith("runalways: ")]
    assert len(notices) == 1 and "does not allow CONFIG GET maxmemory-policy" in notices[0] and "INFO" in notices[0]
    assert SECRET not in stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("RUNALWAYS_REDIS_EVICTION", "sometimes"), ("RUNALWAYS_URL", "http://127.0.0.1:6379/0")],
)
def test_bad_redis_settings_are_one_line_and_exit_2(runner: Runner, variable: str, value: str) -> None:
    url = value if variable == "RUNALWAYS_URL" else "redis://127.0.0.1:1/0"
    returncode, stdout, stderr = runner.run(url, **({variable: value} if variable != "RUNALWAYS_URL" else {}))
    assert (returncode, stdout) == (2, "")
    one_line(stderr)
    assert variable in stderr


def test_with_a_replica_a_holder_whose_renewals_no_replica_acknowledges_is_fenced(runner: Runner) -> None:
    with (
        aged() as primary,
        RedisServer("--replicaof", "127.0.0.1", str(primary.port)) as replica,
    ):
        copy = redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=TIMEOUT)
        wait_until(lambda: copy.info("replication").get("master_link_status") == "up", "the replica to be in sync")
        # The replica itself refuses the lock, and says to use the primary.
        returncode, stdout, stderr = runner.run(replica.url)
        assert (returncode, stdout) == (2, "")
        one_line(stderr)
        assert "is a read-only replica" in stderr and "use the primary's URL" in stderr
        holder = runner.start(primary.url)
        token_of(read_line(holder))  # the take was acknowledged by the replica
        replica.signal(signal.SIGSTOP)
        try:
            # No renewal is acknowledged any more: the holder's timer ends it.
            assert holder.wait(timeout=TIMEOUT) == -signal.SIGKILL
            # A new take that no replica acknowledges does not run.
            returncode, stdout, stderr = runner.run(primary.url)
            assert (returncode, stdout) == (2, "")
            assert "no replica of the Redis server" in stderr
        finally:
            replica.signal(signal.SIGCONT)
