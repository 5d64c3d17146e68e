"""What the chaos soak (soak.py) and its fleet mode (fleet.py) share: the start of their
guarded job, and the line of a cluster copy that fails closed."""

from __future__ import annotations

import re

#: The one line of a cluster copy that fails closed: the server could not be reached,
#: or ended the session (a lease that ran out during a cut or a stop) while it took the lock.
FAIL_CLOSED = re.compile(r"runalways: (cannot reach the \w+ server|\w+ failed on the lock) [^\n]*\n")

#: The guarded job's start. argv[1]: the record file. Every body appends ``start`` and
#: ``end`` records (``O_APPEND``, one ``write`` each) and, at its start, an ``overlap`` for
#: every earlier body that is still alive and unfinished; CLOCK is the clock they are read by.
_JOB_START = """import runalways
import os
import sys
import time


def ticks(pid):
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return fields[0].decode(), fields[19].decode()


def record(line):
    descriptor = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(descriptor, (line + "\\n").encode())
    os.close(descriptor)


me = os.getpid()
unfinished = {}
with open(sys.argv[1]) as records:
    for line in records:
        words = line.split()
        if words[1] == "start":
            unfinished[words[2]] = words[3]
        elif words[1] == "end":
            unfinished.pop(words[2], None)
for pid, started in unfinished.items():
    try:
        state, now = ticks(pid)
    except (OSError, IndexError):
        continue  # gone
    if now == started and state not in ("Z", "X"):
        record(f"{CLOCK:.6f} overlap {me} {pid}")
"""


def job(clock: str, rest: str) -> str:
    """The guarded job: its start, with ``clock`` (a Python expression giving seconds) for its
    records, then ``rest``, which records the body's start, runs it and records its end."""
    return _JOB_START.replace("CLOCK", clock) + rest
