"""R13: a hung job is never silent: run deadlines, stale holders, status for machines, a record of skips.

Every case runs real processes. A holder is made stale by a short limit: the test waits
until the holder is older than the limit (by the clock, not by a sleep hoping the
other side is ready), then starts the next copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from harness import TIMEOUT, Procs, finish, read_line, send, wait_for_line, wait_until

RUNALWAYS = [sys.executable, "-m", "runalways"]

#: A holder that ignores SIGTERM: only SIGKILL ends it.
STUBBORN = """
import signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
sys.stdin.read()
"""

#: A slow but healthy job: once told to, it marks progress in its loop until it is ended.
BEATING = """
import sys, time
import runalways.api
print("ready", flush=True)
sys.stdin.readline()
print("beating", flush=True)
while True:
    runalways.api.heartbeat()
    time.sleep(0.05)
"""

#: Seconds a holder must be held for, in the stale cases.
LIMIT = 1.0


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie whose parent has not collected it yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _older_than(ready_at: float, seconds: float) -> None:
    """Wait until a holder that was ready at ``ready_at`` has held the lock for over ``seconds``."""
    wait_until(lambda: time.time() > ready_at + seconds + 0.5, f"the holder to be older than {seconds} s")


# Run deadlines.


@pytest.mark.clause("R14.1")
def test_a_deadline_ends_the_command_and_its_grandchild_with_124(fcntl_procs: Procs) -> None:
    # The grandchild ignores SIGTERM (so SIGKILL after the grace must end it) and is
    # started in the background by a shell: it is in the command's process group.
    command = 'sh -c "trap \\"\\" TERM; while :; do sleep 1; done" & echo $!; wait'
    wrapper = fcntl_procs.start([*RUNALWAYS, "run", "--timeout", "2", "--kill-after", "0.5", "--", "sh", "-c", command])
    grandchild = int(read_line(wrapper))
    outcome = finish(wrapper)
    assert outcome.returncode == 124, outcome
    deadline_lines = [line for line in outcome.stderr.splitlines() if "ran past its deadline of 2s" in line]
    assert len(deadline_lines) == 1, outcome.stderr
    wait_until(lambda: _gone(grandchild), "the grandchild to die")


@pytest.mark.clause("R14.1")
def test_a_command_within_its_deadline_keeps_its_exit_status(fcntl_procs: Procs) -> None:
    outcome = fcntl_procs.run([*RUNALWAYS, "run", "--silent", "--timeout", "1h", "--", "sh", "-c", "exit 3"])
    assert (outcome.returncode, outcome.stderr) == (3, "")


@pytest.mark.clause("R14.2")
def test_a_script_hung_in_sleep_gets_sigterm_at_its_deadline_and_the_next_start_runs(procs: Procs) -> None:
    job = procs.script("job.py", "import time\nprint('ready', flush=True)\ntime.sleep(3600)\n")
    # It never reads its stdin: finish() collects what it printed once the deadline ended it.
    hung = finish(procs.python(job, env={"RUNALWAYS_TIMEOUT": "1"}))
    assert (hung.returncode, hung.stdout) == (-signal.SIGTERM, "ready\n"), hung
    follower = procs.python(job, env={"RUNALWAYS_SILENT": "1", "RUNALWAYS_TIMEOUT": "1h"})
    wait_for_line(follower, "ready")  # the lock went with the hung copy


@pytest.mark.clause("R14.2")
def test_a_script_blocking_sigterm_gets_sigkill_after_the_grace(fcntl_procs: Procs) -> None:
    body = """
    import signal, time
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("ready", flush=True)
    time.sleep(3600)
    """
    job = fcntl_procs.script("job.py", body)
    hung = finish(fcntl_procs.python(job, env={"RUNALWAYS_TIMEOUT": "0.5", "RUNALWAYS_KILL_GRACE": "0.5"}))
    assert (hung.returncode, hung.stdout) == (-signal.SIGKILL, "ready\n"), hung


@pytest.mark.clause("R14.2")
def test_guard_takes_the_deadline_as_a_keyword(fcntl_procs: Procs) -> None:
    body = """
    import time
    import runalways.api
    runalways.api.guard(timeout="0.5s", silent=True)
    print("ready", flush=True)
    time.sleep(3600)
    """
    job = fcntl_procs.script("job.py", body, header="")
    hung = finish(fcntl_procs.python(job))
    assert (hung.returncode, hung.stdout) == (-signal.SIGTERM, "ready\n"), hung


@pytest.mark.clause("R14.3")
@pytest.mark.parametrize("setting", ["RUNALWAYS_TIMEOUT", "RUNALWAYS_STALE_AFTER", "RUNALWAYS_KILL_GRACE"])
@pytest.mark.parametrize("value", ["soon", "-1", "5x"])
def test_a_bad_duration_is_one_line_and_exit_2(fcntl_procs: Procs, setting: str, value: str) -> None:
    job = fcntl_procs.script("job.py", "print('body')\n")
    outcome = fcntl_procs.run_python(job, env={"RUNALWAYS_TIMEOUT": "1h", setting: value})
    assert outcome.returncode == 2 and outcome.stdout == "", outcome
    assert outcome.stderr.count("\n") == 1 and "45m" in outcome.stderr, outcome.stderr


@pytest.mark.clause("R14.6")
@pytest.mark.parametrize(
    "setting", [("RUNALWAYS_ON_STALE", "kill"), ("RUNALWAYS_STALE_EXIT", "5"), ("RUNALWAYS_KILL_GRACE", "5")]
)
def test_what_to_do_with_a_stale_holder_needs_a_limit(fcntl_procs: Procs, setting: tuple[str, str]) -> None:
    job = fcntl_procs.script("job.py", "print('body')\n")
    outcome = fcntl_procs.run_python(job, env=dict([setting]))
    assert outcome.returncode == 2 and outcome.stdout == "", outcome
    assert outcome.stderr.count("\n") == 1 and "RUNALWAYS_STALE_AFTER" in outcome.stderr, outcome.stderr


@pytest.mark.clause("R14.3")
def test_durations_take_units(fcntl_procs: Procs) -> None:
    for value in ("90", "90s", "45m", "2h", "1.5d"):
        outcome = fcntl_procs.run([*RUNALWAYS, "run", "--silent", "--timeout", value, "--", "true"])
        assert outcome.returncode == 0, (value, outcome)


# Stale holders.


@pytest.mark.clause("R14.4")
def test_a_stale_holder_is_reported_even_when_silent_with_exit_4(procs: Procs) -> None:
    job = procs.script("job.py")
    holder = procs.hold(job)
    ready_at = time.time()
    young = procs.run_python(job, env={"RUNALWAYS_STALE_AFTER": "1h", "RUNALWAYS_SILENT": "1"})
    assert (young.returncode, young.stdout, young.stderr) == (0, "", "")
    _older_than(ready_at, LIMIT)
    stale = procs.run_python(job, env={"RUNALWAYS_STALE_AFTER": str(LIMIT), "RUNALWAYS_SILENT": "1"})
    assert (stale.returncode, stale.stdout) == (4, ""), stale
    assert stale.stderr.count("\n") == 1, stale.stderr
    assert f"'{job}' is held by pid {holder.pid}" in stale.stderr, stale.stderr
    assert "since " in stale.stderr and "longer than the limit of 1s" in stale.stderr, stale.stderr
    chosen = procs.run_python(job, env={"RUNALWAYS_STALE_AFTER": str(LIMIT), "RUNALWAYS_STALE_EXIT": "9"})
    assert chosen.returncode == 9, chosen
    assert holder.poll() is None  # reported, never touched
    finish(holder)


@pytest.mark.clause("R14.4")
def test_run_reports_a_stale_holder_with_stale_after(fcntl_procs: Procs) -> None:
    holder = fcntl_procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", sys.executable, "-c", STUBBORN])
    wait_for_line(holder, "ready")
    _older_than(time.time(), LIMIT)
    stale = fcntl_procs.run([*RUNALWAYS, "run", "--stale-after", str(LIMIT), "--name", "job", "--", "true"])
    assert stale.returncode == 4 and f"pid {holder.pid}" in stale.stderr, stale
    status = fcntl_procs.run([*RUNALWAYS, "status", "--stale-after", str(LIMIT), "--name", "job"])
    assert status.returncode == 4 and "\n  stale: held for " in status.stdout, status
    finish(holder)


@pytest.mark.clause("R14.4")
def test_guard_takes_the_limit_as_a_keyword(fcntl_procs: Procs) -> None:
    body = """
    import os, sys
    import runalways.api
    runalways.api.guard(stale_after=os.environ.get("LIMIT") or None, silent=True)
    print("ready", flush=True)
    sys.stdin.read()
    """
    job = fcntl_procs.script("job.py", body, header="")
    holder = fcntl_procs.hold(job)
    _older_than(time.time(), LIMIT)
    assert fcntl_procs.run_python(job).returncode == 0  # no limit: the usual silent exit
    stale = fcntl_procs.run_python(job, env={"LIMIT": str(LIMIT)})
    assert stale.returncode == 4 and f"pid {holder.pid}" in stale.stderr, stale
    finish(holder)


@pytest.mark.clause("R14.5")
def test_a_heartbeat_keeps_a_slow_holder_fresh(procs: Procs) -> None:
    job = procs.script("job.py", BEATING)
    holder = procs.hold(job)
    limit = 3.0
    _older_than(time.time(), limit)
    settings = {"RUNALWAYS_STALE_AFTER": str(limit), "RUNALWAYS_SILENT": "1"}
    assert procs.run_python(job, env=settings).returncode == 4  # no heartbeat yet: stale
    send(holder, "beat\n")
    wait_for_line(holder, "beating")
    assert procs.run_python(job, env=settings).returncode == 0  # fresh again
    holder.kill()
    finish(holder)


@pytest.mark.clause("R14.5", "R14.7")
def test_a_command_under_run_beats_for_the_lock_of_its_wrapper(procs: Procs) -> None:
    holder = procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", sys.executable, "-c", BEATING])
    wait_for_line(holder, "ready")
    limit = 3.0
    _older_than(time.time(), limit)
    check = [*RUNALWAYS, "status", "--json", "--stale-after", str(limit), "--name", "job"]
    assert procs.run(check).returncode == 4
    send(holder, "beat\n")
    wait_for_line(holder, "beating")
    fresh = procs.run(check)
    assert fresh.returncode == 0, fresh
    assert json.loads(fresh.stdout)["last_heartbeat"] is not None
    holder.send_signal(signal.SIGTERM)  # passed on to the command, which ends with it
    finish(holder)


@pytest.mark.clause("R14.6")
def test_on_stale_kill_replaces_a_holder_that_ignores_sigterm(procs: Procs) -> None:
    job = procs.script("job.py", STUBBORN)
    holder = procs.hold(job)
    _older_than(time.time(), LIMIT)
    settings = {"RUNALWAYS_STALE_AFTER": str(LIMIT), "RUNALWAYS_ON_STALE": "kill", "RUNALWAYS_KILL_GRACE": "0.5"}
    successor = procs.python(job, env={**settings, "RUNALWAYS_SILENT": "1"})
    wait_for_line(successor, "ready")
    assert holder.wait() == -signal.SIGKILL  # SIGTERM was ignored: SIGKILL after the grace
    outcome = finish(successor)
    assert outcome.returncode == 0
    assert outcome.stderr.count("\n") == 1 and "killed it and started anew" in outcome.stderr, outcome.stderr


@pytest.mark.clause("R14.6")
def test_two_starts_racing_to_kill_one_holder_end_with_one_new_copy(procs: Procs) -> None:
    job = procs.script("job.py", STUBBORN)
    holder = procs.hold(job)
    _older_than(time.time(), LIMIT)
    settings = {"RUNALWAYS_STALE_AFTER": str(LIMIT), "RUNALWAYS_ON_STALE": "kill", "RUNALWAYS_KILL_GRACE": "0.5"}
    racers = [procs.python(job, env={**settings, "RUNALWAYS_SILENT": "1"}) for _ in range(2)]
    first_lines = [read_line(racer) for racer in racers]
    assert sorted(first_lines) == ["", "ready\n"], first_lines  # one runs; the other exited without a line
    loser = racers[first_lines.index("")]
    assert finish(loser).returncode == 0  # it found the new copy, young: the usual policy
    assert holder.wait() == -signal.SIGKILL
    winner = racers[first_lines.index("ready\n")]
    assert finish(winner).returncode == 0


@pytest.mark.clause("R14.6")
def test_a_holder_of_another_user_is_reported_not_killed(fcntl_procs: Procs, shared_dir: Path) -> None:
    from harness import as_nobody, nobody_env

    job = shared_dir / "job.py"
    job.write_text("import runalways\n" + STUBBORN)
    job.chmod(0o644)
    holder = fcntl_procs.start(as_nobody([sys.executable, str(job)]), env=nobody_env(shared_dir))
    wait_for_line(holder, "ready")
    _older_than(time.time(), LIMIT)
    settings = {"RUNALWAYS_STALE_AFTER": str(LIMIT), "RUNALWAYS_ON_STALE": "kill"}
    outcome = fcntl_procs.run_python(job, env=settings)
    assert outcome.returncode == 4 and "of another user: not killed" in outcome.stderr, outcome
    assert holder.poll() is None
    finish(holder)


# Status for machines.


@pytest.mark.clause("R14.7")
def test_status_json_says_who_holds_the_lock_and_whether_it_is_stale(procs: Procs) -> None:
    job = procs.script("job.py")
    idle = procs.run([*RUNALWAYS, "status", "--json", str(job)])
    assert idle.returncode == 3, idle
    assert json.loads(idle.stdout)["held"] is False
    holder = procs.hold(job)
    ready_at = time.time()
    busy = procs.run([*RUNALWAYS, "status", "--json", "--stale-after", "1h", str(job)])
    assert busy.returncode == 0, busy
    facts = json.loads(busy.stdout)
    for key in ("target", "backend", "held", "pid", "user", "host", "command", "started", "age_seconds"):
        assert key in facts, facts
    assert {"last_heartbeat", "stale", "lock_file"} <= set(facts)
    assert (facts["held"], facts["pid"], facts["backend"], facts["stale"]) == (True, holder.pid, procs.backend, False)
    assert isinstance(facts["started"], float) and facts["age_seconds"] >= 0
    _older_than(ready_at, LIMIT)
    stale = procs.run([*RUNALWAYS, "status", "--json", "--stale-after", str(LIMIT), str(job)])
    assert stale.returncode == 4 and json.loads(stale.stdout)["stale"] is True, stale
    finish(holder)


# A record of every skip.


@pytest.mark.clause("R14.8")
def test_every_start_and_skip_is_recorded_and_read_back(procs: Procs) -> None:
    record = procs.workdir / "runalways.log"
    job = procs.script("job.py")
    settings = {"RUNALWAYS_LOG": str(record)}
    holder = procs.hold(job, env=settings)
    for _ in range(2):
        skipped = procs.run_python(job, env=settings)
        assert (skipped.returncode, skipped.stdout, skipped.stderr) == (0, "", "")  # still silent
    events = [dict(field.split("=", 1) for field in line.split(" ")) for line in record.read_text().splitlines()]
    assert [event["event"] for event in events] == ["start", "skip", "skip"], events
    assert events[0]["pid"] == str(holder.pid)
    assert all(event["holder_pid"] == str(holder.pid) for event in events[1:]), events
    assert all(float(event["holder_age"]) >= 0 for event in events[1:]), events
    status = procs.run([*RUNALWAYS, "status", "--json", str(job)], env=settings)
    facts = json.loads(status.stdout)
    assert facts["skips_since_start"] == 2 and facts["last_start"] is not None, facts
    finish(holder)


@pytest.mark.clause("R14.8")
def test_the_record_keeps_the_exit_status_and_the_deadline_of_run(fcntl_procs: Procs) -> None:
    record = fcntl_procs.workdir / "runalways.log"
    settings = {"RUNALWAYS_LOG": str(record)}
    failed = fcntl_procs.run([*RUNALWAYS, "run", "--silent", "--name", "job", "--", "sh", "-c", "exit 5"], env=settings)
    assert failed.returncode == 5
    status = fcntl_procs.run([*RUNALWAYS, "status", "--json", "--name", "job"], env=settings)
    assert json.loads(status.stdout)["last_exit_status"] == 5
    late = fcntl_procs.run([*RUNALWAYS, "run", "--timeout", "0.5", "--name", "job", "--", "sleep", "60"], env=settings)
    assert late.returncode == 124
    events = [line.split(" ")[1] for line in record.read_text().splitlines()]
    assert events == ["event=start", "event=exit", "event=start", "event=deadline", "event=exit"], events


@pytest.mark.clause("R14.8")
def test_a_record_that_cannot_be_written_is_one_warning_not_a_failed_job(fcntl_procs: Procs) -> None:
    job = fcntl_procs.script("job.py", "print('body')\n")
    unwritable = fcntl_procs.workdir / "no-such-directory" / "runalways.log"
    outcome = fcntl_procs.run_python(job, env={"RUNALWAYS_LOG": str(unwritable), "RUNALWAYS_SILENT": "1"})
    assert (outcome.returncode, outcome.stdout) == (0, "body\n"), outcome
    # One line for each event that could not be recorded: the run's start, and its end.
    warning = f"runalways: cannot write to RUNALWAYS_LOG={str(unwritable)!r}: No such file or directory\n"
    assert outcome.stderr == warning * 2, outcome.stderr
    assert not os.path.exists(unwritable)


@pytest.mark.clause("R14.6")
def test_the_cluster_backend_reports_a_holder_on_another_host_and_never_kills_it(
    tmp_path: Path, postgres_settings: dict[str, str]
) -> None:
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed to give the holder a host of its own"
    procs = Procs("postgres", tmp_path, postgres_settings)
    try:
        job = procs.script("job.py", STUBBORN)
        # The holder runs in a UTS namespace of its own, under another host name: to the
        # lock's label (and to every start here) it is a copy on another host.
        holder = procs.start([unshare, "--uts", "sh", "-c", f'hostname elsewhere && exec "$0" {job}', sys.executable])
        wait_for_line(holder, "ready")
        _older_than(time.time(), LIMIT)
        settings = {"RUNALWAYS_STALE_AFTER": str(LIMIT), "RUNALWAYS_ON_STALE": "kill"}
        outcome = procs.run_python(job, env=settings)
        assert outcome.returncode == 4, outcome
        assert "host elsewhere" in outcome.stderr and "on another host: never killed from here" in outcome.stderr
        assert holder.poll() is None
        finish(holder)
    finally:
        procs.reap()


@pytest.mark.clause("R14.8")
def test_syslog_gets_every_start_and_skip(fcntl_procs: Procs) -> None:
    import socket
    import tempfile

    # A syslog socket of the test's own, at /dev/log in a mount namespace of the job's
    # own (a private tmpfs over /dev): the machine's /dev/log is never touched.
    folder = tempfile.mkdtemp(prefix="ra-syslog-")  # short: a socket's path has at most 107 bytes
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(os.path.join(folder, "log"))
        listener.settimeout(TIMEOUT)
        job = fcntl_procs.script("job.py")
        in_namespace = [
            shutil.which("unshare") or "unshare",
            "--mount",
            "sh",
            "-c",
            'mount -t tmpfs tmpfs /dev && ln -s "$1" /dev/log && exec "$0" "$2"',
            sys.executable,
            os.path.join(folder, "log"),
            str(job),
        ]
        holder = fcntl_procs.start(in_namespace, env={"RUNALWAYS_LOG": "syslog"})
        wait_for_line(holder, "ready")
        skipped = fcntl_procs.run(in_namespace, env={"RUNALWAYS_LOG": "syslog"})
        assert (skipped.returncode, skipped.stdout, skipped.stderr) == (0, "", "")
        messages = [listener.recv(4096).decode() for _ in range(2)]
        finish(holder)
    finally:
        listener.close()
        shutil.rmtree(folder)
    assert messages[0].startswith("<14>") and f"runalways[{holder.pid}]: " in messages[0], messages
    assert " event=start " in messages[0] and " event=skip " in messages[1], messages
    assert f" holder_pid={holder.pid} " in messages[1], messages
