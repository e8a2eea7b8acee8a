"""Payload encoding by content format, shared by the device, the client and the CLI.

Decoders never let a library exception escape: malformed input becomes a
:class:`PayloadError` with a short reason, which the server maps to 4.00.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2

from .const import ContentFormat, Key
from .errors import PayloadError

#: Deepest nesting accepted in a decoded payload: a guard against stack
#: exhaustion by hostile input such as 100 000 nested arrays.
MAX_NESTING = 32


def decode(payload: bytes, content_format: int | None) -> Any:
    """Decode a payload by its content format (None: raw bytes, empty: None)."""
    if content_format == ContentFormat.CBOR:
        return decode_cbor(payload)
    if content_format == ContentFormat.JSON:
        return decode_json(payload)
    if content_format in (ContentFormat.TEXT, ContentFormat.LINK_FORMAT):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("text payload is not valid UTF-8") from None
    return payload


def decode_cbor(payload: bytes) -> Any:
    if not payload:
        raise PayloadError("empty CBOR payload")
    _check_cbor_depth(payload)
    try:
        return cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise PayloadError(f"invalid CBOR: {exc}") from None


def decode_json(payload: bytes) -> Any:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("invalid JSON: nested too deeply") from None
    _check_depth(value)
    return value


def encode(value: Any, content_format: int) -> bytes:
    if content_format == ContentFormat.CBOR:
        return cbor2.dumps(value)
    if content_format == ContentFormat.JSON:
        return json.dumps(value, separators=(",", ":"), default=_json_default).encode()
    if content_format == ContentFormat.TEXT:
        return str(value).encode()
    if isinstance(value, bytes):
        return value
    raise PayloadError(f"cannot encode {type(value).__name__} as content format {content_format}")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_NESTING:
        raise PayloadError(f"payload nested deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_depth(k, depth + 1)
            _check_depth(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_depth(v, depth + 1)


def _check_cbor_depth(data: bytes) -> None:
    """Reject CBOR nested deeper than MAX_NESTING before decoding it.

    A light walk over the item headers: it counts open containers without
    building anything, so hostile nesting costs nothing to refuse.
    """
    pos = 0
    end = len(data)
    stack: list[int] = []  # remaining items in each open container (-1: indefinite)

    def need(n: int) -> None:
        if pos + n > end:
            raise PayloadError("invalid CBOR: truncated")

    while pos < end:
        need(1)
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if initial == 0xFF:  # break
            if not stack or stack[-1] != -1:
                raise PayloadError("invalid CBOR: unexpected break")
            stack.pop()
            _finish_item(stack)
            continue
        if info < 24:
            arg = info
        elif info in (24, 25, 26, 27):
            size = 1 << (info - 24)
            need(size)
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif info == 31 and major in (2, 3, 4, 5):
            arg = -1
        else:
            if major == 7:
                arg = 0
            else:
                raise PayloadError("invalid CBOR: reserved additional information")
        if major in (2, 3):
            if arg == -1:
                stack.append(-1)  # indefinite string: chunks until break
                if len(stack) > MAX_NESTING:
                    raise PayloadError(f"payload nested deeper than {MAX_NESTING} levels")
                continue
            need(arg)
            pos += arg
            _finish_item(stack)
        elif major in (4, 5):
            count = -1 if arg == -1 else arg * (2 if major == 5 else 1)
            if count == 0:
                _finish_item(stack)
                continue
            stack.append(count)
            if len(stack) > MAX_NESTING:
                raise PayloadError(f"payload nested deeper than {MAX_NESTING} levels")
        elif major == 6:
            continue  # a tag applies to the next item
        else:
            _finish_item(stack)
        if not stack and pos < end:
            raise PayloadError("invalid CBOR: extra data after the first item")
    if stack:
        raise PayloadError("invalid CBOR: truncated")


def _finish_item(stack: list[int]) -> None:
    while stack:
        if stack[-1] == -1:
            return
        stack[-1] -= 1
        if stack[-1] > 0:
            return
        stack.pop()


# --- the CLI's typed payloads and pretty output -------------------------------------


def parse_typed_payload(text: str, kind: str = "auto") -> tuple[bytes, int]:
    """Turn a payload typed on a command line into (bytes, content format).

    ``auto``: JSON or CBOR diagnostic notation becomes CBOR; a bare word such
    as ``on`` is sent as text; text that looks like structured data but does
    not parse is an error, not silently sent as text.
    """
    if kind == "text":
        return text.encode(), ContentFormat.TEXT
    if kind == "json":
        decode_json(text.encode())
        return text.encode(), ContentFormat.JSON
    if kind in ("cbor", "auto"):
        try:
            return diag_to_cbor(text), ContentFormat.CBOR
        except PayloadError:
            if kind == "cbor" or _looks_structured(text):
                raise
            return text.encode(), ContentFormat.TEXT
    raise PayloadError(f"unknown payload type {kind!r}")


def _looks_structured(text: str) -> bool:
    stripped = text.strip()
    if not stripped:
        return False
    if stripped[0] in "{[\"'" or stripped.startswith(("h'", "b64'", "<<")):
        return True
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def diag_to_cbor(text: str) -> bytes:
    import cbor_diag

    try:
        return cbor_diag.diag2cbor(text)
    except Exception as exc:  # ValueError with a position, or a Rust panic
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PayloadError(f"not JSON or CBOR diagnostic notation: {first}") from None


def format_for_humans(payload: bytes, content_format: int | None, *, compact: bool = False) -> str:
    """Pretty text for a terminal: JSON-like where possible, else diagnostic notation.

    ``compact`` puts a structured value on one line (for streams of values).
    """
    if not payload:
        return ""
    indent = None if compact else 2
    if content_format == ContentFormat.CBOR:
        value = decode_cbor(payload)
        if _json_representable(value):
            return json.dumps(value, indent=indent, ensure_ascii=False)
        import cbor_diag

        return cbor_diag.cbor2diag(payload)
    if content_format == ContentFormat.JSON:
        return json.dumps(decode_json(payload), indent=indent, ensure_ascii=False)
    if content_format == ContentFormat.LINK_FORMAT:
        return payload.decode("utf-8", "replace").replace(",<", ",\n<")
    if content_format == ContentFormat.TEXT:
        return payload.decode("utf-8", "replace")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.hex(" ")


def _json_representable(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return not isinstance(value, float) or value == value  # NaN is not JSON
    if isinstance(value, list):
        return all(_json_representable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_representable(v) for k, v in value.items())
    return False


def parse_switch(value: Any, current: bool) -> bool:
    """On/off from ``{"on": bool}``, a bool, 0/1 or the words on/off/toggle.

    Shared by the built-in demo light and the default config's light script.
    """
    if isinstance(value, dict) and Key.ON.value in value:
        value = value[Key.ON.value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("on", "true", "1"):
            return True
        if word in ("off", "false", "0"):
            return False
        if word == "toggle":
            return not current
    raise PayloadError('send {"on": true|false}, true/false, or the text on, off or toggle')
