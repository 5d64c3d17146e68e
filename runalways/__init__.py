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

This module is all that a plain start loads: the main script's own ``import
runalways``, no ``RUNALWAYS_*`` setting, the script in a file of its own. Such a start
has nothing to decide, so it is decided here: one flock(2) on the script, as the
default ``fcntl`` backend takes it, then the start line, or exit 0 when another copy
holds the lock. Every other start (a setting given, a lock that fails for any other
reason, an importer this module does not recognise) is handed to ``runalways._policy``,
which decides it from the beginning with the chosen backend. Each further module a
start imports costs it about 0.1 ms, and cron pays for every start.
"""

import sys as _sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, FrameType
    from typing import Dict, List, Optional, Tuple

    Statement = Tuple[str, Optional[Tuple[str, ...]]]
    Layout = Tuple[int, int, int, int, Optional[Tuple[int, int]]]

__version__ = "0.1.0"

# -- Which import statement is running, read from the importing frame -------------------
#
# The instruction the importing frame is executing is the IMPORT_NAME of the statement,
# whose operand names the module and whose preceding constant is the ``from`` list.

#: How CPython compiles an import statement, for the versions whose layout is known:
#: (IMPORT_NAME, the LOAD_CONST of the from-list, the opcode loading the level, how far
#: IMPORT_NAME's operand is shifted left of the name index, and the instruction (opcode,
#: operand) that loads a from-list of None where a LOAD_CONST does not: 3.15's
#: LOAD_COMMON_CONSTANT). tests/test_main_script.py checks the row of the running version
#: against its own ``opcode`` module. Other versions learn it from a compiled probe.
_LAYOUTS: "Dict[Tuple[int, int], Layout]" = {
    (3, 9): (108, 100, 100, 0, None),
    (3, 10): (108, 100, 100, 0, None),
    (3, 11): (108, 100, 100, 0, None),
    (3, 12): (108, 100, 100, 0, None),
    (3, 13): (75, 83, 83, 0, None),
    (3, 14): (73, 82, 94, 0, None),
    (3, 15): (72, 81, 93, 2, (80, 7)),
}

#: The running interpreter's layout once looked up; () when it has none the fast reader reads.
_layout: "Layout | Tuple[()] | None" = None


def _importer(frame: "FrameType") -> "FrameType | None":
    """The frame whose import statement is running the module of ``frame``."""
    caller = frame.f_back
    while caller is not None and caller.f_code.co_filename.startswith("<frozen importlib"):
        caller = caller.f_back
    return caller


def _this_layout() -> "Layout | Tuple[()]":
    global _layout
    if _layout is None:
        _layout = _LAYOUTS.get(_sys.version_info[:2]) or _probed_layout() or ()
    return _layout


def _read_import(frame: "FrameType") -> "Statement | None":
    """``(module name, from-list)`` of the import statement ``frame`` is executing, when
    it is laid out as this interpreter lays out an ordinary one; None otherwise, and then
    only ``dis`` can tell (``_main_script.import_statement``), at several milliseconds a start."""
    layout = _this_layout()
    return _read_statement(frame.f_code, frame.f_lasti, layout) if layout else None


def _read_statement(code: "CodeType", at: int, layout: "Layout") -> "Statement | None":
    """The statement whose IMPORT_NAME is at offset ``at``, if it is laid out as ``layout`` says.

    An EXTENDED_ARG before the from-list's LOAD_CONST or before IMPORT_NAME stands where
    the level or the LOAD_CONST would, so operands of 256 and more never match.
    """
    import_name, load_const, load_level, shift, load_none = layout
    raw = code.co_code
    if at < 4 or raw[at] != import_name or raw[at - 4] != load_level:
        return None
    if raw[at - 2] == load_const:
        fromlist = code.co_consts[raw[at - 1]]
    elif (raw[at - 2], raw[at - 1]) == load_none:
        fromlist = None
    else:
        return None
    return code.co_names[raw[at + 1] >> shift], fromlist


#: Compiled once on a version the table does not know: the layout is read off its bytecode.
_PROBE = "import a\nfrom b import c\n"


def _probed_layout() -> "Layout | None":
    """The layout of this interpreter, learnt from the bytecode of :data:`_PROBE`.

    About 30 microseconds, where importing ``opcode`` for the numbers costs about a
    millisecond and ``dis`` several. Whatever the numbers, the layout is used only if it
    reads both statements of the probe back exactly; if none does, dis decodes.
    From 3.14 the level is loaded by LOAD_SMALL_INT; from 3.15 IMPORT_NAME's operand
    carries flags in its low bits (lazy imports) and None is no longer a LOAD_CONST
    (LOAD_COMMON_CONSTANT): the probe learns all three.
    """
    code = compile(_PROBE, "<runalways probe>", "exec", dont_inherit=True)
    raw = code.co_code
    for at in range(4, len(raw) - 1, 2):
        if raw[at - 1] >= len(code.co_consts) or code.co_consts[raw[at - 1]] != ("c",):
            continue
        # ``import a`` comes first: what stands before its IMPORT_NAME loads a from-list of None.
        plain = next((offset for offset in range(4, at, 2) if raw[offset] == raw[at]), None)
        if plain is None:
            continue
        load_none = None if raw[plain - 2] == raw[at - 2] else (raw[plain - 2], raw[plain - 1])
        # The name "b" has index 1, so IMPORT_NAME's operand is 1 << shift, plus flags below it.
        layout = (raw[at], raw[at - 2], raw[at - 4], max(raw[at + 1].bit_length() - 1, 0), load_none)
        try:
            found = [_read_statement(code, offset, layout) for offset in range(0, len(raw), 2)]
        except IndexError:  # not the layout: an operand that is no index into the names
            continue
        if [statement for statement in found if statement is not None] == [("a", None), ("b", ("c",))]:
            return layout
    return None


# -- The plain start ---------------------------------------------------------------------

#: ``(descriptor, script, how messages name it)`` of the lock a plain start took; the
#: descriptor stays open until the process ends. ``runalways.api`` adopts it as a backend.
_plain_lock: "List[Tuple[int, str, str]]" = []


def _plain_start(frame: "FrameType") -> bool:
    """Run the start if it has nothing to decide; False hands it to the policy module.

    The same system calls and the same words as the policy module with the ``fcntl``
    backend: open the script read-only (O_CLOEXEC), flock(LOCK_EX|LOCK_NB) it, keep the
    descriptor. A failure other than another copy holding the lock closes what was opened
    and hands the start over, so the policy module meets it afresh and explains it.
    """
    import os  # loaded by the interpreter's own start-up: free here

    caller = _importer(frame)
    if caller is None or caller.f_globals.get("__name__") != "__main__" or os.name != "posix":
        return False
    if _read_import(caller) != ("runalways", None) or getattr(_sys, "frozen", False):
        return False
    if any(name.startswith("RUNALWAYS_") for name in os.environ):
        return False
    script = caller.f_globals.get("__file__")
    if not isinstance(script, str) or script.startswith("<") or hasattr(caller.f_globals.get("__loader__"), "archive"):
        return False  # no file, or a zipapp: the policy module knows what to lock or say
    import fcntl

    try:
        descriptor = os.open(script, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: another copy holds it
        os.close(descriptor)
        raise SystemExit(0) from None
    except OSError:
        os.close(descriptor)
        return False
    display = (_sys.argv[0] if _sys.argv else "") or script
    _plain_lock.append((descriptor, script, display))
    import time

    _sys.stderr.write(f"'{display}' has been started at {int(time.time())}\n")
    _sys.stderr.flush()
    return True


if not _plain_start(_sys._getframe()):
    from runalways._policy import ALWAYS as _ALWAYS
    from runalways._policy import guard_import as _guard_import

    # The policy reads import statements with this module's reader, handed in rather
    # than imported: no module of runalways imports the package back.
    _guard_import(_ALWAYS, "runalways", _sys._getframe(), _sys.modules[__name__])
