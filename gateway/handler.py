"""Persistent handlers: one long-running process answers a resource's requests.

A resource with ``handler = [argv]`` keeps that command running (started
with the resource, restarted with back-off by :func:`~gateway.runner.supervise_lines`
when it exits, killed with its whole tree when the resource goes) and hands
it each admitted request as one JSON line on its stdin; the command answers
with one JSON line per request on its stdout, in any order (docs/gateway.md,
"Persistent handlers", defines both).

What the handler prints is never trusted:

- a line that is not a JSON object with a known ``id`` cannot be attributed
  to a request, so the stream is out of step: the handler is restarted and
  every request it held is answered 5.02;
- a line over the answer limit ends it likewise (:class:`~gateway.runner.LineProcess`);
- an answer with a bad code, content format or payload answers its own
  request 5.02; an answer for an id that is not pending (it timed out, or
  never existed) is dropped;
- every one of these is one log line (escaped and rate-limited like every
  log line), never a traceback.

Requests wait at most ``timeout_s`` (5.04), at most ``max_pending`` are held
at once (5.03 with Max-Age beyond), and while the handler is down they get
5.03 with Max-Age set to the time until its restart.  A request whose line
the handler has not taken from its stdin by the request's deadline means it
has stopped reading: it is restarted, so what waits for its stdin is never
more than the lines of the requests it holds (``max_pending`` of them).  The encoding and
parsing are plain functions (:func:`encode_request`, :func:`parse_answer`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coapdev.errors import BadGateway, GatewayTimeout, RequestRefused, ServiceUnavailable

from .scripts import LineProcess, supervise_lines

log = logging.getLogger("coapdev.gateway.handler")

#: Answer codes a handler may give: the success codes of the four methods, and
#: any client or server error.  2.03 (Valid) and 2.31 (Continue) belong to the gateway.
_SUCCESS_CODES = frozenset({"2.01", "2.02", "2.04", "2.05"})
#: What a JSON line costs beyond its base64 payload (id, code, format, keys).
ANSWER_OVERHEAD_BYTES = 256
#: Ids of requests that timed out, remembered so their late answers are no news.
EXPIRED_IDS_KEPT = 1024
#: Request lines are compact ASCII JSON (one encoder, not one per request).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
#: How much of a bad line goes into the log.
SHOWN_BYTES = 60


@dataclass(frozen=True, slots=True)
class Answer:
    """A response as a script or handler gave it: code, content format (None: the
    resource's output format) and payload."""

    code: str
    content_format: int | None
    payload: bytes


class ProtocolError(Exception):
    """A line from the handler that is not a usable answer; ``request_id`` if one was named."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


# --- the wire format (pure) ----------------------------------------------------------------


def encode_request(request_id: int, fields: Mapping[str, Any], payload: bytes) -> bytes:
    """One request line: ``fields`` (method, path, query, client, formats) plus id and payload."""
    doc = {"id": request_id, **fields, "payload": base64.b64encode(payload).decode("ascii")}
    return _ENCODER.encode(doc).encode() + b"\n"


def parse_answer(line: bytes) -> tuple[int, Answer]:
    """The request id and answer in one line from the handler, or ProtocolError."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        raise ProtocolError("wrote a line that is not a JSON object")
    request_id = doc.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int):
        raise ProtocolError("wrote an answer without an integer id")
    code = doc.get("code", "2.05")
    if not _valid_code(code):
        raise ProtocolError(f"answered with an invalid code {_show(code)}", request_id)
    fmt = doc.get("content_format")
    if fmt is not None and (
        isinstance(fmt, bool) or not isinstance(fmt, int) or not 0 <= fmt <= 0xFFFF
    ):
        raise ProtocolError(f"answered with an invalid content_format {_show(fmt)}", request_id)
    encoded = doc.get("payload", "")
    try:
        if not isinstance(encoded, str):
            raise TypeError
        payload = base64.b64decode(encoded, validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise ProtocolError("answered with a payload that is not base64", request_id) from None
    return request_id, Answer(code, fmt, payload)


def _valid_code(code: Any) -> bool:
    if not isinstance(code, str) or len(code) != 4 or code[1] != ".":
        return False
    if code in _SUCCESS_CODES:
        return True
    cls, detail = code[0], code[2:]
    return cls in "45" and detail.isdigit() and int(detail) <= 31


def _show(value: Any) -> str:
    """A short, quoted rendering of what the handler sent, for a log line."""
    if isinstance(value, bytes):
        return repr(value[:SHOWN_BYTES].decode("utf-8", "replace"))
    return repr(value)[:SHOWN_BYTES]


def _expire(future: asyncio.Future[Answer]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def max_line_bytes(max_output_bytes: int) -> int:
    """Longest answer line for a payload of ``max_output_bytes``."""
    return 4 * math.ceil(max_output_bytes / 3) + ANSWER_OVERHEAD_BYTES


# --- the process ---------------------------------------------------------------------------


class Handler:
    """The link to one handler process: pending requests by id, bounded, timed out."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        path: str,
        env: Mapping[str, str],
        cwd: str,
        max_pending: int,
        max_output_bytes: int,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.argv = tuple(argv)
        self.path = path
        self.what = f"handler of {path}"
        self.env = env
        self.cwd = cwd
        self.max_pending = max_pending
        self.max_line_bytes = max_line_bytes(max_output_bytes)
        self.backoff_s = backoff_s
        self._process: LineProcess | None = None
        self._ready = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._waiting = 0
        self._expired: collections.deque[int] = collections.deque(maxlen=EXPIRED_IDS_KEPT)
        self._next_id = 1
        #: Request lines not written yet: every request of one turn of the loop goes
        #: into the pipe with one write (the handler helper answers them with one too).
        self._outbox: list[tuple[int, bytes]] = []
        #: Bytes written to the running process's stdin, and where each pending
        #: request's line ends in that stream (its line is taken once the pipe
        #: took that many: written minus what still waits in our buffer).
        self._written = 0
        self._line_ends: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        #: While down: when it starts again (monotonic), and why it went.
        self._restart_at: float | None = None
        self._down_reason = ""
        #: Why we ended the process ourselves (its exit then says this).
        self._kill_reason = ""

    # --- lifecycle ---

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                supervise_lines(
                    self.argv,
                    self._line,
                    what=self.what,
                    env=self.env,
                    cwd=self.cwd,
                    max_line_bytes=self.max_line_bytes,
                    backoff_s=self.backoff_s,
                    stdin=True,
                    on_start=self._started,
                    on_exit=self._exited,
                    on_stderr_line=self._stderr_line,
                ),
                name=self.what,
            )

    def stop(self) -> None:
        """Kill the handler (its whole tree) and refuse what it held."""
        if self._process is not None:
            self._process.kill()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._process = None
        self._ready.clear()
        self._fail_all(ServiceUnavailable(f"{self.path} was reconfigured; try again"))

    def _started(self, process: LineProcess) -> None:
        self._process = process
        self._written = 0
        self._line_ends.clear()
        self._restart_at = None
        self._kill_reason = ""
        self._ready.set()

    def _exited(self, why: str, restart_in_s: float) -> None:
        why = self._kill_reason or f"exited ({why})"
        self._process = None
        self._ready.clear()
        self._restart_at = time.monotonic() + restart_in_s
        self._down_reason = why
        self._fail_all(
            BadGateway(f"{self.what} {why}; restarting in {restart_in_s:.1f} s"),
        )

    def _fail_all(self, refusal: RequestRefused) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(refusal)

    def _stderr_line(self, line: bytes) -> None:
        if line.strip():
            log.warning("%s: %s", self.what, line.decode("utf-8", "replace"))

    # --- answers ---

    def _line(self, line: bytes) -> None:
        try:
            request_id, answer = parse_answer(line)
        except ProtocolError as exc:
            future = self._pending.pop(exc.request_id, None) if exc.request_id is not None else None
            if future is not None:
                log.warning("%s %s; request %d answered 5.02", self.what, exc, exc.request_id)
                if not future.done():
                    future.set_exception(BadGateway(f"{self.what} {exc}"))
                return
            self._restart(str(exc), _show(line))
            return
        future = self._pending.pop(request_id, None)
        if future is None:
            if request_id not in self._expired:
                log.warning("%s answered request %d, which is not pending", self.what, request_id)
            return
        if not future.done():
            future.set_result(answer)

    def _restart(self, reason: str, shown: str = "") -> None:
        """End the process for ``reason`` (its exit then fails what it held with it)."""
        if shown:
            log.warning("%s %s (%s); restarting it", self.what, reason, shown)
        else:
            log.warning("%s %s; restarting it", self.what, reason)
        self._kill_reason = reason
        if self._process is not None:
            self._process.kill()
            # Until its exit is seen the process still looks alive: requests from now
            # on wait for the next start instead of going to it (it reads no more, and
            # its exit fails what it holds).
            self._process = None
            self._ready.clear()

    # --- requests ---

    async def ask(self, fields: Mapping[str, Any], payload: bytes, timeout_s: float) -> Answer:
        """The handler's answer to one request, or a refusal (5.02, 5.03, 5.04)."""
        if len(self._pending) + self._waiting >= self.max_pending:
            raise ServiceUnavailable(f"{self.path} is busy; try again", retry_after_s=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        process = self._process
        if process is None or not process.running:
            process = await self._wait_running(deadline, timeout_s)
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Answer] = loop.create_future()
        self._pending[request_id] = future
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append((request_id, encode_request(request_id, fields, payload)))
        expiry = loop.call_at(deadline, _expire, future)
        try:
            return await future
        except TimeoutError:
            self._expired.append(request_id)
            if self._unread(request_id):
                self._restart("is not reading its input")
            raise GatewayTimeout(f"{self.what} did not answer within {timeout_s:g} s") from None
        finally:
            expiry.cancel()
            self._pending.pop(request_id, None)
            self._line_ends.pop(request_id, None)

    def _flush(self) -> None:
        # Only lines of requests still pending (one given up meanwhile is not sent).
        queued = [(rid, line) for rid, line in self._outbox if rid in self._pending]
        self._outbox = []
        if not queued:
            return
        process = self._process  # the one running now (requests held by one that exited are failed)
        if process is None or not process.write(b"".join(line for _, line in queued)):
            refusal = BadGateway(f"{self.what} is not reading its input")
            for request_id, _ in queued:
                future = self._pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_exception(refusal)
            return
        for request_id, line in queued:
            self._written += len(line)
            self._line_ends[request_id] = self._written

    def _unread(self, request_id: int) -> bool:
        """Whether the request's line still waits in our buffer for the handler's stdin."""
        end = self._line_ends.get(request_id)
        process = self._process
        if end is None or process is None:
            return False
        return end > self._written - process.pending_input_bytes()

    async def _wait_running(self, deadline: float, timeout_s: float) -> LineProcess:
        """The process once it runs; refused at once while it waits out its back-off."""
        if self._restart_at is not None:
            left = self._restart_at - time.monotonic()
            raise ServiceUnavailable(
                f"{self.what} {self._down_reason}; restarting, try again",
                retry_after_s=max(1.0, left),
            )
        self.start()  # (a no-op once started: it is starting now)
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._ready.wait()
        except TimeoutError:
            raise GatewayTimeout(f"{self.what} did not start within {timeout_s:g} s") from None
        finally:
            self._waiting -= 1
        process = self._process
        if process is None or not process.running:
            raise BadGateway(f"{self.what} {self._down_reason or 'is not running'}")
        return process
