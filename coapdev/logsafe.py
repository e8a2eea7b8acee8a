"""Logs that peers can neither forge nor flood.

Two logging filters, installed on the gateway's handlers by :func:`install`
so they cover every logger (ours, aiocoap's, zeroconf's) without any call
site having to remember:

- :class:`EscapingFilter` escapes control characters in the whole message
  once it is formatted: a Uri-Path segment holding a newline and a fake
  time stamp stays on its own line as ``\\n2026-...``, an ESC sequence
  cannot repaint the terminal.  Tracebacks keep their line breaks but every
  line of them is indented, so no line of a traceback can pass for a log
  line of its own.
- :class:`RepeatLimiter` lets each call site (logger, message template; for
  the request log also the client) write ``burst`` lines at once and
  ``per_minute`` after that; the rest are counted and reported as
  ``(N similar messages suppressed)`` with the next line of that kind, or by
  :meth:`RepeatLimiter.flush`.

Sans-I/O apart from the logging calls: the clock is passed in.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: C0 controls, DEL, C1 controls, Unicode line/paragraph separators and
#: direction overrides and isolates: what can forge or hide text in a log.
UNSAFE_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: Loggers whose lines are keyed by their first argument as well (the client).
PER_CLIENT_LOGGERS = frozenset({"coapdev.requests"})
#: Distinct call sites (or call sites and clients) tracked; the oldest is forgotten.
MAX_TRACKED_KEYS = 4096


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every unsafe character written as an escape (``\\n``, ``\\x1b``)."""
    return UNSAFE_CHARACTERS.sub(_escape_one, text)


def escape_bytes(data: bytes, limit: int | None = None) -> str:
    """Bytes from a peer as safe text: UTF-8 where it decodes, escapes for the rest."""
    if limit is not None and len(data) > limit:
        return escape(data[:limit].decode("utf-8", "backslashreplace")) + "..."
    return escape(data.decode("utf-8", "backslashreplace"))


def _escape_traceback(text: str) -> str:
    lines = text.split("\n")
    return "\n".join("  " + escape(line) for line in lines)


class EscapingFilter(logging.Filter):
    """Replaces each record's message by its escaped, formatted text (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "coapdev_escaped", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: still log something useful
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = escape(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _escape_traceback(
                "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            )
        if record.stack_info:
            record.stack_info = _escape_traceback(record.stack_info)
        record.coapdev_escaped = True
        return True


@dataclass
class _Allowance:
    tokens: float
    updated: float
    suppressed: int = 0
    template: str = ""
    logger: str = ""
    level: int = logging.WARNING


class RepeatLimiter(logging.Filter):
    """At most ``burst`` lines at once and ``per_minute`` after that, per call site."""

    def __init__(
        self,
        burst: int = 20,
        per_minute: float = 20.0,
        *,
        min_level: int = logging.INFO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = float(burst)
        self.rate_per_s = per_minute / 60.0
        self.min_level = min_level
        self.clock = clock
        self._allowances: OrderedDict[tuple, _Allowance] = OrderedDict()

    def _key(self, record: logging.LogRecord) -> tuple:
        key: tuple = (record.name, record.levelno, str(record.msg), record.lineno)
        if record.name in PER_CLIENT_LOGGERS and isinstance(record.args, tuple) and record.args:
            key += (str(record.args[0]),)
        return key

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "coapdev_allowed", None)
        if decided is not None:  # seen by another handler already
            return decided
        record.coapdev_allowed = self._allow(record)
        return record.coapdev_allowed

    def _allow(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        now = self.clock()
        key = self._key(record)
        allowance = self._allowances.get(key)
        if allowance is None:
            allowance = _Allowance(self.burst, now, 0, str(record.msg), record.name, record.levelno)
            self._allowances[key] = allowance
            while len(self._allowances) > MAX_TRACKED_KEYS:
                self._allowances.popitem(last=False)
        else:
            allowance.tokens = min(
                self.burst, allowance.tokens + (now - allowance.updated) * self.rate_per_s
            )
            allowance.updated = now
            self._allowances.move_to_end(key)
        if allowance.tokens < 1.0:
            allowance.suppressed += 1
            return False
        allowance.tokens -= 1.0
        if allowance.suppressed:
            # Appended to the template, which the escaping filter formats with the args.
            record.msg = f"{record.msg} ({allowance.suppressed} similar messages suppressed)"
            allowance.suppressed = 0
        return True

    def flush(self, logger: logging.Logger | None = None) -> int:
        """Report every count of suppressed lines not reported yet; returns how many."""
        out = logger or logging.getLogger("coapdev.log")
        reported = 0
        for allowance in list(self._allowances.values()):
            if allowance.suppressed:
                count, allowance.suppressed = allowance.suppressed, 0
                reported += 1
                out.log(
                    allowance.level,
                    "%d similar messages suppressed (%s: %s)",
                    count,
                    allowance.logger,
                    allowance.template,
                    extra={"coapdev_allowed": True},
                )
        return reported


def install(
    burst: int = 20, per_minute: float = 20.0, *, logger: logging.Logger | None = None
) -> RepeatLimiter:
    """Put a repeat limiter and the escaping filter on every handler of ``logger`` (root).

    Idempotent: installing again replaces the limits.
    """
    target = logger or logging.getLogger()
    limiter = RepeatLimiter(burst, per_minute)
    handlers = target.handlers or [logging.lastResort]
    for handler in handlers:
        if handler is None:
            continue
        for old in list(handler.filters):
            if isinstance(old, RepeatLimiter | EscapingFilter):
                handler.removeFilter(old)
        handler.addFilter(limiter)
        handler.addFilter(EscapingFilter())
    return limiter
