"""R20: ``runalways doctor``: whether the lock a job would use really holds where it lives.

The FUSE cases mount a file system of the suite's own (``tests/lockfs.c``, built once a
session against libfuse3): one whose lock operations succeed without locking, and one that
leaves locks to the kernel. Both mirror a directory of the test's own and are unmounted
when the test ends, however it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlsplit

import pytest
from harness import TIMEOUT
from servers import ServerProcess

from runalways._mounts import Mount, mount_of, risks

RUNALWAYS = [sys.executable, "-m", "runalways"]
LOCKFS_SOURCE = Path(__file__).parent.parent.parent / "tests" / "lockfs.c"


def doctor(*arguments: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNALWAYS, "doctor", *arguments], capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )


def lines(outcome: subprocess.CompletedProcess[str], level: str) -> list[str]:
    return [line for line in outcome.stdout.splitlines() if line.startswith(level + ":")]


@pytest.fixture
def private_env(tmp_path: Path) -> dict[str, str]:
    """The environment with a lock directory of the test's own."""
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    return {**environ, "RUNALWAYS_DIR": str(locks)}


@pytest.fixture(scope="session")
def lockfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/lockfs.c, compiled once for the session."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.fail("the FUSE cases mount file systems: run the suite as root, with /dev/fuse")
    missing = [tool for tool in ("gcc", "pkg-config", "fusermount3") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: sh tests/system-packages.sh installs fuse3 and libfuse3-dev")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, timeout=TIMEOUT, check=True
    ).stdout.split()
    binary = tmp_path_factory.mktemp("lockfs") / "lockfs"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(LOCKFS_SOURCE), *flags], check=True, timeout=120)
    return binary


def _mounted(point: Path) -> bool:
    return any(line.split(" ")[4] == str(point) for line in Path("/proc/self/mountinfo").read_text().splitlines())


@contextmanager
def mounted_lockfs(binary: Path, mode: str, workdir: Path) -> Iterator[Path]:
    """A lockfs mount of a fresh directory, ``mode`` ``lie`` or ``kernel``; unmounted at the end."""
    source, point = workdir / f"{mode}-source", workdir / f"{mode}-mount"
    source.mkdir()
    point.mkdir()
    daemon = subprocess.Popen([str(binary), mode, str(source), str(point)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        # The mount appears in mountinfo once the kernel has it: poll the state, not the clock.
        while not _mounted(point):
            if daemon.poll() is not None:
                assert daemon.stderr is not None
                pytest.fail(f"lockfs {mode} could not mount: {daemon.stderr.read().decode(errors='replace')}")
            assert time.monotonic() < deadline, "lockfs did not mount in time"
            time.sleep(0.01)
        yield point
    finally:
        if _mounted(point):
            subprocess.run(["fusermount3", "-u", str(point)], timeout=TIMEOUT, check=False)
        try:
            daemon.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=TIMEOUT)
        if daemon.stderr is not None:
            daemon.stderr.close()


@contextmanager
def mounted_tmpfs(point: Path) -> Iterator[Path]:
    point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "doctor-tmpfs", str(point)], timeout=TIMEOUT, check=True
    )
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], timeout=TIMEOUT, check=False)


@contextmanager
def mounted_ext4(point: Path) -> Iterator[Path]:
    """An ext4 file system of the test's own, on a loop device: whatever the test directory is on."""
    image = point.with_suffix(".img")
    with open(image, "wb") as made:
        made.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], timeout=TIMEOUT, check=True)
    point.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], timeout=TIMEOUT, check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], timeout=TIMEOUT, check=False)
        image.unlink()


@pytest.mark.clause("R20.1")
def test_doctor_finds_a_lock_that_a_fuse_file_system_grants_without_keeping(
    lockfs: Path, tmp_path: Path, private_env: dict[str, str]
) -> None:
    with mounted_lockfs(lockfs, "lie", tmp_path) as point:
        script = point / "job.py"
        script.write_text("import runalways\n")
        outcome = doctor("--backend", "fcntl", "--backend", "lockf", str(script), env=private_env)
    assert outcome.returncode == 1, outcome.stdout + outcome.stderr
    problems = lines(outcome, "problem")
    assert len(problems) == 2, outcome.stdout
    for backend, line in zip(("fcntl", "lockf"), problems):
        assert line.startswith(f"problem: exclusion ({backend}): a second process took the lock on {script}")
        assert "keep the lock on a local file system" in line
    assert f"{script} is on fuse.lockfs (lockfs-lie" in outcome.stdout


@pytest.mark.clause("R20.2")
def test_doctor_passes_a_fuse_file_system_that_leaves_locks_to_the_kernel(
    lockfs: Path, tmp_path: Path, private_env: dict[str, str]
) -> None:
    with mounted_lockfs(lockfs, "kernel", tmp_path) as point:
        outcome = doctor("--backend", "fcntl", "--backend", "ofd", "--lock", str(point / "job.lock"), env=private_env)
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert not lines(outcome, "problem") and not lines(outcome, "warning"), outcome.stdout
    assert "ok: exclusion (fcntl): a second process was refused" in outcome.stdout
    assert "ok: exclusion (ofd): a second process was refused" in outcome.stdout
    assert "is on fuse.lockfs (lockfs-kernel" in outcome.stdout
    assert "ok: flock and POSIX locks: do not interlock here" in outcome.stdout


