"""R13: one job, one lock, wherever it is started from.

These cases start jobs the way operators do: as a local user of their own (the suite
creates one; it runs as root), from a login-like environment (XDG_RUNTIME_DIR and TMPDIR
set), a cron-like one (only HOME, LOGNAME, PATH and SHELL), a sudo-like one (another
HOME), and with a private /tmp in a new mount namespace (systemd's PrivateTmp=yes). None
of them sets RUNALWAYS_DIR: the default lock directory is what is under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from harness import (
    HOLD,
    TIMEOUT,
    Account,
    Outcome,
    Procs,
    as_account,
    finish,
    in_private_tmp,
    local_account,
    wait_for_line,
    with_machine_id,
)

from runalways import _lockdir
from runalways.backends import get_class
from runalways.backends._filelock import FileLockBackend

RUNALWAYS = [sys.executable, "-m", "runalways"]
#: The bodies of a job under ``runalways run``: one that holds until its stdin closes, one
#: that says it ran. A shell, not this interpreter: the account may not be able to search
#: the directories the suite's interpreter lives in, though it may run it.
HOLD_SH = "echo ready; cat >/dev/null"
RAN = "echo ran"
NOBODY = 65534


@pytest.fixture
def homes() -> Iterator[Path]:
    """Homes and jobs of the accounts a case creates: outside /tmp (a private /tmp hides it)."""
    path = Path(tempfile.mkdtemp(prefix="runalways-spec-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def account(homes: Path) -> Iterator[Account]:
    with local_account(homes) as created:
        yield created


def settings_of(procs: Procs) -> dict[str, str]:
    """The backend and what it needs (the postgres server), and nothing about where locks go."""
    return {"RUNALWAYS_BACKEND": procs.backend, **procs.settings}


def private_dir(homes: Path, account: Account, name: str) -> Path:
    folder = homes / f"{name}-{account.uid}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chown(folder, account.uid, account.gid)
    return folder


def login_env(homes: Path, account: Account, settings: dict[str, str]) -> dict[str, str]:
    """What a login session has: logind's XDG_RUNTIME_DIR, a TMPDIR of the user's."""
    return {
        "HOME": str(account.home or "/"),
        "USER": account.name,
        "LOGNAME": account.name,
        "SHELL": "/bin/sh",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(private_dir(homes, account, "run-user")),
        "TMPDIR": str(private_dir(homes, account, "tmp")),
        **settings,
    }


def cron_env(account: Account, settings: dict[str, str]) -> dict[str, str]:
    """What cron gives a job: HOME, LOGNAME, PATH and SHELL, nothing else."""
    home = str(account.home or "/")
    return {"HOME": home, "LOGNAME": account.name, "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", **settings}


def sudo_env(account: Account, settings: dict[str, str]) -> dict[str, str]:
    """``sudo -u`` as some configurations do it: the caller's HOME kept, another TMPDIR."""
    return {"HOME": "/root", "USER": account.name, "LOGNAME": account.name, "SUDO_USER": "root",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": "/var/tmp", **settings}  # fmt: skip


def elsewhere(
    homes: Path, account: Account, settings: dict[str, str], argv: list[str]
) -> list[tuple[str, list[str], dict[str, str]]]:
    """The same job started from cron, through sudo, and in a unit with a private /tmp."""
    stash = homes / f"stash-{time.monotonic_ns()}"
    stash.mkdir()
    return [
        ("cron", as_account(account, argv), cron_env(account, settings)),
        ("sudo -u", as_account(account, argv), sudo_env(account, settings)),
        ("a private /tmp", in_private_tmp(as_account(account, argv), stash), cron_env(account, settings)),
    ]


def named(body: str, *options: str) -> list[str]:
    return [*RUNALWAYS, "run", *options, "--name", "nightly", "--", "/bin/sh", "-c", body]


def run(procs: Procs, argv: list[str], env: dict[str, str]) -> Outcome:
    return finish(procs.start_as_given(argv, env))


def lock_file_line(outcome: Outcome) -> str | None:
    for line in outcome.stdout.splitlines():
        if line.startswith("  lock file: "):
            return line[len("  lock file: ") :]
    return None


@pytest.mark.clause("R13.1")
def test_a_named_job_is_one_job_from_every_environment(procs: Procs, homes: Path, account: Account) -> None:
    settings = settings_of(procs)
    holder = procs.start_as_given(as_account(account, named(HOLD_SH)), login_env(homes, account, settings))
    wait_for_line(holder, "ready")
    for how, argv, env in elsewhere(homes, account, settings, named(RAN)):
        outcome = run(procs, argv, env)
        assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", ""), (how, outcome)
    status = run(procs, as_account(account, [*RUNALWAYS, "status", "--name", "nightly"]), cron_env(account, settings))
    assert status.returncode == 0 and f"pid {holder.pid}" in status.stdout, status
    finish(holder)


@pytest.mark.clause("R13.1")
@pytest.mark.parametrize("lock", ["script", "private"])
def test_a_guarded_script_is_one_job_from_every_environment(
    procs: Procs, homes: Path, account: Account, capabilities: object, lock: str
) -> None:
    settings = settings_of(procs)
    if lock == "private":
        settings["RUNALWAYS_LOCK"] = "private"
    job = homes / "jobs" / "job.py"
    job.parent.mkdir(mode=0o755, exist_ok=True)
    job.write_text("import runalways\n" + HOLD)
    os.chown(job, account.uid, account.gid)  # the user's own job: lockf and ofd lock it for writing
    started = procs.start_as_given(as_account(account, [sys.executable, job]), login_env(homes, account, settings))
    if lock == "private" and capabilities.identity == "name":  # type: ignore[attr-defined]
        refused = finish(started)  # a name-keyed backend refuses a lock file (R12.3)
        assert refused.returncode == 2 and "RUNALWAYS_LOCK" in refused.stderr, refused
        return
    wait_for_line(started, "ready")
    for how, argv, env in elsewhere(homes, account, settings, [sys.executable, str(job)]):
        outcome = run(procs, argv, env)
        assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", ""), (how, outcome)
    finish(started)


@pytest.mark.clause("R13.2")
def test_the_lock_directory_is_in_the_home_the_password_database_names(
    fcntl_procs: Procs, homes: Path, account: Account
) -> None:
    env = cron_env(account, {})
    env["HOME"] = str(homes)  # a HOME the session got wrong changes nothing
    holder = fcntl_procs.start_as_given(as_account(account, named(HOLD_SH)), env)
    wait_for_line(holder, "ready")
    status = run(fcntl_procs, as_account(account, [*RUNALWAYS, "status", "--name", "nightly"]), env)
    assert account.home is not None
    folder = account.home / ".runalways" / _lockdir.host_key()
    found = lock_file_line(status)
    assert found is not None and Path(found).parent == folder, status
    assert (folder.stat().st_mode & 0o777, folder.stat().st_uid) == (0o700, account.uid)
    finish(holder)


@pytest.mark.clause("R13.2")
def test_a_name_squatted_in_tmp_neither_stops_nor_redirects_a_job(
    fcntl_procs: Procs, homes: Path, account: Account
) -> None:
    # Another user creates every name a per-user directory in /tmp or /dev/shm could have.
    tmp = private_dir(homes, account, "tmp")
    squatted = [Path(f"/tmp/runalways-{account.uid}"), Path(f"/dev/shm/runalways-{account.uid}")]
    try:
        for folder in squatted:
            folder.mkdir(mode=0o777)
            os.chown(folder, NOBODY, NOBODY)
        holder = fcntl_procs.start_as_given(as_account(account, named(HOLD_SH)), login_env(homes, account, {}))
        wait_for_line(holder, "ready")
        for env in (cron_env(account, {}), {**cron_env(account, {}), "TMPDIR": str(tmp)}):
            outcome = run(fcntl_procs, as_account(account, named(RAN)), env)
            assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", ""), outcome
        assert all(not any(folder.iterdir()) for folder in squatted)  # nothing went there
        finish(holder)
    finally:
        for folder in squatted:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.clause("R13.2")
def test_a_system_account_without_a_home_falls_back_to_one_place(fcntl_procs: Procs, homes: Path) -> None:
    with local_account(homes, home=False, system=True) as daemon:
        fallback = Path(f"/dev/shm/runalways-{daemon.uid}")
        try:
            holder = fcntl_procs.start_as_given(as_account(daemon, named(HOLD_SH)), login_env(homes, daemon, {}))
            wait_for_line(holder, "ready")
            outcome = run(fcntl_procs, as_account(daemon, named(RAN)), cron_env(daemon, {}))
            assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", ""), outcome
            status = run(fcntl_procs, as_account(daemon, [*RUNALWAYS, "status", "--name", "nightly"]), {})
            found = lock_file_line(status)
            assert status.returncode == 0 and found is not None and Path(found).parent == fallback, status
            finish(holder)
        finally:
            shutil.rmtree(fallback, ignore_errors=True)


@pytest.mark.clause("R13.2")
def test_a_squatted_fallback_is_one_line_naming_runalways_dir_and_exit_2(fcntl_procs: Procs, homes: Path) -> None:
    with local_account(homes, home=False, system=True) as daemon:
        fallback = Path(f"/dev/shm/runalways-{daemon.uid}")
        try:
            fallback.mkdir(mode=0o777)
            os.chown(fallback, NOBODY, NOBODY)
            outcome = run(fcntl_procs, as_account(daemon, named(RAN)), cron_env(daemon, {}))
            assert (outcome.returncode, outcome.stdout) == (2, ""), outcome
            assert outcome.stderr.startswith("runalways: ") and outcome.stderr.count("\n") == 1, outcome
            assert str(fallback) in outcome.stderr and "RUNALWAYS_DIR" in outcome.stderr, outcome
        finally:
            shutil.rmtree(fallback, ignore_errors=True)


@pytest.mark.clause("R13.2")
def test_a_regular_account_without_a_home_is_asked_for_runalways_dir(fcntl_procs: Procs, homes: Path) -> None:
    with local_account(homes, home=False) as user:
        outcome = run(fcntl_procs, as_account(user, named(RAN)), cron_env(user, {}))
        assert (outcome.returncode, outcome.stdout) == (2, ""), outcome
        assert outcome.stderr.count("\n") == 1 and "set RUNALWAYS_DIR" in outcome.stderr, outcome


TMPFILES = shutil.which("systemd-tmpfiles")
AGED = time.time() - 40 * 86400


@pytest.mark.clause("R13.3")
def test_an_aged_held_lock_file_survives_systemd_tmpfiles(procs: Procs, homes: Path, account: Account) -> None:
    assert TMPFILES is not None, "systemd-tmpfiles is needed (the test command installs it)"
    settings = settings_of(procs)
    holder = procs.start_as_given(as_account(account, named(HOLD_SH)), login_env(homes, account, settings))
    wait_for_line(holder, "ready")
    status = run(procs, as_account(account, [*RUNALWAYS, "status", "--name", "nightly"]), cron_env(account, settings))
    found = lock_file_line(status)
    if found is None:  # a lock on a server: no file for a cleaner to remove
        assert get_class(procs.backend).capabilities.identity == "name", status
        finish(holder)
        return
    lock_file = Path(found)
    assert lock_file.stat().st_mode & 0o7777 == 0o1600
    unrelated = lock_file.parent / "unrelated-file"
    unrelated.write_text("")
    for path in (lock_file, unrelated, lock_file.parent):
        os.utime(path, (AGED, AGED))
    # /tmp after 10 days as Fedora, RHEL and Arch clean it; by access and modification
    # time, since the ctime of files a test just made cannot be put in the past.
    config = homes / "cleaner.conf"
    config.write_text(f"d {lock_file.parent} - - - amAM:10d\n")
    cleaned = subprocess.run([TMPFILES, "--clean", str(config)], capture_output=True, timeout=TIMEOUT)
    assert cleaned.returncode == 0, cleaned
    assert not unrelated.exists(), "the cleaner did not run: the case proves nothing"
    assert lock_file.exists()
    outcome = run(procs, as_account(account, named(RAN)), cron_env(account, settings))
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, "", ""), outcome
    finish(holder)


