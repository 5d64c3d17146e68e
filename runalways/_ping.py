"""RUNALWAYS_PING: every run on a healthchecks-style check, in the healthchecks.io ping protocol.

The check's URL (``https://hc-ping.example/<uuid>``, or a ping key and a slug) gets one
request per event, a POST whose body the monitor keeps as the ping's log:

=============  =============================================================================
event          request
=============  =============================================================================
``start``      ``URL/start?rid=<run id>``: a run began, holding the lock
``exit``       ``URL?rid=<run id>`` on status 0, ``URL/<status>?rid=<run id>`` on another
               (``URL/fail`` for a status outside 0-255, or one that could not be known);
               the body is the tail of the command's output under ``runalways run`` (the
               last 10 kB, as runitor sends), else ``exit status 3 after 12.5 s`` and who ran
``skip``       RUNALWAYS_PING_ON_SKIP: ``URL/log`` (default), ``URL/fail`` or nothing; the
               body says why: who holds the lock and for how long, or that the period's run
               is done (where and as which pid), or cannot be known
``stale``      ``URL/fail``: the lock is held longer than RUNALWAYS_STALE_AFTER (this start
               exits with RUNALWAYS_STALE_EXIT, the job does not run)
``kill``       ``URL/log``: a stale holder was killed; the new run's ``start`` follows
``deadline``   ``URL/log``: the command ran past RUNALWAYS_TIMEOUT and was stopped; the end's
               ping follows, with status 124
=============  =============================================================================

The run id is the run's (``runalways._report.Run``), a UUID: the monitor pairs a start with
its end by it and shows the run's duration.

The monitor never fails the job, never changes its exit status, and delays it boundedly,
whether it refuses connections, accepts and never answers, or answers 500:

* One ping takes at most :data:`BUDGET` (2.5 s), its one retry included: a failure that comes
  fast (connection refused or reset, an HTTP 5xx) is retried once, after
  :data:`RETRY_PAUSE`, if time is left; a 4xx is not (the URL is wrong, retrying won't help).
  Each request is made in a daemon thread that the caller waits for at most that long, so a
  name lookup that hangs is bounded too.
* ``start``, ``kill`` and ``deadline`` are sent in the background: the job starts (and a
  deadline's SIGTERM is sent) at once, not after the ping.
* ``exit``, ``skip`` and ``stale`` are sent before the process goes on, since it ends next:
  the end first waits for the pings still in flight (at most :data:`BUDGET`), so that the
  monitor sees the start before the end. A run's end is delayed by at most twice
  :data:`BUDGET` (5 s): only by a monitor that swallowed its start's ping too; a skip by at
  most :data:`BUDGET`.
* A ping that fails is one line on stderr, ``runalways: cannot ping https://host/…: <why>``.
  The URL carries the check's secret (its UUID, or the ping key), so it is never shown
  whole: only its scheme and host.

Loaded only when RUNALWAYS_PING is set; ``threading`` and ``urllib.request`` only when a
ping is sent.
"""

from __future__ import annotations

import os
import sys
import time

from runalways._messages import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading

    from runalways.backends.base import Backend

#: Seconds one ping may take, from its first byte sent to its answer, its retry included.
BUDGET = 2.5

#: Seconds between a failed attempt and the retry: a monitor restarting gets a moment.
RETRY_PAUSE = 0.25

#: Bytes of a body at most: healthchecks.io keeps 100 kB; runitor sends the last 10 kB.
BODY_LIMIT = 10_000

#: The events whose ping is sent in the background: the job (or its stop) does not wait.
_BACKGROUND = ("start", "kill", "deadline")

#: The pings sent in the background, in order: each waits for the one before it.
_in_flight: list[threading.Thread] = []


def send(url: str, event: str, backend: Backend, fields: dict[str, object], *, on_skip: str) -> None:
    """Ping ``url`` for ``event``: what and whether as the table above says."""
    try:
        request = _request(url, event, backend, fields, on_skip)
        if request is None:
            return
        if event in _BACKGROUND:
            _in_background(request)
        else:
            _wait_for_earlier()
            request.send_bounded()
    except Exception as error:  # no ping ever fails the job, whatever went wrong in it
        say(f"runalways: cannot ping {shown(url)}: {secret_hidden(str(error), url)}")


