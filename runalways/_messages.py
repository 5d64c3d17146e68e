"""The one way runalways says something: a line on stderr, flushed at once.

Flushed, because the next thing may be an exit, an exec or a kill, and cron mails
what reached stderr. ``fail`` adds the ``runalways:`` prefix and exits: every error of
runalways ends as one line and a status, never a traceback.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(message: str, status: int = 2) -> "NoReturn":
    """``runalways: <message>`` on stderr, then exit with ``status``."""
    say(f"runalways: {message}")
    raise SystemExit(status)