@pytest.mark.clause("R20.3")
def test_doctor_passes_tmpfs_and_ext4(tmp_path: Path, private_env: dict[str, str]) -> None:
    with mounted_tmpfs(tmp_path / "tmpfs") as point, mounted_ext4(tmp_path / "ext4") as ext4:
        for place, kind in ((point, "tmpfs"), (ext4, "ext4")):
            script = place / "job.py"
            script.write_text("import runalways\n")
            outcome = doctor("--backend", "fcntl", "--backend", "pidfile", str(script), env=private_env)
            assert outcome.returncode == 0, outcome.stdout + outcome.stderr
            assert not lines(outcome, "problem") and not lines(outcome, "warning"), outcome.stdout
            assert f"ok: file system: {script} is on {kind} (" in outcome.stdout
            assert f"ok: script: {script} belongs to root, mode 0644" in outcome.stdout
            assert "ok: exclusion (pidfile): a second process was refused" in outcome.stdout
            assert "ok: lock directory: " in outcome.stdout  # the pidfile's, in RUNALWAYS_DIR


@pytest.mark.clause("R20.4")
def test_doctor_never_disturbs_a_running_job(tmp_path: Path, private_env: dict[str, str]) -> None:
    lock = tmp_path / "job.lock"
    holder = subprocess.Popen(
        [*RUNALWAYS, "run", "--silent", "--lock", str(lock), "--", sys.executable, "-c",
         "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=private_env,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        outcome = doctor("--lock", str(lock), env=private_env)
        assert outcome.returncode == 0, outcome.stdout + outcome.stderr
        assert "ok: exclusion (fcntl): held by pid " in outcome.stdout
        assert "a second process was refused, the exclusion was seen" in outcome.stdout
        assert lock.exists() and holder.poll() is None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=TIMEOUT) == 0
        holder.stdout.close()  # type: ignore[union-attr]


@pytest.mark.clause("R20.5")
def test_doctor_json_and_its_exit_statuses(tmp_path: Path, private_env: dict[str, str]) -> None:
    outcome = doctor("--json", "--name", "backup", env=private_env)
    assert outcome.returncode == 0, outcome.stderr
    findings = json.loads(outcome.stdout)
    assert {tuple(sorted(finding)) for finding in findings} == {("advice", "check", "detail", "level")}
    assert {finding["check"] for finding in findings} >= {"exclusion (fcntl)", "file system", "lock directory"}
    assert {finding["level"] for finding in findings} == {"ok"}
    # Nothing left behind in the lock directory: the doctor's lock files are gone with its locks.
    assert os.listdir(private_env["RUNALWAYS_DIR"]) == []
    refused = doctor("--lock", "a", "--name", "b", env=private_env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    unknown = doctor("--backend", "nosuch", env=private_env)
    assert unknown.returncode == 2 and "not a known backend" in unknown.stderr


@pytest.mark.clause("R20.6")
def test_doctor_checks_the_cluster_servers(
    postgres_server: ServerProcess, redis_server: ServerProcess, private_env: dict[str, str]
) -> None:
    for server, backend in ((postgres_server, "postgres"), (redis_server, "redis")):
        url = server.url
        outcome = doctor("--backend", backend, "--name", "nightly", env={**private_env, "RUNALWAYS_URL": url})
        assert outcome.returncode == 0, outcome.stdout + outcome.stderr
        assert f"ok: server ({backend}): reachable" in outcome.stdout
        assert "replica(s)" in outcome.stdout
        assert "clock is " in outcome.stdout
        if backend == "redis":
            assert "maxmemory-policy noeviction" in outcome.stdout
        # A login the server refuses: a role it does not have, a user with a wrong password.
        where = urlsplit(url)
        wrong = f"{where.scheme}://nosuchrole:wrong@{where.hostname}:{where.port}{where.path}"
        refused = doctor("--backend", backend, env={**private_env, "RUNALWAYS_URL": wrong})
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert lines(refused, "problem"), refused.stdout


@pytest.mark.clause("R20.7")
def test_mount_options_name_the_known_risks(tmp_path: Path) -> None:
    def said(fstype: str, *options: str) -> str:
        return " ".join(why for _, why, _ in risks(Mount("/shared", fstype, "server:/export", ("rw", *options))))

    assert "nolock" in said("nfs", "nolock") and "other hosts" in said("nfs4", "local_lock=all")
    assert "lease" in said("nfs4", "vers=4.2")
    assert "nobrl" in said("cifs", "nobrl")
    assert "docker/for-mac#7004" in said("virtiofs")
    assert "kata-containers#3408" in said("9p", "trans=virtio")
    assert said("ext4") == said("tmpfs") == said("fuse.lockfs") == ""
    # mountinfo's own format: escaped spaces, options of the mount and of its super block.
    table = tmp_path / "mountinfo"
    device = os.stat(tmp_path).st_dev
    point = str(tmp_path).replace(" ", "\\040")
    table.write_text(
        f"1 0 {os.major(device)}:{os.minor(device)} / / rw - ext4 /dev/other rw\n"
        f"2 1 {os.major(device)}:{os.minor(device)} / {point} rw,noatime shared:1 - nfs4 srv:/x rw,local_lock=none\n"
    )
    mount = mount_of(str(tmp_path), str(table))
    assert mount is not None
    assert (mount.mount_point, mount.fstype, mount.source) == (str(tmp_path), "nfs4", "srv:/x")
    assert mount.option("local_lock") == "none" and mount.option("noatime") == ""
