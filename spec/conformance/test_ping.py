"""R17.4: RUNALWAYS_PING, every run on a healthchecks-style check.

The monitor is a real HTTP server on 127.0.0.1 (``tests/pingserver.py``, a process of its own)
that records every request before it answers; a process that ended has had its pings
answered (or given up on), so the record is read once it ended, with no sleep. The cases
run once, not per backend: a ping is the same whatever holds the lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from harness import TIMEOUT, Procs, finish, read_line, wait_for_line, wait_until
from pingserver import PingServer, refusing_port

from runalways import __version__
from runalways._ping import BODY_LIMIT, BUDGET

RUNALWAYS = [sys.executable, "-m", "runalways"]
HOLDER = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HOST = os.uname().nodename

#: A run's end waits for its start's ping (at most BUDGET), then sends its own (at most BUDGET).
END_BOUND = 2 * BUDGET

#: What starting the interpreters takes on a loaded machine, on top of a documented bound.
SLACK = 5.0


@pytest.fixture(autouse=True)
def no_proxy_for_the_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set for the machine must not stand between a job and the monitor on 127.0.0.1."""
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, ",".join(filter(None, [os.environ.get(variable), "127.0.0.1"])))


@pytest.fixture
def monitors(tmp_path: Path) -> Iterator[Callable[[str], PingServer]]:
    """Start a monitor in a mode (``ok``, ``error``, ``hang``); each is stopped after the test."""
    started: list[PingServer] = []

    def start(mode: str = "ok") -> PingServer:
        server = PingServer(mode, tmp_path)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def pings(server: PingServer) -> list[tuple[str, str | None]]:
    """What the monitor received, as (path, rid): the path after the check's own URL."""
    return [(request["path"], request["rid"]) for request in server.requests()]


def assert_run(server: PingServer, end: str) -> list[dict[str, Any]]:
    """The monitor saw one run: its start, then its end ``end``, paired by one run id."""
    received = server.requests()
    assert [request["path"] for request in received] == ["/start", end], received
    rid = received[0]["rid"]
    assert rid is not None and UUID.match(rid) and received[1]["rid"] == rid, received
    assert all(request["method"] == "POST" for request in received), received
    assert all(request["user_agent"] == f"runalways/{__version__}" for request in received), received
    return received


def assert_failed_pings_said(stderr: str, server_url: str, secret: str) -> None:
    """Every line of runalways's about the monitor names its scheme and host, never the check's secret."""
    shown = server_url.split("/ping/", 1)[0] + "/…"
    assert secret not in stderr, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("runalways: ")]
    assert ours, stderr
    assert all(line.startswith(f"runalways: cannot ping {shown}: ") for line in ours), stderr


# R17.4.1 A run's start and end, paired.


@pytest.mark.clause("R17.4.1", "R17.4.2")
@pytest.mark.parametrize(("exit_status", "end"), [(0, ""), (3, "/3")])
def test_run_pings_its_start_and_its_end_with_one_run_id(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer], exit_status: int, end: str
) -> None:
    server = monitors("ok")
    command = ["sh", "-c", f"echo out; exit {exit_status}"]
    wrapper = fcntl_procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--ping", server.url, "--", *command])
    outcome = finish(wrapper)
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (exit_status, "out\n", ""), outcome
    received = assert_run(server, end)
    assert received[0]["body"] == f"'{shlex.join(command)}' started: pid {wrapper.pid} on {HOST}", received
    assert received[1]["body"] == "out\n", received  # what the command wrote (R17.4.2)


@pytest.mark.clause("R17.4.1")
@pytest.mark.parametrize(("body", "end"), [("pass", ""), ("sys.exit(4)", "/4"), ("raise KeyError('x')", "/1")])
def test_the_import_guard_pings_its_start_and_its_end(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer], body: str, end: str
) -> None:
    server = monitors("ok")
    job = fcntl_procs.script("job.py", f"import sys\nprint('body', flush=True)\n{body}\n")
    outcome = fcntl_procs.run_python(job, env={"RUNALWAYS_PING": server.url, "RUNALWAYS_SILENT": "1"})
    status = int(end[1:] or 0)
    assert (outcome.returncode, outcome.stdout) == (status, "body\n"), outcome
    received = assert_run(server, end)
    assert re.fullmatch(
        rf"exit status {status} after [0-9.]+ s: '[^']*job.py', pid \d+ on {re.escape(HOST)}", received[1]["body"]
    ), received