def shown(url: str) -> str:
    """``https://hc-ping.example/…``: the URL's scheme and host, without its secret path or a password."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/…"


def secret_hidden(text: str, url: str) -> str:
    """``text`` (an error's words, which may quote the URL it was given) with the URL's path left out."""
    path = url.partition("://")[2].partition("/")[2].partition("?")[0]
    return text.replace(path, "…") if len(path) >= 8 else text  # a short path is no secret, and common words


def ping_url(url: str, suffix: str, rid: str | None) -> str:
    """``url`` with ``suffix`` (``/start``, ``/fail``, ``/3``...) added to its path and ``rid`` to its query."""
    url = url.split("#", 1)[0]
    path, _, query = url.partition("?")
    parameters = [part for part in (query, None if rid is None else f"rid={rid}") if part]
    return path.rstrip("/") + suffix + ("?" + "&".join(parameters) if parameters else "")


def status_suffix(status: int) -> str:
    """The path that reports an exit status: none for success, ``/<status>`` for a failure."""
    if status == 0:
        return ""
    return f"/{status}" if 0 < status <= 255 else "/fail"


def _request(url: str, event: str, backend: Backend, fields: dict[str, object], on_skip: str) -> _Ping | None:
    """The ping ``event`` makes, or None when it makes none."""
    display = backend.target.display
    me = f"pid {os.getpid()} on {os.uname().nodename}"
    if event == "start":
        return _Ping(url, "/start", _text(fields.get("run_id")), f"'{display}' started: {me}")
    if event == "exit":
        status = fields.get("status")
        output = fields.get("output")
        if not isinstance(status, int):
            # The guard could not know how the job ended (docs/monitoring.md, "How the end is
            # known"): a failure, said as such, rather than a success that may hide one.
            body: str | bytes = (
                f"ended after {fields.get('duration')} s with an exit status runalways could not know "
                f"(raise SystemExit(n) rather than sys.exit(n)?): '{display}', {me}"
            )
            return _Ping(url, "/fail", _text(fields.get("run_id")), body)
        if isinstance(output, (bytes, bytearray)) and output:
            body = bytes(output)
        else:
            body = f"exit status {status} after {fields.get('duration')} s: '{display}', {me}"
        return _Ping(url, status_suffix(status), _text(fields.get("run_id")), body)
    if event == "skip":
        if on_skip == "none":
            return None
        return _Ping(
            url,
            "/fail" if on_skip == "fail" else "/log",
            None,
            f"skipped a start of '{display}' ({me}): {_why_skipped(fields)}",
        )
    if event == "stale":
        return _Ping(
            url,
            "/fail",
            None,
            f"'{display}' is held by {_holder(fields)}, longer than RUNALWAYS_STALE_AFTER: "
            f"is it hung? ({me} did not run)",
        )
    if event == "kill":
        killed = "the running copy" if fields.get("reason") == "replace" else "a stale holder"
        return _Ping(url, "/log", None, f"killed {killed} of '{display}': {_holder(fields)}; {me} runs anew")
    if event == "deadline":
        return _Ping(
            url,
            "/log",
            None,
            f"'{display}' ran past its deadline: SIGTERM to pid {fields.get('command_pid')}'s process group; "
            f"exit status {fields.get('status')} follows",
        )
    return None


def _why_skipped(fields: dict[str, object]) -> str:
    reason = fields.get("reason")
    if reason == "done":
        return f"this period's run is done (pid {fields.get('ran_pid')} on {fields.get('ran_host')})"
    if reason == "unknown":
        return "the server restarted since the period began: whether its run is done cannot be known"
    if reason == "queued":
        return f"merged into the run that waits for the copy holding the lock: {_holder(fields)}"
    return f"another copy holds the lock: {_holder(fields)}"


def _holder(fields: dict[str, object]) -> str:
    pid, host, age = fields.get("holder_pid"), fields.get("holder_host"), fields.get("holder_age")
    about = "pid unknown" if pid is None else f"pid {pid}"
    if host is not None:
        about += f" on {host}"
    if age is not None:
        about += f" for {age} s"
    return about


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _in_background(request: _Ping) -> None:
    """Send ``request`` in a daemon thread, after the pings sent before it (waited for at most :data:`BUDGET`)."""
    import threading

    earlier = _in_flight[-1] if _in_flight else None

    def after_earlier() -> None:
        if earlier is not None:
            earlier.join(BUDGET)
        request.send(time.monotonic() + BUDGET)

    thread = threading.Thread(target=after_earlier, name="runalways-ping", daemon=True)
    thread.start()
    _in_flight.append(thread)


def _wait_for_earlier() -> None:
    """Wait for the pings sent in the background, at most :data:`BUDGET`: the monitor sees them first."""
    if _in_flight:
        _in_flight[-1].join(BUDGET)  # the last one waits for those before it


class _Ping:
    """One request to the monitor, and whether its failure was said (once, by whichever gave up first)."""

    def __init__(self, url: str, suffix: str, rid: str | None, body: str | bytes) -> None:
        import threading

        self.url = url
        self.address = ping_url(url, suffix, rid)
        data = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
        self.body = tail(data, BODY_LIMIT)
        self._said = threading.Lock()

    def send_bounded(self) -> None:
        """Send, and return after :data:`BUDGET` at the latest, answered or not."""
        import threading

        deadline = time.monotonic() + BUDGET
        thread = threading.Thread(target=self.send, args=(deadline,), name="runalways-ping", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no new thread at the interpreter's shutdown: send from here, socket timeouts only
            self.send(deadline)
            return
        thread.join(max(deadline - time.monotonic(), 0.0) + 0.05)
        if thread.is_alive():
            self.failed(f"no answer within {BUDGET:g} s")

    def send(self, deadline: float) -> None:
        """Make the request, and one retry after a fast failure, until ``deadline``."""
        try:
            reason = self._attempt(deadline)
            if reason is not None and reason[1] and deadline - time.monotonic() > RETRY_PAUSE + 0.5:
                time.sleep(RETRY_PAUSE)
                reason = self._attempt(deadline)
        except Exception as error:  # a URL urllib cannot parse, a host name IDNA refuses...
            reason = (str(error) or type(error).__name__, False)
        if reason is not None:
            self.failed(reason[0])

    def _attempt(self, deadline: float) -> tuple[str, bool] | None:
        """One request: None when the monitor took it, else why not and whether to retry."""
        import socket
        from http.client import HTTPException
        from urllib.error import HTTPError, URLError
        from urllib.request import Request, urlopen

        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return f"no answer within {BUDGET:g} s", False
        request = Request(
            self.address,
            data=self.body,
            method="POST",
            headers={"User-Agent": user_agent(), "Content-Type": "text/plain; charset=utf-8"},
        )
        try:
            with urlopen(request, timeout=timeout) as response:
                response.read(4096)  # "OK": read, so that the connection ends cleanly
        except HTTPError as error:
            error.close()
            return f"HTTP {error.code} {error.reason}", error.code >= 500
        except URLError as error:
            cause = error.reason
            if isinstance(cause, (socket.timeout, TimeoutError)):
                return f"no answer within {BUDGET:g} s", False
            return (cause.strerror or str(cause) if isinstance(cause, OSError) else str(cause)), True
        except (socket.timeout, TimeoutError):
            return f"no answer within {BUDGET:g} s", False
        except OSError as error:  # reset while reading the answer
            return error.strerror or str(error) or type(error).__name__, True
        except HTTPException as error:  # not HTTP: a bad status line, say
            return f"not an HTTP answer ({type(error).__name__})", True
        return None

    def failed(self, reason: str) -> None:
        if self._said.acquire(blocking=False):  # the waiting thread and the sending one may both give up: one line
            say(f"runalways: cannot ping {shown(self.url)}: {secret_hidden(reason, self.url)}")


def tail(data: bytes, limit: int) -> bytes:
    """The last ``limit`` bytes of ``data``, less the rest of a UTF-8 character cut in two."""
    if len(data) <= limit:
        return data
    data = data[-limit:]
    cut = 0
    while cut < 3 and cut < len(data) and 0x80 <= data[cut] < 0xC0:
        cut += 1
    return data[cut:]


def user_agent() -> str:
    """``runalways/<version>``: the package is loaded whenever this module is (a submodule's
    import runs it first), so its version is read, not imported."""
    package = sys.modules.get("runalways")
    return f"runalways/{getattr(package, '__version__', 'unknown')}"
