"""Real processes for the conformance suite: scripts that really lock, and their outcomes.

Nothing here mocks a lock. Every process gets a timeout and is reaped by the ``procs``
fixture; tests synchronise on pipes (a holder prints ``ready`` once it holds the lock and
runs until its stdin closes) and on lock state, never on sleeps.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

#: Seconds any one process may take before the test fails (and the process is killed).
TIMEOUT = 30.0

#: The body of a holder: it reports that it holds the lock, then runs until told to stop.
HOLD = """
import sys
print("ready", flush=True)
sys.stdin.read()
"""


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any RUNALWAYS_* setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNALWAYS_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra or {})
    return env


class Outcome:
    """What a finished process did."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Outcome(returncode={self.returncode}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Procs:
    """Starts processes for one test and makes sure every one of them is gone after it."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.workdir = workdir
        self.started: list[subprocess.Popen[str]] = []

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return clean_environment({"RUNALWAYS_BACKEND": self.backend, **(extra or {})})

    def script(self, name: str, body: str = HOLD, header: str = "import runalways\n") -> Path:
        """Write a script whose first line is ``header`` and whose rest is ``body``."""
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + textwrap.dedent(body))
        return path

    def start(
        self,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        **popen: object,
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
            cwd=cwd or self.workdir,
            **popen,  # type: ignore[call-overload]
        )
        self.started.append(process)
        return process

    def python(self, *args: str | os.PathLike[str], **kwargs: object) -> subprocess.Popen[str]:
        return self.start([sys.executable, *args], **kwargs)  # type: ignore[arg-type]

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> Outcome:
        """Run to completion (stdin closed at once) and return what it did."""
        return finish(self.start(argv, **kwargs))  # type: ignore[arg-type]

    def run_python(self, *args: str | os.PathLike[str], **kwargs: object) -> Outcome:
        return self.run([sys.executable, *args], **kwargs)

    def hold(self, *args: str | os.PathLike[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start a holder and return once it holds the lock (it printed ``ready``)."""
        process = self.python(*args, **kwargs)
        wait_for_line(process, "ready")
        return process

    def reap(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            try:
                process.communicate(timeout=TIMEOUT)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass


def finish(process: subprocess.Popen[str], stdin: str = "") -> Outcome:
    """Close stdin (a holder then exits), wait with a timeout, and collect the output."""
    try:
        stdout, stderr = process.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"process did not finish within {TIMEOUT} s: {stdout!r} {stderr!r}") from None
    return Outcome(process.returncode, stdout, stderr)


def wait_for_line(process: subprocess.Popen[str], expected: str, timeout: float = TIMEOUT) -> str:
    """Read stdout lines until one equals ``expected``; fail on EOF or after ``timeout``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(left, 0))
        if not ready:
            process.kill()
            raise AssertionError(f"no {expected!r} line within {timeout} s")
        line = process.stdout.readline()
        if not line:
            _, stderr = process.communicate(timeout=TIMEOUT)
            raise AssertionError(f"process ended (status {process.returncode}) before {expected!r}: {stderr!r}")
        if line.rstrip("\n") == expected:
            return line


def wait_until(condition: object, what: str, timeout: float = TIMEOUT) -> None:
    """Poll a cheap condition (a file appearing, a lock state) until it holds."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def kill(process: subprocess.Popen[str], signum: int = signal.SIGKILL) -> None:
    process.send_signal(signum)
    process.wait(timeout=TIMEOUT)


def lines(path: Path) -> Iterator[str]:
    if path.exists():
        yield from path.read_text().splitlines()
