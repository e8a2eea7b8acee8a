"""The server side's uses of aiocoap's (and asyncio's) private parts, in one place.

aiocoap 0.4 offers no public hooks for these; if an aiocoap release changes
them, this module is the one to adapt (tests/coapdev/server/test_dtls.py and
the e2e suite exercise each).  Outside this module, no code under
``coapdev/server`` reads or writes an underscored attribute of aiocoap's or
asyncio's objects; each use is a named function here:

- message manager: :func:`bound_duplicate_detection`, :func:`message_id_source`;
- context: :func:`add_message_transport`, :func:`stock_dtls_socket`,
  :func:`stock_close_sessions`;
- site: :func:`site_resources`;
- resource blockwise state: :func:`bound_block1`, :func:`bound_block2`,
  :func:`assemble_and_slice`;
- asyncio's task protocol: :func:`take_yielded_future`.
"""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiocoap import CON, Message, resource
from aiocoap import error as coap_error

from .budget import BoundedDuplicates


def bound_duplicate_detection(mman: Any, duplicates: BoundedDuplicates) -> None:
    """Replace a message manager's duplicate detection with a bounded one.

    aiocoap remembers every request 247 s with a timer of its own, without
    any cap; this keeps the last few per session and a bounded number in
    total (see :class:`BoundedDuplicates`), with the same behaviour: a
    retransmitted CON gets the stored answer again, and is not run twice.
    """

    def deduplicate(message: Any) -> bool:
        entry = duplicates.lookup(message.remote, message.mid)
        if entry is None:
            return False
        if message.mtype is CON and entry[1] is not None:
            mman._send_initially(entry[1])
        return True

    def store_response(message: Any) -> None:
        duplicates.answered(message.remote, message.mid, message)

    mman._deduplicate_message = deduplicate
    mman._store_response_for_duplicates = store_response


def message_id_source(mman: Any) -> Callable[[], int]:
    """The message manager's own message-id counter (for answers sent past it)."""
    return mman._next_message_id


async def add_message_transport(context: Any, make: Callable[[Any], Awaitable[Any]]) -> None:
    """Put a MessageInterface of our own under a server Context: ``make(mman)``
    returns it, aiocoap wraps it in its message and token managers."""
    await context._append_tokenmanaged_messagemanaged_transport(make)


def _stock_dtls_pool(context: Any) -> Any:
    """aiocoap's ``tinydtls_server`` connection pool in a Context, if it has one."""
    for interface in context.request_interfaces:
        message_interface = getattr(
            getattr(interface, "token_interface", None), "message_interface", None
        )
        pool = getattr(message_interface, "_pool", None)
        if pool is not None and hasattr(pool, "_connections"):
            return pool
    return None


def stock_dtls_socket(context: Any) -> socket.socket | None:
    """The UDP socket of aiocoap's ``tinydtls_server`` (to size its buffers)."""
    transport = getattr(_stock_dtls_pool(context), "_transport", None)
    return None if transport is None else transport.get_extra_info("socket")


def stock_close_sessions(context: Any, credentials: Collection[Any], reason: str) -> int:
    """End the stock server's sessions authenticated with any of ``credentials``."""
    from aiocoap.error import LibraryShutdown

    pool = _stock_dtls_pool(context)
    if pool is None:
        return 0
    wanted = set(credentials)
    dropped = 0
    for address in list(pool._connections.values()):
        if address._psk_store._claims in wanted:
            address._inject_error(LibraryShutdown(reason))
            dropped += 1
    return dropped


