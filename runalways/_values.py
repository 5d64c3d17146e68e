"""The values every layer passes around: what is locked, who holds it, what a lock survives.

:class:`Target` (what is locked), :class:`Holder` (who holds it) and
:class:`Capabilities` (what a backend's lock survives) are used by the backends, the
policy, the API and the command line alike, so they live below all of them. They do no
I/O: finding a lock file for a named target is the lock directory's work
(``runalways._lockdir``), reading who holds a lock is a backend's.

Quoted annotations rather than ``__future__``: about 0.1 ms a start, which cron pays.
"""

import time


class Capabilities:
    """What a backend's lock survives, declared as data.

    The conformance suite checks every declaration in both directions (a backend that
    says a lock is lost must really lose it), and ``runalways backends`` prints them.
    """

    __slots__ = (
        "across_hosts",
        "crash_release_seconds",
        "identity",
        "kept_across_exec",
        "kept_by_fork_child",
        "kept_when_file_closed",
        "kept_when_replaced",
        "needs_write_access",
        "other_users_can_hold",
    )

    def __init__(
        self,
        *,
        identity: str,
        kept_by_fork_child: bool,
        kept_across_exec: bool,
        kept_when_replaced: bool,
        kept_when_file_closed: bool,
        needs_write_access: bool,
        across_hosts: bool,
        other_users_can_hold: bool,
        crash_release_seconds: float,
    ) -> None:
        #: "inode": symlinks and hard links share the lock (Sys::RunAlways);
        #: "path": the resolved path, so symlinks share it and hard links do not;
        #: "name": the script's file name, the same on every host.
        self.identity = identity
        #: A child made by fork() still holds the lock after the parent exits.
        self.kept_by_fork_child = kept_by_fork_child
        #: The program an os.exec*() starts still holds the lock.
        self.kept_across_exec = kept_across_exec
        #: Replacing the script by rename (editors, deploys) keeps other copies out.
        self.kept_when_replaced = kept_when_replaced
        #: The holder may open and close its own script file (linecache, tracebacks).
        self.kept_when_file_closed = kept_when_file_closed
        #: The lock needs a descriptor open for writing.
        self.needs_write_access = needs_write_access
        #: Copies on different hosts exclude each other.
        self.across_hosts = across_hosts
        #: Another user who can run the script can take this lock, and so keep the job
        #: from running (the trap of locking a script anyone may read).
        self.other_users_can_hold = other_users_can_hold
        #: After SIGKILL of the holder, the lock is free again within this many seconds.
        self.crash_release_seconds = crash_release_seconds

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Holder:
    """Who holds a lock, as far as the mechanism can know."""

    __slots__ = ("command", "excludes", "host", "kind", "note", "pid", "since", "user")

    def __init__(
        self,
        pid: "int | None" = None,
        user: "str | None" = None,
        since: "float | None" = None,
        host: "str | None" = None,
        command: "str | None" = None,
        kind: "str | None" = None,
        excludes: bool = True,
    ) -> None:
        self.pid = pid
        self.user = user
        #: Epoch seconds: when the holding process started.
        self.since = since
        self.host = host
        self.command = command
        #: The kind of lock /proc/locks shows (FLOCK, POSIX, OFDLCK), where known.
        self.kind = kind
        #: False for a lock of a kind the asking backend does not conflict with: a copy
        #: started with another backend holds it, and would not keep this one out.
        self.excludes = excludes
        #: What else the mechanism knows: "on another host: never taken over", "stale: ...".
        self.note: str | None = None

    def describe(self) -> str:
        """``pid 4242, user alice, since 2026-11-24 10:00:03`` (only what is known)."""
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.host is not None:
            parts.append(f"host {self.host}")
        if self.user is not None:
            parts.append(f"user {self.user}")
        if self.since is not None:
            parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)))
        if self.note is not None:
            parts.append(self.note)
        return ", ".join(parts) if parts else "holder unknown"


class Target:
    """What is locked: a file, and the name people see in messages.

    ``path`` is None for a lock known only by name (``--name``); backends that lock a
    file get one in the private lock directory from :meth:`file`.
    """

    __slots__ = ("create", "display", "disposable", "name", "path", "private")

    def __init__(
        self,
        path: "str | None",
        display: str,
        name: str,
        *,
        create: bool = False,
        private: bool = False,
        disposable: bool = False,
    ) -> None:
        self.path = path
        #: How messages name it: sys.argv[0] as given, the command, or the lock name.
        self.display = display
        #: A host-independent name (the script's file name, or --name).
        self.name = name
        #: The file is created when missing (a lock file, not the script).
        self.create = create
        #: Opened without following a symbolic link (a lock file, not the script).
        self.private = private
        #: runalways named the file itself, in the private lock directory: it is removed
        #: at release, so that a command run with a new argument every day does not leave
        #: a file a day behind. Never a file the user named.
        self.disposable = disposable

    def located(self, path: str) -> "Target":
        """This named target, at the lock file ``path`` that runalways chose for it in the lock
        directory: created when missing, never followed through a symbolic link, removed at release."""
        return Target(path, self.display, self.name, create=True, private=True, disposable=True)
