"""``redis`` backend: one copy across many hosts, on a Redis (≥ 6) or Valkey (≥ 7.2) key held as a lease.

The lock is the key ``runalways:lock:{NAME}``, set only if absent with a millisecond
expiry of one TTL (``RUNALWAYS_TTL``, default 15 s) and a value naming its holder: a
random token, pid, process start time, boot id, pid namespace, the epoch it was taken
and the host. The lock name is the one the ``postgres`` backend uses (``--name``,
``RUNALWAYS_NAME``, else the script's file name). Every step is one server-side script,
so nothing can come between a check and its write:

* take: set the key if absent, and raise the lock's fencing counter
  (``runalways:token:{NAME}``) to at least its last value + 1 and at least the server's
  clock in microseconds, so the token grows across holders and across a restart that
  lost the last writes;
* renew, every TTL/3: extend the expiry only if the value is still ours; a renewal that
  finds another value, or no key, fences at once (``runalways.backends._lease``);
* release, at exit (an interpreter exit releases it too): delete only if the value is ours,
  and push a wake-up to the lock's list (``runalways:wake:{NAME}``), on which a start that
  waits blocks (``BLPOP``): it is woken the moment the holder lets go.

Unlike a PostgreSQL session, a key does not vanish with the process that set it. A
holder killed on *this* host (same boot id and pid namespace) is seen dead by the next
copy, which takes over at once; one killed on another host keeps the key until it
expires, at most a TTL later.

What the server must give: a ``maxmemory-policy`` that evicts keys (``volatile-*``,
``allkeys-*``) could drop a held lock, so such a server is refused (exit 2) unless
``RUNALWAYS_REDIS_EVICTION=allow``. A server younger than the TTL (``INFO server``)
may have lost its locks in a restart: a new holder waits out the rest of the TTL. With
connected replicas a take and each renewal wait for one replica's acknowledgement
(``WAIT``, at most TTL/3); a failover can still lose a lock, which only the fencing
token guards against. Where the ACL forbids ``CONFIG`` or ``INFO``, the backend says
once what it could not check, and goes on.

redis-py (the ``runalways[redis]`` extra) is imported only when this backend is used;
its ``Lock`` class is not: it extends by adding time and has no fencing token.
"""

from __future__ import annotations

import os
import socket
import time

from runalways._settings import DEFAULT_TTL
from runalways._values import Capabilities, Holder, Target
from runalways.backends._lease import BEATS_PER_TTL, LeaseBackend, Unreachable
from runalways.errors import LockFailed, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import redis

    from runalways._period import Run
    from runalways._settings import Settings

    Client = redis.Redis

DEFAULT_URL = "redis://localhost:6379/0"

#: KEYS: lock, token counter. ARGV: our value, TTL in ms, the value of a holder known
#: to be dead (or ""). Returns {1, token} when taken, {0, the holder's value, the
#: milliseconds its lease has left} when not.
_TAKE = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[1]) == ARGV[3] then
  redis.call('DEL', KEYS[1])
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
end
local clock = redis.call('TIME')
local token = math.max((tonumber(redis.call('GET', KEYS[2])) or 0) + 1, clock[1] * 1000000 + clock[2])
token = string.format('%.0f', token)
redis.call('SET', KEYS[2], token)
return {1, token}
"""
#: Compare-and-extend: 1 when the key still holds our value and its expiry was reset.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
#: Compare-and-delete, then wake a waiter: KEYS: lock, wake-up list; ARGV: our value, TTL in ms.
#: The list keeps one element at most, for a lease at most: a release that nobody waited
#: for wakes the next waiter once, needlessly. pcall: a user whose ACL forbids the list
#: still releases (its waiters poll).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.pcall('LPUSH', KEYS[2], '1')
redis.pcall('LTRIM', KEYS[2], 0, 0)
redis.pcall('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
#: RUNALWAYS_ONCE_PER: replace the job's record of its last period, if the lock is still ours.
_RECORD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""
#: The holder's value and the milliseconds its lease has left.
_PEEK = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"


#: What an ACL user must be allowed: the scripts, the commands they run, and the checks.
ACL_NEEDED = "+@scripting +get +set +del +pexpire +pttl +time +wait +lpush +ltrim +blpop +config|get +info ~runalways:*"
#: How the server refuses a command a script runs, or a key, for the ACL.
_ACL_WORDS = ("can't run this command", "No permissions to access")


def lock_keys(name: str) -> tuple[bytes, bytes]:
    """The lock's key and its fencing counter's; the braces keep both in one Redis Cluster slot."""
    raw = name.encode("utf-8", "surrogateescape")
    return b"runalways:lock:{" + raw + b"}", b"runalways:token:{" + raw + b"}"


def wake_key(name: str) -> bytes:
    """The list a release pushes to, which a waiter blocks on (BLPOP), in the lock's slot."""
    return b"runalways:wake:{" + name.encode("utf-8", "surrogateescape") + b"}"


