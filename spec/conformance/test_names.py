"""R18: one lock per sub-command: ``RUNALWAYS_NAME``, ``--name`` and ``name=`` with the job's arguments.

A script that holds several jobs behind one file (Django's ``manage.py``, a Click group) is
simulated by a script whose first argument chooses the sub-command: no framework is needed to
see the locks. Every case runs real processes, for every backend (the cluster ones against the
servers the suite starts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from harness import HOLD, Procs, finish, wait_for_line

RUNALWAYS = [sys.executable, "-m", "runalways"]

#: A group of sub-commands, each guarded inside itself on its own name, as a Click command or a
#: Django management command's handle() would be: the guard is the command's first statement.
GROUP = """
import sys

import runalways.api


def sync_orders() -> None:
    runalways.api.guard(name="shop-sync_orders")
    print("ready", flush=True)
    sys.stdin.read()


def send_invoices() -> None:
    runalways.api.guard(name=f"shop-{sys.argv[1]}")
    print("ready", flush=True)
    sys.stdin.read()


def report() -> None:
    with runalways.api.lock(name="{script}-{1}-{2}"):
        print("ready", flush=True)
        sys.stdin.read()


{"sync_orders": sync_orders, "send_invoices": send_invoices, "report": report}[sys.argv[1]]()
"""


def _executable(procs: Procs, name: str, body: str = HOLD) -> Path:
    """A program ``runalways run`` can start: a Python holder with a #! line, no guard of its own."""
    program = procs.script(name, body, header=f"#!{sys.executable}\n")
    program.chmod(0o755)
    return program


@pytest.mark.clause("R18.1")
def test_each_sub_command_of_one_script_is_a_job_of_its_own(procs: Procs) -> None:
    manage = procs.script("manage.py")
    env = {"RUNALWAYS_NAME": "{script}-{1}"}
    first = procs.hold(manage, "sync_orders", env=env)
    other = procs.hold(manage, "send_invoices", env=env)  # another sub-command runs beside it
    again = finish(procs.python(manage, "sync_orders", "--verbose", env=env))
    assert (again.returncode, again.stdout, again.stderr) == (0, "", ""), again
    for holder in (first, other):
        held = finish(holder)
        # Messages keep naming the script as it was typed.
        assert held.returncode == 0 and held.stderr.startswith(f"'{manage}' has been started at "), held
    # Once its holder ended, the sub-command runs again.
    after = finish(procs.python(manage, "sync_orders", env=env))
    assert after.returncode == 0 and "has been started at" in after.stderr, after


@pytest.mark.clause("R18.2")
def test_a_group_guards_each_command_inside_it_on_its_name(fcntl_procs: Procs) -> None:
    # The name is the backend's to lock whatever it is (R18.1 runs every backend): one backend here.
    procs = fcntl_procs
    group = procs.script("shop.py", GROUP, header="")
    sync = procs.hold(group, "sync_orders")
    invoices = procs.hold(group, "send_invoices")
    report = procs.hold(group, "report", "daily")
    again = finish(procs.python(group, "send_invoices"))
    assert (again.returncode, again.stdout, again.stderr) == (0, "", ""), again
    busy = finish(procs.python(group, "report", "daily"))
    assert busy.returncode == 1 and "AlreadyRunning" in busy.stderr and "shop.py-report-daily" in busy.stderr, busy
    for holder in (sync, invoices, report):
        assert finish(holder).returncode == 0


@pytest.mark.clause("R18.3")
def test_run_keys_a_lock_on_an_argument_of_the_command(fcntl_procs: Procs) -> None:
    procs = fcntl_procs
    backup = _executable(procs, "backup")
    db1 = procs.start([*RUNALWAYS, "run", "--name", "backup-{1}", "--", "./backup", "db1"])
    wait_for_line(db1, "ready")
    db2 = procs.start([*RUNALWAYS, "run", "--name", "backup-{1}", "--", str(backup), "db2", "--full"])
    wait_for_line(db2, "ready")
    # RUNALWAYS_NAME names the command's lock the same way: '{script}-{1}' is 'backup-db1' too.
    again = procs.run([*RUNALWAYS, "run", "--", "./backup", "db1", "--full"], env={"RUNALWAYS_NAME": "{script}-{1}"})
    assert (again.returncode, again.stdout, again.stderr) == (0, "", ""), again
    shown = procs.run([*RUNALWAYS, "status", "--name", "backup-db1"])
    assert shown.returncode == 0 and shown.stdout.startswith("'backup-db1' is running: "), shown
    for holder in (db1, db2):
        held = finish(holder)
        assert held.returncode == 0 and "' has been started at " in held.stderr, held
    assert procs.run([*RUNALWAYS, "status", "--name", "backup-db1"]).returncode == 3


