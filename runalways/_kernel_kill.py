"""The kernel kills this process when it must stop: a lease that may have run out, a deadline, a dead parent.

Three uses of one idea, that only the kernel can promise a process ends on time:
:class:`KillTimer` is the self-fence of a cluster lock (``runalways.backends._lease``),
:func:`arm_deadline` is a guarded script's RUNALWAYS_TIMEOUT, and :func:`die_with_parent`
keeps the command of ``runalways run`` from running on without the lock.

**The self-fence.**
A lock held on a remote server (a lease) can be lost without the holder noticing: the
host is suspended, the process is stopped, the network is cut. The server then gives the
lock to another host after the lease's TTL, and the old holder must have stopped by then.
Python code cannot promise that: a watchdog thread needs the GIL and a scheduler slot,
and a stopped process runs no code at all. The kernel can. :class:`KillTimer` arms a
one-shot timer whose signal is SIGKILL, which no handler, mask or ``SIG_IGN`` can stop,
and which the kernel delivers even to a stopped process. Every confirmed renewal of the
lease moves the deadline on; when renewals stop, the process dies at the deadline.

Which clock: ``CLOCK_BOOTTIME``, because ``CLOCK_MONOTONIC`` (``time.monotonic()``)
stops while the machine is suspended, so a host resumed after an hour would think its
lease still fresh. The timer is a POSIX timer (``timer_create``, through ctypes) on that
clock, with an absolute deadline. Where ``timer_create`` cannot be used (no such symbol,
or not Linux), the fallback is ``setitimer(ITIMER_REAL)`` with SIGALRM left at its
default action (terminate): it does not count suspended time, the script must not use
SIGALRM itself, and a blocked SIGALRM stays pending; the POSIX timer has none of these
limits.

What is NOT guaranteed, whatever the timer:

* A process that cannot run cannot act either, so "stopped before another holder
  starts" means "dead, or never again executing an instruction". SIGKILL ends a stopped
  (SIGSTOP) process at once; a process frozen by a cgroup freezer or a whole machine
  paused by its hypervisor dies when it next runs. A paused virtual machine whose clocks
  do not count the pause notices only at its next renewal, up to one heartbeat later.
* A write already handed to the network or the disk before the deadline can still land
  afterwards. Only a fencing token checked by the resource guards against that.

ctypes is imported only when a timer is created: ``import runalways`` stays cheap.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from typing import Callable

#: timer_settime flag: the deadline is an absolute time on the timer's clock.
_TIMER_ABSTIME = 1
#: sigevent.sigev_notify: deliver a signal to the process.
_SIGEV_SIGNAL = 0
#: prctl option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def now() -> float:
    """Seconds on the clock the deadlines use: CLOCK_BOOTTIME (counts suspend) where there is one."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()


class KillTimer:
    """A one-shot kernel timer that kills this process at an absolute deadline on :func:`now`'s clock.

    Not inherited by fork() children (neither kind of timer is), so a child never dies
    for its parent's lease. ``signum`` other than SIGKILL (the SIGTERM of a run deadline)
    needs the POSIX timer: the fallback can only terminate.
    """

    def __init__(self, signum: int = signal.SIGKILL) -> None:
        self._posix: _PosixTimer | None = None
        if hasattr(time, "CLOCK_BOOTTIME"):
            try:
                self._posix = _PosixTimer(time.CLOCK_BOOTTIME, signum)
            except OSError:
                self._posix = None  # no timer_create here: fall back to setitimer
        if self._posix is None and signum != signal.SIGKILL:
            raise OSError(f"no POSIX timer here to send {signal.Signals(signum).name} at a deadline")
        if self._posix is None:
            # The fallback's signal must keep its default action, or the deadline would
            # run a handler (Python code) instead of ending the process.
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
            except ValueError:  # only the main thread may set handlers; another may check
                if signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL:
                    raise OSError(
                        "SIGALRM has a handler, set outside the main thread: no timer to fence with"
                    ) from None
        #: "posix timer (CLOCK_BOOTTIME, SIGKILL)" or "setitimer (SIGALRM)", for messages and tests.
        name = signal.Signals(signum).name
        self.kind = f"posix timer (CLOCK_BOOTTIME, {name})" if self._posix else "setitimer (SIGALRM)"

    def arm(self, deadline: float) -> None:
        """Kill this process at ``deadline`` (seconds on :func:`now`'s clock) unless re-armed or disarmed."""
        if self._posix is not None:
            self._posix.set(deadline)
        else:
            # setitimer takes a delay, not a time; a delay of 0 would disarm it.
            signal.setitimer(signal.ITIMER_REAL, max(deadline - now(), 1e-6))

    def disarm(self) -> None:
        if self._posix is not None:
            self._posix.set(0.0)
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def close(self) -> None:
        self.disarm()
        if self._posix is not None:
            self._posix.delete()
            self._posix = None