@pytest.mark.clause("R13.4")
def test_status_reports_a_holder_of_a_deleted_lock_file(procs: Procs) -> None:
    if not issubclass(get_class(procs.backend), FileLockBackend):
        return  # only a kernel lock outlives its file's name; a pidfile or a server lock does not
    holder = procs.start([*RUNALWAYS, "run", "--name", "gone", "--", sys.executable, "-c", HOLD])
    wait_for_line(holder, "ready")
    for lock_file in (procs.workdir / "locks").iterdir():
        lock_file.unlink()  # by hand, or by a cleaner nobody knew about
    status = procs.run([*RUNALWAYS, "status", "--name", "gone"])
    assert status.returncode == 0, status
    assert f"pid {holder.pid} holds a lock on a deleted file: another copy can start" in status.stdout, status
    finish(holder)


@pytest.mark.clause("R13.5")
def test_a_home_shared_by_two_hosts_keeps_their_local_locks_apart(
    fcntl_procs: Procs, homes: Path, account: Account
) -> None:
    hosts = []
    for machine in ("a" * 32, "b" * 32):
        path = homes / f"machine-id-{machine[0]}"
        path.write_text(machine + "\n")
        path.chmod(0o644)
        hosts.append(path)
    env = cron_env(account, {})
    holder = fcntl_procs.start_as_given(with_machine_id(as_account(account, named(HOLD_SH)), hosts[0]), env)
    wait_for_line(holder, "ready")
    same_host = run(fcntl_procs, with_machine_id(as_account(account, named(RAN)), hosts[0]), env)
    assert (same_host.returncode, same_host.stdout) == (0, ""), same_host
    other_host = run(fcntl_procs, with_machine_id(as_account(account, named(RAN)), hosts[1]), env)
    assert (other_host.returncode, other_host.stdout) == (0, "ran\n"), other_host
    finish(holder)


