#!/usr/bin/env python3
"""A guarded job: the first copy works for a few seconds, any other copy exits 0 at once."""

# ruff: noqa: I001 (the guard must stay the first import)
import runalways  # noqa: F401

import sys
import time

print(f"job: working ({sys.argv[1] if len(sys.argv) > 1 else 'alone'})", flush=True)
time.sleep(2)
print("job: done", flush=True)
