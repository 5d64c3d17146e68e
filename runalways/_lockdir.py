"""Where the lock files runalways creates itself live: one place per user and host.

Used for locks known by a name (``--name``, ``runalways run``, ``RUNALWAYS_LOCK=private``,
``RUNALWAYS_IDENTITY=path``, the pidfile backend), never for the script itself.

**One place for every start of a job.** Two starts of one job must find the same file,
or each locks its own and both run. So the place depends on the user's account and the
host, and on nothing the session sets: a login shell has ``XDG_RUNTIME_DIR`` and often
``TMPDIR``, cron has neither, ``sudo`` may keep the caller's ``HOME``, a systemd unit
with ``PrivateTmp=yes`` has a ``/tmp`` of its own, and logind removes
``/run/user/UID`` when the user's last session ends. The place is:

1. ``RUNALWAYS_DIR``, when set: the operator's choice (for every start of the job, or none);
2. ``<home>/.runalways/<host>``, with the home taken from the password database, when
   that home is a directory of the user's own that nobody else may write to: then no
   other user can create, replace or hold anything on the way to the lock files.
   ``<host>`` (the machine id) keeps a home shared over NFS from making the local locks
   of many hosts exclude each other;
3. for an account with no such home (``www-data``'s ``/var/www`` belongs to root,
   ``nobody``'s ``/nonexistent`` does not exist): ``/dev/shm/runalways-<uid>``, which a
   private ``/tmp`` does not hide and systemd-tmpfiles does not age. Another user can
   create that name first: it is then refused, never used. Only system accounts fall
   back there: logind (``RemoveIPC=yes``, its default) empties ``/dev/shm`` of a regular
   user's files when their last session ends, which would split a job held by cron, so
   a regular user without a usable home gets one line asking for ``RUNALWAYS_DIR``.

**Rules for the directory.** It is created 0700 and refused when it is not a directory
(a symbolic link is refused), belongs to another user, or others may write to it: a lock
file in a directory others can write to can be planted, swapped for a symlink or held by
them (filelock CVE-2025-68146, tendo's ``/tmp`` names).

**Cleaners.** Lock files are created with the sticky bit (mode 1600): systemd-tmpfiles
skips a file with the sticky bit when it ages a directory (``/tmp`` after 10 days and
``/var/tmp`` after 30 on Fedora, RHEL and Arch), and the XDG base-directory specification
lets ``XDG_RUNTIME_DIR`` cleaners remove only files without it. A held lock file that
was deleted anyway would let the next start create a new file and run beside its holder.
"""

from __future__ import annotations

import os
import stat

from runalways._values import Target
from runalways.errors import SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import sha256

    from runalways._values import Holder
    from runalways.backends.base import Backend
else:
    # The interpreter's own SHA-256, not hashlib's: hashlib loads OpenSSL (and blake2),
    # whose set-up and tear-down cost a start about 0.5 ms, at its exit too, where a
    # copy waiting for the lock waits for it. Same digest; hashlib where it is missing.
    try:
        from _sha2 import sha256  # Python 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256
        except ImportError:  # an interpreter built without its own hashes
            from hashlib import sha256

#: The highest uid of a system account (systemd's SYSTEM_UID_MAX): logind's RemoveIPC
#: spares these, and the account ``nobody``, whose files in /dev/shm it never empties.
SYSTEM_UID_MAX = 999
NOBODY_UID = 65534

#: Where an account without a usable home keeps its lock files: the first of these that
#: is a directory of root's with the sticky bit, as /dev/shm, /var/tmp and /tmp are.
FALLBACK_ROOTS = ("/dev/shm", "/var/tmp", "/tmp")


def directory() -> str:
    """The lock directory, created if missing; SettingError when it cannot be used."""
    chosen = chosen_directory()
    if chosen:
        return _ensure(chosen, "RUNALWAYS_DIR")
    return default_directory()


def chosen_directory() -> str | None:
    """RUNALWAYS_DIR, the operator's choice of lock directory, or None."""
    from runalways._settings import from_environment

    chosen: str | None = from_environment(os.environ, "RUNALWAYS_DIR")
    return chosen


#: The default lock directories this process used: a lock file there may have had
#: another home under runalways 0.1 (see earlier_holder).
_defaults_used: set[str] = set()


