"""Start two copies of examples/job.py at the same instant and show what each one did.

    python examples/demo.py

One copy takes the lock, says so on stderr and does the work; the other finds the lock
held and exits 0 at once without a word: what cron sees every minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

JOB = Path(__file__).with_name("job.py")
#: Each copy waits on a pipe until both exist, then both start the job at once.
GATE = "import os, sys; os.read(int(sys.argv[1]), 1); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"


def main() -> int:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    gate_read, gate_write = os.pipe()
    copies = [
        subprocess.Popen(
            [sys.executable, "-c", GATE, str(gate_read), str(JOB), f"copy {number}"],
            env=env,
            pass_fds=(gate_read,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for number in (1, 2)
    ]
    os.close(gate_read)
    print(f"Starting two copies of {JOB.name} at the same instant...\n")
    started = time.monotonic()
    os.write(gate_write, b"go")
    os.close(gate_write)
    exited: dict[int, float] = {}
    while len(exited) < len(copies) and time.monotonic() - started < 60:
        for number, copy in enumerate(copies, 1):
            if number not in exited and copy.poll() is not None:
                exited[number] = time.monotonic() - started
        time.sleep(0.005)
    finished = []
    for number, copy in enumerate(copies, 1):
        stdout, stderr = copy.communicate(timeout=60)
        finished.append((number, copy, stdout, stderr, exited.get(number, time.monotonic() - started)))
    for number, copy, stdout, stderr, elapsed in sorted(finished, key=lambda item: item[4]):
        print(f"copy {number} (pid {copy.pid}) exited with status {copy.returncode} after {elapsed:.2f} s")
        print(f"  stderr: {stderr.strip() or '(nothing)'}")
        print(f"  stdout: {' / '.join(stdout.split(chr(10))).strip(' /') or '(nothing)'}")
    ran = [item for item in finished if item[2]]
    verdict = "exactly one copy ran the job" if len(ran) == 1 else f"{len(ran)} copies ran the job"
    print(f"\n{verdict}; the other exited 0 silently, as cron expects.")
    return 0 if len(ran) == 1 and all(item[1].returncode == 0 for item in finished) else 1


if __name__ == "__main__":
    raise SystemExit(main())
