"""``postgres`` backend: one copy across many hosts, on a PostgreSQL advisory lock held as a lease.

The lock is ``pg_try_advisory_lock(NAMESPACE, hash of the lock name)`` taken on a
dedicated, direct connection: it lives exactly as long as that server session. The lock
name is the host-independent ``Target.name`` (``--name``, ``name=``), or for a guarded
script ``RUNALWAYS_NAME``, defaulting to the script's file name, since paths differ
between hosts. Every host must use the same server and the same database (advisory locks
are per database), and connect directly: a transaction-pooling proxy (PgBouncer in
transaction or statement mode) hands the session, and with it the lock, to other clients.

A start that waits sends one statement: ``pg_advisory_lock`` under ``lock_timeout``, and
from its row the token (below). The server queues it and grants it the moment the holder
lets go; the token is taken in the same moment, with no round trip between. The statement
is sent again every TTL, so that its snapshot never holds the server's vacuum back long.

How the lock ends, and why another host never runs alongside the holder:

* The holder lets go (``release()``, or the interpreter's exit): ``pg_advisory_unlock``,
  then the session ends. A waiter has the lock before the server has ended the session.
* The holder process dies (even SIGKILL): the kernel closes its socket and the server
  ends the session, releasing the lock within milliseconds.
* The holder's host dies, freezes, or loses the network: the session sets
  ``idle_session_timeout`` to the TTL (``RUNALWAYS_TTL``, default 15 s), so the server
  itself ends the session and frees the lock once nothing arrived for a TTL. A heartbeat
  thread checks every TTL/3 that the lock row is still in ``pg_locks``, which also keeps
  the session from being idle. TCP keepalives cover a host that vanished.
* Self-fencing: the holder must stop before the server can give the lock away. A kernel
  timer (``runalways._kernel_kill``) kills the process with SIGKILL at the send time of the
  last confirmed heartbeat + 0.8 TTL, on CLOCK_BOOTTIME; each confirmed heartbeat moves
  it on. A heartbeat that finds the lock gone, or the session ended, kills it at once.
* Server restart: every advisory lock vanishes at once, while the old holder may still
  run until its deadline. A new holder whose server is younger than the TTL waits out
  the rest of the TTL (heartbeating) before it runs.
* Fencing token: every acquisition takes ``pg_current_xact_id()`` in a transaction that
  writes WAL, so the number grows strictly across holders, hosts and server restarts.
  It is ``backend.token``, ``runalways.api.token()``, and ``RUNALWAYS_TOKEN`` in the
  environment of a ``runalways run`` command; a resource that remembers the highest
  token it has seen can refuse a late write from a fenced holder.

The heartbeat is a daemon thread: it does not survive fork(), so a forked child never
holds the lock (the child's copy of the connection is closed at fork, so the parent's
exit still releases it at once). The connection is close-on-exec: a program started by
``os.exec*`` does not hold it either.

The server unreachable at start: fail closed (``LockFailed``: one line without the
password, exit 2), or with ``RUNALWAYS_UNREACHABLE=run`` run without the lock.

The heartbeat, the fence, the restart grace, the token's plumbing, fork handling and
the settings are the shared lease (``runalways.backends._lease``); this module says how
PostgreSQL takes, renews, verifies, releases and describes the lock.

psycopg (the ``runalways[postgres]`` extra) and ctypes are imported only when this
backend is used.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import time

from runalways._values import Capabilities, Holder, Target
from runalways.backends._lease import BEATS_PER_TTL, LeaseBackend, Unreachable
from runalways.errors import LockFailed, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import psycopg

    from runalways._period import Run
    from runalways._settings import Settings

    Connection = psycopg.Connection[tuple[Any, ...]]

#: First key of every runalways lock ('RALW'): the two-int4 form keeps runalways's locks
#: apart from the single-bigint advisory locks frameworks (Rails, Django) take.
NAMESPACE = 0x52414C57

#: The lock row of this session, in the form pg_try_advisory_lock(int4, int4) makes.
_OWN_LOCK = (
    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    " AND classid = %s::oid AND objid = %s::oid AND objsubid = 2 AND granted"
)
_HOLDER = (
    "SELECT a.application_name, a.backend_start FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2"
    " AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
#: The token, the server's age, the holder's label ("runalways <pid> <epoch granted> <host>",
#: its epoch the client's clock at sending plus the seconds the statement took) and those
#: seconds, in one implicit transaction. The transactional WAL message makes the commit
#: flush WAL synchronously, so the transaction id cannot be handed out again after a
#: server crash.
_TAKEN = (
    "SELECT {xid}::text::bigint, extract(epoch FROM clock_timestamp() - pg_postmaster_start_time())::float8,"
    " pg_logical_emit_message(true, 'runalways', %s) IS NOT NULL,"
    " set_config('application_name',"
    " left(%s || floor(%s + extract(epoch FROM clock_timestamp() - statement_timestamp()))::bigint || %s, 63), false),"
    " extract(epoch FROM clock_timestamp() - statement_timestamp())::float8"
)
#: The same, after a wait for the lock in the same statement: the server takes the token
#: the moment it grants the lock, with no round trip between (on loopback, 1-3 ms
#: measured, with the holder's session ending beside it). The wait comes first: the
#: columns are computed from its row, and OFFSET 0 keeps the planner from merging the two.
_WAITED = _TAKEN + " FROM (SELECT pg_advisory_lock(%s, %s) OFFSET 0) AS waited"
#: RUNALWAYS_ONCE_PER: one row per job, the last period that ran, replaced by each run.
_PERIODS_TABLE = (
    "CREATE TABLE IF NOT EXISTS runalways_periods (job text PRIMARY KEY, tick bigint NOT NULL,"
    " period double precision NOT NULL, host text NOT NULL, pid integer NOT NULL, started double precision NOT NULL,"
    " status integer, ended double precision, forgot boolean NOT NULL DEFAULT false)"
)
_LAST_RUN = "SELECT tick, period, host, pid, started, status, ended, forgot FROM runalways_periods WHERE job = %s"
_RECORD_RUN = (
    "INSERT INTO runalways_periods (job, tick, period, host, pid, started, status, ended, forgot)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job) DO UPDATE SET tick = excluded.tick, period = excluded.period, host = excluded.host,"
    " pid = excluded.pid, started = excluded.started, status = excluded.status, ended = excluded.ended,"
    " forgot = excluded.forgot"
)
#: application_name: "runalways <pid> <epoch granted or -> <host>"; the host goes last
#: because the server cuts the name at 63 bytes.
_LABEL = re.compile(r"runalways (\d+) (\d+|-) (.*)")
#: SQLSTATEs of a server that is there but cannot take connections right now.
_UNREACHABLE_STATES = ("57P03", "53300")
#: libpq's words for the same (it gives no SQLSTATE for a failed connection).
_BUSY_WORDS = ("the database system is starting up", "the database system is shutting down", "too many clients")
#: ... and for a login the server refused: password, role, pg_hba.conf.
_LOGIN_WORDS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed for user",
    "pg_hba.conf",
    "role ",
)


def lock_key(name: str) -> tuple[int, int]:
    """The two int4 keys of the advisory lock for ``name``."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return NAMESPACE, int.from_bytes(digest[:4], "big", signed=True)


