"""RUNALWAYS_METRICS: the job's metrics for Prometheus's textfile collector."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways.backends.base import Backend


def update(directory: str, event: str, backend: Backend, fields: dict[str, object]) -> None:
    """Rewrite the job's ``.prom`` file in ``directory`` for ``event``."""
    raise NotImplementedError
