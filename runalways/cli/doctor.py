"""``runalways doctor``: does the lock a job would use really hold here?

A file system that grants a lock without keeping it (a FUSE file system whose lock
operations are no-ops, virtiofs and 9p shares, NFS mounted ``nolock``, SMB with ``nobrl``)
is the one failure no guard sees from inside: every copy "holds" the lock. Only a second
process can tell, since POSIX locks never conflict within one: the doctor takes the lock
with the job's backend and starts a second Python process that tries the same lock without
waiting. Then it reads what it can of the place: the file system and its mount options,
whether flock and POSIX locks interlock there, the lock directory's and the script's
owner and mode, and for the cluster backends the server (reachable, login, eviction,
replicas, clock).

It never disturbs a running job: a lock held by a live copy is itself the proof, if a
second process is refused too; and it removes nothing but the files it made itself.
None of this runs at a start: it costs more than a cron start should pay.
"""

from __future__ import annotations

import os
import stat
import sys

from runalways import _policy
from runalways._values import Target
from runalways.errors import RunAlwaysError, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from runalways._settings import Settings
    from runalways.backends.base import Backend

#: How long the second process may take to say whether it got the lock; a process that
#: hangs on a lock request it was told not to wait for is a finding in itself.
PROBE_SECONDS = 20.0

#: A clock further than this from the server's is worth a line: the cluster backends'
#: leases are kept by the server, but the once-per-period ticks and the ages people read are not.
CLOCK_WARNING_SECONDS = 1.0

#: The lock the doctor tests when it is given no job: its own, in the lock directory.
OWN_NAME = "runalways-doctor"

LEVELS = ("ok", "warning", "problem")


class Finding:
    """One line of the doctor's report."""

    __slots__ = ("advice", "check", "detail", "level")

    def __init__(self, level: str, check: str, detail: str, advice: str = "") -> None:
        self.level = level
        self.check = check
        self.detail = detail
        self.advice = advice

    def line(self) -> str:
        advice = f" ({self.advice})" if self.advice else ""
        return f"{self.level}: {self.check}: {self.detail}{advice}"

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "check": self.check, "detail": self.detail, "advice": self.advice}


def doctor(arguments: argparse.Namespace) -> int:
    given = [bool(arguments.script), bool(arguments.lock), bool(arguments.name)]
    if sum(given) > 1:
        raise SettingError("give at most one of SCRIPT, --lock PATH or --name NAME")
    names = list(dict.fromkeys(arguments.backend or [""]))  # "": the configured one (RUNALWAYS_BACKEND)
    findings: list[Finding] = []
    for name in names:
        chosen = _policy.choose(os.environ, environment_wins=False, backend=name or None)
        findings.extend(examine(arguments, chosen))
    if arguments.json:
        import json

        print(json.dumps([finding.as_dict() for finding in findings]))
    else:
        for finding in findings:
            print(finding.line())
    return 1 if any(finding.level == "problem" for finding in findings) else 0


def _target(arguments: argparse.Namespace, chosen: Settings) -> Target:
    if any((arguments.script, arguments.lock, arguments.name)):
        from runalways.cli.target import lock_target

        return lock_target(arguments, chosen)
    return Target(None, display=OWN_NAME, name=OWN_NAME)


def examine(arguments: argparse.Namespace, chosen: Settings) -> list[Finding]:
    """Every finding for the lock the job would take with the backend of ``chosen``."""
    target = _target(arguments, chosen)
    backend = chosen.backend(target, chosen)
    if backend.capabilities.across_hosts:
        return _server(backend)
    findings = _exclusion(backend)
    path = backend.lock_file() or backend.target.path
    if path is None:
        return findings
    # A lock file the backend removes at release (one it named itself) is gone by now: its directory tells.
    path = os.path.abspath(path)
    where = path if os.path.exists(path) else os.path.dirname(path)
    findings.extend(_file_system(where))
    findings.extend(_interlock(os.path.dirname(path)))
    findings.extend(_places(path, backend, arguments.script))
    return findings


# -- a second process ------------------------------------------------------------------


def _exclusion(backend: Backend) -> list[Finding]:
    """Take the lock here and let a second process try it: it must be refused."""
    check = f"exclusion ({backend.name})"
    try:
        taken = backend.try_acquire()
    except RunAlwaysError as error:
        return [Finding("problem", check, f"cannot take the lock: {error}", "the guard fails the same way")]
    try:
        where = backend.lock_file() or backend.target.display
        answer = second_process(backend.name, backend.target)
    finally:
        if taken:
            backend.release()
    if answer == "refused" and taken:
        return [Finding("ok", check, f"a second process was refused the lock on {where} while this one held it")]
    if answer == "refused":
        holder = backend.holder()
        who = holder.describe() if holder is not None else "another process"
        return [Finding("ok", check, f"held by {who}: a second process was refused, the exclusion was seen")]
    if answer == "taken":
        when = "while this one held it" if taken else "while another copy held it"
        return [
            Finding(
                "problem",
                check,
                f"a second process took the lock on {where} {when}: this file system grants locks without keeping "
                "them, and every copy of the job would run",
                "keep the lock on a local file system (RUNALWAYS_DIR, --name) or use a cluster backend",
            )
        ]
    return [Finding("problem", check, f"the second process could not tell: {answer}", "")]