def default_directory() -> str:
    uid = os.geteuid()
    home = _own_home(uid)
    if home is not None:
        top = _ensure(os.path.join(home, ".runalways"), "the lock directory")
        chosen = _ensure(os.path.join(top, host_key()), "the lock directory")
    else:
        chosen = _ensure(fallback_directory(uid), "the lock directory")
    _defaults_used.add(chosen)
    return chosen


def default_directories() -> list[str]:
    """The default lock directories this process may look into, without creating any:
    its own, or, for root, those of every account (``runalways list``)."""
    if os.geteuid() != 0:
        accounts = [(os.geteuid(), _own_home(os.geteuid()))]
    else:
        import pwd

        accounts = [(entry.pw_uid, _own_home(entry.pw_uid, entry.pw_dir)) for entry in pwd.getpwall()]
    found = []
    for uid, home in accounts:
        if home is not None:
            found.append(os.path.join(home, ".runalways", host_key()))
        else:
            try:
                found.append(fallback_directory(uid))
            except SettingError:
                continue
    return [folder for folder in dict.fromkeys(found) if os.path.isdir(folder)]


def _own_home(uid: int, home: str | None = None) -> str | None:
    """The user's home from the password database, if it is theirs alone to write in."""
    home = home or _account_home(uid)
    if not home:
        return None
    try:
        status = os.stat(home)
    except OSError:
        return None
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != uid or status.st_mode & 0o022:
        return None
    return home


def _account_home(uid: int) -> str | None:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_dir
    except (ImportError, KeyError):  # no password database (Windows), or a uid it lacks
        return None


def fallback_directory(uid: int) -> str:
    """``/dev/shm/runalways-<uid>`` (or under /var/tmp, /tmp) for a system account without a home."""
    if uid > SYSTEM_UID_MAX and uid != NOBODY_UID:
        home = _account_home(uid)
        raise SettingError(
            f"the account of uid {uid} has no home directory of its own to keep lock files in "
            f"({home or 'none in the password database'}: missing, or others may write to it); "
            "set RUNALWAYS_DIR to a directory only this user can write to, the same for every start of the job"
        )
    for root in FALLBACK_ROOTS:
        try:
            status = os.stat(root)
        except OSError:
            continue
        if stat.S_ISDIR(status.st_mode) and status.st_uid == 0 and status.st_mode & stat.S_ISVTX:
            return os.path.join(root, f"runalways-{uid}")
    raise SettingError(
        f"no directory to keep lock files in for uid {uid} (no home of its own, and none of "
        f"{', '.join(FALLBACK_ROOTS)} is usable): set RUNALWAYS_DIR to a directory only this user can write to"
    )


def host_key() -> str:
    """What tells this host from another that shares the home: the machine id, else the host name.

    The machine id is the same in a container that shares the host's mount namespace,
    where the host name may not be.
    """
    try:
        with open("/etc/machine-id") as found:
            machine = found.read().strip()
    except OSError:
        machine = ""
    if machine.isalnum():
        return machine
    named = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.uname().nodename).strip("._")
    return named or "localhost"


def previous_directories() -> list[str]:
    """Where runalways 0.1 kept lock files: ``$XDG_RUNTIME_DIR/runalways``, else ``$TMPDIR/runalways-<uid>``."""
    uid = os.getuid()
    places = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        places.append(os.path.join(runtime, "runalways"))
    for tmp in (os.environ.get("TMPDIR"), "/tmp"):
        if tmp:
            places.append(os.path.join(tmp, f"runalways-{uid}"))
    return list(dict.fromkeys(places))


def earlier_holder(backend: Backend) -> tuple[str, Holder] | None:
    """A copy of the same job that runalways 0.1 started, holding its lock file in the old place.

    0.1 kept lock files where the session's XDG_RUNTIME_DIR or TMPDIR said. A job it
    started may still run after an upgrade, and a new start would otherwise lock the
    new place and run beside it. The start and ``runalways status`` look in the old
    places this environment names (cron's is /tmp/runalways-<uid>). Only for a lock
    file in the default lock directory: RUNALWAYS_DIR has not moved.
    """
    path = backend.lock_file()
    if path is None or os.path.dirname(path) not in _defaults_used:
        return None
    for folder in previous_directories():
        earlier = os.path.join(folder, os.path.basename(path))
        if not os.path.lexists(earlier):
            continue
        target = backend.target
        found = type(backend)(
            Target(earlier, target.display, target.name, create=True, private=True), backend.settings
        ).holder()
        if found is not None and found.excludes:
            return earlier, found
    return None