@pytest.mark.clause("R18.4")
def test_names_that_differ_only_where_a_file_name_cannot_are_two_locks(local_procs: Procs) -> None:
    # A lock file's name is the local backends' concern: a server keys on the name as it is.
    job = local_procs.script("job.py")
    env = {"RUNALWAYS_NAME": "{1}"}
    holders = [local_procs.hold(job, name, env=env) for name in ("a/b", "a_b", "..")]
    again = finish(local_procs.python(job, "a/b", env=env))
    assert (again.returncode, again.stdout, again.stderr) == (0, "", ""), again
    for holder in holders:
        assert finish(holder).returncode == 0
    locks = local_procs.workdir / "locks"
    assert not locks.exists() or all(entry.parent == locks for entry in locks.rglob("*")), "a name made a directory"


@pytest.mark.clause("R18.5")
def test_status_and_list_show_the_name_the_job_made(local_procs: Procs) -> None:
    job = local_procs.script("manage.py")
    holder = local_procs.hold(job, "sync_orders", env={"RUNALWAYS_NAME": "{script}-{1}"})
    shown = local_procs.run([*RUNALWAYS, "status", "--name", "manage.py-sync_orders"])
    assert shown.returncode == 0 and shown.stdout.startswith("'manage.py-sync_orders' is running: "), shown
    by_script = local_procs.run([*RUNALWAYS, "status", str(job)], env={"RUNALWAYS_NAME": "{script}-sync_orders"})
    assert by_script.returncode == 0 and f"pid {holder.pid}" in by_script.stdout, by_script
    listed = local_procs.run([*RUNALWAYS, "list"])
    line = next(line for line in listed.stdout.splitlines() if f" {holder.pid} " in line)
    assert " manage.py-sync_orders " in line, listed
    finish(holder)


BAD_NAMES = {
    "a missing argument": ({"RUNALWAYS_NAME": "{script}-{2}"}, ["a"], "uses {2}, but the script was given only 1"),
    "an unknown field": ({"RUNALWAYS_NAME": "{script}-{0}"}, ["a"], "unknown field {0}; use {1} to {9}"),
    "a lone brace": ({"RUNALWAYS_NAME": "job-{1"}, ["a"], "never closed"),
    "a closing brace": ({"RUNALWAYS_NAME": "job-}"}, ["a"], "closes nothing"),
    "an empty name": ({"RUNALWAYS_NAME": "{1}"}, [" "], "is an empty name"),
    "a newline": ({"RUNALWAYS_NAME": "{1}"}, ["a\nb"], "control character"),
    "a lock file besides": ({"RUNALWAYS_NAME": "{1}", "RUNALWAYS_LOCK": "private"}, ["a"], "two ways to name one"),
    "a path identity besides": ({"RUNALWAYS_NAME": "x", "RUNALWAYS_IDENTITY": "path"}, ["a"], "two ways to name"),
}


@pytest.mark.clause("R18.6")
@pytest.mark.parametrize("case", BAD_NAMES)
def test_a_bad_name_is_one_line_and_exit_2(fcntl_procs: Procs, case: str) -> None:
    env, arguments, said = BAD_NAMES[case]
    job = fcntl_procs.script("job.py", "print('body')\n")
    outcome = fcntl_procs.run_python(job, *arguments, env=env)
    assert (outcome.returncode, outcome.stdout) == (2, ""), outcome
    assert outcome.stderr.startswith("runalways: ") and outcome.stderr.count("\n") == 1, outcome
    assert said in outcome.stderr, outcome


@pytest.mark.clause("R18.6")
@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "--name", "backup-{1}", "--", "true"], "--name='backup-{1}' uses {1}, but the command was given no"),
        (["run", "--name", "{host}", "--", "true"], "unknown field {host}"),
        (["status", "--name", "backup-{1}"], "give runalways status the name the job made"),
    ],
)
def test_a_bad_name_on_the_command_line_is_one_line_and_exit_2(fcntl_procs: Procs, argv: list[str], said: str) -> None:
    outcome = fcntl_procs.run([*RUNALWAYS, *argv])
    assert (outcome.returncode, outcome.stdout) == (2, ""), outcome
    assert outcome.stderr.count("\n") == 1 and said in outcome.stderr, outcome


@pytest.mark.clause("R18.7")
def test_only_a_start_with_a_name_loads_the_names(fcntl_procs: Procs) -> None:
    body = """
    import sys
    print("runalways._names" in sys.modules)
    """
    job = fcntl_procs.script("job.py", body)
    without = fcntl_procs.run_python(job, "a", env={"RUNALWAYS_SILENT": "1"})
    assert (without.returncode, without.stdout) == (0, "False\n"), without
    named = fcntl_procs.run_python(job, "a", env={"RUNALWAYS_SILENT": "1", "RUNALWAYS_NAME": "{script}-{1}"})
    assert (named.returncode, named.stdout) == (0, "True\n"), named
