"""RUNALWAYS_PING: the healthchecks ping protocol."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways.backends.base import Backend


def send(url: str, event: str, backend: Backend, fields: dict[str, object], *, on_skip: str) -> None:
    """Ping ``url`` for ``event``."""
    raise NotImplementedError
