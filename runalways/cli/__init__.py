"""The ``runalways`` command: guard any command, show who holds a lock, list backends.

    runalways run [--alone | --queue | --replace] [--wait S | --retry N[,S]] [--silent] [--backend NAME]
                  [--timeout DURATION [--kill-after DURATION]] [--stale-after DURATION]
                  [--lock PATH | --name NAME] -- COMMAND [ARGS...]
    runalways status [--json] [--stale-after DURATION] [--backend NAME] (SCRIPT | --lock PATH | --name NAME)
    runalways list [--json] [--stale-after DURATION]
    runalways backends [--json]
    runalways doctor [--json] [--backend NAME]... [SCRIPT | --lock PATH | --name NAME]
    runalways completion (bash | zsh)
    runalways --version

The exit statuses of each command are in :data:`runalways.cli.parser.EXIT_STATUSES`,
which its ``--help`` prints and spec/SPEC.md's table of R11 repeats: ``run`` exits with
the command's status (124 when its deadline passed, 126 when it cannot run, 127 when it
is not found, as timeout(1) and shells do), and 4 when a stale copy holds the lock;
``status`` 0, 3 (as ``systemctl is-active``) or 4 (stale); every error of runalways
itself prints one line and exits 2.

This module parses, hands the arguments to the command's module, and is the one place
that turns a failure into that one line and its status.
"""

from __future__ import annotations

import os
import sys

from runalways import _policy
from runalways._messages import fail
from runalways.cli import run, status
from runalways.cli.parser import READER_GONE, build_parser
from runalways.errors import RunAlwaysError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Inside: from Python 3.14 argparse imports a module (_colorize) as it builds the
        # parser, which a full descriptor table refuses like any other file.
        parser = build_parser()
        return _command(parser, parser.parse_args(argv))
    except RunAlwaysError as error:
        fail(str(error))
    except BrokenPipeError:
        # The reader went away (`runalways backends | head`): no traceback, and no second
        # error when Python flushes stdout at exit. Exit as a program killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return READER_GONE
    except OSError as error:
        # The system refused something runalways needed (a descriptor, memory, a module
        # file to import): one line, as for every other failure.
        fail(_policy.system_failure(error))


def _command(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    if arguments.command == "run":
        return run.run(arguments)
    if arguments.command == "status":
        return status.status(arguments)
    if arguments.command == "list":
        return status.list_locks(arguments)
    # Loaded only when asked for: `run` and `status` are what cron and monitors start.
    if arguments.command == "doctor":
        from runalways.cli.doctor import doctor

        return doctor(arguments)
    if arguments.command == "completion":
        from runalways.cli.completion import script

        sys.stdout.write(script(arguments.shell, parser))
        return 0
    from runalways.cli.backends import as_json, as_table

    print(as_json() if arguments.json else as_table())
    return 0
