"""R17.1-R17.3: every run on the record for Prometheus, as a real node exporter serves it.

The session's node exporter (the root conftest.py's) reads its textfile directory at every
scrape; each case writes its jobs' files there under job names of its own, and reads back
what an HTTP GET of /metrics says of them. Holders run under ``runalways run`` where the
import guard is not the point: the end of a guarded script is reported at the process's
end (``runalways._ending``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import TIMEOUT, Procs, finish, kill, wait_for_line, wait_until
from servers import NodeExporter

RUNALWAYS = [sys.executable, "-m", "runalways"]

#: A command that holds its wrapper's lock until its stdin closes.
HOLD = "import sys; print('ready', flush=True); sys.stdin.read()"

#: Every metric a job's file always has.
ALWAYS = (
    "last_start_timestamp_seconds",
    "last_end_timestamp_seconds",
    "last_success_timestamp_seconds",
    "last_skip_timestamp_seconds",
    "running",
    "stale",
    "runs_total",
    "skips_total",
    "unreported_ends_total",
)


def samples(text: str) -> dict[str, float]:
    """``metric{labels}`` -> value, of every sample in an exposition text."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def label(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def scraped(exporter: NodeExporter, name: str) -> dict[str, float]:
    """What the exporter serves of the job ``name``: its metrics, without ``runalways_``; and the
    collector must have read every file without an error."""
    text = exporter.scrape()
    every = samples(text)
    assert every.get("node_textfile_scrape_error") == 0, text
    suffix = f'{{name="{label(name)}"}}'
    return {
        key[len("runalways_") : -len(suffix)]: value
        for key, value in every.items()
        if key.startswith("runalways_") and key.endswith(suffix)
    }


def metrics_env(exporter: NodeExporter) -> dict[str, str]:
    return {"RUNALWAYS_METRICS": exporter.textfile_dir, "RUNALWAYS_SILENT": "1"}


def prom_file(exporter: NodeExporter, stem: str) -> Path:
    return Path(exporter.textfile_dir) / f"runalways_{stem}.prom"


@pytest.mark.clause("R17.1")
def test_the_exporter_serves_a_success_and_then_a_failure(fcntl_procs: Procs, node_exporter: NodeExporter) -> None:
    name = "metrics-outcomes"
    env = metrics_env(node_exporter)
    before = time.time()
    ok = fcntl_procs.run([*RUNALWAYS, "run", "--name", name, "--", "true"], env=env)
    assert (ok.returncode, ok.stderr) == (0, ""), ok
    first = scraped(node_exporter, name)
    assert set(ALWAYS) | {"last_exit_status", "last_duration_seconds"} == set(first), first
    assert (first["last_exit_status"], first["running"], first["stale"], first["runs_total"]) == (0, 0, 0, 1)
    assert before <= first["last_start_timestamp_seconds"] <= first["last_end_timestamp_seconds"] <= time.time()
    assert first["last_success_timestamp_seconds"] == first["last_end_timestamp_seconds"]
    assert 0 <= first["last_duration_seconds"] < TIMEOUT
    assert (first["skips_total"], first["unreported_ends_total"], first["last_skip_timestamp_seconds"]) == (0, 0, 0)

    failed = fcntl_procs.run([*RUNALWAYS, "run", "--name", name, "--", "sh", "-c", "exit 5"], env=env)
    assert (failed.returncode, failed.stderr) == (5, ""), failed
    second = scraped(node_exporter, name)
    assert (second["last_exit_status"], second["running"], second["runs_total"]) == (5, 0, 2)
    # A failure keeps the last success's time: the alert on a success too old goes on counting.
    assert second["last_success_timestamp_seconds"] == first["last_success_timestamp_seconds"]
    assert second["last_end_timestamp_seconds"] > first["last_end_timestamp_seconds"]
    the_file = prom_file(node_exporter, name).read_text()
    assert f'# TYPE runalways_skips_total counter\nrunalways_skips_total{{name="{name}"}} 0\n' in the_file
    assert "# HELP runalways_last_exit_status " in the_file


