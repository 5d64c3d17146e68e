"""The contract every backend keeps: take a lock without blocking, wait for it, give it up, name its holder.

A backend knows one mechanism. It never prints and never exits; the policy
(``runalways._policy``) decides what a user sees. Four hooks are the whole contract
(:meth:`Backend.try_acquire`, :meth:`Backend.acquire`, :meth:`Backend.release`,
:meth:`Backend.holder`); the rest has a default that fits most mechanisms. The kernel
locks on a file share their mechanics in ``runalways.backends._filelock``, the cluster
backends theirs in ``runalways.backends._lease``.

A backend reads its settings (``RUNALWAYS_URL``, ``RUNALWAYS_TTL``, ...) from the
:class:`~runalways._settings.Settings` it is given, never from the environment: the
settings table (``runalways._settings``) is the one reader, so the environment, the API
keywords and the command line meet under one precedence rule. A backend registered by a
third party, which the table cannot know, names the variables it reads in
:attr:`Backend.variables`, so that they are not refused as misspelt.

This module is loaded by every start that is not a plain one: it imports only ``abc``
and ``os`` (both loaded by the interpreter's own start-up) at module level.
"""

import abc
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, ClassVar

    from runalways._period import Run
    from runalways._settings import Settings
    from runalways._values import Capabilities, Holder, Target


class Backend(abc.ABC):
    """One lock on one target, by one mechanism."""

    name: "ClassVar[str]"
    capabilities: "ClassVar[Capabilities]"
    #: RUNALWAYS_* variables a third-party backend reads itself, besides the table's.
    variables: "ClassVar[tuple[str, ...]]" = ()

    @classmethod
    def unavailable(cls) -> "str | None":
        """Why this backend cannot work here, or None when it can."""
        return None

    def __init__(self, target: "Target", settings: "Settings | None" = None) -> None:
        self.target = target
        #: The settings this lock was asked for with; None: every setting at its default.
        self.settings = settings
        #: A fencing token, for backends that have one: a number that grows with every
        #: acquisition of the lock, so a resource can refuse a holder older than the last it saw.
        self.token: int | None = None
        #: Set by holder() when it found what a holder that is gone left behind (a stale
        #: pidfile), so that status can say so; None for locks that vanish with their holder.
        self.stale: Holder | None = None
        #: Why the job runs without holding the lock, when a setting let the backend take
        #: it without the lock (the server was unreachable); the policy says so.
        self.unlocked: str | None = None
        #: Something the backend could not check and the user should know, said once at
        #: the start (a server that does not let it read its configuration).
        self.notice: str | None = None

    @abc.abstractmethod
    def try_acquire(self) -> bool:
        """Take the lock without blocking: True if taken, False if another copy has it.

        Any other failure raises :class:`~runalways.errors.LockFailed`.
        """

    @abc.abstractmethod
    def acquire(self, timeout: "float | None") -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for the lock; True if taken."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock up. Never called at exit by the import guard: the process ending does it."""

    @abc.abstractmethod
    def holder(self) -> "Holder | None":
        """Who holds the lock now, or None if nobody does. Never takes the lock."""

    def take(self, timeout: "float | None", before_waiting: "Callable[[], object] | None" = None) -> bool:
        """Try once without blocking, then wait up to ``timeout`` (0: do not wait), calling
        ``before_waiting`` first: what the caller would do once it holds the lock, done while
        nobody waits for it."""
        # The first non-blocking try keeps the common case to one system call.
        if self.try_acquire():
            return True
        if timeout == 0:
            return False
        if before_waiting is not None:
            before_waiting()
        return self.acquire(timeout)

    def lock_file(self) -> "str | None":
        """The file that holds the lock, for backends that lock one (status shows it)."""
        return None

    def lock_key(self) -> str:
        """What names this lock to every process that takes it (in heartbeats and the job's log).

        The name for a backend that locks a name, else the resolved path of the locked file.
        It goes into an environment variable: the NUL bytes that separate the words of a
        ``runalways run`` command's name become spaces.
        """
        if self.capabilities.identity == "name":
            return "name:" + self.target.name.replace("\0", " ")
        return os.path.realpath(self.lock_file() or self.target.path or self.target.name)

    def child_environment(self) -> dict[str, str]:
        """Variables ``runalways run`` adds to the environment of the command it runs holding this lock."""
        return {}

    def close_in_forked_children(self) -> None:  # noqa: B027 (a no-op unless a backend needs more)
        """RUNALWAYS_FORK=close: children made by fork() must not hold this lock.

        A no-op where a fork child never holds the lock anyway.
        """

    # -- RUNALWAYS_ONCE_PER: the record of the last period that ran, one per job ------------

    def last_run(self) -> "Run | None":
        """The record of the last period that ran, or None; asked only while holding the lock.

        By default a file beside the lock, in the lock directory: right for a backend whose
        lock lives on this host. A backend whose lock lives on a server keeps it there.
        """
        from runalways._period import read_file

        return read_file(self.lock_key())

    def record_run(self, run: "Run") -> None:
        """Replace the record with ``run``, atomically; only while holding the lock."""
        from runalways._period import write_file

        write_file(self.lock_key(), run)

    def forgot_within(self, seconds: float) -> bool:
        """Whether the store may have lost a record written in the last ``seconds``
        (a server restarted without its data); a file in the lock directory does not."""
        return False

    def handover(self, pid: "int | None" = None) -> None:
        """Make the lock belong to ``pid`` (None: this process, a child after fork()).

        A lock that fork children share needs nothing; a backend whose lock names its
        holder (a pidfile) rewrites it; any other cannot hand its lock over.
        """
        if not self.capabilities.kept_by_fork_child:
            from runalways.errors import LockFailed

            raise LockFailed(f"the {self.name} backend cannot hand its lock to another process")