def second_process(backend_name: str, target: Target) -> str:
    """``taken``, ``refused``, or why the second process could not tell."""
    import json
    import subprocess

    spec = json.dumps(
        {
            "backend": backend_name,
            "path": target.path,
            "display": target.display,
            "name": target.name,
            "create": target.create,
            "private": target.private,
        }
    )
    # A submodule import guards nothing (spec R4): the probe is not a job of its own.
    code = "from runalways.cli.doctor import probe; probe()"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, spec],
            capture_output=True,
            text=True,
            timeout=PROBE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run() has killed and reaped it
        return f"it did not answer within {PROBE_SECONDS:g} s (a lock request that blocks?)"
    except OSError as error:
        return f"it could not start: {error.strerror}"
    answer = done.stdout.strip()
    if done.returncode != 0 or not answer:
        return f"it failed (exit status {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    return answer


def probe() -> None:
    """The second process: try the lock once, without waiting, say what happened, let it go.

    It never removes the file it locked (the target is not disposable): that is the job's.
    """
    import json

    spec = json.loads(sys.argv[1])
    chosen = _policy.choose(os.environ, environment_wins=False, backend=spec["backend"] or None)
    target = Target(spec["path"], spec["display"], spec["name"], create=spec["create"], private=spec["private"])
    backend = chosen.backend(target, chosen)
    try:
        taken = backend.try_acquire()
    except RunAlwaysError as error:
        print(f"error: {error}")
        return
    print("taken" if taken else "refused", flush=True)
    if taken:
        backend.release()


# -- the file system -------------------------------------------------------------------


def _file_system(path: str) -> list[Finding]:
    from runalways import _mounts

    mount = _mounts.mount_of(path)
    check = "file system"
    if mount is None:
        kind = _mounts.statfs_kind(path) or "unknown"
        return [Finding("warning", check, f"{path} is on {kind}; /proc/self/mountinfo does not say more", "")]
    options = ",".join(dict.fromkeys(mount.options))
    detail = f"{path} is on {mount.fstype} ({mount.source} at {mount.mount_point}, {options})"
    found = [(level, why, advice) for level, why, advice in _mounts.risks(mount)]
    if not found:
        if mount.fstype == "fuse" or mount.fstype.startswith("fuse."):
            detail += "; a FUSE file system: its locks are what its daemon makes of them, the probe above tested them"
        elif mount.fstype not in _mounts.LOCAL:
            detail += "; not a kind known here: the probe above is what tells"
        return [Finding("ok", check, detail)]
    return [Finding(level, check, f"{detail}: {why}", advice) for level, why, advice in found]


def _interlock(directory: str) -> list[Finding]:
    """flock in this process, a POSIX lock in another, on a file of our own beside the lock.

    On a local Linux file system the two kinds never meet (normal: the fcntl and lockf
    backends do not exclude each other); where flock is emulated with POSIX locks (NFS,
    SMB) they do. Information, not a failure.
    """
    import fcntl
    import subprocess
    import tempfile

    check = "flock and POSIX locks"
    try:
        fd, path = tempfile.mkstemp(prefix=".runalways-doctor-", dir=directory)
    except OSError as error:
        return [Finding("ok", check, f"not tested: cannot create a file in {directory}: {error.strerror}")]
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except OSError:\n"
        "    print('refused')\n"
        "else:\n"
        "    print('taken')\n"
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run(
            [sys.executable, "-I", "-c", code, path], capture_output=True, text=True, timeout=PROBE_SECONDS, check=False
        )
        answer = done.stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        answer = str(error)
    finally:
        os.close(fd)
        os.unlink(path)
    if answer == "taken":
        detail = (
            "do not interlock here, as on local Linux file systems: the fcntl and lockf backends run beside each other"
        )
    elif answer == "refused":
        detail = (
            "interlock here (flock is emulated with POSIX locks, as on NFS): "
            "the fcntl and lockf backends exclude each other"
        )
    else:
        detail = f"not tested: {answer or 'no answer'}"
    return [Finding("ok", check, detail, "give every start of a job the same backend")]


# -- owners and modes ------------------------------------------------------------------