@pytest.mark.clause("R17.1")
def test_a_skip_and_a_stale_holder_are_on_the_record(fcntl_procs: Procs, node_exporter: NodeExporter) -> None:
    name = 'metrics "skipped" \\ job'  # a label value to escape
    env = metrics_env(node_exporter)
    holder = fcntl_procs.start([*RUNALWAYS, "run", "--name", name, "--", sys.executable, "-c", HOLD], env=env)
    wait_for_line(holder, "ready")
    ready_at = time.time()
    running = scraped(node_exporter, name)
    assert (running["running"], running["runs_total"]) == (1, 1), running
    assert "last_exit_status" not in running  # no run has ended yet

    for _ in range(2):
        skipped = fcntl_procs.run([*RUNALWAYS, "run", "--name", name, "--", "true"], env=env)
        assert (skipped.returncode, skipped.stdout, skipped.stderr) == (0, "", ""), skipped
    after_skips = scraped(node_exporter, name)
    assert (after_skips["skips_total"], after_skips["running"], after_skips["stale"]) == (2, 1, 0), after_skips
    assert after_skips["last_skip_timestamp_seconds"] >= ready_at

    limit = 0.3
    wait_until(lambda: time.time() > ready_at + limit + 0.1, f"the holder to be older than {limit} s")
    stale = fcntl_procs.run([*RUNALWAYS, "run", "--stale-after", str(limit), "--name", name, "--", "true"], env=env)
    assert stale.returncode == 4 and stale.stderr.count("\n") == 1, stale
    reported = scraped(node_exporter, name)
    assert (reported["stale"], reported["running"], reported["skips_total"]) == (1, 1, 2), reported

    assert finish(holder).returncode == 0
    ended = scraped(node_exporter, name)
    assert (ended["stale"], ended["running"], ended["last_exit_status"]) == (0, 0, 0), ended
    again = fcntl_procs.run([*RUNALWAYS, "run", "--name", name, "--", "true"], env=env)
    assert again.returncode == 0, again
    # The counters are the job's, not the run's: they survive from run to run.
    later = scraped(node_exporter, name)
    assert (later["skips_total"], later["runs_total"]) == (2, 2), later


@pytest.mark.clause("R17.1")
def test_a_run_without_a_name_is_labelled_with_its_command(fcntl_procs: Procs, node_exporter: NodeExporter) -> None:
    env = metrics_env(node_exporter)
    command = ["sh", "-c", "exit 3", "metrics-unnamed"]
    outcome = fcntl_procs.run([*RUNALWAYS, "run", "--", *command], env=env)
    assert (outcome.returncode, outcome.stderr) == (3, ""), outcome
    served = scraped(node_exporter, "sh -c 'exit 3' metrics-unnamed")
    assert (served["last_exit_status"], served["runs_total"]) == (3, 1), served
    (written,) = [path.name for path in Path(node_exporter.textfile_dir).glob("runalways_sh_-c*metrics-unnamed-*.prom")]
    assert " " not in written and "'" not in written, written


@pytest.mark.clause("R17.1")
@pytest.mark.parametrize("name", ['quo"te\\back', "x" * 300])
def test_a_job_of_any_name_is_served(fcntl_procs: Procs, node_exporter: NodeExporter, name: str) -> None:
    name = f"metrics {name}"
    outcome = fcntl_procs.run([*RUNALWAYS, "run", "--name", name, "--", "true"], env=metrics_env(node_exporter))
    assert (outcome.returncode, outcome.stderr) == (0, ""), outcome
    assert scraped(node_exporter, name)["runs_total"] == 1


@pytest.mark.clause("R17.1")
@pytest.mark.parametrize("name", ["new\nline", "caf\udce9 (not UTF-8)"])
def test_a_script_of_any_file_name_is_served(fcntl_procs: Procs, node_exporter: NodeExporter, name: str) -> None:
    # A lock name is one line of text (R18), but a script's file name may hold any byte but / and NUL.
    script = fcntl_procs.script(f"metrics {name}.py", "print('body')\n")
    outcome = fcntl_procs.run_python(script, env={**metrics_env(node_exporter), "RUNALWAYS_SILENT": "1"})
    assert (outcome.returncode, outcome.stdout) == (0, "body\n"), outcome
    shown = script.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # a label is UTF-8
    assert scraped(node_exporter, shown)["runs_total"] == 1


@pytest.mark.clause("R17.1")
def test_a_run_that_died_unreported_is_counted_at_the_next_start(
    fcntl_procs: Procs, node_exporter: NodeExporter
) -> None:
    name = "metrics-killed"
    env = metrics_env(node_exporter)
    holder = fcntl_procs.start([*RUNALWAYS, "run", "--name", name, "--", sys.executable, "-c", HOLD], env=env)
    wait_for_line(holder, "ready")
    kill(holder)  # SIGKILL: no end is reported; the command dies with its wrapper
    assert scraped(node_exporter, name)["running"] == 1
    outcome = fcntl_procs.run([*RUNALWAYS, "run", "--name", name, "--", "sh", "-c", "exit 0"], env=env)
    assert outcome.returncode == 0, outcome
    served = scraped(node_exporter, name)
    assert (served["unreported_ends_total"], served["runs_total"], served["last_exit_status"]) == (1, 2, 0), served
    with_holder = fcntl_procs.start([*RUNALWAYS, "run", "--name", name, "--", sys.executable, "-c", HOLD], env=env)
    wait_for_line(with_holder, "ready")
    kill(with_holder)
    fcntl_procs.start([*RUNALWAYS, "run", "--name", name, "--", sys.executable, "-c", HOLD], env=env)
    wait_until(lambda: scraped(node_exporter, name)["runs_total"] == 4, "the third start")
    # The run in between died unreported: its status is the documented -1 until the next end.
    served = scraped(node_exporter, name)
    assert (served["unreported_ends_total"], served["last_exit_status"], served["running"]) == (2, -1, 1), served


