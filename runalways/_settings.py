"""The settings: each declared once, in :data:`SETTINGS`, and read by one reader.

A declaration (:class:`Setting`) says everything about a setting: its ``RUNALWAYS_*``
variable, the parser that checks a value, its default, which values are allowed, one line
on what it does, and where else it may be given: a keyword of ``runalways.api``, an
option of the ``runalways`` command's subcommands, and which backends read it. From the
table come the reader of the environment and the keywords (:func:`resolve`), the refusal
of a misspelt variable, the command's options and their ``--help`` (``runalways.cli``),
the fuzzers' list of settings (``tests/fuzzing.py``) and the settings table of the README
(checked by ``tests/test_docs.py``). CONTRIBUTING.md shows what a new setting touches.

**Precedence.** For the import guard and the API the environment wins over the code, as
``SKIP/SILENT/RETRY_SYS_RUNALONE`` do in Perl, so that an operator can change a deployed
script without editing it; on the command line the options typed win over the
environment. An empty value counts as not set. A bad value, from anywhere, is a
:class:`~runalways.errors.SettingError` with one line that names the setting, the value
and what is allowed; so is a ``RUNALWAYS_*`` variable that neither the table nor the
chosen backend reads: a typo such as ``RUNALWAYS_SILNET=1`` must not be silently ignored.

A plain start (no setting at all) never loads this module: ``runalways/__init__.py``
decides it alone. This module is pure: it reads the mapping it is given, nothing else.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Optional, Tuple, Union

    from runalways.backends.base import Backend
    from runalways.errors import SettingError

    Retry = Tuple[int, float]
    RetryValue = Union[int, str, Retry, None]
    Parser = Callable[[str, str], Any]
    #: The backend registry's lookup, handed in by the layer above: (name, where it was given).
    BackendLookup = Callable[[str, str], "type[Backend]"]

PREFIX = "RUNALWAYS_"


def _invalid(message: str) -> "SettingError":
    # runalways.errors is loaded only for a bad value: a start with good settings (the
    # RUNALWAYS_SILENT=1 of many crontabs) does not pay for importing it.
    from runalways.errors import SettingError

    return SettingError(message)


# -- Parsers: text -> value, or one line saying what is allowed ---------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: Seconds in each unit a duration may name: 90, 90s, 45m, 2h, 1.5d.
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Significant digits of a retry count: any more and N*S stops being a finite float of seconds.
RETRY_DIGITS = 15


def parse_text(text: str, where: str) -> str:
    return text.strip()


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


def format_duration(seconds: float) -> str:
    """``3d4h``, ``2h5m``, ``12m3s``, ``45s``: a duration at a glance, as messages show one."""
    whole = int(seconds)
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            rest = (whole % size) // smaller_size
            return f"{whole // size}{unit}{rest}{smaller}" if rest else f"{whole // size}{unit}"
    return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"


def _whole_number(text: str, digits: int) -> "int | None":
    """``text`` as a whole number of at most ``digits`` significant decimal digits, else None.

    ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses, and
    int() refuses more than 4300 digits; a bound keeps counts and times finite floats.
    """
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > digits:
        return None
    return int(text)


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


def _seconds_of(retry: "Any") -> float:
    count, pause = retry
    return float(count * pause)


def parse_wait(value: object, where: str) -> float:
    """Seconds to wait for the lock, ``inf`` for ever (the ``wait=`` keyword and ``--wait``)."""
    if isinstance(value, str):
        return parse_seconds(value, where)
    seconds = float(value)  # type: ignore[arg-type]
    if not seconds >= 0:
        raise _invalid(f"{where}={value!r} is not a number of seconds; use 0 or more (inf: for ever)")
    return seconds


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


def choice(*choices: str) -> "Parser":
    """A parser that takes one of ``choices`` (any case, surrounding blanks ignored)."""

    def parse(text: str, where: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise _invalid(f"{where}={text!r} is not one of the choices; use {' or '.join(choices)}")
        return value

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def switch(off: str, on: str, meanings: str) -> "Parser":
    """A parser of two words, ``off`` (the default) and ``on``: False and True."""

    def parse(text: str, where: str) -> bool:
        value = text.strip().lower()
        if value in ("", off, on):
            return value == on
        raise _invalid(f"{where}={text!r} is not a choice; use {meanings}")

    parse.choices = (off, on)  # type: ignore[attr-defined]
    return parse


#: A lease shorter than this meets scheduling and network hiccups too often (renewal every TTL/3).
MIN_TTL = 3.0
DEFAULT_TTL = 15.0


def parse_ttl(text: str, where: str) -> float:
    ttl = parse_seconds(text, where)
    if ttl < MIN_TTL:
        raise _invalid(
            f"{where}={text!r} is too short for a lease; use {MIN_TTL:g} seconds or more (default {DEFAULT_TTL:g})"
        )
    return ttl


#: Cron starts a job at most once a minute: a shorter period could not be told from the next.
MIN_PERIOD = 60.0


def parse_period(text: str, where: str) -> float:
    """RUNALWAYS_ONCE_PER: a duration of at least a minute."""
    period = parse_deadline(text, where)
    if period < MIN_PERIOD:
        raise _invalid(
            f"{where}={text!r} is shorter than cron can start a job; use {MIN_PERIOD:g} seconds (1m) or more"
        )
    return period


def parse_name(text: str, where: str) -> str:
    """RUNALWAYS_NAME: a lock name whose fields (``{1}``, ``{args}``, ``{script}``) the start fills in."""
    from runalways._names import check

    return check(text.strip(), where)


def parse_ping_url(text: str, where: str) -> str:
    """RUNALWAYS_PING: an http:// or https:// URL with a host, the check's ping URL."""
    url = text.strip()
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    if scheme.lower() not in ("http", "https") or not host or any(character.isspace() for character in url):
        raise _invalid(
            f"{where} is not a ping URL; give the check's http:// or https:// URL, "
            "such as https://hc-ping.example/<uuid>"
        )
    return url.rstrip("/")


