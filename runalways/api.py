"""The explicit API: guard at run time, or hold a named lock for a block.

Importing this module guards nothing. Two entry points:

``guard()`` applies a policy on demand, like Sys::RunAlone::Flexible's ``lock()``::

    import runalways.api

    def main() -> None:
        options = parse_arguments()
        if options.dry_run:
            return
        runalways.api.guard()            # exits 0 here if another copy runs
        run_the_job()

``lock()`` holds a lock for the length of a ``with`` block and raises
:class:`~runalways.errors.AlreadyRunning` (with what is known of the holder) when
another process has it::

    with runalways.api.lock(name="nightly-report", wait=30):
        build_the_report()

Both take ``backend=``, ``silent=`` (guard only), ``retry=`` (``N`` or ``"N,S"``) or
``wait=`` (seconds, ``float("inf")`` for ever), and a target: ``path=`` (a lock file,
created if missing) or ``name=`` (a lock file of that name in the private lock
directory); without one, the main script's file. As for ``import runalways``, the
RUNALWAYS_* environment variables override these keywords, so an operator can change a
deployed script without editing it. Errors raise :class:`~runalways.errors.RunAlwaysError`.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from runalways import _policy, _script
from runalways.backends.base import Backend, Holder, Target
from runalways.errors import AlreadyRunning, RunAlwaysError, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator

    from runalways._settings import RetryValue

__all__ = ["AlreadyRunning", "Backend", "Holder", "RunAlwaysError", "guard", "lock", "target"]


def target(path: str | None = None, name: str | None = None) -> Target:
    """The lock target: a lock file at ``path``, a named lock, or the main script."""
    if path is not None and name is not None:
        raise SettingError("give path or name, not both")
    if path is not None:
        return Target(path, display=path, name=os.path.basename(path), create=True)
    if name is not None:
        if not name.strip():
            raise SettingError("name='' is empty; give the lock a name")
        return Target(None, display=name, name=name)
    main = sys.modules.get("__main__")
    return _script.script_target(vars(main) if main is not None else {})


def guard(
    policy: str = _policy.ALWAYS,
    *,
    backend: str | None = None,
    silent: bool | None = None,
    retry: RetryValue = None,
    wait: float | None = None,
    path: str | None = None,
    name: str | None = None,
) -> Backend | None:
    """Apply ``policy`` ("always" or "alone") now; return the backend holding the lock.

    Another copy holds it: exit 0 ("always") or print ``A copy of '<script>' is already
    running`` and exit 1 ("alone"). Returns None when RUNALWAYS_SKIP says to skip.
    Calling it again for a lock this process holds returns the same backend.
    """
    if policy not in (_policy.ALWAYS, _policy.ALONE):
        raise SettingError(f"policy={policy!r} is not a policy; use 'always' or 'alone'")
    chosen = _policy.options(os.environ, backend=backend, silent=silent, retry=retry, wait=wait)
    wanted = target(path, name)
    for holding in _policy.held:
        if isinstance(holding, chosen.backend) and _same_target(holding.target, wanted):
            return holding
    if _policy.skipped(chosen, wanted.display):
        return None
    return _policy.enforce(policy, wanted, chosen)


def _same_target(one: Target, other: Target) -> bool:
    if one.path is not None and other.path is not None:
        return os.path.realpath(one.path) == os.path.realpath(other.path)
    return one.path is None and other.path is None and one.name == other.name


@contextmanager
def lock(
    name: str | None = None,
    *,
    path: str | None = None,
    backend: str | None = None,
    retry: RetryValue = None,
    wait: float | None = None,
) -> Iterator[Backend]:
    """Hold a lock for the ``with`` block; raise AlreadyRunning if another process has it."""
    chosen = _policy.options(os.environ, backend=backend, retry=retry, wait=wait)
    wanted = target(path, name)
    held = chosen.backend(wanted)
    if not held.take(chosen.timeout):
        holder = held.holder()
        about = f" ({holder.describe()})" if holder is not None else ""
        raise AlreadyRunning(f"the lock for '{wanted.display}' is held by another process{about}", holder)
    try:
        yield held
    finally:
        held.release()
