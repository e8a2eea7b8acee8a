"""FastPath: the upward edge of the DTLS transport for simple requests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiocoap import Code, Message

from .. import aiocoap_compat
from .exchanges import ExchangeKey, RecentExchanges
from .separate import Pending, SeparateResponses
from .wire import TYPE_CON, FastRequest, encode_response, parse_request

log = logging.getLogger("coapdev.fastpath")

#: Larger answers go out blockwise: the first block from here, the rest from aiocoap.
MAX_FAST_PAYLOAD = 1024


class FastPath:
    """Serves the simple requests of one DTLS server transport."""

    def __init__(
        self, site: Any, next_mid: Callable[[], int], exchanges: RecentExchanges | None = None
    ) -> None:
        self.site = site
        self.next_mid = next_mid
        #: Duplicate detection, per session (the fast path's own).
        self.exchanges = exchanges if exchanges is not None else RecentExchanges()
        self.served = 0
        #: Accepted requests whose serving raised (each answered 5.00).
        self.failed = 0
        #: Slow answers: acknowledged early, sent separately, retransmitted.
        self.separate = SeparateResponses()

    def on_plaintext(self, peer: Any, data: bytes) -> bool:
        """Serve ``data`` if it is a simple request; False leaves it to aiocoap.

        (The DTLS transport's upward edge, :class:`~coapdev.server.dtls.PlaintextConsumer`.)

        Deciding "is this mine" comes first and does nothing; once a request
        is accepted, every outcome, an internal error included (5.00), is
        answered here: it is never handed on to aiocoap, which would run it a
        second time.
        """
        if self.separate.on_empty(peer, data):
            return True  # the client acknowledged one of our separate answers
        request = parse_request(data, peer)
        if request is None:
            return False
        resource = self.site.fast_resource(request.opt.uri_path)
        if resource is None:
            return False
        key = (request.mtype, request.mid)
        pending = Pending()
        try:
            self._serve(peer, request, resource, key, data, pending)
        except Exception:
            self.failed += 1
            log.error("serving %s failed", "/".join(request.opt.uri_path), exc_info=True)
            with contextlib.suppress(Exception):
                error = Message(code=Code.INTERNAL_SERVER_ERROR)
                self._answer(peer, request, key, error, None, pending)
        return True

    #: The former name of :meth:`on_plaintext`.
    handle = on_plaintext

    def _serve(
        self,
        peer: Any,
        request: FastRequest,
        resource: Any,
        key: ExchangeKey,
        data: bytes,
        pending: Pending,
    ) -> None:
        cached = self.exchanges.lookup(peer, key)
        if cached is not None:
            answer = self.exchanges.replay(cached)
            if answer is not None:
                peer.send(answer)  # a retransmission: the same answer, not executed again
            return
        self.site.render_fast(
            resource,
            request,
            lambda response: self._answer(peer, request, key, response, (resource, data), pending),
        )
        if request.mtype == TYPE_CON:
            self.separate.watch(peer, request.mid, pending)

    def _answer(
        self,
        peer: Any,
        request: FastRequest,
        key: ExchangeKey,
        response: Message | None,
        origin: tuple[Any, bytes] | None,
        pending: Pending,
    ) -> None:
        """Send ``response``; ``origin`` (the resource and the request's datagram) lets a
        large answer go out blockwise."""
        separate = self.separate.answered(pending)
        if response is None:  # the request was refused silently (no answer wanted)
            return
        if len(response.payload) > MAX_FAST_PAYLOAD:
            response = self._first_block(peer, request, response, origin)
        mid = request.mid if request.mtype == TYPE_CON and not separate else self.next_mid()
        answer = encode_response(request, response, mid, separate=separate)
        if not self.exchanges.record(peer, key, answer):
            return  # answered already (an error after the answer went out)
        self.served += 1
        if separate:
            self.separate.send_confirmable(peer, mid, answer)
        else:
            peer.send(answer)

    def _first_block(
        self,
        peer: Any,
        request: FastRequest,
        response: Message,
        origin: tuple[Any, bytes] | None,
    ) -> Message:
        """Block 0 of a large answer, the whole kept for the next blocks (or 5.00)."""
        try:
            if origin is None:
                raise ValueError("no request to continue from")
            resource, data = origin
            return aiocoap_compat.first_block(resource, Message.decode(data, remote=peer), response)
        except Exception:
            log.warning(
                "fast-path answer of %d bytes on %s cannot go out blockwise; sending 5.00",
                len(response.payload),
                "/".join(request.opt.uri_path),
                exc_info=True,
            )
            return Message(code=Code.INTERNAL_SERVER_ERROR)