# -- The table ------------------------------------------------------------------------------

#: Which backends read the cluster settings.
CLUSTER = ("postgres", "redis")


class Setting:
    """One setting: where it may be given, how it is checked, what it defaults to, what it does."""

    __slots__ = (
        "about",
        "allowed",
        "attribute",
        "backends",
        "commands",
        "default",
        "keyword",
        "option",
        "parse",
        "variable",
    )

    def __init__(
        self,
        *,
        attribute: str,
        variable: "str | None",
        parse: "Parser",
        default: object,
        allowed: str,
        about: str,
        keyword: "str | None" = None,
        option: "Optional[Tuple[str, str, str]]" = None,
        commands: "Tuple[str, ...]" = (),
        backends: "Optional[Tuple[str, ...]]" = None,
    ) -> None:
        #: Its name in :class:`Settings`.
        self.attribute = attribute
        #: The environment variable, or None for a setting only code and the command take.
        self.variable = variable
        #: ``(text, where) -> value``; raises SettingError naming ``where``.
        self.parse = parse
        self.default = default
        #: The values allowed, as the documentation shows them.
        self.allowed = allowed
        #: What it does, in one line.
        self.about = about
        #: The keyword of ``runalways.api.guard()`` / ``lock()`` that gives it in code.
        self.keyword = keyword
        #: ``(option, metavar, help)`` of the ``runalways`` subcommands in ``commands``;
        #: metavar "" for a flag that takes no value. The help is the command's: it may
        #: say what the option does to the command (its process group, its exit status).
        self.option = option
        self.commands = commands
        #: The backends that read it; None: the core reads it, whatever the backend.
        self.backends = backends

    @property
    def where(self) -> str:
        """How an error names a value that came from code: the keyword, else the variable."""
        return self.keyword or self.variable or self.attribute


