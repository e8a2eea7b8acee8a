"""The thin aiocoap side of the DTLS server: aiocoap's MessageInterface over the transport.

What the fast path leaves over is decoded here and handed to aiocoap's
message manager; what aiocoap sends goes back down as plaintext for the
session.  A factory-key session's request that aiocoap would keep is
screened here first.  Every private aiocoap hook used on the way is in
:mod:`coapdev.server.aiocoap_compat`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from aiocoap import CON, NON, Code, interfaces
from aiocoap import error as coap_error
from aiocoap.message import Message
from aiocoap.numbers.types import ACK

from ..aiocoap_compat import bound_duplicate_detection
from ..budget import BoundedDuplicates
from .peer import DtlsPeer

log = logging.getLogger("coapdev.dtls")

#: Decides on a factory-key session's request aiocoap would take: None lets it
#: through, else the refusal to send (see :meth:`AiocoapAdapter.on_plaintext`).
ScreenFactory = Callable[[Message], "Message | None"]


class Transport(Protocol):
    """What the adapter asks of the DTLS transport below it."""

    def send_plaintext(self, peer: DtlsPeer, data: bytes) -> None: ...

    async def shutdown(self) -> None: ...


class AiocoapAdapter(interfaces.MessageInterface):
    """aiocoap MessageInterface for one :class:`~.transport.DtlsServerTransport`."""

    def __init__(
        self,
        transport: Transport,
        mman: interfaces.MessageManager,
        *,
        max_exchanges_per_session: int,
        max_exchanges: int,
        screen_factory: ScreenFactory | None,
        stats: collections.Counter,
    ) -> None:
        self._transport = transport
        self._mman: interfaces.MessageManager | None = mman
        self._screen_factory = screen_factory
        self._stats = stats
        #: aiocoap's duplicate detection, bounded (see aiocoap_compat).
        self.duplicates = BoundedDuplicates(max_exchanges_per_session, max_exchanges)
        bound_duplicate_detection(mman, self.duplicates)
        self._next_mid = int.from_bytes(os.urandom(2), "big")

    # --- upward: plaintext from a session ---

    def on_plaintext(self, peer: DtlsPeer, data: bytes) -> bool:
        """Decode and dispatch one CoAP message (dropped, counted, if unparsable)."""
        mman = self._mman
        if mman is None:
            return True
        stats = self._stats
        try:
            message = Message.decode(data, remote=peer)
        except (coap_error.UnparsableMessage, ValueError, IndexError):
            # Malformed (e.g. an option that is not UTF-8): dropped, counted,
            # never a logged traceback a client could flood the log with.
            stats["unparsable"] += 1
            log.debug("dropping an unparsable message from %s", peer.hostinfo)
            return True
        except Exception:  # a decoder bug must not take the server down
            stats["unparsable"] += 1
            log.debug("decoding a CoAP message from %s failed", peer.hostinfo, exc_info=True)
            return True
        if message.mtype in (CON, NON) and not self._admit(peer, message):
            return True
        stats["requests"] += 1
        mman.dispatch_message(message)
        return True

    def session_ended(self, peer: DtlsPeer, reason: str, *, was_connected: bool) -> None:
        """A session is gone: its exchanges cannot come back; aiocoap's requests
        and observations on an established one fail now."""
        self.duplicates.forget(peer)
        if was_connected and self._mman is not None:
            with contextlib.suppress(Exception):
                self._mman.dispatch_error(coap_error.LibraryShutdown(reason), peer)

    def _admit(self, peer: DtlsPeer, message: Message) -> bool:
        """Whether aiocoap may take this message; else it is answered here.

        A factory-key session may reach aiocoap only at the doors the factory
        key opens (onboarding, for what the fast path leaves over, such as a
        Block1 upload); anything else it sends is refused here, decided and
        audited by the site like every other request, and aiocoap, which
        would remember it, never sees it.
        """
        credential = peer.credential
        if credential is not None and not getattr(credential, "is_factory", False):
            return True
        screen = self._screen_factory
        refusal = None if screen is None else screen(message)
        if screen is not None and refusal is None:
            return True
        self._stats["refused-factory-slow-path"] += 1
        if refusal is None:
            refusal = Message(
                code=Code.UNAUTHORIZED,
                payload=b"the factory key only opens onboarding",
                content_format=0,
            )
        self._answer_with(peer, message, refusal)
        return False

    def _answer_with(self, peer: DtlsPeer, request: Message, response: Message) -> None:
        """Send ``response`` to ``request`` from here (piggybacked on the ACK of a CON)."""
        if not request.code.is_request():
            return  # an empty message (ping) or a stray response: nothing to answer
        if request.mtype == CON:
            response.mtype, response.mid = ACK, request.mid
        else:
            self._next_mid = (self._next_mid + 1) & 0xFFFF
            response.mtype, response.mid = NON, self._next_mid
        response.token = request.token
        self._transport.send_plaintext(peer, response.encode())

    # --- aiocoap MessageInterface ---

    def send(self, message: Message) -> None:
        remote = message.remote
        if not isinstance(remote, DtlsPeer) or not remote.owned_by(self._transport):
            log.warning("not sending %r: not a remote of this transport", message)
            return
        remote.send(message.encode())

    async def determine_remote(self, message: Message) -> None:
        return None  # a server does not initiate sessions

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, DtlsPeer) and remote.owned_by(self._transport)

    async def shutdown(self) -> None:
        """aiocoap shuts its message interface down: the transport closes every session."""
        await self._transport.shutdown()
        self._mman = None
