"""The lease every cluster backend holds its lock with, whatever the server's engine.

A lock on a server (PostgreSQL, Redis) can be lost without its holder noticing: the host
freezes, the process is stopped, the network is cut, the server restarts. What keeps two
copies from ever running together is the same for every engine, and lives here:

* Settings: ``RUNALWAYS_URL``, ``RUNALWAYS_TTL`` (default 15 s, at least 3 s) and
  ``RUNALWAYS_UNREACHABLE`` (``fail``, the default: exit 2; ``run``: run without the lock
  when the server cannot be reached). The lock is the target's name: the script's file
  name, or the one the policy chose (``RUNALWAYS_NAME``, ``--name``, ``name=``).
* The heartbeat: a daemon thread renews the lock every TTL/3. A renewal that finds the
  lock gone fences at once; one that cannot tell (a slow network) leaves it to the timer.
* The self-fence: a kernel timer (``runalways._kernel_kill``) kills the process with SIGKILL at
  the send time of the last confirmed renewal + 0.8 TTL, on CLOCK_BOOTTIME, so the
  holder is dead before the server can give the lock to anyone else.
* The restart grace: a server younger than the TTL may have forgotten a lock whose holder
  still runs until its own deadline; a new holder waits out the rest of the TTL,
  renewing, before it runs.
* The fencing token: a number the engine hands out with every acquisition, growing
  across holders, hosts and server restarts; ``backend.token``, ``runalways.api.token()``
  and ``RUNALWAYS_TOKEN`` for the command of ``runalways run``.
* fork(): the heartbeat thread does not survive it, so a forked child never holds the
  lock; the engine gives up the child's copy of its connection without touching the
  parent's.

An engine module says only how to take, renew, verify, release and describe its lock
(``LeaseBackend``'s hooks). This module is loaded only when a cluster backend is used.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import ClassVar

from runalways.backends.base import Backend
from runalways.errors import LockFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways._kernel_kill import KillTimer
    from runalways._settings import Settings
    from runalways._values import Target

#: The local deadline, as a fraction of the TTL after the last confirmed renewal: the
#: holder is dead 0.2 TTL before the server can let another host in.
FENCE_AT = 0.8
BEATS_PER_TTL = 3


class Unreachable(LockFailed):
    """No server to ask: the only failure RUNALWAYS_UNREACHABLE=run lets a copy run through."""


class LeaseBackend(Backend):
    """A lock held on a server as a lease: the shared mechanics of the cluster backends."""

    #: The engine's name in messages: "PostgreSQL", "Redis".
    engine: ClassVar[str]
    #: Release the lock at a normal exit of the interpreter too, after the job's own exit
    #: handlers: a key with an expiry outlives its holder's process otherwise, and a
    #: session ends only once the interpreter has torn everything down.
    release_at_exit: ClassVar[bool] = False
    #: The engine's client: (module, how people call it, the extra that installs it).
    client: ClassVar[tuple[str, str, str]]

    @classmethod
    def unavailable(cls) -> str | None:
        if os.name == "nt":
            return "no kernel timer to fence a lost lease with on Windows"
        import importlib.util

        module, called, extra = cls.client
        if importlib.util.find_spec(module) is None:
            return f"{called} is not installed: pip install 'runalways[{extra}]'"
        return None

    def __init__(self, target: Target, settings: Settings | None = None) -> None:
        super().__init__(target, settings)
        if settings is None:  # defaults would silently ignore the RUNALWAYS_URL of the start
            raise TypeError(f"the {self.name} backend needs the settings of its start (runalways._policy.choose)")
        chosen = settings
        self.ttl = chosen.ttl
        self.run_when_unreachable = chosen.run_unreachable
        self.url = chosen.url
        # The target's name: the script's file name (paths differ between hosts), or the
        # name the policy chose for it (--name, name=, RUNALWAYS_NAME, their fields filled in).
        self.lock_name = target.name
        #: The server's age when this lock was taken, in seconds, where the engine can tell it.
        self._uptime: float | None = None
        self._timer: KillTimer | None = None
        self._beating: threading.Thread | None = None
        self._stopped = threading.Event()
        #: Set once the lease is taken: the heartbeat thread, started before a wait, beats.
        self._going = threading.Event()
        #: Guards the timer and the fence against release() running at the same time.
        self._state = threading.Lock()
        #: Held while the lock is renewed: release() does not give it back in the meantime.
        self._renewing = threading.Lock()
        self._forked = False

    # -- what an engine says -----------------------------------------------------------

    def _wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for the lock, woken by the server
        when the holder lets go, and take it; False when the time is up."""
        raise NotImplementedError

    def _renew(self) -> bool | None:
        """Renew and verify the lock: True (held), False (gone), None (cannot tell now)."""
        raise NotImplementedError

    def _let_go(self) -> None:
        """Give the lock back, if still held, keeping the connection."""
        raise NotImplementedError

    def _close(self) -> None:
        """Give up the lock, if still held (:meth:`_let_go`), and the connection."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Unblock a renewal stuck on a dead network, so that release() can go on."""

    def _abandon(self) -> None:
        """Drop the connection without using it: a renewal is still stuck in it."""
        raise NotImplementedError

    def _forget_session(self) -> None:
        """In a fork() child: give up this copy of the connection without touching the parent's."""
        raise NotImplementedError

    # -- shared by every engine --------------------------------------------------------

    def acquire(self, timeout: float | None) -> bool:
        if timeout is not None and timeout <= 0:
            return self.try_acquire()
        # What holding the lease needs is made before the wait, not once the lock is ours:
        # the fence's timer (the first one loads ctypes) and the heartbeat's thread
        # (starting one waits until it runs: up to 3 ms on a busy machine), time that a
        # start woken by the holder's release would spend before its body. Until the
        # lease is taken the timer is disarmed and the thread waits: neither acts.
        self._make_timer()
        if self._beating is None:
            self._start_heartbeat()
        taken = False
        try:
            taken = self._wait(timeout)
        finally:
            # The time is up, the wait failed, or the server is unreachable and the job
            # runs without the lock (RUNALWAYS_UNREACHABLE=run): no lease to keep.
            if not taken or self.unlocked is not None:
                self._stop_heartbeat()
                self._drop_timer()
        return taken

    def _start_heartbeat(self) -> None:
        """Start the heartbeat's thread; it beats once ``_going`` is set."""
        self._stopped = threading.Event()
        self._going = threading.Event()
        self._beating = threading.Thread(
            target=self._heartbeat, args=(self._stopped, self._going), name="runalways-heartbeat", daemon=True
        )
        self._beating.start()

    def _stop_heartbeat(self) -> None:
        with self._state:
            self._stopped.set()
        beating, self._beating = self._beating, None
        if beating is not None:
            beating.join(timeout=0.1)
            if beating.is_alive():
                # Stuck in a renewal on a dead network: end the connection from our side
                # and let that renewal fail.
                self._interrupt()
                beating.join(timeout=1.0)
            if beating.is_alive():  # closing the connection under it would free memory in use
                self._abandon()

    def _make_timer(self) -> None:
        from runalways._kernel_kill import KillTimer

        if self._timer is None:
            try:
                self._timer = KillTimer()
            except OSError as error:  # no way to fence: holding the lock would be unsafe
                raise LockFailed(f"cannot arm the timer that fences a lost lock: {error}") from None

    def _drop_timer(self) -> None:
        with self._state:
            if self._timer is not None:
                self._timer.close()
                self._timer = None

    def _run_unlocked(self, error: Unreachable) -> None:
        """The server cannot be reached: fail closed, or run without the lock (RUNALWAYS_UNREACHABLE=run)."""
        if not self.run_when_unreachable:
            raise LockFailed(f"{error}; not running (RUNALWAYS_UNREACHABLE=run runs without the lock)") from None
        self.unlocked = f"{error} (RUNALWAYS_UNREACHABLE=run)"

    def _lease_taken(self, token: int, uptime: float | None, sent: float) -> bool:
        """Taken by a request sent at ``sent``: arm the fence, wait out a young server, start the heartbeat.

        ``uptime`` is the server's age in seconds, None where the server does not say.
        """
        if self._beating is None:
            self._start_heartbeat()
        try:
            self._make_timer()
        except LockFailed:
            self._stop_heartbeat()
            self._close()
            raise
        self._confirmed(sent)
        _track(self)
        # A restarted server has forgotten every lock, while the holder from before the
        # restart may act until its own deadline (< TTL after its last renewal).
        left = 0.0 if uptime is None else min(self.ttl - uptime, self.ttl)
        while left > 0:
            pause = min(left, self.ttl / BEATS_PER_TTL)
            time.sleep(pause)
            left -= pause
            if self._beat() is False:  # lost while waiting, before running anything
                self.release()
                return False
        self.token = token
        self._going.set()
        return True

    def _beat(self) -> bool | None:
        """Renew once; a confirmed renewal moves the fence on."""
        from runalways._kernel_kill import now

        sent = now()
        with self._renewing:
            held = self._renew()
        if held:
            self._confirmed(sent)
        return held

    def _confirmed(self, sent: float) -> None:
        # The server's lease started again after it received the request sent at ``sent``.
        with self._state:
            if self._timer is not None and not self._stopped.is_set():
                self._timer.arm(sent + FENCE_AT * self.ttl)

    def _heartbeat(self, stopped: threading.Event, going: threading.Event) -> None:
        # It ticks from its start, beating only once the lease is taken: the first beat
        # comes within TTL/3 of the taking, and the taking wakes no thread (a thread woken
        # then competes with the job's first steps for the interpreter: up to 4 ms measured).
        while not stopped.wait(self.ttl / BEATS_PER_TTL):
            if not going.is_set():
                continue
            try:
                held = self._beat()
            except Exception:
                if stopped.is_set():
                    # release() closed the connection under this renewal (at exit, with the
                    # network cut): the client library then fails as it may, redis-py with
                    # errors of its own about the socket gone from under it, no RedisError
                    # (test_a_renewal_cut_off_at_exit_ends_without_a_traceback, found by the
                    # chaos soak). The lock is being given up: nothing to say.
                    return
                raise
            if held is False:
                self._fence("the server no longer holds the lock for this copy")
                return

    def _fence(self, why: str) -> None:
        """Die now. The one place a backend prints: nothing else can say why the process ended."""
        with self._state:
            if self._stopped.is_set():  # released meanwhile: the error was our own close
                return
            line = f"runalways: {why} (lock {self.lock_name!r}); killing '{self.target.display}' to fence it\n"
            os.write(2, line.encode(errors="replace"))
            os.kill(os.getpid(), signal.SIGKILL)

    def release(self) -> None:
        if self._forked:
            return
        with self._state:
            self._stopped.set()  # from here on, what a renewal finds is ignored
        # The lock goes back before the heartbeat's thread is stopped and joined (0.3 ms):
        # a waiter is woken that much sooner. Not while a renewal is under way on the same
        # connection (it may be stuck on a dead network): then once the thread is stopped.
        if self._renewing.acquire(blocking=False):
            try:
                self._let_go()
            finally:
                self._renewing.release()
        self._stop_heartbeat()
        self._close()
        self._drop_timer()
        self.token = None
        _untrack(self)

    def forgot_within(self, seconds: float) -> bool:
        """The server is younger than ``seconds``: restarted, it may have lost the record."""
        return self._uptime is not None and self._uptime < seconds

    def _forget_after_fork(self) -> None:
        self._forked = True
        self.token = None
        self._timer = None  # timers are not inherited; the id means nothing here
        self._forget_session()

    def child_environment(self) -> dict[str, str]:
        return {} if self.token is None else {"RUNALWAYS_TOKEN": str(self.token)}


#: Leases this process holds: the fork handler forgets them in a child, and those whose
#: lock outlives the process are released at exit.
_holding: list[LeaseBackend] = []
_handlers: set[str] = set()


def _track(backend: LeaseBackend) -> None:
    if "fork" not in _handlers and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _handlers.add("fork")
    if backend.release_at_exit and "exit" not in _handlers:
        import atexit

        atexit.register(_release_at_exit)
        _handlers.add("exit")
    _holding.append(backend)


def _untrack(backend: LeaseBackend) -> None:
    if backend in _holding:
        _holding.remove(backend)


def _after_fork_in_child() -> None:
    for backend in _holding:
        backend._forget_after_fork()
    _holding.clear()


def _release_at_exit() -> None:
    for backend in list(_holding):
        if backend.release_at_exit:
            backend.release()
