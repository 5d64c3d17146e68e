"""The ``runalways`` command's argument parser: its commands, options, help texts and exit statuses.

Everything a user reads before runalways does anything lives here, so that ``--help``,
the completion scripts (generated from this parser) and spec/SPEC.md's table of exit
statuses are checked against one source. The options that set a setting come from the
settings table (``runalways._settings.SETTINGS``): its option, metavar, help and value
parser, the same parser as the setting's RUNALWAYS_* variable, so the command line and
the environment accept and refuse the same text.
"""

from __future__ import annotations

import argparse

from runalways import __version__
from runalways._settings import SETTINGS, parse_text
from runalways.errors import SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, NoReturn

    #: A setting's value parser from runalways._settings: the text, and the name to quote in its error.
    ValueParser = Callable[[str, str], object]

NOT_RUNNING = 3
#: The exit status of status and of a start that find the holder stale (RUNALWAYS_STALE_EXIT for a start).
STALE = 4
#: The exit status of a command stopped at its deadline, as timeout(1)'s.
TIMED_OUT = 124
#: As POSIX shells, env(1), timeout(1) and flock(1): the command was found but cannot run,
#: or was not found at all. runalways's own errors keep status 2.
CANNOT_RUN = 126
NOT_FOUND = 127
READER_GONE = 128 + 13  # SIGPIPE

_USAGE_ERROR = ("2", "an error of runalways itself (a bad option or setting, a lock that fails): one line on stderr")
_READER_GONE = (str(READER_GONE), "the reader of the output went away (| head), as for SIGPIPE")

#: Every status each command can exit with: its --help lists them, and spec/SPEC.md's table
#: must list the same (spec/conformance/test_cli.py compares the two).
EXIT_STATUSES = {
    "run": [
        ("N", "the command's own status; 128+N when signal N killed it"),
        (
            "0",
            "another copy holds the lock (1 with --alone, N with --conflict-exit-code N); with --queue, a "
            "follow-up run already waits",
        ),
        (str(STALE), "another copy holds the lock and is stale (--stale-after; RUNALWAYS_STALE_EXIT)"),
        (str(TIMED_OUT), "the deadline passed (--timeout): the command was stopped"),
        _USAGE_ERROR,
        (str(CANNOT_RUN), "COMMAND was found but cannot run: no execute permission, not a program, a directory"),
        (str(NOT_FOUND), "COMMAND was not found"),
    ],
    "status": [
        ("0", "a copy holds the lock"),
        (str(NOT_RUNNING), "no copy holds it"),
        (str(STALE), "the copy holding the lock is stale (--stale-after)"),
        _USAGE_ERROR,
        _READER_GONE,
    ],
    "list": [("0", "the list was printed (it may be empty)"), _USAGE_ERROR, _READER_GONE],
    "backends": [("0", "the list was printed"), _USAGE_ERROR, _READER_GONE],
    "completion": [("0", "the script was printed"), _USAGE_ERROR, _READER_GONE],
    "doctor": [
        ("0", "every check passed, or found only warnings"),
        ("1", "a finding means the guard cannot be trusted there (a second process took the lock, ...)"),
        _USAGE_ERROR,
        _READER_GONE,
    ],
}

#: The reference documentation, which ``runalways --help`` points to (a test checks both ways).
DOCS = (
    ("docs/lock-files.md", "where lock files live, and why"),
    ("docs/hung-jobs.md", "stale holders, heartbeats, deadlines, the record of skips"),
    ("docs/monitoring.md", "the record of every run: log, metrics, ping; how a run's end is known"),
    ("docs/backends.md", "what each backend's lock survives, and which to choose"),
    ("docs/cluster.md", "one copy across many hosts: postgres and redis"),
    ("docs/command-line.md", "run, status, list, backends, doctor, completion, exit statuses"),
    ("docs/sub-commands.md", "one lock per sub-command: names with the job's arguments"),
    ("docs/api.md", "runalways.api: guard(), lock(), heartbeat(), token()"),
    ("docs/traps.md", "the traps other guards fall into"),
    ("docs/benchmarks.md", "start-up and hand-over against the peers"),
    ("docs/reliability.md", "what we promise: chaos soak, fuzzed input, injected faults, bugs found"),
    ("docs/architecture.md", "the layers of the code; where a new setting, backend or policy goes"),
)


