"""What ``runalways backends`` prints: a table for people, JSON for scripts.

Every word about what a lock survives is derived from the backend's declared
:class:`~runalways.backends.base.Capabilities`, the data the conformance suite checks,
so the listing cannot drift from what the suite verified.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from typing import Any

from runalways._values import Capabilities
from runalways.backends import get_class, names
from runalways.backends.base import Backend

#: reStructuredText inline markup in docstrings: ``literal``, :role:`text`, `text`.
_MARKUP = re.compile(r":\w+:`([^`]*)`|``([^`]*)``|`([^`]*)`")


def plain(text: str) -> str:
    """``text`` without reStructuredText inline markup."""
    return _MARKUP.sub(lambda match: next(group for group in match.groups() if group is not None), text)


def mechanism(backend: type[Backend]) -> str:
    """The first line of the backend's docstring, in plain words: how it locks.

    By convention it reads ``"``name`` backend: <mechanism>."``; the name is left out.
    """
    about = (sys.modules[backend.__module__].__doc__ or backend.__doc__ or "").strip()
    if not about:
        return "(not described)"
    first = plain(about.splitlines()[0]).rstrip(".")
    prefix = f"{backend.name} backend: "
    return first[len(prefix) :] if first.startswith(prefix) else first


def survives(capabilities: Capabilities) -> list[str]:
    """What a lock survives and who can hold it, in plain words, from the declaration."""

    def kept(held: bool, event: str) -> str:
        return f"survives {event}" if held else f"lost on {event}"

    words = [
        kept(capabilities.kept_by_fork_child, "fork"),
        kept(capabilities.kept_across_exec, "exec"),
        kept(capabilities.kept_when_replaced, "replace"),
    ]
    if not capabilities.kept_when_file_closed:
        words.append("lost when the holder closes the script")
    seconds = capabilities.crash_release_seconds
    words.append("free at once when the holder dies" if seconds == 0 else f"free within {seconds:g} s of a crash")
    words.append("one copy across hosts" if capabilities.across_hosts else "one host")
    if capabilities.needs_write_access:
        words.append("needs write access to the script")
    if not capabilities.other_users_can_hold:
        words.append("only the user running it can hold it")
    elif capabilities.identity == "name":
        words.append("anyone with the lock's name can hold it")
    else:
        words.append("anyone who can read the script can hold it")
    return words


def _rows() -> list[dict[str, Any]]:
    rows = []
    for name in names():
        backend = get_class(name)
        reason = backend.unavailable()
        rows.append(
            {
                "name": name,
                "usable": reason is None,
                "unavailable": reason,
                "mechanism": mechanism(backend),
                "survives": survives(backend.capabilities),
                "capabilities": backend.capabilities.as_dict(),
            }
        )
    return rows


def as_json() -> str:
    """Every backend with its declared capabilities, for scripts."""
    return json.dumps({"backends": _rows()}, indent=2)


def as_table(width: int | None = None) -> str:
    """One row per backend: NAME, HERE (usable or no), MECHANISM, ITS LOCK.

    Why a backend cannot work here follows its row, across the whole width. Long cells
    wrap within their column, to the terminal's width (100 when not a terminal).
    """
    rows = _rows()
    width = width or shutil.get_terminal_size((100, 24)).columns
    headings = ("NAME", "HERE", "MECHANISM", "ITS LOCK")
    name_width = max(len(text) for text in [headings[0], *(row["name"] for row in rows)])
    here_width = len("usable")
    rest = width - name_width - here_width - 6
    # The lock's column holds its longest phrase and the comma after it, so no phrase breaks.
    lock_width = max(max(len(phrase) + 1 for row in rows for phrase in row["survives"]), rest * 3 // 5)
    widths = (name_width, here_width, max(rest - lock_width, 14), lock_width)
    indent = " " * (name_width + 2)
    lines = ["  ".join(heading.ljust(size) for heading, size in zip(headings, widths)).rstrip()]
    for row in rows:
        cells = [row["name"], "usable" if row["usable"] else "no", row["mechanism"]]
        lines.append("")  # a blank line between backends: each row spans several lines
        wrapped = [textwrap.wrap(cell, size, break_on_hyphens=False) or [""] for cell, size in zip(cells, widths)]
        wrapped.append(_pack(row["survives"], widths[3]))
        for index in range(max(len(column) for column in wrapped)):
            parts = [column[index] if index < len(column) else "" for column in wrapped]
            lines.append("  ".join(part.ljust(size) for part, size in zip(parts, widths)).rstrip())
        if not row["usable"]:
            why = f"not usable here: {row['unavailable']}"
            lines += textwrap.wrap(why, max(width, 40), initial_indent=indent, subsequent_indent=indent)
    return "\n".join(lines)


def _pack(phrases: list[str], width: int) -> list[str]:
    """``phrases`` joined by commas into lines of about ``width``, never breaking a phrase."""
    lines = [phrases[0]]
    for phrase in phrases[1:]:
        if len(lines[-1]) + 2 + len(phrase) < width:  # room left for the comma that may follow
            lines[-1] += ", " + phrase
        else:
            lines[-1] += ","
            lines.append(phrase)
    return lines