class PostgresBackend(LeaseBackend):
    name = "postgres"
    engine = "PostgreSQL"
    # Left to the process's end, the session (and the lock) would end only once the
    # interpreter had torn psycopg down: 25 ms measured, which a waiting start waits for.
    release_at_exit = True
    capabilities = Capabilities(
        identity="name",
        kept_by_fork_child=False,
        kept_across_exec=False,
        kept_when_replaced=True,
        kept_when_file_closed=True,
        needs_write_access=False,
        across_hosts=True,
        other_users_can_hold=True,  # anyone with access to the database can take a lock of that name
        # SIGKILL closes the socket and the server ends the session at once (measured
        # 7 ms); a second leaves room for a loaded machine. A dead *host* takes the TTL.
        crash_release_seconds=1.0,
    )

    client = ("psycopg", "psycopg", "postgres")

    def __init__(self, target: Target, settings: Settings | None = None) -> None:
        super().__init__(target, settings)
        self.url = _checked_url(self.url)
        self.key = lock_key(self.lock_name)
        self._conn: Connection | None = None
        #: The session holds the advisory lock: it is given back before the session ends.
        self._locked = False

    # -- taking the lock ------------------------------------------------------------

    def try_acquire(self) -> bool:
        import psycopg

        conn = self._open({})
        if conn is None:
            return True
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self.key).fetchone()
        except psycopg.Error as error:
            raise self._failure(error) from None
        if not (row and row[0]):
            self._close()
            return False
        self._locked = True
        sent, parameters = self._taking()
        taken = self._run(conn, _TAKEN.format(xid=_xid(conn)), parameters)
        assert taken is not None  # no lock to wait for in it: no lock_timeout to end it
        return self._hold(taken, sent)

    def _wait(self, timeout: float | None) -> bool:
        """Wait on the server (pg_advisory_lock under lock_timeout): in the moment the holder lets go.

        In rounds of at most a TTL: while a statement waits, its snapshot holds the server's
        vacuum back (the xmin horizon) for every table of the cluster, and a queued run
        behind a long job would hold it back for as long as the job ran.
        """
        _keep_devnull()  # before the wait, as the timer: what taking the lock needs, made now

        # A server-wide statement_timeout must not end the wait as an error.
        conn = self._open({"statement_timeout": "0"})
        if conn is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        statement = _WAITED.format(xid=_xid(conn))
        try:
            while True:
                left = self.ttl if deadline is None else min(self.ttl, deadline - time.monotonic())
                if left <= 0:
                    self._close()
                    return False
                # lock_timeout is at least a millisecond (0 would mean no limit).
                self._run(conn, "SELECT set_config('lock_timeout', %s, false)", (str(max(1, round(left * 1000))),))
                sent, parameters = self._taking()
                row = self._run(conn, statement, (*parameters, *self.key))
                if row is not None:
                    return self._hold(row, sent)
        except BaseException:  # KeyboardInterrupt: psycopg cancelled the wait; drop the session
            self._close()
            raise

    def _open(self, settings: dict[str, str]) -> Connection | None:
        """A fresh session with the lease set on it; None to run unlocked (server unreachable)."""
        import psycopg

        try:
            conn = self._connect(f"runalways {os.getpid()} - {socket.gethostname()}")
        except Unreachable as error:
            self._run_unlocked(error)
            return None
        lease = str(round(self.ttl * 1000))
        version = conn.info.server_version
        wanted = {
            "idle_in_transaction_session_timeout": lease,
            # The server's own TCP checks of this session: never sooner than the lease (an
            # aggressive server-wide setting would free the lock before the holder fences
            # itself), and on servers before 14, the only way it notices a vanished host.
            "tcp_keepalives_idle": str(math.ceil(self.ttl)),
            "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": "3",
            **settings,
        }
        if version >= 120000:
            wanted["tcp_user_timeout"] = lease
        if version >= 140000:
            wanted["idle_session_timeout"] = lease
        calls = ", ".join(["set_config(%s, %s, false)"] * len(wanted))
        try:
            conn.execute(f"SELECT {calls}", [item for pair in wanted.items() for item in pair])
        except psycopg.Error as error:
            conn.close()
            raise self._failure(error) from None
        self._conn = conn
        return conn

    def _connect(self, label: str) -> Connection:
        import psycopg

        third = self.ttl / BEATS_PER_TTL
        try:
            return psycopg.connect(
                self.url,
                autocommit=True,
                application_name=label[:63],
                connect_timeout=max(2, min(5, int(third))),
                # A peer that vanished (host down, cable cut) errors the socket within about
                # a TTL instead of the kernel default of two hours.
                keepalives=1,
                keepalives_idle=max(1, int(third)),
                keepalives_interval=1,
                keepalives_count=3,
                tcp_user_timeout=round(self.ttl * 500),
            )
        except psycopg.OperationalError as error:
            raise self._refused(error) from None

    def _refused(self, error: Exception) -> LockFailed:
        """Why a connection failed, told apart: only a server that is not there (or not yet) is unreachable.

        libpq gives no SQLSTATE for a failed connection, so the server's own words tell.
        """
        text = str(error)
        if getattr(error, "sqlstate", None) in _UNREACHABLE_STATES or any(words in text for words in _BUSY_WORDS):
            return Unreachable(self._describe(error, "the PostgreSQL server cannot take connections now"))
        if any(words in text for words in _LOGIN_WORDS):
            return LockFailed(
                self._describe(error, "the PostgreSQL server refused the login")
                + "; check the user and password (RUNALWAYS_URL, PGPASSWORD, ~/.pgpass), "
                "that the role exists, and the server's pg_hba.conf"
            )
        if "does not exist" in text:
            return LockFailed(self._describe(error, "no such database on the PostgreSQL server"))
        if "FATAL:" in text:
            return LockFailed(self._describe(error, "the PostgreSQL server refused the connection"))
        return Unreachable(self._describe(error, "cannot reach the PostgreSQL server"))

    def _taking(self) -> tuple[float, tuple[object, ...]]:
        """When the statement that takes the token is sent (on the fence's clock), and its parameters."""
        from runalways._kernel_kill import now

        # The WAL message says which lock; text cannot hold the NULs of a `run` lock's name.
        message = self.lock_name.replace("\0", " ")
        return now(), (message, f"runalways {os.getpid()} ", time.time(), f" {socket.gethostname()}")

    def _run(self, conn: Connection, statement: str, parameters: tuple[object, ...]) -> tuple[Any, ...] | None:
        """The row ``statement`` gives; None when lock_timeout ended its wait. Any other
        error ends the session, and a lock it took (``_failure``)."""
        import psycopg

        try:
            return conn.execute(statement, parameters).fetchone()
        except psycopg.errors.LockNotAvailable:
            return None
        except psycopg.Error as error:
            raise self._failure(error) from None

    def _hold(self, row: tuple[Any, ...], sent: float) -> bool:
        """The lock is ours, by a statement sent at ``sent`` that gave ``row`` (_TAKEN's
        columns): hold the lease, with the token and the server's age it gives."""
        self._locked = True
        _keep_devnull()
        self._uptime = float(row[1])
        # The server's lease began when the statement ended: no sooner than the time it
        # spent in it (a wait included) after it was sent.
        return self._lease_taken(int(row[0]), float(row[1]), sent + max(float(row[4]), 0.0))

    # -- keeping it ------------------------------------------------------------------

    def _renew(self) -> bool | None:
        """The session's lock row still in pg_locks; the query itself keeps the session from being idle."""
        import psycopg

        conn = self._conn
        if conn is None:
            return False
        try:
            row = conn.execute(_OWN_LOCK, (self.key[0], self.key[1] & 0xFFFFFFFF)).fetchone()
        except psycopg.Error:
            # A session that ended took the lock with it; anything else the timer decides.
            return False if conn.broken or conn.closed else None
        return row is not None

    # -- letting go ------------------------------------------------------------------

    def _interrupt(self) -> None:
        # The server frees the lock on EOF; the stuck query fails.
        if self._conn is not None:
            _shut_down(self._conn)

    def _abandon(self) -> None:
        self._conn = None

    def _let_go(self) -> None:
        conn = self._conn
        if conn is not None and self._locked:
            self._locked = False
            _unlock(conn, self.key, min(1.0, self.ttl / BEATS_PER_TTL))

    def _close(self) -> None:
        self._let_go()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _forget_session(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            # Put /dev/null where the socket was: the child's reference to the socket is
            # gone (the parent's exit still ends the session), and whatever libpq later
            # writes on that descriptor (its goodbye at garbage collection) goes nowhere.
            # The descriptor of /dev/null was opened when the lock was taken: a child of a
            # process whose descriptor table is full could not open one now.
            if _devnull:
                os.dup2(_devnull[0], conn.pgconn.socket, inheritable=False)
            else:  # the table was full already then: at least drop the child's reference
                os.close(conn.pgconn.socket)

    # -- RUNALWAYS_ONCE_PER ----------------------------------------------------------------

    def _job(self) -> str:
        return self.lock_name.replace("\0", " ")  # text cannot hold the NULs of a `run` lock's name

    def last_run(self) -> Run | None:
        import psycopg

        from runalways._period import Run

        conn = self._conn or self._connect(f"runalways status {os.getpid()}")
        try:
            row = conn.execute(_LAST_RUN, (self._job(),)).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None  # no job ever ran once per period on this database
        except psycopg.Error as error:
            raise self._failure(error) from None
        finally:
            if conn is not self._conn:
                conn.close()
        if row is None:
            return None
        return Run(
            int(row[0]),
            float(row[1]),
            str(row[2]),
            int(row[3]),
            float(row[4]),
            None if row[5] is None else int(row[5]),
            None if row[6] is None else float(row[6]),
            bool(row[7]),
        )

    def record_run(self, run: Run) -> None:
        import psycopg

        conn = self._conn
        if conn is None:
            raise LockFailed(f"the lock {self.lock_name!r} is not held: the record of its period is not written")
        values = (self._job(), run.tick, run.period, run.host, run.pid, run.started, run.status, run.ended, run.forgot)
        try:
            try:
                conn.execute(_RECORD_RUN, values)
            except psycopg.errors.UndefinedTable:
                # The first record on this database: make the table (the role needs CREATE on
                # the schema now), unless another job's first start made it at the same moment.
                try:
                    conn.execute(_PERIODS_TABLE)
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                    pass
                conn.execute(_RECORD_RUN, values)
        except psycopg.Error as error:
            raise self._failure(error) from None

    # -- for runalways run, status and messages --------------------------------------

    def holder(self) -> Holder | None:
        """The holder from pg_locks and pg_stat_activity (its label needs the same role or pg_read_all_stats)."""
        import psycopg

        conn = self._connect(f"runalways status {os.getpid()}")
        try:
            with conn:
                row = conn.execute(_HOLDER, (self.key[0], self.key[1] & 0xFFFFFFFF)).fetchone()
        except psycopg.Error as error:
            raise self._failure(error) from None
        if row is None:
            return None
        found = _LABEL.fullmatch(row[0] or "")
        if found is None:  # another role's session, or not a runalways client: little to say
            return Holder(since=row[1].timestamp() if row[1] is not None else None)
        pid, since, host = found.groups()
        return Holder(pid=int(pid), host=host, since=float(since) if since != "-" else None)

    def _failure(self, error: Exception) -> LockFailed:
        self._close()
        return LockFailed(self._describe(error, f"PostgreSQL failed on the lock {self.lock_name!r}"))

    def _describe(self, error: Exception, what: str) -> str:
        """One line naming the server but never the password, whatever libpq put in the message."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            given = conninfo_to_dict(self.url)
        except Exception:  # an unparsable URL: say nothing of it rather than echo a secret
            given = {}
        host = given.get("host") or os.environ.get("PGHOST") or "localhost"
        port = given.get("port") or os.environ.get("PGPORT") or "5432"
        database = given.get("dbname") or os.environ.get("PGDATABASE") or given.get("user") or "default"
        reason = " ".join(str(error).split())
        for secret in (given.get("password"), os.environ.get("PGPASSWORD")):
            if secret:
                reason = reason.replace(str(secret), "***")
        return f"{what} at {host}:{port}/{database}: {reason}"


def _keep_devnull() -> None:
    """Open /dev/null (close-on-exec) with the first lock: a fork child puts it where the socket was.

    A child of a process whose descriptor table is full could not open it then.
    """
    if not _devnull:
        try:
            _devnull.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
        except OSError:
            pass  # a full descriptor table: the child closes the socket's descriptor instead


def _checked_url(url: str) -> str:
    """RUNALWAYS_URL, refused with one line when PostgreSQL cannot read it.

    Checked before connecting: psycopg raises ProgrammingError for it, quoting the part
    it could not read (an invalid percent-encoded token, an unclosed "[" of an IPv6
    host), which may be the password. So the line says nothing of the text.
    """
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except Exception:
        raise SettingError(
            "RUNALWAYS_URL is not a connection URL or string that PostgreSQL can read (its text is not "
            "shown: it may hold a password); use postgresql://USER@HOST:PORT/DATABASE"
        ) from None
    return url


def _xid(conn: Connection) -> str:
    """The expression of a transaction id that grows for ever (not the 32-bit one that wraps)."""
    return "pg_current_xact_id()" if conn.info.server_version >= 130000 else "txid_current()"


def _unlock(conn: Connection, key: tuple[int, int], within: float) -> None:
    """Give the advisory lock back before the session ends, so that a waiter has it at once.

    Left to the session's end, the lock is freed only once the server process has ended
    the session (2-3 ms on loopback, measured). The answer is awaited at most ``within``
    seconds: a network gone dead does not hold the exit up, and the lock is then freed
    when the session ends. Not awaited at all, the server would write the answer to a
    closed socket, and log that.
    """
    import select

    import psycopg

    pgconn = conn.pgconn
    try:
        pgconn.send_query(b"SELECT pg_advisory_unlock(%d, %d)" % key)
        if pgconn.flush() != 0:  # the socket takes no more now: a network in trouble
            return
        waiting = select.poll()
        waiting.register(pgconn.socket, select.POLLIN)
        deadline = time.monotonic() + within
        while pgconn.is_busy():
            left = deadline - time.monotonic()
            if left <= 0 or not waiting.poll(left * 1000):
                return
            pgconn.consume_input()
        while pgconn.get_result() is not None:
            pass
    except (psycopg.Error, OSError):
        pass  # the session ends next, and the lock with it


def _shut_down(conn: Connection) -> None:
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


#: /dev/null, opened with the first lock (_keep_devnull).
_devnull: list[int] = []
