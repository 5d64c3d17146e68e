"""Who imported runalways, and which file is the main script.

Only the main script is guarded. ``import runalways`` guards when, and only when, the
import statement that loads it is a plain ``import runalways`` (``as`` allowed) executed
by the code of the ``__main__`` module. Everything else guards nothing:

* a library or a test module importing runalways (its ``__name__`` is not ``__main__``);
* ``import runalways.api`` or ``from runalways import api`` (the statement names a
  submodule or imports names from the package);
* multiprocessing children under ``spawn`` and ``forkserver`` (and the forkserver
  process itself), which re-run the main script as ``__mp_main__``;
* the ``runalways`` console script and ``python -m runalways``.

The statement is read from the importing frame: the instruction it is executing is the
IMPORT_NAME of the statement, whose operand names the module and whose preceding
constant is the ``from`` list.
"""

from __future__ import annotations

import os
import sys

from runalways.backends.base import Target
from runalways.errors import NoScriptError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, Dict, Optional, Tuple

    Statement = Tuple[str, Optional[Tuple[str, ...]]]


def importer(frame: FrameType) -> FrameType | None:
    """The frame whose import statement is running the module of ``frame``."""
    caller = frame.f_back
    while caller is not None and caller.f_code.co_filename.startswith("<frozen importlib"):
        caller = caller.f_back
    return caller


#: (IMPORT_NAME, LOAD_CONST, EXTENDED_ARG) of the CPython versions whose layout is known.
_OPCODES = {
    (3, 9): (108, 100, 144),
    (3, 10): (108, 100, 144),
    (3, 11): (108, 100, 144),
    (3, 12): (108, 100, 144),
    (3, 13): (75, 83, 71),
}


def import_statement(frame: FrameType) -> Statement | None:
    """``(module name, from-list)`` of the import statement ``frame`` is executing."""
    code = frame.f_code
    at = frame.f_lasti
    raw = code.co_code
    # Known versions: IMPORT_NAME <name index> right after LOAD_CONST <from-list>, both
    # operands below 256 (no EXTENDED_ARG). Anything else is decoded with dis: slower,
    # but never needed for an ordinary script on a known version.
    import_name, load_const, extended_arg = _OPCODES.get(sys.version_info[:2], (-1, -1, -1))
    if at >= 2 and raw[at] == import_name and raw[at - 2] == load_const and (at < 4 or raw[at - 4] != extended_arg):
        return code.co_names[raw[at + 1]], code.co_consts[raw[at - 1]]
    return _decoded_statement(frame)


def _decoded_statement(frame: FrameType) -> Statement | None:
    import dis

    previous = None
    for instruction in dis.get_instructions(frame.f_code):
        if instruction.offset == frame.f_lasti:
            if instruction.opname != "IMPORT_NAME":
                return None
            fromlist = previous.argval if previous is not None and previous.opname.startswith("LOAD_CONST") else None
            return instruction.argval, fromlist
        if instruction.opname != "EXTENDED_ARG":
            previous = instruction
    return None


def main_importer(frame: FrameType, wanted: str) -> dict[str, Any] | None:
    """The main script's globals if ``frame`` (a module being imported) was imported by
    ``import <wanted>`` in the main script, else None."""
    caller = importer(frame)
    if caller is None or caller.f_globals.get("__name__") != "__main__":
        return None
    statement = import_statement(caller)
    if statement is None:
        return None
    name, fromlist = statement
    if "." not in wanted:  # the package itself: only a plain ``import runalways [as x]``
        return caller.f_globals if name == wanted and fromlist is None else None
    package, _, submodule = wanted.rpartition(".")
    if name == wanted or (name == package and fromlist is not None and submodule in fromlist):
        return caller.f_globals
    return None


def interactive() -> bool:
    """A REPL, ``python -i``, IPython or Jupyter: raise there instead of exiting."""
    import builtins

    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or hasattr(builtins, "__IPYTHON__")


def script_target(main_globals: Dict[str, Any]) -> Target:
    """The file that stands for the main script: what Sys::RunAlways's DATA handle was.

    The script's own file (``python script.py``, ``python ./link.py``, ``python -m
    pkg.mod``), the archive of a zipapp, the executable of a frozen application.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if getattr(sys, "frozen", False):
        path: str | None = sys.executable
    else:
        path = getattr(main_globals.get("__loader__"), "archive", None) or main_globals.get("__file__")
    if not path or path.startswith("<"):  # "<stdin>", "<string>": code with no file behind it
        raise NoScriptError(no_script_message(argv0))
    return Target(path, display=argv0 or path, name=os.path.basename(path))


def no_script_message(argv0: str) -> str:
    if argv0 == "-c":
        how = "Python was given the code with -c"
    elif argv0 in ("-", ""):
        how = "Python read the code from standard input or an interactive prompt"
    else:
        how = "the main module has no file (an embedded interpreter?)"
    return (
        f"no script file to lock: {how}; save the code in a file and run that file, "
        "or guard a command with 'runalways run -- COMMAND'"
    )