def _problem(status: os.stat_result) -> str | None:
    if not stat.S_ISDIR(status.st_mode):
        return "is not a directory (a symbolic link is refused)"
    if status.st_uid not in (os.geteuid(), 0):
        return f"belongs to another user (uid {status.st_uid})"
    if status.st_mode & 0o022:
        return f"can be written by other users (mode {stat.S_IMODE(status.st_mode):04o})"
    return None


def _ensure(path: str, what: str) -> str:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise SettingError(
            f"cannot create {what} {path!r}: {error.strerror}; set RUNALWAYS_DIR to a private directory"
        ) from None
    problem = _problem(os.lstat(path))
    if problem is not None:
        raise SettingError(
            f"{what} {path!r} {problem}; lock files there could be planted or held by others: "
            "set RUNALWAYS_DIR to a directory only you can write to"
        )
    return path


def hex_digest(data: bytes) -> str:
    """The SHA-256 of ``data``, in hexadecimal."""
    return sha256(data).hexdigest()


def file_name(key: str, readable: str | None = None, suffix: str = ".lock") -> str:
    """``<readable>-<hash of key><suffix>``: distinct keys never share a name.

    ``readable`` (default: the key) is what a person sees in the name.
    """
    digest = hex_digest(key.encode("utf-8", "surrogateescape"))[:16]
    shown = "".join(c if c.isalnum() or c in "-_." else "_" for c in readable or key).strip("_.")[-48:]
    return f"{shown or 'lock'}-{digest}{suffix}"


def lock_file_for(key: str, readable: str | None = None, suffix: str = ".lock") -> str:
    """``<lock directory>/<readable>-<hash of key><suffix>``."""
    return os.path.join(directory(), file_name(key, readable, suffix))


def companion_file(key: str, kind: str, suffix: str) -> str:
    """The file of ``kind`` (a heartbeat, the record of a period) that goes with the lock named
    ``key`` (``Backend.lock_key()``), in the lock directory: every process of the job finds it."""
    return lock_file_for(f"{kind}:{key}", os.path.basename(key), suffix)


def lock_file_target(path: str, display: str, name: str) -> Target:
    """A lock file the user named (RUNALWAYS_LOCK=PATH, --lock, ``path=``).

    Its directory must pass the same rules as the private directory: in a directory
    others can write to, they could plant a symlink or a file of theirs at that path.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        problem = _problem(os.stat(folder))
    except OSError as error:
        raise SettingError(f"cannot use the lock file {path!r}: its directory: {error.strerror}") from None
    if problem is not None:
        raise SettingError(
            f"cannot use the lock file {path!r}: its directory {problem}, so others could plant or hold "
            "the file: choose a directory only you can write to, or RUNALWAYS_LOCK=private"
        )
    return Target(path, display=display, name=name, create=True, private=True)


def private_target(script: Target, lock: str | None, identity: str) -> Target:
    """The lock file that stands for ``script`` when it is not the script itself.

    ``lock`` is a path (RUNALWAYS_LOCK=PATH) or "private"; ``identity`` says what makes
    two starts the same job: "inode" (the script's file, as the default lock: links
    share it, a replaced script is a new job) or "path" (the resolved path: a deploy
    that replaces the file is still the same job).
    """
    assert script.path is not None
    if lock not in (None, "private"):
        if identity == "path":
            raise SettingError(
                f"RUNALWAYS_IDENTITY=path picks its own lock file and RUNALWAYS_LOCK={lock!r} names another: "
                "unset one of them"
            )
        return lock_file_target(lock, script.display, script.name)
    if identity == "path":
        key = "path:" + os.path.realpath(script.path)
    else:
        try:
            status = os.stat(script.path)
        except OSError as error:
            raise SettingError(f"cannot find the script {script.path!r}: {error.strerror}") from None
        key = f"inode:{status.st_dev}:{status.st_ino}"
    return Target(
        lock_file_for(key, os.path.basename(script.path)),
        script.display,
        script.name,
        create=True,
        private=True,
        disposable=True,
    )
