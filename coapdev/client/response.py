"""What a device answers: codes and their names, error mapping, link format.

Device-supplied text is escaped here (:func:`escape_text`) before it can
reach a message or a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ClientError, NotAuthorized, RequestFailed
from ..payload import decode

CODE_NAMES = {
    "2.01": "Created",
    "2.02": "Deleted",
    "2.03": "Valid",
    "2.04": "Changed",
    "2.05": "Content",
    "2.31": "Continue",
    "4.00": "Bad Request",
    "4.01": "Unauthorized",
    "4.02": "Bad Option",
    "4.03": "Forbidden",
    "4.04": "Not Found",
    "4.05": "Method Not Allowed",
    "4.06": "Not Acceptable",
    "4.08": "Request Entity Incomplete",
    "4.09": "Conflict",
    "4.12": "Precondition Failed",
    "4.13": "Request Entity Too Large",
    "4.15": "Unsupported Content-Format",
    "4.22": "Unprocessable Entity",
    "4.29": "Too Many Requests",
    "5.00": "Internal Server Error",
    "5.01": "Not Implemented",
    "5.02": "Bad Gateway",
    "5.03": "Service Unavailable",
    "5.04": "Gateway Timeout",
    "5.05": "Proxying Not Supported",
}


@dataclass
class Response:
    code: str  # "2.05"
    payload: bytes
    content_format: int | None

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")

    @property
    def value(self) -> Any:
        """The payload decoded by its content format (raw bytes if it has none)."""
        return decode(self.payload, self.content_format)

    def __str__(self) -> str:
        return code_name(self.code)


def from_message(raw: Any) -> Response:
    """The Response for an aiocoap message."""
    number = int(raw.code)
    return Response(f"{number >> 5}.{number & 0x1F:02d}", raw.payload, raw.opt.content_format)


def code_name(code: str) -> str:
    """``"4.04"`` → ``"4.04 Not Found"``."""
    return f"{code} {CODE_NAMES.get(code, '')}".rstrip()


def escape_text(text: str) -> str:
    """A device-supplied string made safe for a terminal: control characters escaped.

    ESC, CR, backspace and friends could otherwise rewrite what the user
    sees (or forge lines); they are shown as ``\\x1b`` and the like.
    """
    out = []
    for char in text:
        if char.isprintable() or char == " ":
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _diagnostic(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    return escape_text(" ".join(text.split()))[:300]


def check_response(response: Response, what: str) -> Response:
    """Raise the matching ClientError for an error response.

    The message is ``WHAT: CODE NAME: REASON``, the reason being the
    device's diagnostic payload with control characters escaped.
    """
    if response.ok:
        return response
    reason = _diagnostic(response.payload) or "no reason given"
    message = f"{what}: {code_name(response.code)}: {reason}"
    if response.code in ("4.01", "4.03"):
        raise NotAuthorized(message)
    error = RequestFailed(response.code, message)
    error.args = (message,)  # str() is the one line, without the code repeated in front
    error.diagnostic = reason
    raise error


@dataclass
class Link:
    """One entry of ``/.well-known/core``."""

    path: str
    attributes: dict[str, str]

    @property
    def observable(self) -> bool:
        return "obs" in self.attributes

    @property
    def methods(self) -> list[str]:
        return self.attributes.get("methods", "").split()


def parse_links(payload: bytes) -> list[Link]:
    """Link format (RFC 6690) as coapdev devices serve it; odd entries are skipped."""
    from aiocoap.util.linkformat import parse

    try:
        links = parse(payload.decode("utf-8", "replace")).links
    except Exception as exc:  # the parser raises several types on bad input
        raise ClientError(f"the device's /.well-known/core is not link format: {exc}") from None
    out = []
    for link in links:
        attributes: dict[str, str] = {}
        for key, value in link.attr_pairs:
            attributes[str(key)] = "" if value is None else str(value)
        out.append(Link(str(link.href), attributes))
    return out
