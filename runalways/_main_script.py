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

Two exceptions keep that rule from failing silently. When something loads runalways
before the main script's own plain ``import runalways`` line (a library imported first),
that line would load nothing; the guard runs at the first load instead. And a packaged
tool's ``__main__`` is a generated launcher: the plain ``import runalways`` of the module
it imports its entry point from guards the tool (``_tool_launched``).

The import statement is read from the importing frame's bytecode by the reader in
``runalways/__init__.py``, the one module a plain start loads, which hands itself in as
``reader``: this module never imports the package back. What that reader cannot read is
decoded with dis, at several milliseconds a start, so never for an ordinary script.
"""

import os
import sys

from runalways._values import Target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, FrameType
    from typing import Any, Dict, Iterator, Optional, Protocol, Tuple

    Statement = Tuple[str, Optional[Tuple[str, ...]]]
    Layout = Tuple[int, int, int, int, Optional[Tuple[int, int]]]

    class Reader(Protocol):
        """The import-statement reader of ``runalways/__init__.py``: the package module itself."""

        def _importer(self, frame: FrameType) -> "FrameType | None": ...

        def _read_import(self, frame: FrameType) -> "Statement | None": ...

        def _read_statement(self, code: CodeType, at: int, layout: Layout) -> "Statement | None": ...

        def _this_layout(self) -> "Layout | Tuple[()]": ...


def import_statement(frame: "FrameType", reader: "Reader") -> "Statement | None":
    """``(module name, from-list)`` of the import statement ``frame`` is executing.

    Read as the plain start reads it; anything that reader cannot read (operands of 256
    and more, an unknown layout) is decoded with dis: correct, but importing dis alone
    costs several milliseconds, so never for an ordinary script.
    """
    return reader._read_import(frame) or _decoded_statement(frame, reader)


def _decoded_statement(frame: "FrameType", reader: "Reader") -> "Statement | None":
    for start, offset, statement in _import_statements(frame.f_code, reader):
        if frame.f_lasti in (start, offset):
            return statement
    return None


def _import_statements(code: "CodeType", reader: "Reader") -> "list[tuple[int, int, Statement]]":
    """``(start, offset, (module name, from-list))`` of every import statement in ``code``.

    ``start`` is where the instruction's EXTENDED_ARG prefixes begin: Python 3.9 and 3.10
    point ``f_lasti`` there, later versions at the IMPORT_NAME itself (``offset``). Read
    as the plain start reads one statement when every statement in ``code`` is laid out
    so (``import runalways.alone`` would otherwise cost every start of its script the
    milliseconds of importing dis), and decoded with dis when one is not.
    """
    layout = reader._this_layout()
    if layout:
        raw, found = code.co_code, []
        # Instructions (and the caches after some, opcode 0) are two bytes from 3.6 on,
        # so every even offset holds an opcode: no operand is taken for an IMPORT_NAME.
        for offset in range(0, len(raw), 2):
            if raw[offset] == layout[0]:
                statement = reader._read_statement(code, offset, layout)
                if statement is None:
                    break
                found.append((offset, offset, statement))
        else:
            return found
    return list(_decoded_import_statements(code))


def _decoded_import_statements(code: "CodeType") -> "Iterator[tuple[int, int, Statement]]":
    import dis

    fromlist = None  # the constant loaded just before each IMPORT_NAME
    start = None  # the first EXTENDED_ARG before the current instruction
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME":
            yield (instruction.offset if start is None else start), instruction.offset, (instruction.argval, fromlist)
        if instruction.opname == "EXTENDED_ARG":
            start = instruction.offset if start is None else start
        else:
            start = None
            fromlist = instruction.argval if instruction.opname.startswith("LOAD_CONST") else None


def _imported_later(frame: "FrameType", wanted: str, reader: "Reader") -> "dict[str, Any] | None":
    """The main script's globals if its code, further on, has a plain ``import <wanted>``.

    Something loaded runalways before that line did (a library imported first, or the
    script's own ``import runalways.api``), so the line itself would load nothing and
    guard nothing, silently. The guard runs now instead: the script asked for it.
    """
    main = None
    outer: FrameType | None = frame
    while outer is not None:  # the outermost module-level frame of __main__
        if outer.f_globals.get("__name__") == "__main__" and outer.f_code.co_name == "<module>":
            main = outer
        outer = outer.f_back
    if main is None or wanted not in main.f_code.co_names:  # the common case: no dis needed
        return None
    for _, offset, statement in _import_statements(main.f_code, reader):
        if offset > main.f_lasti and statement == (wanted, None):
            return main.f_globals
    return None


def main_importer(frame: "FrameType", wanted: str, reader: "Reader") -> "dict[str, Any] | None":
    """The main script's globals if ``frame`` (a module being imported) was imported by
    ``import <wanted>`` in the main script, else None."""
    caller = reader._importer(frame)
    if caller is None:
        return None
    if "." not in wanted:  # the package itself: only a plain ``import runalways [as x]``
        if caller.f_globals.get("__name__") == "__main__":
            if import_statement(caller, reader) == (wanted, None):
                return caller.f_globals
            return _imported_later(caller, wanted, reader)
        return _imported_later(caller, wanted, reader) or _tool_launched(caller, wanted, reader)
    if caller.f_globals.get("__name__") != "__main__":
        return None
    statement = import_statement(caller, reader)
    if statement is None:
        return None
    name, fromlist = statement
    package, _, submodule = wanted.rpartition(".")
    if name == wanted or (name == package and fromlist is not None and submodule in fromlist):
        return caller.f_globals
    return None


def _tool_launched(caller: "FrameType", wanted: str, reader: "Reader") -> "dict[str, Any] | None":
    """The launcher's globals if ``caller`` runs for a tool's entry-point module that imports runalways plainly.

    A pip-installed console script runs a generated launcher as ``__main__``::

        from mytool.cli import main
        if __name__ == "__main__":
            sys.exit(main())

    so the ``import runalways`` that the tool's author put first in ``mytool/cli.py`` runs
    in a module that is not ``__main__``, and would guard nothing. It guards the tool
    (the launcher, the file cron runs) when it is a module-level statement of the module
    the ``__main__`` module is importing at that moment, and that ``__main__`` is the
    tool's launcher: a console or GUI script whose installed entry point names that
    module, or the ``__main__.py`` of that module's package (``python -m mytool``). As for
    the main script (R4.6), when something that module imported first loaded runalways,
    the guard runs then, on behalf of its own ``import runalways`` still to come. A
    library the tool imports, or one that an ordinary script imports, guards nothing.
    """
    entry, launcher = caller, reader._importer(caller)
    while launcher is not None and launcher.f_globals.get("__name__") != "__main__":
        entry, launcher = launcher, reader._importer(launcher)
    if launcher is None or entry.f_code.co_name != "<module>" or launcher.f_code.co_name != "<module>":
        return None
    module = str(entry.f_globals.get("__name__"))
    statement = import_statement(launcher, reader)
    if statement is None or statement[0] != module:
        return None
    if entry is caller and import_statement(caller, reader) == (wanted, None):
        pass  # the entry point's own plain ``import runalways``
    elif wanted not in entry.f_code.co_names or not any(
        offset > entry.f_lasti and found == (wanted, None)
        for _, offset, found in _import_statements(entry.f_code, reader)
    ):
        return None
    spec = launcher.f_globals.get("__spec__")
    if spec is not None and spec.name.endswith(".__main__"):  # python -m package
        package = spec.name[: -len(".__main__")]
        return launcher.f_globals if module == package or module.startswith(package + ".") else None
    return launcher.f_globals if _console_script_of(module, launcher.f_globals) else None


def _console_script_of(module: str, launcher_globals: "dict[str, Any]") -> bool:
    """Whether an installed console or GUI script named as the launcher has its entry point in ``module``."""
    import re

    from runalways.backends import entry_points

    launcher = os.path.basename(str(launcher_globals.get("__file__") or ""))
    name = re.sub(r"(-script\.pyw?|\.exe)$", "", launcher)
    for group in ("console_scripts", "gui_scripts"):
        for entry in entry_points(group):
            if entry.name == name and entry.value.partition(":")[0].strip() == module:
                return True
    return False


def interactive() -> bool:
    """A REPL, ``python -i``, IPython or Jupyter: raise there instead of exiting."""
    import builtins

    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or hasattr(builtins, "__IPYTHON__")


def main_script_target(main_globals: "Dict[str, Any]") -> "Target":
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
        from runalways.errors import NoScriptError

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