@pytest.mark.clause("R17.1")
def test_a_guarded_script_s_end_is_on_the_record(fcntl_procs: Procs, node_exporter: NodeExporter) -> None:
    job = fcntl_procs.script("metrics_guarded.py", "import os, sys\nsys.exit(int(os.environ['EXIT']))\n")
    env = metrics_env(node_exporter)
    assert fcntl_procs.run_python(job, env={**env, "EXIT": "0"}).returncode == 0
    failed = fcntl_procs.run_python(job, env={**env, "EXIT": "3"})
    assert (failed.returncode, failed.stderr) == (3, ""), failed
    served = scraped(node_exporter, "metrics_guarded.py")
    assert (served["last_exit_status"], served["runs_total"], served["running"]) == (3, 2, 0), served
    assert 0 < served["last_success_timestamp_seconds"] < served["last_end_timestamp_seconds"], served


# Never torn, never a lost count, never a failed job.

#: Each copy waits on the gate until all exist, then execs its command at once.
GATE = "import os, sys; os.read(int(sys.argv[1]), 1); os.execv(sys.argv[2], sys.argv[2:])"

#: How many skips start at once.
COPIES = 24


@pytest.mark.clause("R17.2")
def test_concurrent_skips_never_tear_the_file_or_lose_a_count(fcntl_procs: Procs, node_exporter: NodeExporter) -> None:
    name = "metrics-stampede"
    env = fcntl_procs.env(metrics_env(node_exporter))
    path = prom_file(node_exporter, name)
    holder = fcntl_procs.start([*RUNALWAYS, "run", "--name", name, "--", sys.executable, "-c", HOLD], env=env)
    wait_for_line(holder, "ready")

    # Every read of the file while the copies update it: whole, and a count that only grows.
    seen: list[float] = []
    torn: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            text = path.read_text()
            values = samples(text)
            if not text.endswith("\n") or len(values) != len(ALWAYS):
                torn.append(text)
            seen.append(values.get(f'runalways_skips_total{{name="{name}"}}', -1))

    watcher = threading.Thread(target=watch)
    watcher.start()
    gate_read, gate_write = os.pipe()
    argv = [sys.executable, "-c", GATE, str(gate_read), *RUNALWAYS, "run", "--name", name, "--", "true"]
    copies = [
        subprocess.Popen(argv, env=env, cwd=fcntl_procs.workdir, pass_fds=(gate_read,), stderr=subprocess.PIPE)
        for _ in range(COPIES)
    ]
    os.close(gate_read)
    try:
        os.write(gate_write, b"g" * COPIES)
        errors = [copy.communicate(timeout=TIMEOUT)[1] for copy in copies]
    finally:
        os.close(gate_write)
        for copy in copies:
            if copy.poll() is None:
                copy.kill()
            copy.wait(timeout=TIMEOUT)
        done.set()
        watcher.join(timeout=TIMEOUT)
    assert [copy.returncode for copy in copies] == [0] * COPIES and set(errors) == {b""}, errors
    assert not torn, torn[:1]
    assert seen == sorted(seen) and len(seen) > 1, seen
    assert scraped(node_exporter, name)["skips_total"] == COPIES
    finish(holder)
    assert scraped(node_exporter, name)["skips_total"] == COPIES  # the holder's end keeps the count


#: Processes that each update one job's file this many times, all at once.
HAMMER = """
import os, sys
from runalways._metrics import update
from runalways._values import Target

class Job:
    target = Target(None, display=sys.argv[3], name=sys.argv[3])

os.read(int(sys.argv[1]), 1)
for _ in range(int(sys.argv[4])):
    update(sys.argv[2], "skip", Job(), {})
"""