class _BoundedCompletes:
    """Stands in for the TimeoutDict of aiocoap's Block2Cache: the same get and set,
    with a cap on entries and on bytes, oldest out first."""

    def __init__(self, max_entries: int, max_bytes: int, lifetime_s: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.lifetime_s = lifetime_s
        self._items: collections.OrderedDict[Any, tuple[float, Any]] = collections.OrderedDict()
        self._bytes = 0

    def __getitem__(self, key: Any) -> Any:
        when, value = self._items[key]
        if time.monotonic() - when > self.lifetime_s:
            self._pop(key)
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self._items:
            self._pop(key)
        self._items[key] = (time.monotonic(), value)
        self._bytes += len(value.payload)
        while len(self._items) > self.max_entries or (
            self._bytes > self.max_bytes and len(self._items) > 1
        ):
            self._pop(next(iter(self._items)))

    def _pop(self, key: Any) -> None:
        _, value = self._items.pop(key)
        self._bytes -= len(value.payload)

    def __len__(self) -> int:
        return len(self._items)


#: RFC 7252 MAX_TRANSMIT_WAIT: how long aiocoap keeps a blockwise answer.
MAX_TRANSMIT_WAIT_S = 93.0


def bound_block2(res: Any, max_entries: int, max_bytes: int) -> None:
    """Cap the answers a resource keeps for blockwise (Block2) transfers.

    aiocoap keeps each large answer MAX_TRANSMIT_WAIT per session, path and
    query, without a cap: a client varying the query could park megabytes.
    A transfer whose answer was dropped gets 4.08 and starts over.
    """
    res._block2._completes = _BoundedCompletes(max_entries, max_bytes, MAX_TRANSMIT_WAIT_S)


def bound_block1(res: resource.Resource, max_bytes: int, max_uploads: int) -> None:
    """Cap blockwise (Block1) uploads to ``res``: size and number in progress.

    aiocoap would assemble any upload in memory, of any size, from any
    number of clients at once.
    """
    from aiocoap.blockwise import Block1Spool

    class BoundedBlock1Spool(Block1Spool):
        def feed_and_take(self, req: Message) -> Message:
            block1 = req.opt.block1
            if block1 is not None:
                end = block1.start + len(req.payload)
                if end > max_bytes:
                    raise coap_error.RequestEntityTooLarge(f"payload over {max_bytes} bytes")
                in_progress = len(self._assemblies._items)  # aiocoap TimeoutDict: no len()
                if block1.block_number == 0 and in_progress >= max_uploads:
                    raise coap_error.ServiceUnavailable("too many uploads in progress")
            elif len(req.payload) > max_bytes:
                raise coap_error.RequestEntityTooLarge(f"payload over {max_bytes} bytes")
            try:
                return super().feed_and_take(req)
            except ValueError:  # a block that does not continue the upload (size, offset)
                raise coap_error.RequestEntityIncomplete() from None

    res._block1 = BoundedBlock1Spool()


async def assemble_and_slice(
    res: resource.Resource, request: Message, render: Callable[[Message], Awaitable[Message]]
) -> Message:
    """A blockwise exchange on ``res``: the Block1 upload assembled by its spool (bounded,
    see :func:`bound_block1`), ``render`` run on the whole, the Block2 answer sliced
    from its cache (bounded, see :func:`bound_block2`)."""
    whole = res._block1.feed_and_take(request)
    response = await res._block2.extract_or_insert(whole, lambda: render(whole))
    response.opt.block1 = whole.opt.block1
    return response


def site_resources(site: resource.Site) -> Mapping[tuple[str, ...], resource.Resource]:
    """The resources added to ``site`` by path (aiocoap's Site lists them nowhere public)."""
    return site._resources


def take_yielded_future(future: Any) -> None:
    """Take over a future a coroutine yielded, as an asyncio Task does before it waits.

    A coroutine driven by hand (``coro.send``) that yields a future leaves it
    marked as blocking; awaiting it from another coroutine requires the mark
    cleared, which asyncio does only inside its Task.
    """
    future._asyncio_future_blocking = False


def first_block(res: Any, request: Any, assembled: Any) -> Any:
    """Keep a large answer as aiocoap's Block2 cache would, and return its first block.

    For an answer computed outside aiocoap (the fast path): the client's next
    Block2 requests then reach aiocoap, which serves them from ``res``'s cache
    (bounded by :func:`bound_block2`) exactly as if it had rendered the answer.
    ``request`` is the whole request to the resource at exactly its path; the
    key is the one aiocoap's Site computes after it stripped that path.
    """
    from aiocoap.blockwise import _extract_block_key

    stripped = request.copy(uri_path=())
    res._block2._completes[_extract_block_key(stripped)] = assembled
    remote = request.remote
    return assembled._extract_block(0, remote.maximum_block_size_exp, remote.maximum_payload_size)