def _places(path: str, backend: Backend, script: str | None) -> list[Finding]:
    findings: list[Finding] = []
    # A lock file of runalways's own naming (--name, a pidfile) lives in the lock directory.
    if backend.target.private or path != os.path.abspath(backend.target.path or path):
        directory = os.path.dirname(path)
        status = os.lstat(directory)
        mode = stat.S_IMODE(status.st_mode)
        owner = _user(status.st_uid)
        if status.st_uid not in (os.geteuid(), 0) or mode & 0o022:
            findings.append(
                Finding(
                    "problem",
                    "lock directory",
                    f"{directory} belongs to {owner}, mode {mode:04o}: others can plant, replace or hold lock files",
                    "set RUNALWAYS_DIR to a directory only you can write to",
                )
            )
        else:
            findings.append(Finding("ok", "lock directory", f"{directory} belongs to {owner}, mode {mode:04o}"))
    if script is not None:
        status = os.stat(script)
        mode = stat.S_IMODE(status.st_mode)
        detail = f"{script} belongs to {_user(status.st_uid)}, mode {mode:04o}"
        if mode & 0o002:
            findings.append(
                Finding(
                    "warning",
                    "script",
                    f"{detail}: anyone can change it, or hold its lock and keep the job from running",
                    "chmod o-w",
                )
            )
        else:
            findings.append(Finding("ok", "script", detail))
    return findings


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# -- the servers of the cluster backends -----------------------------------------------


def _server(backend: Backend) -> list[Finding]:
    from runalways.errors import LockFailed

    check = f"server ({backend.name})"
    try:
        if backend.name == "postgres":
            return _postgres(backend, check)
        if backend.name == "redis":
            return _redis(backend, check)
    except LockFailed as error:
        return [Finding("problem", check, str(error), "the guard cannot take its lock there")]
    return [Finding("ok", check, f"the {backend.name} backend's server is not one the doctor knows")]


def _clock(check: str, offset: float) -> Finding:
    detail = f"this host's clock is {abs(offset):.3f} s {'ahead of' if offset > 0 else 'behind'} the server's"
    if abs(offset) > CLOCK_WARNING_SECONDS:
        return Finding("warning", check, detail, "run NTP (chrony, systemd-timesyncd) on both")
    return Finding("ok", check, detail)


def _postgres(backend: Backend, check: str) -> list[Finding]:
    import time

    import psycopg

    from runalways.backends.postgres import PostgresBackend

    assert isinstance(backend, PostgresBackend)
    # The backend's own connection: its errors tell an unreachable server from a refused login.
    conn = backend._connect(f"runalways doctor {os.getpid()}")
    try:
        before = time.time()
        row = conn.execute(
            "SELECT extract(epoch FROM clock_timestamp())::float8, pg_is_in_recovery(), "
            "(SELECT count(*) FROM pg_stat_replication), current_user"
        ).fetchone()
        after = time.time()
    except psycopg.Error as error:
        raise backend._failure(error) from None
    finally:
        conn.close()
    assert row is not None
    server_time, standby, replicas, user = float(row[0]), bool(row[1]), int(row[2]), str(row[3])
    found = [Finding("ok", check, f"reachable, the login as {user} accepted")]
    if standby:
        found.append(
            Finding(
                "problem",
                check,
                "the server is a standby: the primary's clients never see a lock taken here",
                "use the primary's URL",
            )
        )
    found.append(
        Finding(
            "ok",
            check,
            f"{replicas} replica(s) streaming; advisory locks live on the primary alone and end with it",
        )
    )
    found.append(_clock(check, (before + after) / 2 - server_time))
    return found


def _redis(backend: Backend, check: str) -> list[Finding]:
    import time

    import redis

    from runalways.backends.redis import RedisBackend

    assert isinstance(backend, RedisBackend)
    client = backend._connect()
    try:
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
        found = [Finding("ok", check, f"reachable at {backend._where()}, the login accepted")]
        try:
            policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction"))
        except redis.RedisError as error:
            found.append(
                Finding("warning", check, f"CONFIG GET maxmemory-policy refused: {error}", "make sure it is noeviction")
            )
        else:
            if policy.startswith(("volatile-", "allkeys-")):
                level = "warning" if backend.allow_eviction else "problem"
                found.append(
                    Finding(
                        level,
                        check,
                        f"maxmemory-policy {policy}: the server can evict a held lock",
                        "set maxmemory-policy noeviction",
                    )
                )
            else:
                found.append(Finding("ok", check, f"maxmemory-policy {policy}: a held lock is never evicted"))
        replication = client.info("replication")
    except redis.RedisError as error:
        raise backend._failure(error) from None
    finally:
        client.close()
    role = str(replication.get("role", "master"))
    replicas = int(replication.get("connected_slaves", 0))
    if role != "master":
        found.append(Finding("problem", check, "the server is a replica: it refuses writes", "use the primary's URL"))
    else:
        found.append(Finding("ok", check, f"{replicas} replica(s) connected; the lock is taken on the primary"))
    found.append(_clock(check, (before + after) / 2 - (int(seconds) + int(micros) / 1e6)))
    return found
