"""The chaos soak's section of benchmarks/RESULTS.md, which has two writers.

``benchmarks/run.py`` (through ``report.py``) rewrites the file wholesale;
``benchmarks/soak.py`` writes one section of it, between two markers. Each keeps what the
other wrote: the soak replaces only its section (or appends it), the benchmark carries the
section over into the file it writes.
"""

from __future__ import annotations

BEGIN = "<!-- chaos soak: written by benchmarks/soak.py, kept by benchmarks/run.py -->"
END = "<!-- end of the chaos soak -->"


def read(text: str) -> str | None:
    """The chaos soak's section of ``text``, without its markers; None when there is none."""
    begin = text.find(BEGIN)
    end = text.find(END, begin)
    if begin < 0 or end < 0:
        return None
    return text[begin + len(BEGIN) : end].strip("\n")


def write(text: str, section: str) -> str:
    """``text`` with its chaos soak section replaced by ``section``, or ``section`` appended."""
    body = section.strip("\n")
    marked = f"{BEGIN}\n{body}\n{END}"
    begin = text.find(BEGIN)
    end = text.find(END, begin)
    if begin >= 0 and end >= 0:
        return text[:begin] + marked + text[end + len(END) :]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + marked + "\n"