SETTINGS: "Tuple[Setting, ...]" = (
    Setting(
        attribute="backend",
        variable="RUNALWAYS_BACKEND",
        parse=parse_text,
        default=None,
        allowed="`fcntl` (default on POSIX), see `runalways backends`",
        about="how the lock is taken",
        keyword="backend",
        option=("--backend", "NAME", "the locking backend (see 'runalways backends')"),
        commands=("run", "status"),
    ),
    Setting(
        attribute="silent",
        variable="RUNALWAYS_SILENT",
        parse=parse_bool,
        default=False,
        allowed="`1/true/yes/on`, `0/false/no/off`",
        about="no start line; the alone policy exits 1 without its message",
        keyword="silent",
        option=("--silent", "", "print no start or 'already running' line"),
        commands=("run",),
    ),
    Setting(
        attribute="retry",
        variable="RUNALWAYS_RETRY",
        parse=parse_retry,
        default=None,
        allowed="`N` or `N,S` (S defaults to 1, fractions allowed)",
        about="wait up to N×S seconds for the other copy, getting in the moment it ends; then apply the policy",  # noqa: RUF001
        keyword="retry",
        option=("--retry", "N[,S]", "try N more times, S seconds apart (S=1)"),
        commands=("run",),
    ),
    Setting(
        attribute="wait",
        variable=None,
        parse=parse_wait,
        default=None,
        allowed="seconds, `inf` for ever",
        about="wait up to this long for the other copy (the same as retry, in seconds)",
        keyword="wait",
        option=("--wait", "SECONDS", "wait up to SECONDS for the lock"),
        commands=("run",),
    ),
    Setting(
        attribute="policy",
        variable="RUNALWAYS_POLICY",
        parse=choice("always", "alone", "queue", "replace"),
        default=None,
        allowed="`always`, `alone`, `queue`, `replace` (default: the import line's)",
        about="what a start does when another copy holds the lock: exit 0 (`always`), exit 1 with a message "
        "(`alone`), wait as the one pending follow-up run (`queue`), or stop the running copy and take its place "
        "(`replace`); see [Four policies](docs/command-line.md#four-policies)",
        keyword="policy",
    ),
    Setting(
        attribute="skip",
        variable="RUNALWAYS_SKIP",
        parse=parse_skip,
        default=0,
        allowed="`0`, `1`, `2`",
        about="`1`: run without the check; `2`: the same, and say so on stderr",
    ),
    Setting(
        attribute="conflict_exit",
        variable="RUNALWAYS_CONFLICT_EXIT",
        parse=parse_exit_code,
        default=None,
        allowed="`0` to `255`",
        about="the exit status when another copy holds the lock, under either policy (like `flock -E`), "
        'so "already running" can be told from "the job failed"',
        keyword="conflict_exit",
        option=(
            "--conflict-exit-code",
            "N",
            "exit N when another copy holds the lock (default 0, or 1 with --alone), as flock -E",
        ),
        commands=("run",),
    ),
    Setting(
        attribute="lock",
        variable="RUNALWAYS_LOCK",
        parse=parse_text,
        default=None,
        allowed="`private`, or a path",
        about="lock a file of your own instead of the script: `private` picks one in the private lock directory; "
        "a path must be in a directory only you can write to",
    ),
    Setting(
        attribute="identity",
        variable="RUNALWAYS_IDENTITY",
        parse=choice("inode", "path"),
        default="inode",
        allowed="`inode` (default), `path`",
        about="what makes two starts the same job: the script's file (links share it, a replaced script is a new "
        "job), or its resolved path (a deploy that replaces the file is still the same job)",
        keyword="identity",
    ),
    Setting(
        attribute="fork",
        variable="RUNALWAYS_FORK",
        parse=choice("inherit", "close"),
        default="inherit",
        allowed="`inherit` (default), `close`",
        about="whether children made by `fork()` share the lock (a daemonising job keeps it) or close their copy "
        "of it (a long-lived child cannot keep the next run out)",
        keyword="fork",
    ),
    Setting(
        attribute="deadline",
        variable="RUNALWAYS_TIMEOUT",
        parse=parse_deadline,
        default=None,
        allowed="a duration: `90`, `45m`, `2h`, `1.5d`",
        about="the job's deadline: SIGTERM when it has run that long, SIGKILL `RUNALWAYS_KILL_GRACE` later "
        "(see [When a job hangs](docs/hung-jobs.md))",
        keyword="timeout",
        option=(
            "--timeout",
            "DURATION",
            "SIGTERM to the command's process group after DURATION (90, 45m, 2h, 1.5d); exit 124",
        ),
        commands=("run",),
    ),
    Setting(
        attribute="kill_grace",
        variable="RUNALWAYS_KILL_GRACE",
        parse=parse_seconds,
        default=10.0,
        allowed="a duration (default `10`)",
        about="from SIGTERM to SIGKILL, at a deadline, for a stale holder killed and for a copy replaced "
        "(`RUNALWAYS_POLICY=replace`)",
        keyword="kill_grace",
        option=(
            "--kill-after",
            "DURATION",
            "SIGKILL this long after the SIGTERM of a deadline or --replace (default RUNALWAYS_KILL_GRACE, else 10 s)",
        ),
        commands=("run",),
    ),
    Setting(
        attribute="stale_after",
        variable="RUNALWAYS_STALE_AFTER",
        parse=parse_deadline,
        default=None,
        allowed="a duration",
        about="a holder older than this (or than its last heartbeat) is stale: reported on stderr, "
        "even when silent, exit 4",
        keyword="stale_after",
        option=(
            "--stale-after",
            "DURATION",
            "a holder older than this (or its last heartbeat) is stale: reported, exit 4",
        ),
        commands=("run", "status", "list"),
    ),
    Setting(
        attribute="on_stale",
        variable="RUNALWAYS_ON_STALE",
        parse=choice("report", "kill"),
        default="report",
        allowed="`report` (default), `kill`",
        about="`kill`: a stale holder of your own on this host is killed and the start runs",
    ),
    Setting(
        attribute="stale_exit",
        variable="RUNALWAYS_STALE_EXIT",
        parse=parse_exit_code,
        default=4,
        allowed="`0` to `255` (default `4`)",
        about="the exit status of a start that finds a stale holder",
    ),
    Setting(
        attribute="once_per",
        variable="RUNALWAYS_ONCE_PER",
        parse=parse_period,
        default=None,
        allowed="a duration of `1m` or more: `5m`, `1h`, `1d`",
        about="run the job once per period of this length, on whichever host (or process) starts first; "
        "the period's other starts are skips (see [Once per period](docs/cluster.md#once-per-period))",
        keyword="once_per",
        option=("--once-per", "DURATION", "run once per period of DURATION (1m or more), on whichever host is first"),
        commands=("run", "status"),
    ),
    Setting(
        attribute="once_per_unknown",
        variable="RUNALWAYS_ONCE_PER_UNKNOWN",
        parse=choice("skip", "run"),
        default="skip",
        allowed="`skip` (default), `run`",
        about="when the server forgot whether the period's run happened (restarted without its data): "
        "`skip` (at most once) or `run` (at least once)",
        keyword="once_per_unknown",
    ),
    Setting(
        attribute="log",
        variable="RUNALWAYS_LOG",
        parse=parse_text,
        default=None,
        allowed="`syslog`, or a file",
        about="a logfmt line for every start, skip, stale holder, kill and deadline",
    ),
    Setting(
        attribute="metrics",
        variable="RUNALWAYS_METRICS",
        parse=parse_text,
        default=None,
        allowed="a directory (node_exporter's `--collector.textfile.directory`)",
        about="rewrite `<dir>/runalways_<name>.prom` at every start, skip, stale holder and end, for "
        "Prometheus's textfile collector (see [Monitoring](docs/monitoring.md))",
        keyword="metrics",
        option=("--metrics", "DIR", "write the job's metrics to DIR/runalways_<name>.prom (textfile collector)"),
        commands=("run", "status", "list"),
    ),
    Setting(
        attribute="ping",
        variable="RUNALWAYS_PING",
        parse=parse_ping_url,
        default=None,
        allowed="an `http://` or `https://` URL",
        about="ping a healthchecks-style check: `/start` when a run begins, the URL on success, "
        "`/<exit status>` on failure (see [Monitoring](docs/monitoring.md))",
        keyword="ping",
        option=("--ping", "URL", "ping URL/start, then URL or URL/<exit status> when the command ends"),
        commands=("run",),
    ),
    Setting(
        attribute="ping_on_skip",
        variable="RUNALWAYS_PING_ON_SKIP",
        parse=choice("none", "log", "fail"),
        default="log",
        allowed="`log` (default), `fail`, `none`",
        about="what a skipped start pings: `URL/log` with who holds the lock, `URL/fail`, or nothing",
        keyword="ping_on_skip",
        option=("--ping-on-skip", "WHAT", "a skip pings URL/log (default), URL/fail, or none"),
        commands=("run",),
    ),
    Setting(
        attribute="directory",
        variable="RUNALWAYS_DIR",
        parse=parse_text,
        default=None,
        allowed="a directory only you can write to",
        about="where lock files runalways creates itself go (`private`, `path`, `--name`, `RUNALWAYS_NAME`, "
        "`runalways run`, "
        "pidfiles); default `~/.runalways/<machine id>` (see [Where lock files live](docs/lock-files.md)); "
        "set it for every start of a job, or for none",
    ),
    Setting(
        attribute="url",
        variable="RUNALWAYS_URL",
        parse=parse_text,
        default="",
        allowed="`postgres`: a libpq URL or `key=value` string; `redis`: `redis://[user:password@]host:port/db`, "
        "`rediss://…` (TLS) or `unix:///path/to/socket`",
        about="the server that holds the lock; default `postgres`: the standard `PGHOST`, `PGPORT`, `PGUSER`, "
        "`PGDATABASE`, `PGPASSWORD` / `~/.pgpass`; `redis`: `redis://localhost:6379/0`",
        backends=CLUSTER,
    ),
    Setting(
        attribute="lock_name",
        variable="RUNALWAYS_NAME",
        parse=parse_name,
        default=None,
        allowed="a name; `{1}`…`{9}`, `{args}`, `{script}` take the job's arguments",
        about="the name of the job's lock, with any backend (a lock file of that name in the lock directory, "
        "the same name on every host): `{script}-{1}` makes each sub-command of a script a job of its own "
        "(see [Sub-commands](docs/sub-commands.md)); `--name` / `name=` name a lock directly and win; "
        "default: the script itself (cluster backends: its file name)",
    ),
    Setting(
        attribute="ttl",
        variable="RUNALWAYS_TTL",
        parse=parse_ttl,
        default=DEFAULT_TTL,
        allowed=f"a duration of {MIN_TTL:g} s or more (default `{DEFAULT_TTL:g}`)",
        about="the lease: renewed every TTL/3, the holder kills itself at 0.8 × TTL without a renewal, "  # noqa: RUF001
        "the server frees the lock after TTL",
        backends=CLUSTER,
    ),
    Setting(
        attribute="run_unreachable",
        variable="RUNALWAYS_UNREACHABLE",
        parse=switch("fail", "run", "fail (do not run, exit 2: the default) or run (run without the lock)"),
        default=False,
        allowed="`fail` (default), `run`",
        about="when the server cannot be reached: `fail` does not run the job (exit 2), `run` runs it without the lock",
        backends=CLUSTER,
    ),
    Setting(
        attribute="allow_eviction",
        variable="RUNALWAYS_REDIS_EVICTION",
        parse=switch("refuse", "allow", "refuse (exit 2 on a server that may evict the lock: the default) or allow"),
        default=False,
        allowed="`refuse` (default), `allow`",
        about="whether to run on a server whose `maxmemory-policy` can evict the lock",
        backends=("redis",),
    ),
)

