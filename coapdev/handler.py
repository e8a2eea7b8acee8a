"""Write a persistent handler for ``coapdev-gateway`` in a few lines.

A resource with ``handler = [argv]`` (docs/gateway.md, "Persistent
handlers") keeps one process running and hands it every request over its
stdin, one JSON object per line; the process answers on its stdout, one JSON
object per line, in any order (requests carry an ``id``).  This module
speaks that protocol so a handler author writes only the callback::

    from coapdev import handler

    app = handler.Router()

    @app.route("GET")
    def read(request: handler.Request) -> handler.Response:
        return handler.Response(payload=b"hello")

    app.serve()

``serve(callback)`` takes any callable from :class:`Request` to
:class:`Response` (or bytes, or str).  A coroutine function is run on an
asyncio loop with one task per request, so a slow request does not hold up
the others; a plain function answers requests one after the other.  An
exception in the callback answers 5.00 and is printed on stderr (which the
gateway logs), never on stdout.  Standard library only: a handler starts in
a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

__all__ = ["Request", "Response", "Router", "serve"]


@dataclass(frozen=True)
class Request:
    """One request the gateway admitted (its roles were checked already)."""

    id: int
    method: str  # "GET", "PUT", "POST", "DELETE"
    path: str  # the resource path, e.g. "/kv"
    query: tuple[str, ...]  # the Uri-Query options, as sent ("key=a")
    client_id: str  # empty for a resource declared shared
    client_name: str
    client_role: str  # "admin" or "user"
    content_format: int | None
    accept: int | None
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The value of query option ``name=...`` (the first one), or ``default``."""
        prefix = name + "="
        for item in self.query:
            if item.startswith(prefix):
                return item[len(prefix) :]
            if item == name:
                return ""
        return default

    @classmethod
    def from_line(cls, line: bytes) -> Request:
        doc = json.loads(line)
        client = doc.get("client") or {}
        return cls(
            id=doc["id"],
            method=doc["method"],
            path=doc.get("path", ""),
            query=tuple(doc.get("query") or ()),
            client_id=client.get("id", ""),
            client_name=client.get("name", ""),
            client_role=client.get("role", ""),
            content_format=doc.get("content_format"),
            accept=doc.get("accept"),
            payload=base64.b64decode(doc.get("payload") or ""),
        )


@dataclass
class Response:
    """An answer: a CoAP code ("2.05", "4.04", ...), a payload and its content format.

    Without ``content_format`` the resource's ``output`` format applies.
    """

    payload: bytes | str = b""
    code: str = "2.05"
    content_format: int | None = None
    #: Set by the helper: which request this answers.
    id: int = field(default=0, repr=False)

    def line(self) -> bytes:
        payload = self.payload.encode("utf-8") if isinstance(self.payload, str) else self.payload
        doc: dict[str, Any] = {"id": self.id, "code": self.code}
        if self.content_format is not None:
            doc["content_format"] = self.content_format
        if payload:
            doc["payload"] = base64.b64encode(payload).decode("ascii")
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


Answer = Response | bytes | str | None
Callback = Callable[[Request], Answer] | Callable[[Request], Awaitable[Answer]]

#: What a method without a route answers (the gateway only sends methods the
#: config lists, so this means the config and the router disagree).
_NO_ROUTE = "4.05"
_DEFAULT_CODES = {"GET": "2.05", "PUT": "2.04", "POST": "2.01", "DELETE": "2.02"}


class Router:
    """Callbacks per method: ``@router.route("GET")``; ``router.serve()`` runs them."""

    def __init__(self) -> None:
        self.routes: dict[str, Callback] = {}

    def route(self, *methods: str) -> Callable[[Callback], Callback]:
        def register(callback: Callback) -> Callback:
            for method in methods:
                self.routes[method.upper()] = callback
            return callback

        return register

    async def __call__(self, request: Request) -> Answer:
        callback = self.routes.get(request.method)
        if callback is None:
            return Response(f"{request.method} is not handled", code=_NO_ROUTE)
        answer = callback(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    def serve(self, **kwargs: Any) -> None:
        serve(self, **kwargs)


def _response(request: Request, answer: Answer) -> Response:
    if isinstance(answer, Response):
        response = answer
        if response.code == "2.05" and request.method != "GET":
            response.code = _DEFAULT_CODES[request.method]
    else:
        response = Response(answer or b"", code=_DEFAULT_CODES.get(request.method, "2.05"))
    response.id = request.id
    return response


def _failed(request_id: int, exc: BaseException) -> bytes:
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    return Response(f"handler failed: {type(exc).__name__}", code="5.00", id=request_id).line()


def serve(
    callback: Callback,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> None:
    """Answer the gateway's requests with ``callback`` until stdin closes."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
        type(callback).__call__  # a Router
    ):
        asyncio.run(_serve_async(callback, stdin, stdout))
        return
    for batch in _batches(stdin):
        answers = []
        for line in batch:
            request_id = 0
            try:
                request = Request.from_line(line)
                request_id = request.id
                answers.append(_response(request, callback(request)).line())  # type: ignore[arg-type]
            except Exception as exc:
                answers.append(_failed(request_id, exc))
        stdout.write(b"".join(answers))  # one write for all the requests that were waiting
        stdout.flush()


def _batches(stdin: BinaryIO) -> Iterator[list[bytes]]:
    """The complete lines waiting on ``stdin``, a list per read (at least one line each).

    Under load the gateway has several requests in the pipe at once; answering
    them all before one write saves a system call per request on both sides.
    """
    read1 = getattr(stdin, "read1", None)
    if read1 is None:
        for line in stdin:
            yield [line]
        return
    partial = b""
    while chunk := read1(1 << 16):
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        if lines:
            yield [line + b"\n" for line in lines]
    if partial:
        yield [partial]


async def _serve_async(callback: Callback, stdin: BinaryIO, stdout: BinaryIO) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes] = asyncio.Queue()

    def read() -> None:  # a thread: portable, and stdin may be any file
        for line in stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, b"")

    threading.Thread(target=read, daemon=True).start()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(line: bytes) -> None:
        request_id = 0
        try:
            request = Request.from_line(line)
            request_id = request.id
            result = callback(request)
            if inspect.isawaitable(result):
                result = await result
            out = _response(request, result).line()
        except Exception as exc:
            out = _failed(request_id, exc)
        stdout.write(out)
        stdout.flush()

    while line := await lines.get():
        task = loop.create_task(answer(line))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