class _PosixTimer:
    """timer_create(2) with SIGEV_SIGNAL (``signum``) on one clock, driven through ctypes."""

    def __init__(self, clock: int, signum: int) -> None:
        import ctypes

        self._ctypes = ctypes
        self._libc = _libc_with("timer_create")
        self._spec_type = _itimerspec_type()  # built once: a renewal re-arms every TTL/3
        event = _sigevent_type()(None, signum, _SIGEV_SIGNAL)
        self._id = ctypes.c_void_p()
        if self._libc.timer_create(ctypes.c_int(clock), ctypes.byref(event), ctypes.byref(self._id)) != 0:
            raise _os_error("timer_create")

    def set(self, deadline: float) -> None:
        """Arm at an absolute ``deadline``; 0 disarms."""
        ctypes = self._ctypes
        seconds = int(deadline)
        nanoseconds = int((deadline - seconds) * 1e9)
        if deadline and not (seconds or nanoseconds):  # never arm with all zeros: that disarms
            nanoseconds = 1
        spec = self._spec_type((0, 0), (seconds, nanoseconds))
        if self._libc.timer_settime(self._id, _TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise _os_error("timer_settime")

    def delete(self) -> None:
        self._libc.timer_delete(self._id)


def _libc_with(symbol: str) -> ctypes.CDLL:
    """The C library that has ``symbol``: libc itself since glibc 2.34, librt before."""
    import ctypes

    library = ctypes.CDLL(None, use_errno=True)
    if hasattr(library, symbol):
        return library
    # Only then look for librt: find_library runs ldconfig (or a compiler) in a process of
    # its own, milliseconds that every cluster start paid, and with few descriptors left
    # it fails with an error that has nothing to do with the timer.
    import ctypes.util

    found = ctypes.util.find_library("rt")
    if found is not None:
        try:
            library = ctypes.CDLL(found, use_errno=True)
        except OSError:
            pass
        else:
            if hasattr(library, symbol):
                return library
    raise OSError(f"no C library here provides {symbol}")


def _sigevent_type() -> type[ctypes.Structure]:
    import ctypes

    pointer = ctypes.sizeof(ctypes.c_void_p)

    class SigEvent(ctypes.Structure):
        # struct sigevent is 64 bytes on Linux: sigval (a pointer-sized union), the
        # signal number, the notification kind, then padding for the other members.
        _fields_ = (
            ("sigev_value", ctypes.c_void_p),
            ("sigev_signo", ctypes.c_int),
            ("sigev_notify", ctypes.c_int),
            ("padding", ctypes.c_int * ((64 - pointer - 8) // 4)),
        )

    return SigEvent


def _itimerspec_type() -> type[ctypes.Structure]:
    import ctypes

    class TimeSpec(ctypes.Structure):
        _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))

    class ITimerSpec(ctypes.Structure):
        _fields_ = (("it_interval", TimeSpec), ("it_value", TimeSpec))

    return ITimerSpec


def _os_error(call: str) -> OSError:
    import ctypes

    number = ctypes.get_errno()
    return OSError(number, f"{call}: {os.strerror(number)}")


#: The timers of this process's run deadline: referenced for as long as the process runs.
_deadline_timers: list[KillTimer] = []


def arm_deadline(seconds: float, grace: float) -> None:
    """RUNALWAYS_TIMEOUT: SIGTERM to this process ``seconds`` from now, SIGKILL ``grace`` seconds later.

    Kernel timers, not a thread: they fire while the script hangs in C code, holds the
    GIL or blocks SIGTERM, and SIGKILL, which nothing can stop, follows SIGTERM. The lock
    goes with the process, so the next start runs.
    """
    start = now()
    for signum, at in ((signal.SIGTERM, start + seconds), (signal.SIGKILL, start + seconds + grace)):
        timer = KillTimer(signum)
        timer.arm(at)
        _deadline_timers.append(timer)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making a child die (SIGKILL) when this process dies; None where impossible.

    ``runalways run`` starts its command with it: when runalways dies (killed, or fenced
    by a backend whose lease ran out), the kernel kills the command too, so the command
    never runs on without the lock. Only the command itself: processes it starts in turn
    are not covered.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = _libc_with("prctl").prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os.kill(os.getpid(), signal.SIGKILL)

    return in_child