@pytest.mark.clause("R17.4.1")
def test_an_end_whose_status_cannot_be_known_pings_fail_and_says_so(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer]
) -> None:
    server = monitors("ok")
    job = fcntl_procs.script("job.py", "print('body', flush=True)\nraise SystemExit(0)\n")
    outcome = fcntl_procs.run_python(job, env={"RUNALWAYS_PING": server.url, "RUNALWAYS_SILENT": "1"})
    assert (outcome.returncode, outcome.stdout) == (0, "body\n"), outcome
    received = assert_run(server, "/fail")
    assert "with an exit status runalways could not know" in received[1]["body"], received


@pytest.mark.clause("R17.4.1")
def test_api_guard_pings_its_start_and_its_end(fcntl_procs: Procs, monitors: Callable[[str], PingServer]) -> None:
    server = monitors("ok")
    job = fcntl_procs.script(
        "job.py",
        f"import sys\nimport runalways.api\nrunalways.api.guard(ping={server.url!r}, silent=True)\n"
        "print('guarded', flush=True)\nsys.exit(5)\n",
        header="",
    )
    outcome = fcntl_procs.run_python(job)
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (5, "guarded\n", ""), outcome
    assert_run(server, "/5")


@pytest.mark.clause("R17.4.1")
def test_a_deadline_is_logged_and_the_end_pings_124(fcntl_procs: Procs, monitors: Callable[[str], PingServer]) -> None:
    server = monitors("ok")
    argv = [*RUNALWAYS, "run", "--silent", "--timeout", "0.5", "--name", "job", "--ping", server.url, "--"]
    outcome = fcntl_procs.run([*argv, "sleep", "60"])
    assert outcome.returncode == 124, outcome
    received = server.requests()
    assert [request["path"] for request in received] == ["/start", "/log", "/124"], received
    assert received[0]["rid"] == received[2]["rid"] is not None, received
    assert "ran past its deadline" in received[1]["body"], received


# R17.4.2 The end of runalways run carries the tail of the output.


@pytest.mark.clause("R17.4.2")
def test_the_end_of_run_carries_the_tail_of_the_output_which_still_reaches_stdout_and_stderr(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer]
) -> None:
    server = monitors("ok")
    # 3 000 numbered lines on stdout (30 kB: three times what is kept), one line on stderr.
    lines = "".join(f"{number:09d}\n" for number in range(3000))
    command = ["sh", "-c", 'echo warning >&2; i=0; while [ $i -lt 3000 ]; do printf "%09d\\n" $i; i=$((i+1)); done']
    argv = [*RUNALWAYS, "run", "--silent", "--name", "job", "--ping", server.url, "--"]
    outcome = fcntl_procs.run([*argv, *command])
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, lines, "warning\n"), outcome
    body = assert_run(server, "")[1]["body"]
    # The two pipes are read as their data comes: stderr's line is wherever it was read.
    if "warning\n" in body:
        assert body.replace("warning\n", "", 1) == lines[-BODY_LIMIT + len("warning\n") :], body[:100]
    else:
        assert body == lines[-BODY_LIMIT:], body[:100]

    small = fcntl_procs.run([*argv, "sh", "-c", "echo out; echo err >&2; exit 6"])
    assert (small.returncode, small.stdout, small.stderr) == (6, "out\n", "err\n"), small
    end = server.requests()[-1]
    assert end["path"] == "/6" and sorted(end["body"].splitlines()) == ["err", "out"], end


@pytest.mark.clause("R17.4.2")
def test_run_passes_the_output_on_as_it_comes(fcntl_procs: Procs, monitors: Callable[[str], PingServer]) -> None:
    server = monitors("ok")
    # The command waits for its stdin after its first line: that line must come through now, not at its end.
    command = ["sh", "-c", "echo ready; echo also >&2; read line; echo done"]
    wrapper = fcntl_procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--ping", server.url, "--", *command])
    wait_for_line(wrapper, "ready")
    outcome = finish(wrapper, "go\n")
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "done\n", "also\n"), outcome
    assert sorted(assert_run(server, "")[1]["body"].splitlines()) == ["also", "done", "ready"]


# R17.4.3 Skips.


