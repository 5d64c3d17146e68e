"""R1.5, R3: settings from the environment, good and bad, and scripts with no file."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from harness import HOLD, Procs, assert_already_running, finish, read_line, wait_until
from test_cluster import ENGINES


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert stderr.startswith("runalways: ") and stderr.endswith("\n"), stderr
    assert stderr.count("\n") == 1, f"not one line: {stderr!r}"
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


@pytest.mark.clause("R1.5")
@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_no_script_file_exits_2_and_runs_nothing(procs: Procs, how: str) -> None:
    code = "import runalways\nprint('body')\n"
    outcome = procs.run_python("-c", code) if how == "-c" else finish(procs.python("-"), stdin=code)
    assert outcome.returncode == 2 and outcome.stdout == ""
    assert_one_line_error(outcome.stderr, "no script file to lock", "save the code in a file")


@pytest.mark.clause("R1.6")
def test_interactive_session_gets_an_exception_and_survives(procs: Procs) -> None:
    session = finish(procs.python("-i", "-q"), stdin="import runalways\nprint('still here')\n")
    assert "NoScriptError" in session.stderr
    assert "still here" in session.stdout
    assert session.returncode == 0


@pytest.mark.clause("R3.1")
def test_unknown_backend_lists_the_known_ones(procs: Procs) -> None:
    job = procs.script("job.py", "print('body')\n")
    outcome = procs.run_python(job, env={"RUNALWAYS_BACKEND": "no-such-backend"})
    assert outcome.returncode == 2 and outcome.stdout == ""
    assert_one_line_error(outcome.stderr, "RUNALWAYS_BACKEND='no-such-backend'", "choose one of:", procs.backend)


BAD_VALUES = [
    ("RUNALWAYS_SILENT", "maybe", "1/true/yes/on"),
    ("RUNALWAYS_RETRY", "many", "N or N,S"),
    ("RUNALWAYS_RETRY", "3,0", "N or N,S"),
    ("RUNALWAYS_RETRY", "-1", "N or N,S"),
    ("RUNALWAYS_RETRY", "2,nan", "N or N,S"),
    ("RUNALWAYS_SKIP", "3", "0 (check), 1 (skip the check) or 2"),
    ("RUNALWAYS_SILNET", "1", "not a runalways setting"),
]


@pytest.mark.clause("R3.5")
@pytest.mark.parametrize(("variable", "value", "allowed"), BAD_VALUES)
def test_bad_setting_is_one_line_and_exit_2(procs: Procs, variable: str, value: str, allowed: str) -> None:
    job = procs.script("job.py", "print('body')\n")
    outcome = procs.run_python(job, env={variable: value})
    assert outcome.returncode == 2 and outcome.stdout == ""
    assert_one_line_error(outcome.stderr, variable, allowed)


@pytest.mark.clause("R3.2")
@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_not_silent_values_keep_the_start_line(fcntl_procs: Procs, value: str) -> None:
    # The setting's reading and the start line are the policy's, whatever the backend.
    procs = fcntl_procs
    job = procs.script("job.py", "print('body')\n")
    outcome = procs.run_python(job, env={"RUNALWAYS_SILENT": value})
    assert outcome.returncode == 0 and outcome.stderr.startswith(f"'{job}' has been started at ")


HANDOVER = [(0.01, "under 10 ms"), (0.1, "under 100 ms"), (1.0, "under 1 s"), (float("inf"), "1 s or more")]


@pytest.mark.clause("R3.3")
def test_retry_gets_in_when_the_holder_ends(procs: Procs, observe: Callable[[str, str], None]) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    waiter = procs.python(job, env={"RUNALWAYS_RETRY": "60,0.5"})
    # While the holder runs, the waiter waits: it has not said "ready" and is still alive.
    assert waiter.poll() is None
    released = time.monotonic()
    finish(holder)
    assert read_line(waiter) == "ready\n"
    handover = time.monotonic() - released
    speed = next(label for limit, label in HANDOVER if handover < limit)
    observe("waiter's start after the holder exits (wait mode)", speed)
    finish(waiter)


@pytest.mark.clause("R3.3")
def test_retry_gives_up_after_n_times_s(procs: Procs) -> None:
    job = procs.script("job.py", header="import runalways.alone\n")
    holder = procs.hold(job)
    started = time.monotonic()
    outcome = procs.run_python(job, env={"RUNALWAYS_RETRY": "2,0.25"})
    waited = time.monotonic() - started
    assert outcome.returncode == 1
    assert_already_running(outcome.stderr, str(job), holder.pid)
    assert waited >= 0.5
    finish(holder)


@pytest.mark.clause("R3.4")
def test_skip_1_runs_without_the_check(procs: Procs) -> None:
    job = procs.script("job.py", HOLD)
    holder = procs.hold(job)
    skipping = procs.run_python(job, env={"RUNALWAYS_SKIP": "1"})
    assert (skipping.returncode, skipping.stdout, skipping.stderr) == (0, "ready\n", "")
    finish(holder)


@pytest.mark.clause("R3.4")
def test_skip_2_runs_without_the_check_and_says_so(procs: Procs) -> None:
    job = procs.script("job.py", "print('body')\n")
    outcome = procs.run_python(job, env={"RUNALWAYS_SKIP": "2"})
    assert outcome.returncode == 0 and outcome.stdout == "body\n"
    assert outcome.stderr == f"Skipping the runalways check for '{job}' (RUNALWAYS_SKIP=2)\n"


@pytest.mark.clause("R3.6")
def test_empty_values_count_as_unset(procs: Procs) -> None:
    job = procs.script("job.py", "print('body')\n")
    empty = {name: "" for name in ("RUNALWAYS_SILENT", "RUNALWAYS_RETRY", "RUNALWAYS_SKIP")}
    outcome = procs.run_python(job, env=empty)
    assert outcome.returncode == 0 and outcome.stdout == "body\n"
    assert outcome.stderr.startswith(f"'{job}' has been started at ")


@pytest.mark.clause("R3.7")
def test_one_rule_reads_a_setting_from_the_environment_the_code_and_the_command_line(procs: Procs) -> None:
    loud = {"RUNALWAYS_SILENT": "0"}
    # The code asks for silence; the environment says otherwise, and wins.
    in_code = procs.script("in_code.py", "import runalways.api\nrunalways.api.guard(silent=True)\n", header="")
    outcome = procs.run_python(in_code, env=loud)
    assert outcome.returncode == 0 and "has been started at" in outcome.stderr, outcome
    # On the command line the option typed wins over the environment.
    typed = procs.run([sys.executable, "-m", "runalways", "run", "--silent", "--name", "typed", "--", "true"], env=loud)
    assert (typed.returncode, typed.stderr) == (0, ""), typed
    untyped = procs.run([sys.executable, "-m", "runalways", "run", "--name", "typed", "--", "true"], env=loud)
    assert untyped.returncode == 0 and "has been started at" in untyped.stderr, untyped


@pytest.mark.clause("R3.7")
def test_a_setting_of_another_backend_is_refused(procs: Procs) -> None:
    job = procs.script("job.py", "print('body')\n")
    foreign = "RUNALWAYS_REDIS_EVICTION" if procs.backend != "redis" else "RUNALWAYS_BOGUS_SETTING"
    outcome = procs.run_python(job, env={foreign: "allow"})
    assert outcome.returncode == 2 and outcome.stdout == ""
    assert_one_line_error(outcome.stderr, f"{foreign} is not a runalways setting")


#: A job that writes every audited import, open and lock call of its start to the file in
#: WAITER_EVENTS as it happens (an audit hook: os.write on a descriptor opened before it, which
#: is not itself audited), then ``body`` when its body begins.
AUDITED_WAITER = """
import os, sys
out = os.open(os.environ["WAITER_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def hook(event, args):
    if event == "import":
        os.write(out, f"import {args[0]}\\n".encode())
    elif event == "open":
        os.write(out, f"open {args[0]} {args[1]}\\n".encode())
    elif event == "fcntl.flock":
        os.write(out, f"flock {args[1]}\\n".encode())
sys.addaudithook(hook)
import runalways
os.write(out, b"body\\n")
"""


@pytest.mark.clause("R3.8")
def test_a_start_woken_from_its_wait_imports_and_opens_nothing_it_could_have_before(fcntl_procs: Procs) -> None:
    import fcntl

    procs = fcntl_procs
    job = procs.script("job.py", AUDITED_WAITER, header="")
    events = procs.workdir / "events"
    with open(job) as held:  # this test holds the job's lock: flock on the script, as the fcntl backend takes it
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = procs.python(job, env={"RUNALWAYS_RETRY": "600,1", "WAITER_EVENTS": str(events)})
        blocking = f"flock {fcntl.LOCK_EX}"
        wait_until(lambda: events.exists() and blocking in events.read_text().splitlines(), "the waiter to block")
    assert finish(waiter).returncode == 0
    seen = events.read_text().splitlines()
    woken = len(seen) - seen[::-1].index(blocking)  # after its last blocking lock call
    after = seen[woken : seen.index("body")]
    assert not [event for event in after if event.startswith("import ")], after
    # Not even its heartbeat: that was opened before the wait, and is only written now.
    assert not [event for event in after if event.startswith("open ")], after


#: A holder that says its fencing token once it holds the lock, then runs until told to stop.
TOKEN_HOLDER = """
import runalways.api, sys
print("ready", runalways.api.token(), flush=True)
sys.stdin.read()
"""


@pytest.mark.clause("R3.9")
def test_a_start_waiting_for_a_cluster_lock_waits_on_the_server_and_gets_it_when_the_holder_lets_go(
    cluster_procs: Procs,
) -> None:
    procs = cluster_procs
    job = procs.script("job.py", TOKEN_HOLDER)
    if procs.backend == "redis":
        import redis

        from runalways.backends.redis import wake_key

        alone = procs.python(job)
        read_line(alone)
        assert finish(alone).returncode == 0
        with redis.Redis.from_url(procs.settings["RUNALWAYS_URL"], socket_timeout=10) as client:
            # A release pushes one wake-up, which lasts a lease at most: nobody waited for it.
            assert client.llen(wake_key("job.py")) == 1
            assert 0 < client.pttl(wake_key("job.py")) <= float(procs.settings["RUNALWAYS_TTL"]) * 1000
    holder = procs.python(job)
    held = int(read_line(holder).split()[1])
    waiter = procs.python(job, env={"RUNALWAYS_RETRY": "60,1"})
    # Waiting on the server: PostgreSQL lists its request as not granted, Redis its
    # connection as blocked in BLPOP on the lock's wake-up list.
    server = ENGINES[procs.backend]
    url = procs.settings["RUNALWAYS_URL"]
    wait_until(lambda: server.waiting(url, "job.py") > 0 or waiter.poll() is not None, "the waiter to wait")
    assert finish(holder).returncode == 0
    assert int(read_line(waiter).split()[1]) > held  # its token, taken as it got the lock
    assert finish(waiter).returncode == 0


@pytest.mark.clause("R3.9")
def test_a_postgres_waiter_does_not_hold_the_servers_vacuum_back_for_the_whole_wait(
    tmp_path: Path, postgres_settings: dict[str, str]
) -> None:
    import psycopg

    procs = Procs("postgres", tmp_path, postgres_settings)
    try:
        url = postgres_settings["RUNALWAYS_URL"]
        job = procs.script("job.py", TOKEN_HOLDER)
        holder = procs.python(job)
        held = int(read_line(holder).split()[1])
        waiter = procs.python(job, env={"RUNALWAYS_RETRY": "60,1"})
        wait_until(lambda: ENGINES["postgres"].waiting(url, "job.py") > 0, "the waiter to wait")

        def horizon() -> int:
            """The oldest transaction the waiter's snapshot keeps visible (its backend_xmin)."""
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT backend_xmin::text::bigint FROM pg_stat_activity WHERE application_name LIKE %s",
                    (f"runalways {waiter.pid} %",),
                ).fetchone()
            return -1 if row is None or row[0] is None else int(row[0])

        with psycopg.connect(url, autocommit=True) as conn:  # a transaction that ends after the wait began
            row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        # Its statement is sent again at least every TTL, with a new snapshot: vacuum may
        # clean up after that transaction while the start still waits.
        wait_until(lambda: horizon() > int(row[0]), "the waiter's snapshot to move past a newer transaction")
        assert finish(holder).returncode == 0
        assert int(read_line(waiter).split()[1]) > held
        assert finish(waiter).returncode == 0
    finally:
        procs.reap()


@pytest.mark.clause("R3.9")
def test_a_redis_waiter_whose_acl_forbids_blpop_polls_and_still_gets_the_lock(
    exit_releasing_procs: Procs, tmp_path: Path
) -> None:
    import redis

    from runalways.backends.redis import ACL_NEEDED

    procs = exit_releasing_procs
    url = procs.settings["RUNALWAYS_URL"]
    user = f"no-blpop-{tmp_path.name}"
    needed = ACL_NEEDED.split()
    with redis.Redis.from_url(url, socket_timeout=10) as admin:
        admin.acl_setuser(
            user,
            enabled=True,
            nopass=True,
            keys=[rule for rule in needed if rule.startswith("~")],
            commands=[rule for rule in needed if rule.startswith("+") and rule != "+blpop"],
        )
    try:
        limited = {"RUNALWAYS_URL": url.replace("redis://", f"redis://{user}:x@", 1)}
        job = procs.script("job.py", TOKEN_HOLDER)
        holder = procs.python(job, env=limited)
        held = int(read_line(holder).split()[1])
        refused = blpop_refused(url)
        waiter = procs.python(job, env={**limited, "RUNALWAYS_RETRY": "60,1"})
        wait_until(lambda: blpop_refused(url) > refused or waiter.poll() is not None, "the waiter's BLPOP refused")
        assert finish(holder).returncode == 0
        assert int(read_line(waiter).split()[1]) > held
        outcome = finish(waiter)
        assert outcome.returncode == 0 and "Traceback" not in outcome.stderr, outcome
    finally:
        with redis.Redis.from_url(url, socket_timeout=10) as admin:
            admin.acl_deluser(user)


def blpop_refused(url: str) -> int:
    """How many BLPOPs the Redis server refused (the ACL's NOPERM among them)."""
    import redis

    with redis.Redis.from_url(url, socket_timeout=10) as client:
        stats = client.info("commandstats").get("cmdstat_blpop", {})
    return int(stats.get("rejected_calls", 0)) + int(stats.get("failed_calls", 0))
