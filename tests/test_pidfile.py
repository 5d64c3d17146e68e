"""The pidfile backend, with real processes: contention, stale takeover, races, hostile set-ups.

Processes synchronise through pipes (a holder prints ``ready`` once it holds the lock and
runs until its stdin closes); every wait is bounded. The tests run as root, to hand
directories to ``nobody`` and to mount small file systems for the disk-full cases.
"""

from __future__ import annotations

import errno
import os
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from harness import reap

from runalways import _proc
from runalways._values import Target
from runalways.backends import pidfile
from runalways.backends.pidfile import PidfileBackend

TIMEOUT = 30.0
NOBODY = 65534

HOLD = """\
import runalways
import sys
print("ready", flush=True)
sys.stdin.read()
"""


class Job:
    """A guarded script in a private lock directory, and the processes started for it."""

    def __init__(self, workdir: Path, body: str = HOLD, header: str = "") -> None:
        self.workdir = workdir
        self.locks = workdir / "locks"
        self.locks.mkdir(mode=0o700, exist_ok=True)
        self.script = workdir / "job.py"
        self.script.write_text(header + body)
        self.started: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
        env.update({"RUNALWAYS_BACKEND": "pidfile", "RUNALWAYS_DIR": str(self.locks), **extra})
        return env

    def backend(self) -> PidfileBackend:
        """The backend a copy of the job uses, with its pidfile's path worked out."""
        saved = os.environ.get("RUNALWAYS_DIR")
        os.environ["RUNALWAYS_DIR"] = str(self.locks)
        try:
            backend = PidfileBackend(Target(str(self.script), str(self.script), "job.py"))
            assert os.path.dirname(backend.pidfile) == str(self.locks)
            return backend
        finally:
            if saved is None:
                del os.environ["RUNALWAYS_DIR"]
            else:
                os.environ["RUNALWAYS_DIR"] = saved

    @property
    def pidfile(self) -> Path:
        return Path(self.backend().pidfile)

    def start(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            list(argv) or [sys.executable, str(self.script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=env or self.env(),
            cwd=self.workdir,
        )
        self.started.append(process)
        return process

    def hold(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = self.start(env=env)
        assert read_line(process) == "ready\n", finish(process)
        return process

    def run(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        return finish(self.start(*argv, env=env))

    def fields(self) -> dict[str, str]:
        found = pidfile.parse(self.pidfile.read_bytes())
        assert found is not None
        return found

    def plant(self, **changes: str) -> dict[str, str]:
        """Write a pidfile as runalways would for this test process, with ``changes``."""
        fields = dict(pidfile.me(), uid="0", script=str(self.script), token=os.urandom(16).hex())
        fields.update(changes)
        self.pidfile.write_bytes(pidfile.render(fields))
        return fields

    def reap(self) -> None:
        reap(self.started)


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Job]:
    made = Job(tmp_path)
    try:
        yield made
    finally:
        made.reap()


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"did not finish within {TIMEOUT} s: {out!r} {err!r}") from None
    return process.returncode, out.decode(), err.decode()


def read_line(process: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no line within {timeout} s (got {line!r})")
        byte = os.read(process.stdout.fileno(), 1)
        if not byte:
            break
        line += byte
    return line.decode()


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    pause = 0.001
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def mine(pid: int) -> int:
    """The start ticks of ``pid``, which must exist."""
    ticks = _proc.start_ticks(pid)
    assert ticks is not None
    return ticks


def dead_pid() -> int:
    """A pid no process has: that of a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait(timeout=TIMEOUT)
    return child.pid


def status(job: Job) -> tuple[int, str, str]:
    runalways = shutil.which("runalways", path=os.path.dirname(sys.executable))
    assert runalways is not None
    return job.run(runalways, "status", str(job.script))


def refused(job: Job, env: dict[str, str] | None = None) -> bool:
    code, out, err = job.run(env=env)
    assert code == 0, (code, out, err)
    return out == ""


# -- contention and release -------------------------------------------------------------


def test_second_copy_is_refused_while_the_first_runs(job: Job) -> None:
    holder = job.hold()
    fields = job.fields()
    assert fields["pid"] == str(holder.pid) and fields["script"] == str(job.script)
    assert stat.S_IMODE(job.pidfile.stat().st_mode) == 0o1600
    assert refused(job)
    code, out, _ = status(job)
    assert code == 0 and f"pid {holder.pid}" in out and "backend pidfile" in out
    finish(holder)
    assert not job.pidfile.exists()  # removed at exit: nothing left
    assert sorted(os.listdir(job.locks)) == []


def test_symlinks_share_the_pidfile_and_hard_links_do_not(job: Job) -> None:
    holder = job.hold()
    symlink = job.workdir / "link.py"
    symlink.symlink_to(job.script)
    hardlink = job.workdir / "hard.py"
    os.link(job.script, hardlink)  # (Path.hardlink_to needs Python 3.10)
    assert job.run(sys.executable, str(symlink))[1] == ""
    code, out, _ = finish(job.start(sys.executable, str(hardlink)))
    assert (code, out) == (0, "ready\n")
    finish(holder)


def test_release_removes_only_a_pidfile_naming_this_process(job: Job) -> None:
    code = """
import sys
from runalways import api
with api.lock(name="block") as held:
    assert held.holder() is not None
    print(held.pidfile, flush=True)
print("released", flush=True)
"""
    code_, out, err = job.run(sys.executable, "-c", code)
    path, released = out.splitlines()
    assert (code_, released) == (0, "released"), err
    assert not os.path.exists(path)
    # A holder whose pidfile was replaced (by hand) with one naming another live process
    # leaves that file alone at exit.
    holder = job.hold()
    job.pidfile.unlink()
    planted = job.plant()
    finish(holder)
    assert job.fields()["token"] == planted["token"]


def test_waiting_copy_gets_in_when_the_holder_ends(job: Job) -> None:
    holder = job.hold()
    waiter = job.start(env=job.env(RUNALWAYS_RETRY="300,0.1"))
    started = time.monotonic()
    finish(holder)
    assert read_line(waiter) == "ready\n"
    assert time.monotonic() - started < 5
    finish(waiter)


# -- stale pidfiles ---------------------------------------------------------------------


def test_pidfile_of_a_killed_holder_is_stale_and_taken_over(job: Job) -> None:
    holder = job.hold()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=TIMEOUT)
    assert job.fields()["pid"] == str(holder.pid)  # left behind by the killed holder
    code, out, _ = status(job)
    assert code == 3 and "not running" in out and f"pid {holder.pid}" in out and "stale" in out
    follower = job.hold()
    assert job.fields()["pid"] == str(follower.pid)
    finish(follower)


@pytest.mark.parametrize(
    "kind",
    ["dead pid", "live pid, other start time", "zombie pid", "other boot id", "old malformed file"],
)
def test_stale_pidfiles_are_taken_over(job: Job, kind: str) -> None:
    zombie = None
    if kind == "dead pid":
        job.plant(pid=str(dead_pid()))
    elif kind == "live pid, other start time":
        # This test process lives, but started at another time than the file says: its
        # pid was reused since the file was written.
        job.plant(start_ticks=str(int(pidfile.me()["start_ticks"]) - 1))
    elif kind == "zombie pid":
        zombie = subprocess.Popen([sys.executable, "-c", ""])
        wait_until(lambda: _proc.process_status(zombie.pid) == ("Z", mine(zombie.pid)), "a zombie")
        job.plant(**pidfile.describe(zombie.pid))
    elif kind == "other boot id":
        job.plant(boot_id="00000000-0000-4000-8000-000000000000")
    else:
        job.pidfile.write_text("4242\n")
        old = time.time() - 60
        os.utime(job.pidfile, (old, old))
    follower = job.hold()
    assert job.fields()["pid"] == str(follower.pid)
    finish(follower)
    if zombie is not None:
        zombie.wait()


def test_a_fresh_malformed_file_counts_as_held(job: Job) -> None:
    job.pidfile.write_text("half written")
    assert refused(job)
    code, out, _ = status(job)
    assert code == 0 and "not in runalways's format" in out


def test_a_pidfile_of_another_host_is_never_taken_over(job: Job) -> None:
    planted = job.plant(host="elsewhere.example", pid=str(dead_pid()))
    assert refused(job)  # the always policy: exit 0, silently
    job.script.write_text("import runalways.alone\nprint('body')\n")
    code, out, err = job.run()
    assert (code, out) == (1, "")
    assert err.startswith(f"A copy of '{job.script}' is already running") and "elsewhere.example" in err
    code, out, _ = status(job)
    assert code == 0 and "host elsewhere.example" in out and "never taken over" in out
    job.script.write_text("from runalways import api\nwith api.lock():\n    print('body')\n")
    code, out, err = job.run()
    assert code == 1 and "AlreadyRunning" in err and "elsewhere.example" in err
    assert job.fields()["token"] == planted["token"]


@pytest.mark.parametrize("claimer", ["live", "dead"])
def test_a_claim_on_a_stale_pidfile_keeps_others_from_removing_it_while_its_claimer_lives(
    job: Job, claimer: str
) -> None:
    stale = job.plant(pid=str(dead_pid()))
    seen = pidfile.read(str(job.pidfile))
    assert seen is not None
    claim = Path(job.backend()._claim_path(seen))
    assert claim.parent == job.locks
    claimed = dict(pidfile.me(), token=os.urandom(16).hex(), claims=job.pidfile.name)
    if claimer == "dead":
        claimed["pid"] = str(dead_pid())
    claim.write_bytes(pidfile.render(claimed))
    if claimer == "live":  # this test process "is taking it over": the others keep off
        assert refused(job)
        assert job.fields()["token"] == stale["token"] and claim.exists()
        claim.unlink()
    follower = job.hold()  # a dead claimer's claim is broken by rule 3, then the file taken
    assert job.fields()["pid"] == str(follower.pid)
    finish(follower)
    assert os.listdir(job.locks) == []


def test_a_lock_file_named_for_the_job_is_the_pidfile_and_never_deleted_if_foreign(job: Job) -> None:
    chosen = job.workdir / "mine"
    chosen.mkdir(mode=0o700)
    env = job.env(RUNALWAYS_LOCK=str(chosen / "job.pid"))
    holder = job.hold(env)
    assert pidfile.parse((chosen / "job.pid").read_bytes()) is not None
    assert refused(job, env)
    finish(holder)
    assert os.listdir(chosen) == []
    data = chosen / "job.pid"
    data.write_text("someone's data\n")
    old = time.time() - 60
    os.utime(data, (old, old))
    code, out, err = job.run(env=env)
    assert (code, out) == (2, "") and "is not a pidfile" in err and err.count("\n") == 1
    assert data.read_text() == "someone's data\n"


# -- hostile set-ups --------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["world-writable", "sticky world-writable", "group-writable", "owned by nobody"])
def test_a_hostile_lock_directory_is_refused(job: Job, hostile: str) -> None:
    if hostile == "owned by nobody":
        os.chown(job.locks, NOBODY, NOBODY)
    else:
        job.locks.chmod({"world-writable": 0o777, "sticky world-writable": 0o1777, "group-writable": 0o770}[hostile])
    code, out, err = job.run()
    assert (code, out) == (2, "")
    assert err.startswith("runalways: ") and err.count("\n") == 1 and "RUNALWAYS_DIR" in err
    assert os.listdir(job.locks) == []


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_at_the_pidfile_is_never_followed(job: Job, dangling: bool) -> None:
    victim = job.workdir / "victim"
    if not dangling:
        victim.write_text("precious\n")
    job.pidfile.symlink_to(victim)
    code, out, err = job.run()
    assert (code, out) == (2, "")
    assert err.startswith("runalways: ") and err.count("\n") == 1 and "symbolic link" in err
    assert victim.read_text() == "precious\n" if not dangling else not victim.exists()
    assert job.pidfile.is_symlink()


def test_an_unwritable_lock_directory_fails_cleanly(job: Job) -> None:
    shared = Path(tempfile.mkdtemp(prefix="runalways-pidfile-"))
    try:
        shared.chmod(0o755)
        locks = shared / "locks"
        locks.mkdir(mode=0o755)  # root's: accepted, but nobody cannot write there
        script = shared / "job.py"
        script.write_text(HOLD)
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, str(script)]
        code, out, err = job.run(*argv, env=job.env(RUNALWAYS_DIR=str(locks)))
        assert (code, out) == (2, "")
        assert err.startswith("runalways: cannot write the pidfile") and "EACCES" in err and err.count("\n") == 1
        assert os.listdir(locks) == []
    finally:
        shutil.rmtree(shared)


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(mount)], check=False, timeout=30
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=30)


@pytest.mark.parametrize("failure", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_file_system_fails_cleanly(job: Job, small_mount: Path, failure: str) -> None:
    locks = small_mount / "locks"
    locks.mkdir(mode=0o700)
    if failure == "ENOSPC":
        filler = os.open(small_mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError) as full:
                for _ in range(64):
                    os.write(filler, b"x" * 4096)
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(filler)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True, timeout=30)
    code, out, err = job.run(env=job.env(RUNALWAYS_DIR=str(locks)))
    assert (code, out) == (2, "")
    assert err.startswith("runalways: cannot write the pidfile") and failure in err and err.count("\n") == 1
    assert os.listdir(locks) == []  # no temporary file left half written


# -- fork, exec, handover ---------------------------------------------------------------

FORK_CHILD_EXITS = """\
import runalways
import os, sys
child = os.fork()
if child == 0:
    sys.exit(0)  # a normal exit: the parent's atexit handlers run in the child
os.waitpid(child, 0)
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_fork_child_exiting_normally_leaves_the_parents_pidfile(tmp_path: Path) -> None:
    job = Job(tmp_path, FORK_CHILD_EXITS)
    try:
        holder = job.hold()
        assert job.fields()["pid"] == str(holder.pid)
        assert refused(job)
        finish(holder)
        assert not job.pidfile.exists()
    finally:
        job.reap()


EXECS = """\
import runalways
import os, sys
if not os.environ.get("EXECED"):
    os.environ["EXECED"] = "1"
    os.execv(sys.executable, [sys.executable, __file__])
print("ready", flush=True)
sys.stdin.read()
"""


def test_exec_keeps_the_pidfile_and_a_guarded_program_takes_it_as_its_own(tmp_path: Path) -> None:
    job = Job(tmp_path, EXECS)
    try:
        holder = job.hold()  # "ready" comes after the exec, from the same pid
        assert job.fields()["pid"] == str(holder.pid)
        assert refused(job)
        finish(holder)
        assert not job.pidfile.exists()  # the program after the exec removed it at exit
    finally:
        job.reap()


CHILD_TAKES_OVER = """\
import runalways
import os, sys
import runalways.api
done_read, done_write = os.pipe()
if os.fork():
    os.close(done_write)
    os.read(done_read, 1)  # the parent waits for the handover, then exits normally
    sys.exit(0)
os.close(done_read)
runalways.api.handover()
os.write(done_write, b"x")
print("ready", flush=True)
sys.stdin.read()
"""

PARENT_HANDS_OVER = """\
import runalways
import os, sys
import runalways.api
go_read, go_write = os.pipe()
child = os.fork()
if child == 0:
    os.close(go_write)
    os.read(go_read, 1)
    print("ready", flush=True)
    sys.stdin.read()
    sys.exit(0)
runalways.api.handover(child)
os.write(go_write, b"x")
sys.exit(0)
"""


@pytest.mark.parametrize("body", [CHILD_TAKES_OVER, PARENT_HANDS_OVER], ids=["in the child", "by the parent"])
def test_handover_to_a_daemonised_child(tmp_path: Path, body: str) -> None:
    job = Job(tmp_path, body)
    try:
        parent = job.start()
        assert read_line(parent) == "ready\n"  # printed by the child
        parent.wait(timeout=TIMEOUT)
        assert parent.returncode == 0
        daemon = int(job.fields()["pid"])
        assert daemon != parent.pid and os.path.exists(f"/proc/{daemon}")
        assert refused(job)
        code, out, _ = status(job)
        assert code == 0 and f"pid {daemon}" in out
        finish(parent)  # closes the pipe the daemon reads: it exits normally
        wait_until(lambda: not job.pidfile.exists(), "the daemon to remove its pidfile")
    finally:
        job.reap()


def test_without_handover_a_daemonised_child_loses_the_lock(tmp_path: Path) -> None:
    body = "import runalways\nimport os, sys\nif os.fork():\n    os._exit(0)\nprint('ready', flush=True)\n"
    body += "sys.stdin.read()\n"
    job = Job(tmp_path, body)
    try:
        parent = job.start()
        assert read_line(parent) == "ready\n"
        parent.wait(timeout=TIMEOUT)
        assert not refused(job)  # the file names the exited parent: stale
        finish(parent)
    finally:
        job.reap()


# -- many starters against one stale pidfile --------------------------------------------

RACER = """
import os, sys
from runalways._values import Target
from runalways.backends.pidfile import PidfileBackend
gate, results, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def say(word):
    os.write(results, f"{word} {os.getpid()}\\n".encode())
for command in sys.stdin:
    os.read(gate, 1)  # all racers of the round are released at once
    lock = PidfileBackend(Target(None, "stress", "stress"))
    won = lock.try_acquire()
    if won:
        with open(log, "a") as out:
            out.write(f"in {os.getpid()}\\n")
    say("won" if won else "lost")
    sys.stdin.readline()  # the round is over
    if won:
        with open(log, "a") as out:
            out.write(f"out {os.getpid()}\\n")
        lock.release()
    say("done")
"""

RACERS = 32
NEWLINE = b"\n"
ROUNDS = 24


def plant_stale(path: Path, kind: int) -> None:
    """One of five kinds of stale pidfile, some with a claim left by a killed claimer."""
    fields = dict(pidfile.me(), uid="0", name="stress", token=os.urandom(16).hex())
    if kind % 5 == 0:
        fields["pid"] = str(dead_pid())
    elif kind % 5 == 1:
        fields["start_ticks"] = "1"
    elif kind % 5 == 2:
        fields["boot_id"] = "00000000-0000-4000-8000-000000000000"
    path.write_bytes(pidfile.render(fields))
    if kind % 5 == 3:  # a claim on the stale file whose claimer died before removing it
        fields["pid"] = str(dead_pid())
        path.write_bytes(pidfile.render(fields))
        seen = pidfile.read(str(path))
        assert seen is not None
        backend = PidfileBackend(Target(None, "stress", "stress"))
        assert os.path.dirname(backend._claim_path(seen)) == str(path.parent)
        claim = dict(fields, token=os.urandom(16).hex(), claims=path.name)
        Path(backend._claim_path(seen)).write_bytes(pidfile.render(claim))
    if kind % 5 == 4:
        path.write_text("garbage\n")
        old = time.time() - 60
        os.utime(path, (old, old))


def read_results(descriptor: int, count: int, buffer: bytearray) -> list[tuple[str, int]]:
    """The next ``count`` answers of racers: ("won", pid), ("lost", pid) or ("done", pid)."""
    deadline = time.monotonic() + TIMEOUT
    while buffer.count(NEWLINE) < count:
        ready, _, _ = select.select([descriptor], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"only {buffer.count(NEWLINE)} of {count} racers answered"
        buffer += os.read(descriptor, 65536)
    lines = bytes(buffer).split(NEWLINE)[:count]
    del buffer[: sum(len(line) + 1 for line in lines)]
    return [(word.decode(), int(pid)) for word, pid in (line.split() for line in lines)]


def race(
    racers: list[subprocess.Popen[bytes]], gate: int, results: int, buffer: bytearray, chance: random.Random
) -> list[str]:
    """Release every racer at once, freeze some of them mid-attempt, and collect the answers.

    The frozen racers resume once all the others have answered, so a racer frozen after
    it judged the stale pidfile acts when another has long taken it over: the hole of
    rename-based takeovers, made wide instead of a few microseconds.
    """
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write(b"race\n")
        racer.stdin.flush()
    frozen = chance.sample(racers, len(racers) // 3)
    os.write(gate, b"g" * len(racers))
    time.sleep(chance.uniform(0, 0.004))  # jitter, not synchronisation: where the freeze lands
    for racer in frozen:
        racer.send_signal(signal.SIGSTOP)
    answers: list[tuple[str, int]] = []
    frozen_pids = {racer.pid for racer in frozen}
    while {pid for _, pid in answers} | frozen_pids != {racer.pid for racer in racers}:
        answers += read_results(results, 1, buffer)
    for racer in frozen:
        racer.send_signal(signal.SIGCONT)
    answers += read_results(results, len(racers) - len(answers), buffer)
    return [word for word, _ in answers]


def test_exactly_one_of_many_starters_takes_over_a_stale_pidfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    monkeypatch.setenv("RUNALWAYS_DIR", str(locks))
    path = Path(PidfileBackend(Target(None, "stress", "stress")).pidfile)
    log = tmp_path / "log"
    gate_read, gate_write = os.pipe()
    results_read, results_write = os.pipe()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    env["RUNALWAYS_DIR"] = str(locks)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(gate_read), str(results_write), str(log)],
            stdin=subprocess.PIPE,
            pass_fds=(gate_read, results_write),
            env=env,
        )
        for _ in range(RACERS)
    ]
    os.close(gate_read)
    os.close(results_write)
    buffer = bytearray()
    chance = random.Random(os.getpid())
    started = time.monotonic()
    try:
        for round_number in range(ROUNDS):
            plant_stale(path, round_number)
            outcomes = race(racers, gate_write, results_read, buffer, chance)
            assert outcomes.count("won") == 1, (round_number, outcomes)
            for racer in racers:
                assert racer.stdin is not None
                racer.stdin.write(b"end\n")
                racer.stdin.flush()
            assert [word for word, _ in read_results(results_read, RACERS, buffer)] == ["done"] * RACERS
            assert sorted(os.listdir(locks)) == []  # no claim, temporary file or pidfile left
    finally:
        for racer in racers:
            if racer.stdin is not None:
                racer.stdin.close()
        for racer in racers:
            try:
                racer.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                racer.kill()
                racer.wait()
        os.close(gate_write)
        os.close(results_read)
    holding = 0
    entries = log.read_text().splitlines()
    for entry in entries:
        holding += 1 if entry.startswith("in ") else -1
        assert holding in (0, 1), entries
    assert len(entries) == 2 * ROUNDS
    assert time.monotonic() - started < 60


STAMPEDE = """\
import runalways
import os, sys
with open(sys.argv[1], "a") as log:
    log.write(f"{os.getpid()}\\n")
os.read(int(sys.argv[2]), 1)
"""


def test_a_stampede_of_real_starts_over_a_stale_pidfile_runs_one_body(tmp_path: Path) -> None:
    job = Job(tmp_path, STAMPEDE)
    gate = "import os, sys; os.read(int(sys.argv[1]), 1); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
    env = job.env(RUNALWAYS_SILENT="1")
    try:
        for round_number in range(2):
            job.plant(pid=str(dead_pid()))
            log = tmp_path / f"round{round_number}"
            gate_read, gate_write = os.pipe()
            hold_read, hold_write = os.pipe()
            argv = [sys.executable, "-c", gate, str(gate_read), str(job.script), str(log), str(hold_read)]
            copies = [subprocess.Popen(argv, env=env, pass_fds=(gate_read, hold_read)) for _ in range(RACERS)]
            os.close(gate_read)
            os.close(hold_read)
            try:
                os.write(gate_write, b"g" * RACERS)
                wait_until(lambda: sum(c.poll() is not None for c in copies) >= RACERS - 1, "the losers")  # noqa: B023
                assert len(log.read_text().splitlines()) == 1
            finally:
                os.close(gate_write)
                os.close(hold_write)
                for copy in copies:
                    copy.wait(timeout=TIMEOUT)
            assert [copy.returncode for copy in copies] == [0] * RACERS
            assert not job.pidfile.exists()
    finally:
        job.reap()
