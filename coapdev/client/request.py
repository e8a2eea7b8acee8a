"""Building requests: methods, payload encoding, block sizes, the aiocoap message.

No I/O here; aiocoap is imported only when a message is built, so importing
the client library stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..const import ContentFormat
from ..errors import ClientError, PayloadError
from ..payload import encode
from .address import DeviceAddress

#: Request methods by name (RFC 7252 and RFC 8132).
METHODS = ("GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "IPATCH")

Payload = bytes | str | Any


def method_code(method: str) -> Any:
    """The aiocoap Code of a method name (``iPATCH`` in any case)."""
    from aiocoap import Code

    name = method.upper()
    if name not in METHODS:
        raise ClientError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    return Code.iPATCH if name == "IPATCH" else getattr(Code, name)


def block_size_exponent(size: int) -> int:
    """16, 32, ... 1024 bytes → the SZX of RFC 7959 (0 to 6)."""
    if size not in (16, 32, 64, 128, 256, 512, 1024):
        raise ClientError(f"block size must be 16, 32, 64, 128, 256, 512 or 1024, not {size}")
    return size.bit_length() - 5


def norm_path(path: str) -> str:
    """``light`` and ``/light`` alike: one leading slash."""
    return "/" + path.lstrip("/")


def encode_payload(payload: Payload, content_format: int | None) -> tuple[bytes, int | None]:
    """(bytes, content format) to send: bytes as they are, text as text, the rest as CBOR."""
    if isinstance(payload, bytes):
        return payload, content_format
    if isinstance(payload, str) and content_format in (None, ContentFormat.TEXT):
        return payload.encode(), ContentFormat.TEXT
    fmt = ContentFormat.CBOR if content_format is None else content_format
    try:
        return encode(payload, fmt), fmt
    except (PayloadError, TypeError, ValueError) as exc:
        raise ClientError(f"cannot encode payload: {exc}") from None


def build_message(
    target: DeviceAddress,
    method: str,
    path: str,
    payload: bytes,
    *,
    content_format: int | None = None,
    accept: int | None = None,
    observe: bool = False,
    options: Sequence[tuple[int, bytes]] = (),
    confirmable: bool = True,
    block_size_exp: int = 6,
) -> Any:
    """The aiocoap Message for one request to ``target``."""
    from aiocoap import Message, Reliable, Unreliable
    from aiocoap.numbers import OptionNumber
    from aiocoap.optiontypes import BlockOption

    msg = Message(
        code=method_code(method),
        uri=target.uri_base + norm_path(path),
        payload=payload,
        transport_tuning=Reliable if confirmable else Unreliable,
    )
    if content_format is not None:
        msg.opt.content_format = content_format
    if accept is not None:
        msg.opt.accept = accept
    if observe:
        msg.opt.observe = 0
    if block_size_exp < 6 and method.upper() in ("GET", "FETCH"):
        # ask for small blocks from the first one (early negotiation)
        msg.opt.block2 = BlockOption.BlockwiseTuple(0, False, block_size_exp)
    for number, value in options:
        msg.opt.add_option(OptionNumber(number).create_option(decode=value))
    return msg