@pytest.mark.clause("R17.4.3")
@pytest.mark.parametrize(
    ("on_skip", "expected"), [(None, ["/log"]), ("log", ["/log"]), ("fail", ["/fail"]), ("none", [])]
)
def test_a_skip_pings_as_ping_on_skip_says_with_who_holds_the_lock(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer], on_skip: str | None, expected: list[str]
) -> None:
    server = monitors("ok")
    holder = fcntl_procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    chosen = [] if on_skip is None else ["--ping-on-skip", on_skip]
    skipped = fcntl_procs.run([*RUNALWAYS, "run", "--name", "job", "--ping", server.url, *chosen, "--", "true"])
    assert (skipped.returncode, skipped.stdout, skipped.stderr) == (0, "", ""), skipped
    received = server.requests()
    assert [request["path"] for request in received] == expected, received
    for request in received:
        assert request["rid"] is None, request
        # The host is named when the mechanism records it (a local lock's holder is on this host).
        assert re.search(rf"another copy holds the lock: pid {holder.pid}( on {HOST})? for [0-9.]+ s$", request["body"])
    finish(holder)


@pytest.mark.clause("R17.4.3")
def test_the_import_guard_s_skip_pings_as_the_environment_says(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer]
) -> None:
    server = monitors("ok")
    job = fcntl_procs.script("job.py")
    holder = fcntl_procs.hold(job)  # without a ping: the holder is not the case here
    settings = {"RUNALWAYS_PING": server.url, "RUNALWAYS_PING_ON_SKIP": "fail"}
    skipped = fcntl_procs.run_python(job, env=settings)
    assert (skipped.returncode, skipped.stdout, skipped.stderr) == (0, "", ""), skipped
    received = server.requests()
    assert [request["path"] for request in received] == ["/fail"], received
    assert f"another copy holds the lock: pid {holder.pid}" in received[0]["body"], received
    finish(holder)


@pytest.mark.clause("R17.4.3")
def test_a_skip_of_a_period_done_names_its_run(fcntl_procs: Procs, monitors: Callable[[str], PingServer]) -> None:
    server = monitors("ok")
    argv = [*RUNALWAYS, "run", "--silent", "--once-per", "1h", "--name", "job", "--ping", server.url, "--", "true"]
    first = fcntl_procs.start(argv)
    assert finish(first).returncode == 0
    second = fcntl_procs.run(argv)
    assert (second.returncode, second.stderr) == (0, ""), second
    received = server.requests()
    assert [request["path"] for request in received] == ["/start", "", "/log"], received
    assert f"this period's run is done (pid {first.pid} on {HOST})" in received[2]["body"], received


# R17.4.4 Stale holders.


@pytest.mark.clause("R17.4.4")
def test_a_stale_holder_pings_fail_and_its_kill_is_logged_before_the_new_run(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer]
) -> None:
    server = monitors("ok")
    holder = fcntl_procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    ready_at = time.time()
    wait_until(lambda: time.time() > ready_at + 1.5, "the holder to be older than 1 s")
    argv = [*RUNALWAYS, "run", "--silent", "--name", "job", "--ping", server.url, "--", "true"]
    stale = {"RUNALWAYS_STALE_AFTER": "1"}
    reported = fcntl_procs.run(argv, env=stale)
    assert reported.returncode == 4, reported
    assert pings(server) == [("/fail", None)]
    assert re.search(rf"is held by pid {holder.pid}( on {HOST})? for [0-9.]+ s", server.requests()[0]["body"])

    killed = fcntl_procs.run(argv, env={**stale, "RUNALWAYS_ON_STALE": "kill", "RUNALWAYS_KILL_GRACE": "0.5"})
    assert killed.returncode == 0, killed
    received = server.requests()[1:]
    assert [request["path"] for request in received] == ["/log", "/start", ""], received
    assert f"killed a stale holder of 'true': pid {holder.pid}" in received[0]["body"], received
    assert received[1]["rid"] == received[2]["rid"] is not None, received
    finish(holder)


# R17.4.5 A monitor that is down, hangs or fails never fails the job.


def _bad_monitor(kind: str, monitors: Callable[[str], PingServer], stack: contextlib.ExitStack) -> tuple[str, str]:
    """The URL of a monitor that refuses, never answers or answers 500, and its secret."""
    if kind == "refused":
        port = stack.enter_context(refusing_port())
        return f"http://127.0.0.1:{port}/ping/check-secret", "check-secret"
    server = monitors(kind)
    return server.url, server.secret


@pytest.mark.clause("R17.4.5", "R17.4.6")
@pytest.mark.parametrize("kind", ["refused", "hang", "error"])
def test_a_monitor_down_hung_or_failing_never_fails_run_nor_holds_it_long(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer], kind: str
) -> None:
    with contextlib.ExitStack() as stack:
        url, secret = _bad_monitor(kind, monitors, stack)
        began = time.monotonic()
        wrapper = fcntl_procs.start(
            [*RUNALWAYS, "run", "--name", "job", "--ping", url, "--", "sh", "-c", "echo first; exit 3"]
        )
        assert read_line(wrapper, TIMEOUT) == "first\n"
        first_line = time.monotonic() - began
        outcome = finish(wrapper)
        ended = time.monotonic() - began
    assert (outcome.returncode, outcome.stdout) == (3, ""), outcome
    assert first_line < BUDGET + SLACK, first_line  # the start's ping is in the background
    assert ended < END_BOUND + SLACK, ended
    assert outcome.stderr.startswith("'sh -c 'echo first; exit 3'' has been started at "), outcome.stderr
    assert_failed_pings_said(outcome.stderr, url, secret)


