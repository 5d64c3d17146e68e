"""What the fuzz tests feed runalways: every setting it knows, and hostile text for each.

The settings are taken from the code, never listed here: the settings table
(``_settings.SETTINGS``) with every variable runalways sets itself, what each registered
backend declares it reads besides (``Backend.variables``), and
the options of every subcommand of the ``runalways`` parser. A setting added to any of
them is fuzzed from then on.
"""

from __future__ import annotations

import argparse
import os

from hypothesis import strategies as st

from runalways import _settings
from runalways.backends import get_class, names
from runalways.cli.parser import build_parser

#: The password every fuzzed RUNALWAYS_URL carries; it must never appear in any output.
PASSWORD = "s3cr3t-Pa55"


def variables() -> tuple[str, ...]:
    """Every RUNALWAYS_* variable some part of runalways reads."""
    found = list(_settings.variables())
    for name in names():
        found += get_class(name).variables
    return tuple(dict.fromkeys(found))


def cli_options() -> dict[str, list[tuple[str, bool]]]:
    """Subcommand -> its options as (option string, takes a value), read from the parser."""
    commands: dict[str, list[tuple[str, bool]]] = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, parser in action.choices.items():
                commands[command] = [
                    (option, option_action.nargs != 0)
                    for option_action in parser._actions
                    for option in option_action.option_strings
                    if option.startswith("--") and option != "--help"
                ]
    return commands


#: Text a setting should never choke on: the documented values' neighbours and worse.
SPECIAL = [
    "",
    " ",
    "0",
    "1",
    "2",
    "-1",
    "255",
    "256",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "1e400",
    "0x10",
    "1_000",
    "3,0",
    "3,-1",
    ",",
    "3,",
    "²",
    "\u0661\u0662",
    "9" * 30,
    "9" * 5000,
    "x" * 20000,
    "/proc/self/mem",
    "/proc/1/root",
    "/dev/null",
    "/dev/full",
    "/dev/zero",
    "/",
    "..",
    "private",
    "path",
    "inode",
    "close",
    "yes",
    "\t\n\r\x0b\x0c",
    "\x1b[31m",
    "\x7f",
    os.fsdecode(b"\xff\xfe"),
    os.fsdecode(b"caf\xe9"),
]

#: Characters of a value: any but NUL, which no environment variable can hold.
_CHARACTERS = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])


def texts() -> st.SearchStrategy[str]:
    """Random text for a setting: special values, numbers, control characters, non-UTF-8 bytes."""
    numbers = st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )
    undecodable = st.binary(max_size=12).filter(lambda raw: b"\x00" not in raw).map(os.fsdecode)
    pairs = st.tuples(numbers, numbers).map(",".join)
    return st.one_of(st.sampled_from(SPECIAL), numbers, pairs, st.text(_CHARACTERS, max_size=40), undecodable)


def urls() -> st.SearchStrategy[str]:
    """RUNALWAYS_URL values that carry PASSWORD, well-formed or mangled around it."""
    piece = st.text(_CHARACTERS, max_size=8)
    return st.one_of(
        st.builds(lambda a, b: f"postgresql://user:{PASSWORD}{a}@{b}/db", piece, piece),
        st.builds(lambda a, b: f"postgresql://user:{PASSWORD}@[{a}/db{b}", piece, piece),
        st.builds(lambda a: f"host=127.0.0.1 password={PASSWORD}{a}", piece),
        st.builds(lambda a: f"password='{PASSWORD} {a}", piece),
    )


def environments() -> st.SearchStrategy[dict[str, str]]:
    """Some of the settings, each with random text; sometimes a misspelt one besides."""
    known = st.dictionaries(st.sampled_from(variables()), texts(), max_size=5)
    misspelt = st.dictionaries(
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12).map(lambda rest: "RUNALWAYS_" + rest),
        texts(),
        max_size=1,
    )
    plain = st.builds(lambda a, b: {**b, **a}, known, misspelt)
    # Mostly a backend that exists: an unknown one stops the parsing at the first setting.
    with_backend = st.builds(lambda env, name: {**env, "RUNALWAYS_BACKEND": name}, plain, st.sampled_from(names()))
    return st.one_of(plain, with_backend, with_backend, with_backend)


@st.composite
def command_lines(draw: st.DrawFn, command_to_run: list[str] | None = None) -> list[str]:
    """A subcommand with some of its options, each given random text, then random arguments,
    or for ``run``, ``--`` and ``command_to_run`` when one is given."""
    commands = cli_options()
    command = draw(st.sampled_from(sorted(commands)))
    argv = [command]
    for option, takes_value in draw(st.lists(st.sampled_from(commands[command] or [("--help", False)]), max_size=4)):
        argv += [option, draw(texts())] if takes_value else [option]
    if command == "run" and command_to_run is not None:
        return [*argv, "--", *command_to_run]
    return argv + draw(st.lists(texts(), max_size=3))
