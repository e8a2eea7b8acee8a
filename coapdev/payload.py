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

    The one rule for ``auto``: text that starts like structured data (``{``,
    ``[``, ``"``, ``h'``, ``b64'``, ``<<``) is JSON or CBOR diagnostic
    notation and becomes CBOR (an error if it does not parse); anything else,
    words and numbers alike (``on``, ``1``, ``true``), is sent as UTF-8 text,
    so a script reading text gets exactly what was typed.  ``text``,
    ``json`` and ``cbor`` force one reading (``cbor``: diagnostic notation,
    so ``1`` is the integer 1).
    """
    if kind == "text":
        return text.encode(), ContentFormat.TEXT
    if kind == "json":
        decode_json(text.encode())
        return text.encode(), ContentFormat.JSON
    if kind == "cbor" or (kind == "auto" and looks_structured(text)):
        return diag_to_cbor(text), ContentFormat.CBOR
    if kind == "auto":
        return text.encode(), ContentFormat.TEXT
    raise PayloadError(f"unknown payload type {kind!r}")


#: How structured payloads start (JSON, or CBOR diagnostic notation).
STRUCTURED_STARTS = ("{", "[", '"', "h'", "b64'", "<<")


def looks_structured(text: str) -> bool:
    return text.lstrip().startswith(STRUCTURED_STARTS)


# --- content formats and options by name, for the command line ------------------------

#: Short names for Content-Format numbers (RFC 7252 and the IANA registry).
CONTENT_FORMAT_NAMES: dict[str, int] = {
    "text": 0,
    "link-format": 40,
    "xml": 41,
    "octets": 42,
    "octet-stream": 42,
    "exi": 47,
    "json": 50,
    "json-patch": 51,
    "merge-patch": 52,
    "cbor": 60,
    "cwt": 61,
    "senml-json": 110,
    "senml-cbor": 112,
}
MAX_CONTENT_FORMAT = 65535


def content_format_number(text: str) -> int:
    """A Content-Format given as a number (0-65535), a short name or a media type."""
    word = text.strip().lower()
    if word.isdigit():
        number = int(word)
        if number > MAX_CONTENT_FORMAT:
            raise PayloadError(f"content format must be 0-{MAX_CONTENT_FORMAT}, got {number}")
        return number
    if word in CONTENT_FORMAT_NAMES:
        return CONTENT_FORMAT_NAMES[word]
    from aiocoap.numbers import ContentFormat as Registry

    try:
        return int(Registry.by_media_type(word))
    except (KeyError, ValueError, TypeError):
        pass
    names = ", ".join(sorted(CONTENT_FORMAT_NAMES))
    raise PayloadError(f"unknown content format {text!r}: a number 0-65535 or one of {names}")


def content_format_name(number: int) -> str:
    """The short name of a Content-Format number, or the number."""
    for name, value in CONTENT_FORMAT_NAMES.items():
        if value == number:
            return name
    return str(number)


MAX_OPTION_NUMBER = 65535


def parse_option(text: str) -> tuple[int, bytes]:
    """``NUMBER=VALUE`` or ``NAME=VALUE`` → (option number, encoded value).

    The value is read by the option's format: a uint option takes a decimal
    number, a string option text, an opaque one text or ``0x`` and hex
    digits (``0x`` also works for any option, as the raw bytes).
    """
    from aiocoap.numbers import OptionNumber
    from aiocoap.optiontypes import ContentFormatOption, OpaqueOption, StringOption

    key, equals, value = text.partition("=")
    if not equals:
        raise PayloadError(f"option {text!r}: write NUMBER=VALUE (NUMBER=, for an empty value)")
    key = key.strip()
    if key.isdigit():
        number = int(key)
        if not 0 < number <= MAX_OPTION_NUMBER:
            raise PayloadError(f"option number must be 1-{MAX_OPTION_NUMBER}, got {number}")
    else:
        try:
            number = int(OptionNumber[key.upper().replace("-", "_")])
        except KeyError:
            raise PayloadError(f"unknown option name {key!r}; give its number") from None
    option_format = OptionNumber(number).format
    if value.lower().startswith("0x"):
        try:
            return number, bytes.fromhex(value[2:])
        except ValueError:
            raise PayloadError(f"option {key}: {value!r} is not hex") from None
    if option_format in (StringOption, OpaqueOption):
        return number, value.encode("utf-8")
    # a number: uint options and their kin (content formats, block options)
    if value == "":
        return number, b""
    if option_format is ContentFormatOption and not value.isdigit():
        value = str(content_format_number(value))
    if not value.isdigit():
        raise PayloadError(f"option {key} takes a number, got {value!r}")
    as_int = int(value)
    return number, as_int.to_bytes((as_int.bit_length() + 7) // 8, "big")


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