def period_key(name: str) -> bytes:
    """The key of the job's record of its last period (RUNALWAYS_ONCE_PER), in the lock's slot."""
    return b"runalways:period:{" + name.encode("utf-8", "surrogateescape") + b"}"


#: A record outlives its period this many times over: long enough to keep the next start
#: out, short enough that a job renamed or retired leaves no key for ever.
RECORD_PERIODS = 3

#: Seconds a waiter blocks at most between looks at a holder that runs on this host: one
#: killed there pushes no wake-up, but its death is seen at the next look.
LOCAL_HOLDER_CHECK = 0.02


class RedisBackend(LeaseBackend):
    name = "redis"
    engine = "Redis"
    release_at_exit = True
    capabilities = Capabilities(
        identity="name",
        kept_by_fork_child=False,
        kept_across_exec=False,
        kept_when_replaced=True,
        kept_when_file_closed=True,
        needs_write_access=False,
        across_hosts=True,
        other_users_can_hold=True,  # anyone who may write the key can take a lock of that name
        # A holder killed on the same host is taken over at once; one killed on another
        # host keeps the key until it expires: one TTL (the default's).
        crash_release_seconds=DEFAULT_TTL,
    )

    client = ("redis", "redis-py", "redis")

    def __init__(self, target: Target, settings: Settings | None = None) -> None:
        super().__init__(target, settings)
        _import_client()
        assert settings is not None  # LeaseBackend refuses to start without them
        self.allow_eviction = settings.allow_eviction
        self.key, self.token_key = lock_keys(self.lock_name)
        self.wake_key = wake_key(self.lock_name)
        #: What the last attempt found: the holder's value and the milliseconds its lease had left.
        self._found: tuple[bytes | None, int] = (None, -2)
        #: BLPOP is refused (the ACL): wait by polling.
        self._polling = False
        self._client: Client | None = None
        self._value = b""
        self._held = False
        self._replicas = 0

    # -- taking the lock ------------------------------------------------------------

    def try_acquire(self) -> bool:
        taken = self._attempt()
        if not taken:
            self._close()
        return taken

    def _wait(self, timeout: float | None) -> bool:
        """Block on the lock's wake-up list (BLPOP) between attempts: the holder's release
        pushes to it, and wakes this start in the moment it lets go.

        Redis keeps no queue of waiters for a key, and a holder that dies without releasing
        pushes nothing: a block lasts at most until the holder's lease runs out, and while
        the holder runs on this host, LOCAL_HOLDER_CHECK (its death is seen there at once).
        Where the ACL forbids BLPOP, the start polls (back-off up to 20 ms).
        """
        import redis

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._attempt():
            left = float("inf") if deadline is None else deadline - time.monotonic()
            if left <= 0:
                self._close()
                return False
            if self._polling:
                from runalways._waiting import poll_until

                taken = poll_until(self._attempt, left, longest=0.02)
                if not taken:
                    self._close()
                return taken
            client = self._client
            if client is None:  # unreachable, RUNALWAYS_UNREACHABLE=run: _attempt said taken
                return True
            try:
                client.blpop([self.wake_key], self._block_for(left))
            except redis.exceptions.NoPermissionError:
                self._polling = True
            except redis.RedisError as error:
                raise self._failure(error) from None
        return True

    def _block_for(self, left: float) -> float:
        """Seconds a wait for the wake-up may last: until the holder's lease runs out, the time
        is up, or the socket would time out (it times out at TTL/3); briefly for a holder here."""
        value, lease_ms = self._found
        longest = min(left, self.ttl / BEATS_PER_TTL / 2)
        if lease_ms >= 0:
            longest = min(longest, lease_ms / 1000 + 0.001)
        if value is not None and _here(value):
            longest = min(longest, LOCAL_HOLDER_CHECK)
        return max(longest, 0.001)  # 0 would block for ever

    def _attempt(self) -> bool:
        import redis

        from runalways._kernel_kill import now

        client = self._session()
        if client is None:  # unreachable, and RUNALWAYS_UNREACHABLE=run
            return True
        self._value = _holder_value()
        dead = b""
        for _ in range(2):  # a second try only after finding the holder dead on this host
            sent = now()
            try:
                taken, found, *lease_ms = client.eval(
                    _TAKE, 2, self.key, self.token_key, self._value, self._ttl_ms(), dead
                )
            except redis.RedisError as error:
                raise self._failure(error) from None
            if taken:
                self._held = True
                if self._replicas and not self._replicated(client):
                    self._close()
                    raise LockFailed(
                        f"no replica of the Redis server at {self._where()} acknowledged the lock "
                        f"{self.lock_name!r} within {self.ttl / BEATS_PER_TTL:g} s; not running"
                    )
                return self._lease_taken(int(found), self._uptime, sent)
            self._found = (found, int(lease_ms[0]) if lease_ms else -2)
            if found is None or not _dead_here(found):
                return False
            dead = found
        return False

    def _session(self) -> Client | None:
        """The client, after checking what the server promises; None to run unlocked (unreachable)."""
        if self._client is not None:
            return self._client
        client = self._connect()
        try:
            self._inspect(client)
        except Unreachable as error:
            client.close()
            self._run_unlocked(error)
            return None
        except LockFailed:
            client.close()
            raise
        self._client = client
        return client

    def _connect(self) -> Client:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        third = self.ttl / BEATS_PER_TTL
        options: dict[str, Any] = {
            # A renewal stuck longer than a heartbeat gives up; the next one tries again.
            "socket_timeout": third,
            "socket_connect_timeout": max(2.0, min(5.0, third)),
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        url = self.url or DEFAULT_URL
        if not url.startswith("unix:"):
            # A peer that vanished (host down, cable cut) errors the socket within about a
            # TTL instead of the kernel default of two hours.
            options["socket_keepalive"] = True
            options["socket_keepalive_options"] = {
                socket.TCP_KEEPIDLE: max(1, int(third)),
                socket.TCP_KEEPINTVL: 1,
                socket.TCP_KEEPCNT: 3,
            }
        try:
            return redis.Redis.from_url(url, **options)
        except ValueError as error:
            raise SettingError(
                f"RUNALWAYS_URL is not a Redis URL ({self._scrub(str(error))}); "
                "use redis://[user:password@]host:port/db, rediss://... or unix:///path/to/socket"
            ) from None

    def _inspect(self, client: Client) -> None:
        """Eviction policy, age and replicas of the server, in one round trip."""
        import redis

        pipe = client.pipeline(transaction=False)
        pipe.config_get("maxmemory-policy")
        pipe.info("server")
        pipe.info("replication")
        try:
            policy, server, replication = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            raise self._failure(error) from None
        for answer in (policy, server, replication):
            if isinstance(answer, redis.AuthenticationError):  # NOAUTH: every command says so
                raise self._failure(answer)
        unchecked = []
        if isinstance(policy, Exception):
            unchecked.append(f"CONFIG GET maxmemory-policy ({_first_line(policy)}): make sure it is noeviction")
        else:
            evicting = str(policy.get("maxmemory-policy", "noeviction"))
            if evicting.startswith(("volatile-", "allkeys-")) and not self.allow_eviction:
                raise LockFailed(
                    f"the Redis server at {self._where()} has maxmemory-policy {evicting}: it can evict "
                    "a held lock; set maxmemory-policy noeviction, or RUNALWAYS_REDIS_EVICTION=allow to run anyway"
                )
        if isinstance(server, Exception) or isinstance(replication, Exception):
            failed = server if isinstance(server, Exception) else replication
            unchecked.append(f"INFO ({_first_line(failed)}): a restarted server and its replicas go unnoticed")
        else:
            # Whole seconds between the start's second and now's: the server may be up to
            # a second younger than it says, and the grace must not come short.
            self._uptime = max(0.0, float(server.get("uptime_in_seconds", 0)) - 1)
            self._replicas = int(replication.get("connected_slaves", 0))
        if unchecked:
            self.notice = f"the Redis server at {self._where()} does not allow " + "; nor ".join(unchecked)

    def _replicated(self, client: Client) -> bool:
        """One replica has the last write, within TTL/3."""
        import redis

        try:
            acknowledged = client.wait(1, max(1, round(self.ttl / BEATS_PER_TTL * 1000)))
        except redis.RedisError:
            return False
        return int(acknowledged) >= 1

    def _ttl_ms(self) -> int:
        return round(self.ttl * 1000)

    # -- keeping it ------------------------------------------------------------------

    def _renew(self) -> bool | None:
        import redis

        client = self._client
        if client is None:
            return False
        try:
            renewed = client.eval(_RENEW, 1, self.key, self._value, self._ttl_ms())
        except redis.RedisError:
            return None  # the network or the server: the timer decides
        if not renewed:
            return False
        if self._replicas and not self._replicated(client):
            return None
        return True

    # -- letting go ------------------------------------------------------------------

    def _let_go(self) -> None:
        import redis

        client = self._client
        if client is None or not self._held:
            return
        self._held = False
        try:
            client.eval(_RELEASE, 2, self.key, self.wake_key, self._value, self._ttl_ms())
        except redis.RedisError:
            pass  # the key expires by itself within a TTL

    def _close(self) -> None:
        self._let_go()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _interrupt(self) -> None:
        if self._client is not None:
            # Shuts the sockets down under the stuck renewal, which then fails.
            self._client.connection_pool.disconnect()

    def _abandon(self) -> None:
        self._client = None
        self._held = False

    def _forget_session(self) -> None:
        # redis-py never shuts down a socket inherited from another process: dropping
        # the client leaves the parent's connection, and lock, alone.
        self._client = None
        self._held = False

    # -- RUNALWAYS_ONCE_PER ----------------------------------------------------------------

    def last_run(self) -> Run | None:
        import redis

        from runalways._period import Run

        client = self._client or self._connect()
        try:
            value = client.get(period_key(self.lock_name))
        except redis.RedisError as error:
            raise self._failure(error) from None
        finally:
            if client is not self._client:
                client.close()
        return None if value is None else Run.from_json(value)

    def record_run(self, run: Run) -> None:
        import redis

        client = self._client
        if client is None:
            raise LockFailed(f"the lock {self.lock_name!r} is not held: the record of its period is not written")
        expiry = max(1, round(run.period * RECORD_PERIODS * 1000))
        try:
            written = client.eval(_RECORD, 2, self.key, period_key(self.lock_name), self._value, run.to_json(), expiry)
        except redis.RedisError as error:
            raise self._failure(error) from None
        if not written:
            raise LockFailed(f"the lock {self.lock_name!r} was lost before the record of its period was written")

    # -- for status and messages -------------------------------------------------------

    def holder(self) -> Holder | None:
        """The holder the key's value names, and the lease it has left."""
        import redis

        client = self._connect()
        try:
            value, left = client.eval(_PEEK, 1, self.key)
        except redis.RedisError as error:
            raise self._failure(error) from None
        finally:
            client.close()
        if value is None:
            return None
        fields = _fields(value)
        if fields is None:  # not written by runalways: say only how long it lasts
            holder = Holder()
        else:
            holder = Holder(pid=int(fields["pid"]), host=fields["host"], since=float(fields["since"]))
            if _dead_here(value):
                self.stale = holder
                holder.note = "gone: the next copy takes over at once"
                return None
        if int(left) >= 0:
            holder.note = f"lease {int(left) / 1000:.1f} s left"
        return holder

    def _failure(self, error: Exception) -> LockFailed:
        """One line per kind of failure, saying what to check; never the password."""
        import redis

        where, reason = self._where(), self._scrub(_first_line(error))
        if isinstance(error, redis.AuthenticationError):
            return LockFailed(
                f"the Redis server at {where} refused the login: {reason}; "
                "check the user name and password in RUNALWAYS_URL"
            )
        # A command a script runs is checked too, and refused as a plain error.
        if isinstance(error, redis.exceptions.NoPermissionError) or any(words in reason for words in _ACL_WORDS):
            return LockFailed(
                f"the Redis server's ACL does not let this user take the lock {self.lock_name!r} at {where}: "
                f"{reason}; it needs {ACL_NEEDED}"
            )
        if isinstance(error, redis.exceptions.ReadOnlyError):
            return LockFailed(f"the Redis server at {where} is a read-only replica: {reason}; use the primary's URL")
        if isinstance(error, redis.exceptions.OutOfMemoryError):
            return LockFailed(f"the Redis server at {where} is out of memory and refuses writes: {reason}")
        if isinstance(error, redis.exceptions.BusyLoadingError):
            return Unreachable(f"the Redis server at {where} is still loading its data: {reason}")
        if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
            return Unreachable(f"cannot reach the Redis server at {where}: {reason}")
        return LockFailed(f"Redis failed on the lock {self.lock_name!r} at {where}: {reason}")

    def _where(self) -> str:
        """host:port/db or the socket's path: never the user or the password."""
        from urllib.parse import urlsplit

        try:
            given = urlsplit(self.url or DEFAULT_URL)
            if given.scheme == "unix":
                return given.path
            database = given.path.strip("/") or "0"
            return f"{given.hostname or 'localhost'}:{given.port or 6379}/{database}"
        except ValueError:
            return "the given URL"

    def _scrub(self, text: str) -> str:
        from urllib.parse import unquote, urlsplit

        try:
            password = urlsplit(self.url or DEFAULT_URL).password
        except ValueError:
            return "(not shown)"
        for secret in (password, unquote(password or "")):
            if secret:
                text = text.replace(secret, "***")
        return text


def _import_client() -> None:
    """Import redis-py with the script's directory off sys.path, once.

    Python puts the main script's directory first on sys.path, so a job named
    ``copy.py`` or ``random.py`` would stand in for the standard modules redis-py loads.
    """
    import sys

    if "redis" in sys.modules:
        return
    first = sys.path.pop(0) if sys.path and not getattr(sys.flags, "safe_path", False) else None
    try:
        import redis  # noqa: F401
    finally:
        if first is not None:
            sys.path.insert(0, first)


def _holder_value() -> bytes:
    """``<random> <pid> <start ticks> <command line> <boot id> <pid namespace> <epoch> <host>``.

    The host goes last: it is free text. The command line is a checksum of
    /proc/PID/cmdline, which os.exec* changes while the pid and start time stay.
    """
    from runalways import _proc

    pid = os.getpid()
    parts = (
        os.urandom(8).hex(),
        str(pid),
        str(_proc.start_ticks(pid) or "-"),
        _command_line(pid) or "-",
        _proc.boot_id() or "-",
        _pid_namespace(),
        f"{time.time():.3f}",
        socket.gethostname(),
    )
    return " ".join(parts).encode("utf-8", "surrogateescape")


_FIELDS = ("random", "pid", "ticks", "command", "boot", "namespace", "since", "host")


def _fields(value: bytes) -> dict[str, str] | None:
    parts = value.decode("utf-8", "replace").split(" ", len(_FIELDS) - 1)
    if len(parts) != len(_FIELDS) or not parts[1].isdigit():
        return None
    fields = dict(zip(_FIELDS, parts))
    try:
        float(fields["since"])
    except ValueError:
        return None
    return fields


def _dead_here(value: bytes) -> bool:
    """The holder ran in this boot and pid namespace, and its process is gone, or is another program now.

    Another program: its pid was reused (another start time), or it called os.exec*
    (another command line), which ends the heartbeat without ending the process.
    """
    from runalways import _proc

    fields = _fields(value)
    if fields is None or "-" in (fields["ticks"], fields["command"]) or not _here(value):
        return False
    pid = int(fields["pid"])
    status = _proc.process_status(pid)
    if status is None or status[0] == "Z" or str(status[1]) != fields["ticks"]:
        return True
    command = _command_line(pid)
    return command is not None and command != fields["command"]


def _here(value: bytes) -> bool:
    """The holder runs (or ran) in this boot and pid namespace."""
    from runalways import _proc

    fields = _fields(value)
    if fields is None or "-" in (fields["boot"], fields["namespace"]):
        return False
    return fields["boot"] == _proc.boot_id() and fields["namespace"] == _pid_namespace()


def _command_line(pid: int) -> str | None:
    import zlib

    try:
        with open(f"/proc/{pid}/cmdline", "rb") as found:
            return format(zlib.crc32(found.read()), "08x")
    except OSError:
        return None


def _pid_namespace() -> str:
    """This process's pid namespace: two containers on one boot share boot ids, not pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
