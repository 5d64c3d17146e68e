"""How the process ended, for a guard that holds its lock until then: its exit status.

:func:`when_process_ends` calls its callback once, from an ``atexit`` handler registered
after the lock was taken: handlers run last registered first, so it runs before the
release that a cluster backend registered when it took the lock (a file lock is released
by the kernel, after the process). The status is the one the parent sees:

* the main script ran to its end: 0;
* ``sys.exit(n)``, ``exit(n)`` or ``quit(n)`` ended it: None is 0, an int is ``n & 255``
  (``n`` beyond a C long is 255, as CPython passes -1 to ``exit()``), anything else is 1
  (Python printed it);
* an uncaught exception: 1; an uncaught KeyboardInterrupt: 130, 128 + SIGINT, as a shell
  shows a process killed by SIGINT, which is how Python ends then (and ``runalways run``
  reports a command killed by signal N as 128 + N);
* None when it cannot be known (below): no status is better than a wrong one.

A process killed by a signal, ended by ``os._exit`` or crashed runs no handler, so
nothing is called. Nor in a child made by ``os.fork()``, which inherits the handler but
not the run, nor for ``sys.exit()`` in another thread than the main one, which ends that
thread only.

How it is known, at no cost to the job while it runs (no trace or profile function,
no monitoring event):

* The main script's frame (the outermost frame of the main thread running ``__main__``'s
  globals, also when ``api.guard()`` is called in a function) is kept. A frame that ran
  to its end stopped at a return instruction; one that an exception left did not.
* An uncaught exception is in ``sys.last_exc`` (3.12) or ``sys.last_value``, set when it
  was printed, before the handlers run; it must be a new one, and have left the main
  script's frame.
* A SystemExit carries its code, but CPython reads it and drops the exception before
  the handlers run, and no hook on any version (3.12's ``sys.monitoring`` included: its
  PY_UNWIND event cannot be limited to one code object, so it would cost every exception
  of the job) shows it. So ``sys.exit`` and the ``exit``/``quit`` builtins are wrapped:
  each call in the main thread notes the code, the instruction each frame from the call
  to the main script's stood at, and marks the exception. The code counts only if that
  exception was dropped by the interpreter itself (no Python frame left: the end of the
  process), and every one of those frames ended where it stood at the call: a frame that
  went on, or ran a ``finally`` or an ``except`` clause in between, may have raised
  another SystemExit.

What stays unknown (None): a SystemExit raised without ``sys.exit``, ``exit`` or ``quit``
(``raise SystemExit(3)``); a ``sys.exit`` whose exception went through a ``finally`` or an
``except`` clause that re-raised it (on 3.9, a ``with`` block too) on its way out;
``sys.exit`` called under another name bound before the guard ran (``from sys import
exit`` above ``import runalways``); a session that goes on interactively (``python -i``,
PYTHONINSPECT). Python exits with 120 when it cannot flush stdout at the very end, after
every handler: that is not seen either.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType, TracebackType
    from typing import Any, Callable, List, Tuple

#: The status of an uncaught KeyboardInterrupt: Python kills itself with SIGINT (since 3.8).
INTERRUPTED = 128 + 2

#: What a code that is no int nor None makes Python exit with, after printing it.
PRINTED = 1


class _Exit:
    """One ``sys.exit`` (``exit``, ``quit``) of the main thread, and whether it ended the process."""

    __slots__ = ("at_top", "code", "path")

    def __init__(self, code: object, path: List[Tuple[FrameType, int]]) -> None:
        self.code = code
        #: Each frame from the caller to the main script's, with the instruction it stood at.
        self.path = path
        #: The exception was dropped with no Python frame left: by the interpreter, as it ended.
        self.at_top = False

    def ended_process(self) -> bool:
        return self.at_top and all(frame.f_lasti == lasti for frame, lasti in self.path)


class _Mark:
    """Kept in the SystemExit's ``__dict__``: its ``__del__`` tells where that exception was dropped."""

    __slots__ = ("noted", "watch")

    def __init__(self, watch: _Watch, noted: _Exit) -> None:
        self.watch = watch
        self.noted = noted

    def __del__(self) -> None:
        watch = self.watch
        if watch.exit is not self.noted:
            return
        # Dropped where a Python frame still runs: caught and let go, the process goes on.
        if sys._getframe().f_back is None and _thread_id() == watch.main_thread:
            self.noted.at_top = True
        else:
            watch.exit = None