HOLD_AS_0_1 = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.clause("R13.6")
@pytest.mark.parametrize("started_from", ["cron", "login"])
def test_a_copy_started_by_0_1_keeps_new_starts_out(
    fcntl_procs: Procs, homes: Path, account: Account, started_from: str
) -> None:
    env = cron_env(account, {}) if started_from == "cron" else login_env(homes, account, {})
    old_dir = (
        Path(env["XDG_RUNTIME_DIR"]) / "runalways"
        if "XDG_RUNTIME_DIR" in env
        else Path(f"/tmp/runalways-{account.uid}")
    )
    try:
        old_dir.mkdir(mode=0o700)
        os.chown(old_dir, account.uid, account.gid)
        old_file = old_dir / _lockdir.file_name("nightly")
        holder = fcntl_procs.start_as_given(as_account(account, [sys.executable, "-c", HOLD_AS_0_1, old_file]), env)
        wait_for_line(holder, "ready")
        always = run(fcntl_procs, as_account(account, named(RAN)), env)
        assert (always.returncode, always.stdout, always.stderr) == (0, "", ""), always
        alone = run(fcntl_procs, as_account(account, named(RAN, "--alone")), env)
        assert alone.returncode == 1 and f"is already running (pid {holder.pid}," in alone.stderr, alone
        status = run(fcntl_procs, as_account(account, [*RUNALWAYS, "status", "--name", "nightly"]), env)
        assert status.returncode == 0 and f"pid {holder.pid}" in status.stdout, status
        assert f"it holds {old_file}, where runalways 0.1 kept lock files" in status.stdout, status
        finish(holder)
        after = run(fcntl_procs, as_account(account, named(RAN)), env)
        assert (after.returncode, after.stdout) == (0, "ran\n"), after
    finally:
        shutil.rmtree(old_dir, ignore_errors=True)