@pytest.mark.clause("R17.4.5", "R17.4.6")
@pytest.mark.parametrize("kind", ["refused", "hang", "error"])
def test_a_monitor_down_hung_or_failing_never_fails_the_import_guard(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer], kind: str
) -> None:
    job = fcntl_procs.script("job.py", "import sys\nprint('first', flush=True)\nsys.exit(3)\n")
    with contextlib.ExitStack() as stack:
        url, secret = _bad_monitor(kind, monitors, stack)
        began = time.monotonic()
        process = fcntl_procs.python(job, env={"RUNALWAYS_PING": url, "RUNALWAYS_SILENT": "1"})
        assert read_line(process, TIMEOUT) == "first\n"
        first_line = time.monotonic() - began
        outcome = finish(process)
        ended = time.monotonic() - began
    assert (outcome.returncode, outcome.stdout) == (3, ""), outcome
    assert first_line < BUDGET + SLACK, first_line
    assert ended < END_BOUND + SLACK, ended
    assert_failed_pings_said(outcome.stderr, url, secret)


@pytest.mark.clause("R17.4.5")
def test_a_skip_waits_for_a_hung_monitor_at_most_its_bound(
    fcntl_procs: Procs, monitors: Callable[[str], PingServer]
) -> None:
    server = monitors("hang")
    holder = fcntl_procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    began = time.monotonic()
    skipped = fcntl_procs.run([*RUNALWAYS, "run", "--name", "job", "--ping", server.url, "--", "true"])
    assert time.monotonic() - began < BUDGET + SLACK
    assert (skipped.returncode, skipped.stdout) == (0, ""), skipped
    assert_failed_pings_said(skipped.stderr, server.url, server.secret)
    assert skipped.stderr.count("\n") == 1, skipped.stderr
    assert pings(server) == [("/log", None)]
    finish(holder)


# R17.4.6 The URL.


@pytest.mark.clause("R17.4.6")
def test_a_ping_url_that_is_not_one_is_one_line_and_exit_2(fcntl_procs: Procs) -> None:
    secret = "0f0e8c9a-secret"
    job = fcntl_procs.script("job.py", "print('body')\n")
    for url in (f"ftp://hc-ping.example/{secret}", f"hc-ping.example/{secret}", "https:///nohost"):
        guarded = fcntl_procs.run_python(job, env={"RUNALWAYS_PING": url})
        assert (guarded.returncode, guarded.stdout) == (2, ""), guarded
        assert guarded.stderr.startswith("runalways: RUNALWAYS_PING") and guarded.stderr.count("\n") == 1, guarded
        wrapped = fcntl_procs.run([*RUNALWAYS, "run", "--ping", url, "--", "true"])
        assert wrapped.returncode == 2 and wrapped.stderr.count("\n") == 1, wrapped
        assert "--ping" in wrapped.stderr and "Traceback" not in wrapped.stderr, wrapped
        assert secret not in guarded.stderr + wrapped.stderr


# R17.4.7 Loaded only when asked for.


@pytest.mark.clause("R17.4.7")
def test_a_start_without_a_ping_loads_nothing_of_it(fcntl_procs: Procs, monitors: Callable[[str], PingServer]) -> None:
    modules = ("runalways._ping", "runalways.cli.tee", "urllib.request", "http.client")
    body = f"import sys\nprint(sorted(name for name in {modules!r} if name in sys.modules), flush=True)\n"
    job = fcntl_procs.script("job.py", body)
    record = fcntl_procs.workdir / "runalways.log"
    logged = fcntl_procs.run_python(job, env={"RUNALWAYS_LOG": str(record), "RUNALWAYS_SILENT": "1"})
    assert (logged.returncode, logged.stdout, logged.stderr) == (0, "[]\n", ""), logged
    server = monitors("ok")
    pinged = fcntl_procs.run_python(job, env={"RUNALWAYS_PING": server.url, "RUNALWAYS_SILENT": "1"})
    assert pinged.returncode == 0 and "'runalways._ping'" in pinged.stdout, pinged
