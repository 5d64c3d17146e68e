"""Unit tests of how the guard recognises the main script's ``import runalways``.

A throw-away package records, from its ``__init__``, what ``main_importer`` says about the
statement that imported it; the statements run as real code of a ``__main__`` module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

import runalways
from runalways import _main_script

PROBE = """
import sys
import runalways
from runalways import _main_script
frame = sys._getframe()
_script_results = sys.modules["_probe_results"]
_script_results.plain = _main_script.main_importer(frame, "probe", runalways) is not None
_script_results.statement = _main_script.import_statement(runalways._importer(frame), runalways)
"""

SUBMODULE = """
import sys
import runalways
from runalways import _main_script
sys.modules["_probe_results"].sub = _main_script.main_importer(sys._getframe(), "probe.sub", runalways) is not None
"""


class Results:
    plain: bool
    sub: bool
    statement: Any


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Results]:
    package = tmp_path / "probe"
    package.mkdir()
    (package / "__init__.py").write_text(PROBE)
    (package / "sub.py").write_text(SUBMODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    results = Results()
    results.sub = False
    monkeypatch.setitem(sys.modules, "_probe_results", results)
    yield results
    for name in ("probe", "probe.sub"):
        sys.modules.pop(name, None)


def run_as_main(source: str, name: str = "__main__") -> None:
    exec(compile(textwrap.dedent(source), "<main>", "exec"), {"__name__": name})


STATEMENTS = [
    ("import probe", True, False, ("probe", None)),
    ("import probe as p", True, False, ("probe", None)),
    ("def f():\n    import probe\nf()", True, False, ("probe", None)),
    ("import probe.sub", False, True, ("probe.sub", None)),
    ("from probe import sub", False, True, ("probe", ("sub",))),
    ("from probe.sub import sys", False, True, ("probe.sub", ("sys",))),
    ("from probe import *", False, False, ("probe", ("*",))),
]


@pytest.fixture(params=["table", "probed"])
def fast_path_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statement is read by the fast path, from the table or, as on a version the table
    does not know, from the probe; decoding with dis would fail the test."""
    if request.param == "probed":
        monkeypatch.setattr(runalways, "_LAYOUTS", {})
    monkeypatch.setattr(runalways, "_layout", None)

    def no_dis(frame: object, reader: object) -> None:
        raise AssertionError("an ordinary import statement was decoded with dis, the slow path")

    monkeypatch.setattr(_main_script, "_decoded_statement", no_dis)


@pytest.mark.parametrize(("source", "plain", "sub", "statement"), STATEMENTS)
def test_the_statement_is_read_from_the_importing_frame(
    probe: Results, fast_path_only: None, source: str, plain: bool, sub: bool, statement: object
) -> None:
    run_as_main(source)
    assert (probe.plain, probe.sub, probe.statement) == (plain, sub, statement)


def test_a_module_that_is_not_main_guards_nothing(probe: Results) -> None:
    run_as_main("import probe", name="library")
    assert probe.plain is False


@pytest.mark.parametrize(("source", "plain", "sub", "statement"), STATEMENTS)
def test_unknown_bytecode_layouts_are_decoded_with_dis(
    probe: Results, monkeypatch: pytest.MonkeyPatch, source: str, plain: bool, sub: bool, statement: object
) -> None:
    monkeypatch.setattr(runalways, "_layout", ())  # as on a version whose bytecode the probe cannot read
    run_as_main(source)
    assert (probe.plain, probe.sub, probe.statement) == (plain, sub, statement)


def test_operands_of_256_and_more_are_decoded_with_dis(probe: Results) -> None:
    # 300 names before it: IMPORT_NAME needs an EXTENDED_ARG, which the fast path never misreads.
    names = "\n".join(f"name_{index} = {index}" for index in range(300))
    run_as_main(f"{names}\nfrom probe import sub")
    assert probe.statement == ("probe", ("sub",))


def test_the_layout_table_and_the_probe_agree_with_the_interpreter() -> None:
    """Checked on every version the suite runs on: the table's row (where it has one) and
    the layout the probe learns are the numbers of this interpreter's own opcode module."""
    import opcode

    opmap = opcode.opmap
    numbers = (opmap["IMPORT_NAME"], opmap["LOAD_CONST"], opmap.get("LOAD_SMALL_INT", opmap["LOAD_CONST"]))
    probed = runalways._probed_layout()
    assert probed is not None and probed[:3] == numbers
    load_none = probed[4]  # what loads a from-list of None, where a LOAD_CONST does not
    assert load_none is None or load_none[0] == opmap["LOAD_COMMON_CONSTANT"]
    row = runalways._LAYOUTS.get(sys.version_info[:2])
    assert row is None or row == probed


def test_a_plain_import_runalways_takes_the_fast_path(tmp_path: Path) -> None:
    """Fails on an interpreter whose import statement the guard decodes with dis (several ms a
    start), and if the guard reads the package metadata (importlib.metadata, as slow)."""
    script = tmp_path / "job.py"
    slow = "{'dis', 'opcode', 'importlib.metadata'}"
    script.write_text(f"import runalways\nimport sys\nprint(sorted({slow} & set(sys.modules)))\n")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    outcome = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=60, check=False
    )
    assert (outcome.returncode, outcome.stdout) == (0, "[]\n"), outcome.stderr
    assert "has been started at" in outcome.stderr  # the guard did run


@pytest.mark.parametrize(
    ("argv0", "how"),
    [("-c", "given the code with -c"), ("-", "from standard input"), ("", "from standard input"), ("x", "no file")],
)
def test_no_script_messages_say_why_and_what_to_do(argv0: str, how: str) -> None:
    message = _main_script.no_script_message(argv0)
    assert how in message and "save the code in a file and run that file" in message


def test_the_main_script_file_is_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["./job.py"])
    target = _main_script.main_script_target({"__file__": "/srv/jobs/job.py"})
    assert (target.path, target.display, target.name) == ("/srv/jobs/job.py", "./job.py", "job.py")


def test_a_zipapp_locks_its_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZipLoader:
        archive = "/srv/app.pyz"

    monkeypatch.setattr(sys, "argv", ["app.pyz"])
    target = _main_script.main_script_target({"__file__": "/srv/app.pyz/__main__.py", "__loader__": ZipLoader()})
    assert (target.path, target.name) == ("/srv/app.pyz", "app.pyz")


def test_a_frozen_application_locks_its_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert _main_script.main_script_target({}).path == sys.executable


@pytest.mark.parametrize("file", [None, "<stdin>", "<string>"])
def test_code_without_a_file_has_no_target(file: str | None) -> None:
    from runalways.errors import NoScriptError

    with pytest.raises(NoScriptError, match="no script file to lock"):
        _main_script.main_script_target({"__file__": file} if file else {})
