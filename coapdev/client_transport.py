"""The client's DTLS plumbing: aiocoap's tinydtls client with what coapdev needs on top.

Kept in this one module so the rest of the client never touches aiocoap
internals.  Additions over the stock transport:

- each connection counts the datagrams it received, so a handshake that
  got answers but never completed can be told apart from a device that is
  not there at all (tinydtls drops a wrong-key Finished silently);
- sessions can be dropped on demand, so the next request handshakes anew
  (after a gateway restart, eviction or rekey).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiocoap import Context
from aiocoap.transports.tinydtls import (
    CODE_CLOSE_NOTIFY,
    LEVEL_WARNING,
    CloseNotifyReceived,
    DTLSClientConnection,
    MessageInterfaceTinyDTLS,
)

from .dtls_build import patched_dtls

log = logging.getLogger("coapdev.client")


#: How often a pending handshake retransmission is checked (tinydtls's first is due after 1 s).
_RETRANSMIT_POLL_S = 0.1


class SessionDropped(Exception):
    """The client ended a DTLS session on purpose (it seemed dead, or was renewed)."""


class _CountingConnection(DTLSClientConnection):
    datagrams_received = 0

    class SingleConnection(DTLSClientConnection.SingleConnection):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            parent = self.parent()
            if parent is not None:
                parent.datagrams_received += 1
            super().datagram_received(data, addr)
            if parent is not None and parent._queue is not None:
                parent._drive_retransmissions()  # the handshake moved: keep its timer alive

    @property
    def handshake_done(self) -> bool:
        return self._queue is None

    async def _run_retransmissions(self) -> None:
        """Let tinydtls retransmit what is due, polling while anything is pending.

        aiocoap converts tinydtls's due time with a clock offset taken at its
        import, but tinydtls resets its own offset whenever any DTLS context is
        created in the process; the two drift apart by seconds, and the
        handshake then busy-waits or stalls.  Polling needs no clock at all.
        """
        while self._dtls_socket is not None and self._dtls_socket.checkRetransmit():
            await asyncio.sleep(_RETRANSMIT_POLL_S)

    def _drive_retransmissions(self) -> None:
        task = getattr(self, "_retransmission_task", None)
        if task is None or task.done():
            self._retransmission_task = asyncio.ensure_future(self._run_retransmissions())

    def shutdown(self) -> None:
        # Once only, and never re-entered: resetting the tinydtls peer can call
        # back into _event (an alert), whose error handling shuts down again,
        # and a second resetPeer of a peer being freed corrupts memory.
        if self.__dict__.get("_shut_down"):
            return
        self._shut_down = True
        super().shutdown()

    def _event(self, level: int, code: int) -> None:
        if (level, code) == (LEVEL_WARNING, CODE_CLOSE_NOTIFY):
            # The device closed the session (restart, eviction, revocation).
            # tinydtls has freed it; end it here too, so pending requests and
            # observations learn of it and the next request handshakes anew.
            on_end = getattr(self.coaptransport, "on_session_end", None)
            if on_end is not None:
                on_end()
            self._inject_error(CloseNotifyReceived())
            return
        super()._event(level, code)


class _ClientDtlsInterface(MessageInterfaceTinyDTLS):
    on_session_end: Any = None

    def _connection_for_address(self, host: str, port: int, pskId: bytes, psk: bytes) -> Any:
        key = (host, port, pskId)
        connection = self._pool.get(key)
        if connection is None:
            connection = _CountingConnection(host, port, pskId, psk, self)
            self._pool[key] = connection
        return connection


@dataclass
class SessionState:
    """What is known about the DTLS session to one device."""

    exists: bool
    handshake_done: bool
    datagrams_received: int


class ClientTransport:
    """One aiocoap client context speaking DTLS-PSK with exactly one identity."""

    def __init__(self, context: Context, interface: _ClientDtlsInterface) -> None:
        self.context = context
        self._interface = interface
        #: Strong reference that keeps the pooled session alive between requests.
        self.remote: Any = None
        #: Incremented whenever the session ends (dropped here or closed by the
        #: device), so observers and callers can tell a new session began.
        self.generation = 0
        interface.on_session_end = self._session_ended

    def _session_ended(self) -> None:
        self.generation += 1
        self.remote = None

    @classmethod
    async def create(cls, uri_base: str, identity: bytes, key: bytes) -> ClientTransport:
        patched_dtls()  # aiocoap's tinydtls client must run on coapdev's build too
        loop = asyncio.get_running_loop()
        context = Context(loop=loop, loggername="coapdev.client.coap")
        holder: dict[str, _ClientDtlsInterface] = {}

        async def make(mman: Any) -> _ClientDtlsInterface:
            interface = await _ClientDtlsInterface.create_client_transport_endpoint(
                mman, log=context.log, loop=loop
            )
            holder["interface"] = interface
            return interface

        await context._append_tokenmanaged_messagemanaged_transport(make)
        context.client_credentials.load_from_dict(
            {f"{uri_base}/*": {"dtls": {"psk": key, "client-identity": identity}}}
        )
        return cls(context, holder["interface"])

    def session(self) -> SessionState:
        connections = list(self._interface._pool.values())
        if not connections:
            return SessionState(False, False, 0)
        c = connections[0]
        return SessionState(True, c.handshake_done, c.datagrams_received)

    def drop_session(self, generation: int | None = None) -> bool:
        """End the session (sending close_notify); the next request handshakes anew.

        Requests and observations still pending on it fail at once (rather than
        waiting on a session that is gone), so observers re-register.  With
        ``generation``, only the session of that generation is dropped: a caller
        that saw an old session fail does not tear down the fresh one another
        caller already made.  Returns whether a session was dropped.
        """
        if generation is not None and generation != self.generation:
            return False
        self.remote = None
        self.generation += 1
        for connection in list(self._interface._pool.values()):
            try:
                connection._inject_error(SessionDropped("session dropped by the client"))
            except Exception as exc:  # already half torn down
                log.debug("dropping session: %r", exc)
                with contextlib.suppress(Exception):
                    connection.shutdown()
        return True

    async def close(self) -> None:
        self.drop_session()
        await self.context.shutdown()
