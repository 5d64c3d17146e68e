"""How the process ended, for a guard that holds its lock until then: its exit status."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


def when_process_ends(callback: Callable[[int], None]) -> None:
    """Call ``callback(status)`` once when this process ends, before its locks are released."""
    raise NotImplementedError
