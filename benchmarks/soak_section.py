"""The chaos soak's section of benchmarks/RESULTS.md, which has two writers.

``benchmarks/run.py`` (through ``report.py``) rewrites the file wholesale;
``benchmarks/soak.py`` writes one section of it, between two markers. Each keeps what the
other wrote: the soak replaces only its section (or appends it), the benchmark carries the
section over into the file it writes.

Inside the section, the fleet mode (``soak.py --fleet``) has a part of its own, between two
markers of its own: each mode replaces its own rows and keeps the other's.
"""

from __future__ import annotations

BEGIN = "<!-- chaos soak: written by benchmarks/soak.py, kept by benchmarks/run.py -->"
END = "<!-- end of the chaos soak -->"
FLEET_BEGIN = "<!-- fleet mode: written by benchmarks/soak.py --fleet -->"
FLEET_END = "<!-- end of the fleet mode -->"
#: The section's heading, when the fleet mode writes it first.
HEADING = "## Chaos soak"


def _between(text: str, begin: str, end: str) -> tuple[int, int] | None:
    """Where the text between ``begin`` and ``end`` starts and ends in ``text``; None without both."""
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    return start + len(begin), stop


def read(text: str) -> str | None:
    """The chaos soak's section of ``text`` (the fleet mode's part included), without its markers;
    None when there is none."""
    found = _between(text, BEGIN, END)
    return None if found is None else text[found[0] : found[1]].strip("\n")


def read_fleet(text: str) -> str | None:
    """The fleet mode's part of ``text`` (a file or a section), without its markers; None when there is none."""
    found = _between(text, FLEET_BEGIN, FLEET_END)
    return None if found is None else text[found[0] : found[1]].strip("\n")


def write(text: str, section: str) -> str:
    """``text`` with its chaos soak section replaced by ``section``, or ``section`` appended.

    A section without a fleet mode part keeps the one the replaced section had."""
    body = section.strip("\n")
    old = read(text)
    fleet = None if old is None or FLEET_BEGIN in body else read_fleet(old)
    if fleet is not None:
        body += f"\n\n{FLEET_BEGIN}\n{fleet}\n{FLEET_END}"
    marked = f"{BEGIN}\n{body}\n{END}"
    found = _between(text, BEGIN, END)
    if found is not None:
        return text[: found[0] - len(BEGIN)] + marked + text[found[1] + len(END) :]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + marked + "\n"


def write_fleet(text: str, part: str) -> str:
    """``text`` with the fleet mode's part of its chaos soak section replaced by ``part`` (or
    added at the section's end, or in a new section); the rest of the section stays."""
    marked = f"{FLEET_BEGIN}\n{part.strip(chr(10))}\n{FLEET_END}"
    section = read(text)
    if section is None:
        return write(text, f"{HEADING}\n\n{marked}")
    found = _between(section, FLEET_BEGIN, FLEET_END)
    if found is None:
        return write(text, f"{section}\n\n{marked}")
    return write(text, section[: found[0] - len(FLEET_BEGIN)] + marked + section[found[1] + len(FLEET_END) :])
