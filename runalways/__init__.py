"""runalways: exactly one copy of a script running, on one machine or across a fleet.

Make ``import runalways`` the first line of a script that cron starts every minute::

    #!/usr/bin/env python3
    import runalways
    ...  # the job

The first copy locks the script's own file, says ``'<script>' has been started at
<epoch>`` on stderr and runs on, holding the lock until it exits, however it exits.
Every later copy finds the lock held and exits 0 at once, silently. ``import
runalways.alone`` exits 1 with a message instead. See the README for the settings,
``runalways.api`` for the explicit API and ``runalways --help`` for the command line.

Only the main script's own ``import runalways`` guards anything; importing runalways
from a library, a test or a submodule import (``import runalways.api``) does not.
"""

import sys as _sys

from runalways._policy import ALWAYS as _ALWAYS
from runalways._policy import guard_import as _guard_import

__version__ = "0.1.0"

_guard_import(_ALWAYS, "runalways", _sys._getframe())