#: Variables runalways sets itself, for a command it runs, rather than reads from the user:
#: `runalways run` puts the fencing token of its lock (runalways.api.token() reads it) and
#: where the command marks progress (api.heartbeat()) in the command's environment, and a
#: guarded script that the command starts must not be refused for them.
OUTPUTS = ("RUNALWAYS_TOKEN", "RUNALWAYS_HEARTBEAT")

BY_ATTRIBUTE = {setting.attribute: setting for setting in SETTINGS}
BY_VARIABLE = {setting.variable: setting for setting in SETTINGS if setting.variable is not None}


def read_by(setting: Setting, backend: "type[Backend]") -> bool:
    """Whether a start with ``backend`` reads ``setting``: a core setting, or one of this backend's
    or of a backend it extends (a third-party backend built on ``postgres`` reads its settings)."""
    if setting.backends is None:
        return True
    return any(getattr(kind, "name", None) in setting.backends for kind in backend.__mro__)


def variables(backend: "type[Backend] | None" = None) -> "Tuple[str, ...]":
    """Every RUNALWAYS_* variable runalways reads with ``backend`` (None: with any built-in backend)."""
    found = [
        setting.variable
        for setting in SETTINGS
        if setting.variable is not None and (backend is None or read_by(setting, backend))
    ]
    return (*found, *OUTPUTS, *(backend.variables if backend is not None else ()))


