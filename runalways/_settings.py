"""Settings: the RUNALWAYS_* environment variables and the keywords that mirror them.

Every value is checked; a bad one raises SettingError with one line that names the
variable, the value and what is allowed. A RUNALWAYS_* variable nobody reads is an error
too: a typo such as RUNALWAYS_SILNET=1 must not be silently ignored.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Tuple, Union

    from runalways.errors import SettingError

    Retry = Tuple[int, float]
    RetryValue = Union[int, str, Retry, None]

PREFIX = "RUNALWAYS_"


def _invalid(message: str) -> "SettingError":
    # runalways.errors is loaded only for a bad value: a start with good settings (the
    # RUNALWAYS_SILENT=1 of many crontabs) does not pay for importing it.
    from runalways.errors import SettingError

    return SettingError(message)


#: The variables the core reads; a backend adds its own (Backend.settings).
CORE_VARIABLES = (
    "RUNALWAYS_BACKEND",
    "RUNALWAYS_SILENT",
    "RUNALWAYS_RETRY",
    "RUNALWAYS_SKIP",
    "RUNALWAYS_DIR",
    "RUNALWAYS_LOCK",
    "RUNALWAYS_IDENTITY",
    "RUNALWAYS_FORK",
    "RUNALWAYS_CONFLICT_EXIT",
    "RUNALWAYS_TIMEOUT",
    "RUNALWAYS_KILL_GRACE",
    "RUNALWAYS_STALE_AFTER",
    "RUNALWAYS_ON_STALE",
    "RUNALWAYS_STALE_EXIT",
    "RUNALWAYS_LOG",
    # Not a setting but an output: `runalways run` puts the fencing token of its lock in
    # the command's environment (runalways.api.token() reads it there), and a guarded
    # script that the command starts must not be refused for it.
    "RUNALWAYS_TOKEN",
    # Also an output: where the command under `runalways run` marks progress (api.heartbeat()).
    "RUNALWAYS_HEARTBEAT",
)

IDENTITIES = ("inode", "path")
FORK_POLICIES = ("inherit", "close")
ON_STALE = ("report", "kill")
#: Seconds in each unit a duration may name: 90, 90s, 45m, 2h, 1.5d.
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: The exit status of a start that finds the lock held longer than RUNALWAYS_STALE_AFTER.
STALE_EXIT = 4
#: Seconds from SIGTERM to SIGKILL when a deadline passes or a stale holder is killed.
KILL_GRACE = 10.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _invalid(f"{where}={text!r} is not a yes/no value; use one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}")


def parse_seconds(text: str, where: str) -> float:
    """A duration: seconds, or a number with the unit s, m, h or d; fractions allowed, never negative."""
    seconds = _seconds(text)
    if seconds is None:
        raise _invalid(
            f"{where}={text!r} is not a number of seconds; use seconds or a number with s, m, h or d "
            "(such as 10, 0.5, 45m, 2h or 1.5d)"
        )
    return seconds


def parse_deadline(text: str, where: str) -> float:
    """A duration that must be over 0: a deadline or a limit of 0 would fire at once."""
    seconds = parse_seconds(text, where)
    if seconds <= 0:
        raise _invalid(f"{where}={text!r} must be longer than 0; use seconds or a number with s, m, h or d")
    return seconds


def _seconds(text: str) -> "float | None":
    text = text.strip().lower()
    scale = _UNITS.get(text[-1:])
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1.0)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _whole_number(text: str, digits: int) -> "int | None":
    """``text`` as a whole number of at most ``digits`` significant decimal digits, else None.

    ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses, and
    int() refuses more than 4300 digits; a bound keeps counts and times finite floats.
    """
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > digits:
        return None
    return int(text)


#: Significant digits of a retry count: any more and N*S stops being a finite float of seconds.
RETRY_DIGITS = 15


def parse_retry(value: "RetryValue", where: str) -> "Retry | None":
    """``N`` or ``N,S``: try N more times, S seconds apart (S defaults to 1), as Sys::RunAlone."""
    if value is None:
        return None
    if isinstance(value, tuple):
        text = ",".join(str(part) for part in value)
    else:
        text = str(value)
    count_text, comma, pause_text = text.partition(",")
    count = _whole_number(count_text.strip(), RETRY_DIGITS)
    pause = _seconds(pause_text) if comma else 1.0
    if count is None or pause is None or pause <= 0:
        raise _invalid(
            f"{where}={text!r} is not a retry count; use N or N,S "
            "(try N more times, S seconds apart; for example 3 or 5,0.5)"
        )
    return count, pause


def parse_choice(text: str, where: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise _invalid(f"{where}={text!r} is not one of the choices; use {' or '.join(choices)}")
    return value


def parse_exit_code(text: str, where: str) -> int:
    value = _whole_number(text.strip(), 3)
    if value is None or value > 255:
        raise _invalid(f"{where}={text!r} is not an exit status; use a whole number from 0 to 255")
    return value


def parse_skip(text: str, where: str) -> int:
    value = text.strip()
    if value not in ("0", "1", "2"):
        raise _invalid(
            f"{where}={text!r} is not a skip level; use 0 (check), 1 (skip the check) or 2 (skip it and say so)"
        )
    return int(value)


class FromEnvironment:
    """The settings given in the environment, parsed; an empty value counts as not set."""

    __slots__ = (
        "backend",
        "conflict_exit",
        "deadline",
        "fork",
        "identity",
        "kill_grace",
        "lock",
        "log",
        "on_stale",
        "retry",
        "silent",
        "skip",
        "stale_after",
        "stale_exit",
    )

    def __init__(self, environ: "Mapping[str, str]") -> None:
        def given(variable: str) -> "str | None":
            return environ.get(variable, "").strip() or None

        self.backend = given("RUNALWAYS_BACKEND")
        silent = given("RUNALWAYS_SILENT")
        self.silent = None if silent is None else parse_bool(silent, "RUNALWAYS_SILENT")
        self.retry = parse_retry(given("RUNALWAYS_RETRY"), "RUNALWAYS_RETRY")
        skip = given("RUNALWAYS_SKIP")
        self.skip = 0 if skip is None else parse_skip(skip, "RUNALWAYS_SKIP")
        #: "private", or the path of a lock file to use instead of the script.
        self.lock = given("RUNALWAYS_LOCK")
        identity = given("RUNALWAYS_IDENTITY")
        self.identity = None if identity is None else parse_choice(identity, "RUNALWAYS_IDENTITY", IDENTITIES)
        fork = given("RUNALWAYS_FORK")
        self.fork = None if fork is None else parse_choice(fork, "RUNALWAYS_FORK", FORK_POLICIES)
        conflict = given("RUNALWAYS_CONFLICT_EXIT")
        self.conflict_exit = None if conflict is None else parse_exit_code(conflict, "RUNALWAYS_CONFLICT_EXIT")
        deadline = given("RUNALWAYS_TIMEOUT")
        self.deadline = None if deadline is None else parse_deadline(deadline, "RUNALWAYS_TIMEOUT")
        grace = given("RUNALWAYS_KILL_GRACE")
        self.kill_grace = None if grace is None else parse_seconds(grace, "RUNALWAYS_KILL_GRACE")
        stale_after = given("RUNALWAYS_STALE_AFTER")
        self.stale_after = None if stale_after is None else parse_deadline(stale_after, "RUNALWAYS_STALE_AFTER")
        on_stale = given("RUNALWAYS_ON_STALE")
        self.on_stale = None if on_stale is None else parse_choice(on_stale, "RUNALWAYS_ON_STALE", ON_STALE)
        stale_exit = given("RUNALWAYS_STALE_EXIT")
        self.stale_exit = None if stale_exit is None else parse_exit_code(stale_exit, "RUNALWAYS_STALE_EXIT")
        #: "syslog", or the path of a file every start, skip, stale report, kill and deadline is appended to.
        self.log = given("RUNALWAYS_LOG")


def check_unknown(environ: "Mapping[str, str]", known: tuple[str, ...]) -> None:
    """Refuse RUNALWAYS_* variables that neither the core nor the chosen backend reads."""
    for variable in environ:
        if variable.startswith(PREFIX) and variable not in CORE_VARIABLES and variable not in known:
            allowed = ", ".join(CORE_VARIABLES + known)
            raise _invalid(f"{variable} is not a runalways setting (misspelt?); the settings are: {allowed}")
