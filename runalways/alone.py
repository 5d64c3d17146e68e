"""``import runalways.alone``: the Sys::RunAlone policy.

As ``import runalways``, but when another copy holds the lock this copy says
``A copy of '<script>' is already running`` on stderr and exits 1 (silent with
RUNALWAYS_SILENT=1; RUNALWAYS_RETRY=N[,S] waits for the other copy first).
``from runalways import alone`` works the same way.
"""

import sys as _sys

import runalways as _reader  # loaded already, as this module's package: its import-statement reader
from runalways._policy import ALONE as _ALONE
from runalways._policy import guard_import as _guard_import

_guard_import(_ALONE, "runalways.alone", _sys._getframe(), _reader)
