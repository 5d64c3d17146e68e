"""Waiting, up to a deadline: for a lock in the kernel's blocking call, or for anything by polling.

Loaded only by what waits (RUNALWAYS_RETRY, --wait, ``wait=``, a stale holder killed, a
deadline's process group): a copy that finds the lock free, or gives up at once, never
pays for it.
"""

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


class _Deadline(BaseException):
    """Raised by the SIGALRM handler to end a blocking lock call at the deadline."""


def wait_for(block: "Callable[[], bool]", attempt: "Callable[[], bool]", timeout: "float | None") -> bool:
    """Wait for a lock with the mechanism's own blocking call, bounded by ``timeout``.

    ``block`` blocks until the lock is granted; ``attempt`` tries once without blocking.
    The kernel wakes the waiter the moment the holder lets go, which is why runalways
    hands over in well under a millisecond where the peers poll every 50-250 ms. The
    deadline is a one-shot ITIMER_REAL whose handler raises out of the interrupted call
    (PEP 475 would otherwise restart it). Only the main thread receives signals; in any
    other thread this falls back to polling.
    """
    if timeout is None:
        return block()
    if timeout <= 0:
        return attempt()
    # The C module, not signal.py: its wrapper of signal() turns the handler it hands back
    # into an enum, an exception raised and caught that cost a woken waiter 0.07 ms. It
    # has no stubs; signal.py's are its own functions' (signal.py re-exports them).
    if TYPE_CHECKING:
        import signal
    else:
        import _signal as signal

    armed = [True]

    def at_deadline(signum: int, frame: object) -> None:
        if armed[0]:  # raise at most once, so the clean-up below is never interrupted
            armed[0] = False
            raise _Deadline

    try:
        previous = signal.signal(signal.SIGALRM, at_deadline)
    except ValueError:  # not the main thread
        return poll_until(attempt, timeout)
    started = time.monotonic()
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout)
    granted = False
    try:
        try:
            granted = block()
        finally:
            armed[0] = False
    except _Deadline:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if old_delay:  # give back the caller's own timer, less the time we spent
            remaining = max(old_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)
    # The deadline may have fired just after the kernel granted the lock: one more
    # non-blocking attempt on the same descriptor tells (it succeeds on a lock we hold).
    return granted or attempt()


def poll_until(attempt: "Callable[[], bool]", timeout: float, *, first: float = 0.001, longest: float = 0.05) -> bool:
    """Try ``attempt`` with a doubling back-off (``first`` up to ``longest`` seconds apart) until
    it succeeds or ``timeout`` seconds are up: True if it succeeded.

    The one back-off loop of runalways: a backend without a blocking call waiting for its
    lock, a stale holder's death awaited, a command's process group left after a deadline.
    """
    deadline = time.monotonic() + timeout
    pause = first
    while True:
        if attempt():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, longest)
