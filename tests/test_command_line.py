"""Unit tests of the command line's pieces: the version's one source, the plain words of
``runalways backends``, and the completion scripts' view of the parser."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

import runalways
from runalways._values import Capabilities
from runalways.backends import names
from runalways.cli import backends as listing
from runalways.cli import completion
from runalways.cli.parser import build_parser

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def test_the_version_has_one_source() -> None:
    text = PYPROJECT.read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^dynamic = \["version"\]$', project, re.MULTILINE), "pyproject.toml must not repeat it"
    assert not re.search(r"^version\s*=", project, re.MULTILINE)
    assert re.search(r'^\[tool\.hatch\.version\]\npath = "runalways/__init__\.py"$', text, re.MULTILINE)
    assert version("runalways") == runalways.__version__  # the installed metadata read it


def capabilities(**changed: object) -> Capabilities:
    declared: dict[str, object] = {
        "identity": "inode",
        "kept_by_fork_child": True,
        "kept_across_exec": False,
        "kept_when_replaced": False,
        "kept_when_file_closed": True,
        "needs_write_access": False,
        "across_hosts": False,
        "other_users_can_hold": True,
        "crash_release_seconds": 0.0,
    }
    return Capabilities(**{**declared, **changed})  # type: ignore[arg-type]


def test_the_plain_words_come_from_the_declaration() -> None:
    assert listing.survives(capabilities()) == [
        "survives fork",
        "lost on exec",
        "lost on replace",
        "free at once when the holder dies",
        "one host",
        "anyone who can read the script can hold it",
    ]
    flipped = listing.survives(
        capabilities(
            kept_by_fork_child=False,
            kept_across_exec=True,
            kept_when_replaced=True,
            kept_when_file_closed=False,
            needs_write_access=True,
            across_hosts=True,
            other_users_can_hold=False,
            crash_release_seconds=2.5,
        )
    )
    assert flipped == [
        "lost on fork",
        "survives exec",
        "survives replace",
        "lost when the holder closes the script",
        "free within 2.5 s of a crash",
        "one copy across hosts",
        "needs write access to the script",
        "only the user running it can hold it",
    ]
    named = listing.survives(capabilities(identity="name"))
    assert named[-1] == "anyone with the lock's name can hold it"


@pytest.mark.parametrize(
    ("text", "plain"),
    [("``fcntl`` backend", "fcntl backend"), (":func:`os.fork` and `x`", "os.fork and x"), ("no markup", "no markup")],
)
def test_markup_is_taken_out(text: str, plain: str) -> None:
    assert listing.plain(text) == plain


def test_the_table_fits_a_narrow_terminal_and_never_breaks_a_phrase() -> None:
    table = listing.as_table(80)
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "survives fork" in table and "anyone who can read the script can hold it" in table


def test_completion_sees_every_command_and_option_of_the_parser() -> None:
    parser = build_parser()
    seen = {command.name: command for command in completion.commands(parser)}
    assert set(seen) == {"", "run", "status", "list", "backends", "completion", "doctor"}
    assert {"--version", "-V"} <= set(seen[""].option_words())
    run_options = {option: value for strings, value, *_ in seen["run"].options for option in strings}
    assert run_options["--backend"] == names() and run_options["--lock"] == completion.FILES
    assert run_options["--alone"] is None  # a flag takes no value
    assert seen["run"].positional == completion.COMMAND and "--" in seen["run"].option_words()
    assert seen["status"].positional == completion.FILES
    assert seen["completion"].positional == ["bash", "zsh"]
