"""Regression tests for what the fault cases (spec R14) found, each named after it.

Each runs a real process whose descriptor table is full: RLIMIT_NOFILE lowered, then
every free descriptor taken.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: Lowers the descriptor limit and takes every free descriptor; the code after it runs with none.
_FILL_TABLE = """
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
taken = []
try:
    while True:
        taken.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
"""


def run_with_a_full_table(before: str, after: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    env["RUNALWAYS_DIR"] = str(locks)
    code = textwrap.dedent(before) + _FILL_TABLE + textwrap.dedent(after)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)


def test_a_full_descriptor_table_is_not_taken_for_a_missing_proc(tmp_path: Path) -> None:
    # /proc/PID/stat could not be opened, and the pidfile backend said it "needs Linux's
    # /proc", or took its own live process for a dead one.
    done = run_with_a_full_table(
        "from runalways import _proc, errors\n",
        """
        try:
            _proc.process_status(os.getpid())
        except errors.LockFailed as error:
            print(error)
        """,
        tmp_path,
    )
    assert done.stdout.startswith("cannot read /proc/") and "Too many open files" in done.stdout, done


def test_a_module_that_cannot_be_loaded_for_want_of_descriptors_is_one_line(tmp_path: Path) -> None:
    # The postgres backend imports psycopg when it is used: with the table full, that
    # import raised OSError through `runalways run` as a traceback.
    done = run_with_a_full_table(
        "import sys\nfrom runalways import cli\n",
        """
        os.environ["RUNALWAYS_URL"] = "postgresql://user@127.0.0.1:1/db"
        sys.exit(cli.main(["run", "--backend", "postgres", "--name", "job", "--", "true"]))
        """,
        tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("runalways: "), done
    assert "Too many open files" in done.stderr, done


def test_a_truncated_private_pidfile_is_taken_over(tmp_path: Path) -> None:
    # With RUNALWAYS_LOCK=private the pidfile backend took its own truncated pidfile for a
    # file the user named, and refused every later start: "remove it".
    script = tmp_path / "job.py"
    script.write_text("import runalways\nprint('ran')\n")
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    env.update(RUNALWAYS_DIR=str(locks), RUNALWAYS_BACKEND="pidfile", RUNALWAYS_LOCK="private")
    status = subprocess.run(
        [sys.executable, "-m", "runalways", "status", str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    pidfile = Path(status.stdout.split("lock file: ")[1].strip())
    pidfile.write_bytes(b"")
    os.utime(pidfile, (0, 0))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout == "ran\n", done