@pytest.mark.clause("R17.2")
def test_processes_updating_one_file_at_once_lose_no_count(fcntl_procs: Procs, node_exporter: NodeExporter) -> None:
    name, processes, rounds = "metrics-hammer", 4, 25
    gate_read, gate_write = os.pipe()
    argv = [sys.executable, "-c", HAMMER, str(gate_read), node_exporter.textfile_dir, name, str(rounds)]
    hammers = [
        subprocess.Popen(argv, env=fcntl_procs.env(), pass_fds=(gate_read,), stderr=subprocess.PIPE)
        for _ in range(processes)
    ]
    os.close(gate_read)
    try:
        os.write(gate_write, b"g" * processes)
        errors = [hammer.communicate(timeout=TIMEOUT)[1] for hammer in hammers]
    finally:
        os.close(gate_write)
        for hammer in hammers:
            if hammer.poll() is None:
                hammer.kill()
            hammer.wait(timeout=TIMEOUT)
    assert set(errors) == {b""}, errors
    assert scraped(node_exporter, name)["skips_total"] == processes * rounds
    leftovers = [entry for entry in os.listdir(node_exporter.textfile_dir) if entry.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.mark.clause("R17.2")
@pytest.mark.parametrize("place", ["missing", "a file"])
def test_a_directory_that_cannot_be_written_is_one_warning_and_the_job_keeps_its_status(
    fcntl_procs: Procs, place: str
) -> None:
    directory = fcntl_procs.workdir / "metrics"
    if place == "a file":
        directory.write_text("not a directory\n")
    env = {"RUNALWAYS_METRICS": str(directory), "RUNALWAYS_SILENT": "1"}
    outcome = fcntl_procs.run(
        [*RUNALWAYS, "run", "--name", "metrics-nowhere", "--", "sh", "-c", "echo body; exit 3"], env=env
    )
    assert (outcome.returncode, outcome.stdout) == (3, "body\n"), outcome
    assert outcome.stderr.count("\n") == 1, outcome.stderr
    assert outcome.stderr.startswith(
        f"runalways: cannot write the metrics to '{directory}/runalways_metrics-nowhere.prom': "
    )
    assert "Traceback" not in outcome.stderr


@pytest.mark.clause("R17.2")
def test_a_guarded_script_with_a_directory_that_cannot_be_written_runs_with_one_warning(fcntl_procs: Procs) -> None:
    job = fcntl_procs.script("metrics_nowhere.py", "import sys\nprint('body')\nsys.exit(3)\n")
    env = {"RUNALWAYS_METRICS": str(fcntl_procs.workdir / "missing"), "RUNALWAYS_SILENT": "1"}
    outcome = fcntl_procs.run_python(job, env=env)
    assert (outcome.returncode, outcome.stdout) == (3, "body\n"), outcome
    # The start and the end both fail to write: one line says so.
    assert outcome.stderr.count("\n") == 1 and "cannot write the metrics to" in outcome.stderr, outcome.stderr


# Read back.


@pytest.mark.clause("R17.3")
def test_status_and_list_read_the_last_outcome_back(fcntl_procs: Procs, node_exporter: NodeExporter) -> None:
    name = "metrics-status"
    env = metrics_env(node_exporter)
    fcntl_procs.run([*RUNALWAYS, "run", "--name", name, "--", "sh", "-c", "exit 6"], env=env)
    status = fcntl_procs.run([*RUNALWAYS, "status", "--json", "--name", name], env=env)
    assert status.returncode == 3, status  # not running
    facts = json.loads(status.stdout)
    assert facts["metrics"] == str(prom_file(node_exporter, name)), facts
    assert (facts["last_exit_status"], facts["runs_total"], facts["skips_total"]) == (6, 1, 0), facts
    assert facts["last_start"] <= facts["last_end"] and facts["last_duration_seconds"] >= 0, facts
    assert facts["last_success"] is None, facts
    typed = fcntl_procs.run(
        [*RUNALWAYS, "status", "--json", "--metrics", node_exporter.textfile_dir, "--name", name], env={}
    )
    assert json.loads(typed.stdout)["last_exit_status"] == 6, typed

    holder = fcntl_procs.start([*RUNALWAYS, "run", "--name", name, "--", sys.executable, "-c", HOLD], env=env)
    wait_for_line(holder, "ready")
    listed = fcntl_procs.run([*RUNALWAYS, "list", "--json"], env=env)
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines() if json.loads(line)["pid"] == holder.pid]
    # Running: the last end is still the earlier run's.
    assert (entry["last_exit_status"], entry["runs_total"]) == (6, 2), entry
    holder.send_signal(signal.SIGTERM)
    assert finish(holder).returncode == 128 + signal.SIGTERM


@pytest.mark.clause("R17.3")
def test_the_log_gives_the_last_duration_and_end_too(fcntl_procs: Procs) -> None:
    record = fcntl_procs.workdir / "runalways.log"
    env = {"RUNALWAYS_LOG": str(record), "RUNALWAYS_SILENT": "1"}
    before = int(time.time())
    fcntl_procs.run([*RUNALWAYS, "run", "--name", "logged", "--", "sh", "-c", "exit 4"], env=env)
    facts = json.loads(fcntl_procs.run([*RUNALWAYS, "status", "--json", "--name", "logged"], env=env).stdout)
    assert facts["last_exit_status"] == 4 and facts["last_duration_seconds"] >= 0, facts
    assert before <= facts["last_end"] <= time.time(), facts
