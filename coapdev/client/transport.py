"""The client's DTLS plumbing: aiocoap's tinydtls client with what coapdev needs on top.

Kept in this one module so the rest of the client never touches aiocoap
internals.  Additions over the stock transport:

- each connection counts the datagrams it received, so a handshake that
  got answers but never completed can be told apart from a device that is
  not there at all (tinydtls drops a wrong-key Finished silently);
- sessions can be dropped on demand, so the next request handshakes anew
  (after a gateway restart, eviction or rekey);
- a connection that never got going (no route, a socket error) shuts down
  without an AttributeError, and credentials match URIs with and without
  the default port (aiocoap drops ``:5684`` from the URIs it builds);
- an optional ``trace`` callback hears every datagram and CoAP message
  (``coapdev -v``), and the block size can be lowered (``--block-size``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiocoap import Context
from aiocoap.numbers import COAPS_PORT
from aiocoap.transports.tinydtls import (
    CODE_CLOSE_NOTIFY,
    DTLS_EVENT_CONNECTED,
    LEVEL_NOALERT,
    LEVEL_WARNING,
    CloseNotifyReceived,
    DTLSClientConnection,
    MessageInterfaceTinyDTLS,
)

from ..dtls_build import patched_dtls
from ..dtls_numbers import RECORD_HEADER_LEN, ContentType, HandshakeType

log = logging.getLogger("coapdev.client")


#: How often a pending handshake retransmission is checked (tinydtls's first is due after 1 s).
_RETRANSMIT_POLL_S = 0.1


class SessionDropped(Exception):
    """The client ended a DTLS session on purpose (it seemed dead, or was renewed)."""


#: DTLS record content types and handshake message types, for ``-v`` traces.
_RECORD_TYPES = {
    ContentType.CHANGE_CIPHER_SPEC: "ChangeCipherSpec",
    ContentType.ALERT: "Alert",
    ContentType.HANDSHAKE: "Handshake",
    ContentType.APPLICATION_DATA: "ApplicationData",
}
_HANDSHAKE_TYPES = {
    HandshakeType.CLIENT_HELLO: "ClientHello",
    HandshakeType.SERVER_HELLO: "ServerHello",
    HandshakeType.HELLO_VERIFY_REQUEST: "HelloVerifyRequest",
    HandshakeType.SERVER_KEY_EXCHANGE: "ServerKeyExchange",
    HandshakeType.SERVER_HELLO_DONE: "ServerHelloDone",
    HandshakeType.CLIENT_KEY_EXCHANGE: "ClientKeyExchange",
}
_DTLS_HEADER_BYTES = RECORD_HEADER_LEN


def describe_dtls(data: bytes) -> str:
    """The records of one DTLS datagram, named (encrypted handshake messages stay unnamed)."""
    parts = []
    pos = 0
    while pos + _DTLS_HEADER_BYTES <= len(data):
        content_type = data[pos]
        epoch = int.from_bytes(data[pos + 3 : pos + 5], "big")
        length = int.from_bytes(data[pos + 11 : pos + 13], "big")
        name = _RECORD_TYPES.get(content_type, f"record {content_type}")
        body = data[pos + _DTLS_HEADER_BYTES : pos + _DTLS_HEADER_BYTES + length]
        if content_type == ContentType.HANDSHAKE and epoch == 0 and body:
            name = _HANDSHAKE_TYPES.get(body[0], f"Handshake {body[0]}")
        elif content_type == ContentType.HANDSHAKE:
            name = "Finished (encrypted)"
        elif content_type == ContentType.ALERT and epoch == 0 and len(body) >= 2:
            name = f"Alert level {body[0]} code {body[1]}"
        parts.append(name)
        pos += _DTLS_HEADER_BYTES + length
    return ", ".join(parts) or f"{len(data)} bytes"


class _CountingConnection(DTLSClientConnection):
    datagrams_received = 0
    #: Largest block size exponent used with this device (6: 1024 bytes).
    block_size_exp = 6

    @property
    def maximum_block_size_exp(self) -> int:  # aiocoap reads this for Block1 and Block2
        return self.block_size_exp

    def _trace(self, text: str) -> None:
        trace = getattr(self.coaptransport, "trace", None)
        if trace is not None:
            trace(text)

    def _write(self, recipient: Any, data: bytes) -> int:
        if getattr(self, "_queue", None) is not None:  # still handshaking
            self._trace(f"DTLS -> {self.hostinfo}: {describe_dtls(data)} ({len(data)} bytes)")
        return super()._write(recipient, data)

    def _read(self, sender: Any, data: bytes) -> int:
        trace = getattr(self.coaptransport, "trace", None)
        if trace is not None:
            from aiocoap import Message

            try:
                trace(f"<- {describe_message(Message.decode(data, self))}")
            except Exception:
                trace(f"<- {len(data)} bytes that are not a CoAP message")
        return super()._read(sender, data)

    class SingleConnection(DTLSClientConnection.SingleConnection):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            parent = self.parent()
            if parent is not None:
                parent.datagrams_received += 1
                if parent._queue is not None:
                    parent._trace(
                        f"DTLS <- {parent.hostinfo}: {describe_dtls(data)} ({len(data)} bytes)"
                    )
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
        # and a second resetPeer of a peer being freed corrupts memory.  A
        # connection whose start failed (no route to the host) has no
        # retransmission task, DTLS socket or transport yet: skip what is missing.
        if self.__dict__.get("_shut_down"):
            return
        self._shut_down = True
        self._remove_from_pool()
        for name in ("_startup", "_retransmission_task"):
            task = self.__dict__.get(name)
            if task is not None:
                task.cancel()
        dtls_socket = self.__dict__.get("_dtls_socket")
        if self.__dict__.get("_connection") is not None and dtls_socket is not None:
            dtls_socket.resetPeer(self._take_connection())
        transport = self.__dict__.get("_transport")
        if transport is not None:
            transport.close()

    def _take_connection(self) -> Any:
        """The DTLSSocket connection, now no longer ours, held by no local variable.

        Resetting the peer writes a close_notify; when that write fails
        (ECONNREFUSED from a peer that is gone), the error carries a traceback
        whose frames reach shutdown's.  A connection held there would live on
        in whatever reference cycle keeps that error, and be freed by the
        cyclic garbage collector instead of as soon as the reset is done.
        """
        connection, self._connection = self._connection, None
        return connection

    def _event(self, level: int, code: int) -> None:
        if (level, code) == (LEVEL_NOALERT, DTLS_EVENT_CONNECTED):
            self._trace(f"DTLS handshake with {self.hostinfo} complete")
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
    trace: Any = None
    block_size_exp = 6

    def _connection_for_address(self, host: str, port: int, pskId: bytes, psk: bytes) -> Any:
        key = (host, port, pskId)
        connection = self._pool.get(key)
        if connection is None:
            connection = _CountingConnection(host, port, pskId, psk, self)
            connection.block_size_exp = self.block_size_exp
            self._pool[key] = connection
            if self.trace is not None:
                self.trace(f"DTLS handshake with {connection.hostinfo} as {pskId!r}")
        return connection

    def send(self, message: Any) -> None:
        if self.trace is not None:
            self.trace(f"-> {describe_message(message)}")
        super().send(message)


def describe_message(message: Any) -> str:
    """One line for a CoAP message: type, code, id, token, options, payload size."""
    from aiocoap.numbers import OptionNumber

    options = []
    for option in message.opt.option_list():
        try:
            name = OptionNumber(option.number).name.replace("_", "-").title()
        except Exception:
            name = str(int(option.number))
        value = option.value
        shown = value.hex() if isinstance(value, bytes) else str(value)
        options.append(f"{name}: {shown}")
    token = message.token.hex() or "-"
    described = f"{message.mtype} {message.code} mid={message.mid} token={token}"
    if options:
        described += " [" + ", ".join(options) + "]"
    return described + f" {len(message.payload)} bytes payload"


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
    async def create(
        cls,
        uri_base: str,
        identity: bytes,
        key: bytes,
        *,
        trace: Any = None,
        block_size_exp: int = 6,
    ) -> ClientTransport:
        patched_dtls()  # aiocoap's tinydtls client must run on coapdev's build too
        loop = asyncio.get_running_loop()
        context = Context(loop=loop, loggername="coapdev.client.coap")
        holder: dict[str, _ClientDtlsInterface] = {}

        async def make(mman: Any) -> _ClientDtlsInterface:
            interface = await _ClientDtlsInterface.create_client_transport_endpoint(
                mman, log=context.log, loop=loop
            )
            interface.trace = trace
            interface.block_size_exp = block_size_exp
            holder["interface"] = interface
            return interface

        await context._append_tokenmanaged_messagemanaged_transport(make)
        credentials = {"dtls": {"psk": key, "client-identity": identity}}
        patterns = {f"{uri_base}/*": credentials}
        default_port = f":{COAPS_PORT}"
        if uri_base.endswith(default_port):  # aiocoap leaves the default port out of URIs
            patterns[uri_base.removesuffix(default_port) + "/*"] = credentials
        context.client_credentials.load_from_dict(patterns)
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
