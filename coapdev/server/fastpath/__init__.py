"""The fast path: simple requests served without aiocoap's message layer.

aiocoap spends ~200 µs of CPU per request in its message, token and pipe
layers, and keeps every request for 247 s for duplicate detection.  Most
requests a device sees are simple: a GET, PUT or POST with a path, perhaps a
query, Content-Format and Accept, to a built-in resource whose handler
completes without waiting.  Those are parsed here, run through the same
authentication, authorization and resource code, and answered directly.

Everything else goes to aiocoap unchanged: observations, blockwise
transfers, other options, empty messages, ACK/RST, and resources not marked
``fast_path`` (script resources whose answer may take longer than a client
retransmits for).  An answer too large for one datagram is kept the way
aiocoap keeps it (its Block2 cache), and its first block is sent here: the
client asks for the next blocks with a Block2 option, which aiocoap serves.
A slow answer is acknowledged at once and sent separately (``separate``).

Duplicate detection is per session and bounded by count and age: the last
``DEDUP_PER_SESSION`` exchanges of each session are remembered for
``EXCHANGE_LIFETIME_S``; a retransmitted request gets the same answer again
and is not executed twice.

Modules: ``wire`` (parsing and encoding), ``exchanges`` (duplicate
detection), ``serve`` (:class:`FastPath`), ``separate`` (early ACKs and
confirmable separate answers), ``run`` (handlers without tasks).
"""

from __future__ import annotations

from ..budget import EXCHANGE_LIFETIME_S
from .exchanges import DEDUP_PER_SESSION, RecentExchanges
from .run import run_to_completion
from .serve import MAX_FAST_PAYLOAD, FastPath
from .wire import FastOptions, FastRequest, encode_response, parse_request

__all__ = [
    "DEDUP_PER_SESSION",
    "EXCHANGE_LIFETIME_S",
    "MAX_FAST_PAYLOAD",
    "FastOptions",
    "FastPath",
    "FastRequest",
    "RecentExchanges",
    "encode_response",
    "parse_request",
    "run_to_completion",
]
