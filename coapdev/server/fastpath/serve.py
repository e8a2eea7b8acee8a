"""FastPath: the upward edge of the DTLS transport for simple requests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiocoap import Code, Message

from .exchanges import ExchangeKey, RecentExchanges
from .wire import TYPE_CON, FastRequest, encode_response, parse_request

log = logging.getLogger("coapdev.fastpath")

#: Larger answers need blockwise transfer: aiocoap's job.
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

    def on_plaintext(self, peer: Any, data: bytes) -> bool:
        """Serve ``data`` if it is a simple request; False leaves it to aiocoap.

        (The DTLS transport's upward edge, :class:`~coapdev.server.dtls.PlaintextConsumer`.)

        Deciding "is this mine" comes first and does nothing; once a request
        is accepted, every outcome, an internal error included (5.00), is
        answered here: it is never handed on to aiocoap, which would run it a
        second time.
        """
        request = parse_request(data, peer)
        if request is None:
            return False
        resource = self.site.fast_resource(request.opt.uri_path)
        if resource is None:
            return False
        key = (request.mtype, request.mid)
        try:
            self._serve(peer, request, resource, key)
        except Exception:
            self.failed += 1
            log.error("serving %s failed", "/".join(request.opt.uri_path), exc_info=True)
            with contextlib.suppress(Exception):
                self._answer(peer, request, key, Message(code=Code.INTERNAL_SERVER_ERROR))
        return True

    #: The former name of :meth:`on_plaintext`.
    handle = on_plaintext

    def _serve(self, peer: Any, request: FastRequest, resource: Any, key: ExchangeKey) -> None:
        cached = self.exchanges.lookup(peer, key)
        if cached is not None:
            answer = self.exchanges.replay(cached)
            if answer is not None:
                peer.send(answer)  # a retransmission: the same answer, not executed again
            return
        self.site.render_fast(
            resource, request, lambda response: self._answer(peer, request, key, response)
        )

    def _answer(
        self, peer: Any, request: FastRequest, key: ExchangeKey, response: Message | None
    ) -> None:
        if response is None:  # the request was refused silently (no answer wanted)
            return
        if len(response.payload) > MAX_FAST_PAYLOAD:
            log.warning(
                "fast-path answer of %d bytes on %s is too large; sending 5.00",
                len(response.payload),
                "/".join(request.opt.uri_path),
            )
            response = Message(code=Code.INTERNAL_SERVER_ERROR)
        mid = request.mid if request.mtype == TYPE_CON else self.next_mid()
        answer = encode_response(request, response, mid)
        if not self.exchanges.record(peer, key, answer):
            return  # answered already (an error after the answer went out)
        self.served += 1
        peer.send(answer)
