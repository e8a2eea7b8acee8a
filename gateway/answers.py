"""What goes into a script and comes out of it: its inputs, its success codes and
output formats, and GET answers kept for ``max_age_s``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from aiocoap import Code, Message

from coapdev.const import ContentFormat

from .config import OutputFormat

OUTPUT_FORMATS = {
    OutputFormat.TEXT: ContentFormat.TEXT,
    OutputFormat.JSON: ContentFormat.JSON,
    OutputFormat.CBOR: ContentFormat.CBOR,
    OutputFormat.OCTETS: ContentFormat.OCTET_STREAM,
}
SUCCESS = {"GET": "2.05", "PUT": "2.04", "POST": "2.01", "DELETE": "2.02"}
SUCCESS_CODES = frozenset(SUCCESS.values())


@dataclass(frozen=True, slots=True)
class ScriptInputs:
    """Everything a script run can depend on: runs with equal inputs give one answer.

    For a resource declared ``shared``, the client fields are left empty:
    its output does not depend on who asks.
    """

    client_id: str
    client_name: str
    client_role: str
    query: tuple[str, ...]
    payload: bytes
    content_format: int | None
    accept: int | None


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A GET answer kept for ``max_age_s``, with the ETag of its content."""

    payload: bytes
    content_format: int | None
    etag: bytes
    expires: float  # monotonic

    @classmethod
    def of(cls, response: Message, expires: float) -> CachedAnswer:
        fmt = response.opt.content_format
        digest = hashlib.blake2b(digest_size=8)
        digest.update(b"%d:" % (-1 if fmt is None else int(fmt)))
        digest.update(response.payload)
        return cls(bytes(response.payload), fmt, digest.digest(), expires)

    def answer(self, request: Message, now: float) -> Message:
        """2.05 with the content, or 2.03 if the client holds this ETag; Max-Age what is left."""
        if self.etag in request.opt.etags:
            response = Message(code=Code.VALID)
        else:
            response = Message(
                code=Code.CONTENT, payload=self.payload, content_format=self.content_format
            )
        response.opt.etag = self.etag
        response.opt.max_age = max(0, int(self.expires - now))
        return response


def code_of(text: str) -> Code:
    """ "2.05" as aiocoap's Code."""
    cls, detail = text.split(".")
    return Code(int(cls) * 32 + int(detail))


def format_number(value: Any) -> str:
    return "" if value is None else str(int(value))


def json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)