def from_environment(environ: "Mapping[str, str]", variable: str) -> "Any":
    """The value of one variable in ``environ``, parsed; its default when not set (or empty)."""
    setting = BY_VARIABLE[variable]
    text = environ.get(variable, "").strip()
    return setting.parse(text, variable) if text else setting.default


# -- The settings of one start ----------------------------------------------------------------


class Settings:
    """Every setting of one start, merged and checked; what the policy and the backends read."""

    __slots__ = (
        "backend",
        "timeout",
        *(setting.attribute for setting in SETTINGS if setting.attribute not in ("backend", "retry", "wait")),
    )

    if TYPE_CHECKING:
        backend: "type[Backend]"
        #: How long to wait for the lock: 0 = one try, None = for ever (retry or wait).
        timeout: "float | None"
        silent: bool
        skip: int
        #: None: the face's own policy (the import line's, guard()'s, the command's).
        policy: "str | None"
        conflict_exit: "int | None"
        lock: "str | None"
        identity: str
        fork: str
        deadline: "float | None"
        kill_grace: float
        stale_after: "float | None"
        on_stale: str
        stale_exit: int
        once_per: "float | None"
        once_per_unknown: str
        log: "str | None"
        metrics: "str | None"
        ping: "str | None"
        ping_on_skip: str
        directory: "str | None"
        url: str
        lock_name: "str | None"
        ttl: float
        run_unreachable: bool
        allow_eviction: bool

    def __init__(self, backend: "type[Backend]") -> None:
        """Every setting at its default, with ``backend``."""
        self.backend = backend
        self.timeout = 0.0
        for name in self.__slots__[2:]:
            setattr(self, name, BY_ATTRIBUTE[name].default)

    @property
    def recorded(self) -> bool:
        """Whether a record of the job's runs is asked for (RUNALWAYS_LOG, RUNALWAYS_METRICS,
        RUNALWAYS_PING): without one, a start reports nothing and loads nothing for it."""
        return self.log is not None or self.metrics is not None or self.ping is not None

    @property
    def sends_sigterm(self) -> bool:
        """Whether something sends SIGTERM that RUNALWAYS_KILL_GRACE follows with SIGKILL: a
        deadline (RUNALWAYS_TIMEOUT), a stale holder killed, or a copy replaced."""
        return self.deadline is not None or self.on_stale == "kill" or self.policy == "replace"


