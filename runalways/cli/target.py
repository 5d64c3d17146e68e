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
    named = _policy.named_target(chosen, arguments.lock or None, arguments.name or None, path_given_as="--lock")
    if named is not None:
        return named
    script = arguments.script
    if not os.path.isfile(script):
        raise SettingError(f"{script!r} is not a file; give the script a guarded copy runs from")
    # The lock the script takes under the same settings (RUNALWAYS_LOCK, RUNALWAYS_IDENTITY).
    return _policy.lock_for_script(Target(script, display=script, name=os.path.basename(script)), chosen)
