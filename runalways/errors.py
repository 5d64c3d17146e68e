"""The exceptions runalways raises.

Each message is one line a user can act on: what is wrong and what to do instead.
The policy prints it after ``runalways: `` and exits with status 2.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways._values import Holder


class RunAlwaysError(Exception):
    """Base class of every runalways error."""


class SettingError(RunAlwaysError, ValueError):
    """A setting (environment variable, keyword or option) has a value runalways cannot use."""


class NoScriptError(RunAlwaysError):
    """There is no script file to lock: ``python -c``, standard input, a REPL."""


class BackendUnavailable(RunAlwaysError):
    """The chosen backend cannot work on this machine (wrong platform, missing package)."""


class LockFailed(RunAlwaysError):
    """Locking failed for a reason other than another copy holding the lock.

    Kept apart from contention on purpose: Sys::RunAlways, tendo, pid and zc.lockfile
    treat every error as "already running", so on an NFS mount that refuses the lock
    the job silently never runs.
    """


class AlreadyRunning(RunAlwaysError):
    """Another copy holds the lock (raised by the explicit API, never by the import guard)."""

    def __init__(self, message: str, holder: "Holder | None" = None) -> None:
        super().__init__(message)
        self.holder = holder