def resolve(
    environ: "Mapping[str, str]",
    given: "Mapping[str, Any]",
    lookup: "BackendLookup",
    *,
    environment_wins: bool = True,
) -> Settings:
    """The settings of one start: the environment merged with ``given`` (code's keywords or the
    options typed, by attribute name; None: not given), each checked.

    ``lookup`` is the backend registry's ``get``: the registry is a layer above this table.
    The backend's own settings are read only once the backend is known, and a RUNALWAYS_*
    variable the chosen backend does not read is refused before any of them is parsed.
    """
    unknown = set(given) - set(BY_ATTRIBUTE)
    if unknown:
        raise TypeError(f"not settings: {', '.join(sorted(unknown))}")
    if given.get("retry") is not None and given.get("wait") is not None:
        raise _invalid("give retry or wait, not both (retry=N,S waits up to N*S seconds)")

    def code(setting: Setting) -> object:
        value = given.get(setting.attribute)
        if value is None or setting.attribute == "backend":
            return value
        if setting.attribute == "silent":
            return bool(value)
        if setting.attribute in ("retry", "wait"):
            return setting.parse(value, setting.where)
        return setting.parse(str(value), setting.where)

    def environment(setting: Setting) -> object:
        if setting.variable is None:
            return None
        text = environ.get(setting.variable, "").strip()
        return setting.parse(text, setting.variable) if text else None

    def merged_value(from_environment: object, coded: object) -> object:
        if from_environment is not None and (environment_wins or coded is None):
            return from_environment
        return coded

    def merged(setting: Setting, coded: object) -> object:
        return merged_value(environment(setting), coded)

    core = [setting for setting in SETTINGS if setting.backends is None and setting.attribute != "backend"]
    coded = {setting.attribute: code(setting) for setting in core}
    values = {setting.attribute: merged(setting, coded[setting.attribute]) for setting in core}

    chosen_backend = BY_ATTRIBUTE["backend"]
    in_environment = environment(chosen_backend)
    if in_environment is not None and (environment_wins or given.get("backend") is None):
        backend = lookup(str(in_environment), "RUNALWAYS_BACKEND")
    else:
        backend = lookup(str(given.get("backend") or ""), "backend")
    known = variables(backend)
    for variable in environ:
        if variable.startswith(PREFIX) and variable not in known:
            raise _invalid(f"{variable} is not a runalways setting (misspelt?); the settings are: {', '.join(known)}")
    for setting in SETTINGS:
        if setting.backends is not None and read_by(setting, backend):
            values[setting.attribute] = merged(setting, code(setting))

    chosen = Settings(backend)
    # RUNALWAYS_RETRY, or retry= or wait= from the code: one wait. Sys::RunAlone's N tries
    # S seconds apart is a wait of up to N*S seconds, in which the waiter gets in the moment
    # the lock is free rather than at the next S-second mark.
    wait_in_code = coded["wait"] if coded["retry"] is None else _seconds_of(coded["retry"])
    retry_in_environment = environment(BY_ATTRIBUTE["retry"])
    wait_in_environment = None if retry_in_environment is None else _seconds_of(retry_in_environment)
    waited = merged_value(wait_in_environment, wait_in_code)
    chosen.timeout = None if waited == float("inf") else float(waited or 0.0)  # type: ignore[arg-type]
    for attribute, value in values.items():
        if attribute not in ("retry", "wait") and value is not None:
            setattr(chosen, attribute, value)
    _check_together(environ, chosen)
    return chosen