class _Watch:
    """What this process knows of how it is ending."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.main_thread = _main_thread_id()
        self.main_frame = _main_frame(self.main_thread)
        # An exception printed before the guard (an interactive session's) is not the end's.
        self.earlier_error = _last_error()
        self.exit: _Exit | None = None
        self.known: Tuple[int | None] | None = None

    def note(self, raised: SystemExit, caller: FrameType) -> None:
        """A SystemExit that ``sys.exit`` (or ``exit``, ``quit``) raised, called in ``caller``."""
        if os.getpid() != self.pid or _thread_id() != self.main_thread or self.main_frame is None:
            return
        path: List[Tuple[FrameType, int]] = []
        frame: FrameType | None = caller
        while frame is not None:
            path.append((frame, frame.f_lasti))
            if frame is self.main_frame:
                break
            frame = frame.f_back
        else:
            self.exit = None  # not under the main script's frame: a session's, say
            return
        self.exit = noted = _Exit(raised.code, path)
        try:
            raised._runalways_end = _Mark(self, noted)  # type: ignore[attr-defined]
        except AttributeError:  # a SystemExit subclass with __slots__ and no __dict__
            self.exit = None

    def status(self) -> int | None:
        if self.known is None:
            self.known = (self._status(),)
        return self.known[0]

    def _status(self) -> int | None:
        if sys.flags.inspect or os.environ.get("PYTHONINSPECT"):
            return None  # a session goes on after the script, and ends as it ends
        frame = self.main_frame
        if frame is not None and _returned(frame):
            return 0
        error = _last_error()
        if error is not None and error is not self.earlier_error and _left(frame, error):
            if isinstance(error, KeyboardInterrupt):
                return INTERRUPTED
            if not isinstance(error, SystemExit):  # printed as such under -i only
                return 1
        noted = self.exit
        if frame is not None and noted is not None and noted.ended_process():
            return exit_status(noted.code)
        return None


_watch: _Watch | None = None


def when_process_ends(callback: Callable[[int | None], None]) -> None:
    """Call ``callback(status)`` once when this process ends, before its locks are released.

    ``status`` is the exit status its parent will see, or None when that cannot be known.
    """
    import atexit

    global _watch
    if _watch is None:
        _wrap_exits()
    if _watch is None or _watch.pid != os.getpid():
        _watch = _Watch()
    watch = _watch

    def at_exit() -> None:
        if os.getpid() == watch.pid:  # not in a forked child, which inherits the handler
            callback(watch.status())

    # One handler per callback, registered now: after the lock each one reports on was
    # taken, so it runs before any release registered with that lock.
    atexit.register(at_exit)


def exit_status(code: object) -> int:
    """The status the parent sees when a SystemExit with ``code`` ends Python."""
    if code is None:
        return 0
    if isinstance(code, int):
        # CPython passes (int) PyLong_AsLong(code) to exit(), -1 when it overflows a C long;
        # the parent sees the low 8 bits.
        return code & 0xFF if -sys.maxsize - 1 <= code <= sys.maxsize else 0xFF
    return PRINTED


def _wrap_exits() -> None:
    """``sys.exit`` and the ``exit`` and ``quit`` builtins, wrapped to note each SystemExit they raise."""
    original_exit = sys.exit

    def exit(*status: Any) -> None:
        try:
            original_exit(*status)
        except SystemExit as raised:
            _noted(raised)
            raise

    exit.__doc__ = original_exit.__doc__
    exit.__wrapped__ = original_exit  # type: ignore[attr-defined]
    sys.exit = exit  # type: ignore[assignment]

    sitebuiltins = sys.modules.get("_sitebuiltins")  # site's, for exit() and quit()
    quitter = getattr(sitebuiltins, "Quitter", None)
    if quitter is not None:
        original_call = quitter.__call__

        def __call__(self: Any, code: object = None) -> None:
            try:
                original_call(self, code)
            except SystemExit as raised:
                _noted(raised)
                raise

        __call__.__wrapped__ = original_call  # type: ignore[attr-defined]
        quitter.__call__ = __call__


def _noted(raised: SystemExit) -> None:
    """From a wrapper: the frame two above this one called it."""
    if _watch is not None:
        _watch.note(raised, sys._getframe(2))


def _last_error() -> object:
    return getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)


def _left(frame: FrameType | None, error: object) -> bool:
    """Whether ``error`` went through the main script's ``frame`` (unknown: yes)."""
    if frame is None:
        return True
    trace: TracebackType | None = getattr(error, "__traceback__", None)
    while trace is not None:
        if trace.tb_frame is frame:
            return True
        trace = trace.tb_next
    return False


def _returned(frame: FrameType) -> bool:
    """Whether ``frame``, which ran, stopped at a return instruction: it ran to its end."""
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] in _return_opcodes()


def _return_opcodes() -> set[int]:
    """The opcodes that return from a frame (RETURN_VALUE; 3.12's RETURN_CONST): the last
    instruction of a module and of a function returning a name, as this Python compiles
    them. Importing ``opcode`` to look them up would take the end of each run 0.4 ms."""
    module = compile("", "<end>", "exec")
    function = next(
        constant
        for constant in compile("def f(a): return a", "<end>", "exec").co_consts
        if hasattr(constant, "co_code")
    )
    return {module.co_code[-2], function.co_code[-2]}


def _thread_id() -> int:
    import _thread  # built in: no file read

    return _thread.get_ident()


def _main_thread_id() -> int:
    threading = sys.modules.get("threading")  # without it, no thread but this one was made by it
    if threading is not None:
        return threading.main_thread().ident  # type: ignore[no-any-return]
    return _thread_id()


def _main_frame(main_thread: int) -> FrameType | None:
    """The main script's frame: the outermost of the main thread whose globals are ``__main__``'s."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    frame: FrameType | None = sys._getframe() if _thread_id() == main_thread else sys._current_frames().get(main_thread)
    found = None
    while frame is not None:
        if frame.f_globals is vars(main):
            found = frame
        frame = frame.f_back
    return found
