"""What answers look like: refusals, diagnostics, content formats, the request log.

Shared by every path that answers a request (the site, the guarded
resources, the fast path), so a refusal or an error reads the same
whichever path served it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection
from typing import Any

from aiocoap import Code, Message

from ..const import ContentFormat
from ..errors import (
    BadRequest,
    NotAcceptable,
    PayloadError,
    RequestRefused,
    UnsupportedContentFormat,
)
from ..model import Origin, Principal
from ..payload import decode, encode

request_log = logging.getLogger("coapdev.requests")


def path_text(path: Collection[str]) -> str:
    """A Uri-Path as the text clients and logs see ("/a/b")."""
    return "/" + "/".join(path)


def refusal_message(exc: RequestRefused) -> Message:
    """The response for a refusal: its code, its text as diagnostic, Max-Age if given.

    Domain errors of the model and the store (:class:`~coapdev.errors.StoreError`)
    arrive here too: each is the refusal coapdev.errors names for it.
    """
    cls, detail = (int(part) for part in exc.code.split("."))
    message = with_diagnostic(
        Message(
            code=Code(cls * 32 + detail),
            payload=exc.message.encode("utf-8"),
            content_format=ContentFormat.TEXT if exc.message else None,
        )
    )
    if exc.retry_after_s is not None:
        message.opt.max_age = max(1, math.ceil(exc.retry_after_s))
    return message


def with_diagnostic(response: Message, request: Message | None = None) -> Message:
    """Give an error response without a payload a short diagnostic (docs/protocol.md).

    aiocoap's own refusals (no such resource, method not allowed, bad
    option) come without one; a client should still learn why.
    """
    code = response.code
    if code is None or response.payload or int(code) < int(Code.BAD_REQUEST):
        return response
    path = path_text(request.opt.uri_path) if request is not None else ""
    if code == Code.NOT_FOUND and request is not None:
        text = f"no resource at {path} (GET /.well-known/core lists them)"
    elif code == Code.METHOD_NOT_ALLOWED and request is not None:
        text = f"{request.code} is not allowed on {path}"
    else:
        text = str(code).split(" ", 1)[-1].lower()
    response.payload = text.encode("utf-8")
    response.opt.content_format = ContentFormat.TEXT
    return response


def response_format(request: Message, who: Principal | None = None) -> int:
    """The content format to answer in: what the client Accepts, CBOR or JSON.

    Without an Accept option: CBOR, except for clients onboarded the Tradfri
    way, whose code expects JSON as a Tradfri gateway speaks it.
    """
    accept = request.opt.accept
    if accept is None:
        client = who.client if who is not None else None
        tradfri = client is not None and client.origin is Origin.TRADFRI
        return ContentFormat.JSON if tradfri else ContentFormat.CBOR
    if accept in (ContentFormat.CBOR, ContentFormat.JSON):
        return int(accept)
    raise NotAcceptable("this resource answers in CBOR (60) or JSON (50)")


def value_response(
    request: Message, value: Any, code: Code | None = None, who: Principal | None = None
) -> Message:
    """``value`` encoded in the format the request asks for (see :func:`response_format`)."""
    fmt = response_format(request, who)
    return Message(code=code, payload=encode(value, fmt), content_format=fmt)


def request_value(request: Message) -> Any:
    """The request payload decoded by its content format (CBOR if none is given)."""
    fmt = request.opt.content_format
    if not request.payload:
        fmt = ContentFormat.TEXT  # empty is empty, whatever format it declares
    elif fmt is None:
        fmt = ContentFormat.CBOR
    if fmt not in (ContentFormat.CBOR, ContentFormat.JSON, ContentFormat.TEXT):
        raise UnsupportedContentFormat("send CBOR (60), JSON (50) or text (0)")
    try:
        return decode(request.payload, int(fmt))
    except PayloadError as exc:
        raise BadRequest(str(exc)) from None


class LoggedPipe:
    """Wraps a pipe to log one line per request with its first response code."""

    def __init__(self, pipe: Any, who: str, started: float) -> None:
        self._pipe = pipe
        self._original_request = pipe.request
        self.request = pipe.request  # the site replaces this with the path-stripped request
        self._who = who
        self._started = started
        self._logged = False

    def add_response(self, response: Message, is_last: bool = False) -> None:
        with_diagnostic(response, self._original_request)
        if not self._logged:
            self._logged = True
            log_request(self._original_request, self._who, response.code, self._started)
        self._pipe.add_response(response, is_last)


def log_request(request: Message, who: str, code: Any, started: float) -> None:
    """One line of the request log: who, method, path, first response code, duration."""
    if request_log.isEnabledFor(logging.INFO):
        duration_ms = (time.perf_counter() - started) * 1000
        request_log.info(
            "client=%s %s %s %s %.1fms",
            who,
            request.code,
            path_text(request.opt.uri_path),
            code,
            duration_ms,
        )
