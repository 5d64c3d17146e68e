#!/usr/bin/env python3
"""A slow but healthy job that keeps itself fresh, for cron with a stale limit.

    * * * * *  RUNALWAYS_STALE_AFTER=10m /srv/jobs/backup.py /srv/data /backup/data.sums

It may run for hours: a start that finds it running exits 0 silently as long as it marks
progress. When it hangs (no heartbeat for 10 minutes: a dead mount, a read that never
returns), every later start says so on stderr and exits 4, and cron mails it.
"""

# ruff: noqa: I001 (the guard must stay the first import)
import runalways

import hashlib
import os
import sys

import runalways.api


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: backup.py SOURCE-DIRECTORY SUMS-FILE", file=sys.stderr)
        return 2
    source, sums = argv[1], argv[2]
    with open(sums, "w") as out:
        for folder, _, names in os.walk(source):
            for name in sorted(names):
                path = os.path.join(folder, name)
                digest = hashlib.sha256()
                with open(path, "rb") as data:
                    for block in iter(lambda: data.read(1 << 20), b""):
                        digest.update(block)
                        runalways.api.heartbeat()  # cheap: one file-time update a second at most
                out.write(f"{digest.hexdigest()}  {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