class OneLineParser(argparse.ArgumentParser):
    """The parser of runalways and of each of its commands: every error is one line."""

    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block: cron mails and logs stay readable.

        argparse quotes the arguments it refuses as given: a newline or a terminal escape
        sequence in one is shown escaped, so that the line stays one line and says what it was.
        """
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"{self.prog}: {shown} (see '{self.prog} --help')\n")


def add_setting(
    command: argparse._ActionsContainer,
    option: str,
    metavar: str,
    parse: ValueParser | None,
    about: str,
    dest: str | None = None,
) -> None:
    """Add an option that takes a value to ``command`` (a parser or a group of exclusive options).

    ``parse`` is the setting's value parser, called with the option's name so that its
    error names what the user typed; None takes the text as it is.
    """
    converter = str if parse is None else _checked(parse, option)
    if dest is None:
        command.add_argument(option, type=converter, metavar=metavar, help=about)
    else:
        command.add_argument(option, type=converter, metavar=metavar, help=about, dest=dest)


def _checked(parse: ValueParser, option: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text, option)
        except SettingError as error:
            # argparse prints an ArgumentTypeError's text as it is, after the option's name.
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _exit_statuses(command: str) -> str:
    """The ``exit status:`` section of a command's --help, as a manual page has one."""
    rows = EXIT_STATUSES[command]
    width = max(len(status) for status, _ in rows)
    return "exit status:\n" + "\n".join(f"  {status.ljust(width)}  {meaning}" for status, meaning in rows)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="runalways",
        description="Make sure exactly one copy of a job runs.",
        epilog="Settings also come from RUNALWAYS_* environment variables (see the README).\n"
        "Each command's --help lists its exit statuses.\n\nRead on, in the project's docs/:\n"
        + "\n".join(f"  {path:<22} {about}" for path, about in DOCS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"runalways {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    commands.required = True

    run = _add_command(
        commands,
        "run",
        "run COMMAND unless another copy of it holds the lock",
        "Run COMMAND holding a lock. The default lock is the resolved command and its arguments.\n\n"
        "When another copy holds the lock, the policy (the option typed, else RUNALWAYS_POLICY):\n"
        "  always     (the default) exit 0 at once, without a word\n"
        "  --alone    exit 1: A copy of 'COMMAND' is already running (<holder>)\n"
        "  --queue    wait as the one pending run, then run, exit status the command's;\n"
        "             a start that finds one already waiting is merged into it: exit 0, no word\n"
        "  --replace  stop the running copy (SIGTERM to its process group, SIGKILL after\n"
        "             --kill-after), wait for the lock, run; a line says so. A copy of another\n"
        "             user or on another host: one line, exit 2",
    )
    policies = run.add_mutually_exclusive_group()
    policies.add_argument("--alone", action="store_true", help="exit 1 with a message when another copy runs")
    policies.add_argument(
        "--queue",
        action="store_true",
        help="wait as the one pending run, then run; exit 0 if a pending run already waits",
    )
    policies.add_argument(
        "--replace",
        action="store_true",
        help="stop the running copy (SIGTERM, SIGKILL after --kill-after) and run in its place",
    )
    _add_settings(run, "run")
    _add_target(run, "run")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")

    status = _add_command(
        commands,
        "status",
        "say whether a copy holds the lock (exit 0) or not (exit 3)",
        "Show whether a copy holds the lock, its pid, user and start time. Never takes the lock.",
    )
    status.add_argument("script", nargs="?", metavar="SCRIPT", help="the guarded script")
    status.add_argument("--json", action="store_true", help="one JSON object, for monitoring")
    _add_settings(status, "status")
    _add_target(status, "status")

    listing = _add_command(
        commands,
        "list",
        "list the locks runalways holds on this machine (root: of every user)",
        "List every lock runalways holds on this machine, however it was taken (import guard, "
        "runalways run, the API), oldest first. Each entry is checked against the lock itself: a holder that "
        "is gone never appears. Root sees the locks of every user, others their own.",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object a line, for scripts")
    _add_settings(listing, "list")

    backends = _add_command(
        commands,
        "backends",
        "list the backends and what their locks survive",
        "List every backend: whether it works here, how it locks, and what its lock survives.",
    )
    backends.add_argument("--json", action="store_true", help="print the declared capabilities as JSON, for scripts")

    doctor = _add_command(
        commands,
        "doctor",
        "check that the job's lock really excludes a second process here",
        "Check, for the lock a job would use, that a second process is really refused it (with each "
        "--backend given, or the configured one), the file system under the lock file and its mount "
        "options, whether flock and POSIX locks interlock there, the owners and modes of the lock "
        "directory and the script, and for a cluster backend its server. Never disturbs a running job. "
        "One line a finding: ok, warning, or problem (with what to do).",
    )
    doctor.add_argument("script", nargs="?", metavar="SCRIPT", help="the guarded script")
    doctor.add_argument("--json", action="store_true", help="a JSON list of findings, for scripts")
    doctor.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        dest="backend",
        help="check this backend (repeatable; default: the configured one)",
    )
    _add_target(doctor, "status")

    completion = _add_command(
        commands,
        "completion",
        "print a shell completion script (bash or zsh)",
        "Print a script that completes runalways's commands, options and backends. "
        "bash: source <(runalways completion bash); "
        "zsh: runalways completion zsh > ~/.zfunc/_runalways (a directory in $fpath).",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")
    return parser


def _add_command(
    commands: argparse._SubParsersAction[OneLineParser], name: str, summary: str, description: str
) -> OneLineParser:
    """A command whose --help ends with its exit statuses, laid out as written."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=_exit_statuses(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_settings(command: OneLineParser, name: str) -> None:
    """The options of the settings that the table (runalways._settings) gives the command ``name``.

    Each stores its value under the setting's own name, as :func:`given_settings` hands it on.
    """
    waiting = None
    for setting in SETTINGS:
        if name not in setting.commands or setting.option is None:
            continue
        option, metavar, about = setting.option
        if not metavar:  # a switch: on when given
            command.add_argument(option, action="store_true", dest=setting.attribute, help=about)
            continue
        where: argparse._ActionsContainer = command
        if setting.attribute in ("retry", "wait"):  # one wait, in two forms: either, not both
            waiting = waiting or command.add_mutually_exclusive_group()
            where = waiting
        parse = None if setting.parse is parse_text else setting.parse
        add_setting(where, option, metavar, parse, about, dest=setting.attribute)


def given_settings(arguments: argparse.Namespace, name: str) -> dict[str, object]:
    """The settings typed on the command line of the command ``name``; None: not typed."""
    return {
        setting.attribute: getattr(arguments, setting.attribute) or None
        if setting.option is not None and not setting.option[1]
        else getattr(arguments, setting.attribute)
        for setting in SETTINGS
        if name in setting.commands
    }


def _add_target(command: argparse.ArgumentParser, name: str) -> None:
    """``--lock PATH`` or ``--name NAME``: which lock, rather than how it is taken.

    ``run`` fills in a name's fields from its command; ``status`` is told the name the job made.
    """
    target = command.add_mutually_exclusive_group()
    add_setting(target, "--lock", "PATH", None, "lock this file (created if missing)")
    add_setting(
        target,
        "--name",
        "NAME",
        None,
        "lock a file of this name in the private lock directory (the same name on every host with a cluster "
        "backend); {1}..{9}, {args} and {script} take the command's arguments and file name, {{ and }} a brace: "
        "--name 'backup-{1}'"
        if name == "run"
        else "the name of the lock, as the job made it (backup-db1 for --name 'backup-{1}' -- backup.sh db1)",
    )