def _check_together(environ: "Mapping[str, str]", chosen: Settings) -> None:
    """Settings that mean nothing without another: said, never silently ignored."""
    if chosen.stale_after is None and (_given(environ, "RUNALWAYS_ON_STALE", "RUNALWAYS_STALE_EXIT")):
        raise _invalid(
            "RUNALWAYS_ON_STALE and RUNALWAYS_STALE_EXIT say what to do with a stale holder, "
            "but no limit says when one is stale: set RUNALWAYS_STALE_AFTER (such as 2h) too"
        )
    if _given(environ, "RUNALWAYS_KILL_GRACE") and not chosen.sends_sigterm:
        raise _invalid(
            "RUNALWAYS_KILL_GRACE is the time from SIGTERM to SIGKILL, but nothing here sends SIGTERM: "
            "set RUNALWAYS_TIMEOUT, RUNALWAYS_POLICY=replace, or RUNALWAYS_STALE_AFTER with "
            "RUNALWAYS_ON_STALE=kill, too"
        )
    if chosen.policy == "queue" and chosen.timeout != 0:
        # A start that waited for the lock would not be the one pending run: a burst of such
        # starts would become a burst of runs, one after another.
        raise _invalid(
            "RUNALWAYS_POLICY=queue waits for the running copy itself, as the one pending run; a wait "
            "for the lock (RUNALWAYS_RETRY, retry=, wait=, --retry, --wait) would queue every start: "
            "unset one of them"
        )
    _check_name(chosen)


def _check_name(chosen: Settings) -> None:
    """RUNALWAYS_NAME with a setting that picks a lock file for the script: two ways to name one lock."""
    if chosen.lock_name is None:
        return
    if chosen.lock is not None:
        other = f"RUNALWAYS_LOCK={chosen.lock!r} names a lock file"
    elif chosen.identity == "path":
        other = "RUNALWAYS_IDENTITY=path picks a lock file by the script's path"
    else:
        return
    raise _invalid(
        f"RUNALWAYS_NAME={chosen.lock_name!r} names the job's lock and {other}: "
        "two ways to name one lock; unset one of them"
    )


def _given(environ: "Mapping[str, str]", *names: str) -> bool:
    """Whether any of the variables ``names`` is set to something other than blanks."""
    return any(environ.get(name, "").strip() for name in names)
