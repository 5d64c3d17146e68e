"""Which lock ``run`` and ``status`` mean: ``--lock PATH``, ``--name NAME``, or the lock a SCRIPT takes.

Both commands must name the same lock for the same words, or ``status`` would look in
another place than the copy ``run`` started; so both ask this one function.
"""

from __future__ import annotations

import os

from runalways import _policy
from runalways._settings import Settings
from runalways._values import Target
from runalways.errors import SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def lock_target(arguments: argparse.Namespace, chosen: Settings) -> Target:
    """The lock ``run`` would take for the same words.

    ``status`` starts no job, so it knows no arguments: ``--name`` is the lock's name as the
    job made it (``backup-db1``, not ``backup-{1}``), and RUNALWAYS_NAME may use ``{script}``
    alone; a field it cannot fill in is one line and exit 2, never a look in the wrong place.
    """
    from runalways._names import Job

    named = _policy.named_target(
        chosen,
        arguments.lock or None,
        arguments.name or None,
        path_given_as="--lock",
        name_given_as="--name",
        job=Job(None, None),
    )
    if named is not None:
        return named
    script = arguments.script
    if not os.path.isfile(script):
        raise SettingError(f"{script!r} is not a file; give the script a guarded copy runs from")
    # The lock the script takes under the same settings (RUNALWAYS_NAME, RUNALWAYS_LOCK, RUNALWAYS_IDENTITY).
    target = Target(script, display=script, name=os.path.basename(script))
    return _policy.lock_for_script(target, chosen, Job(None, target.name))
