"""The one place that knows how DTLS is served.

Everything above (resources, onboarding, store) sees an aiocoap ``Context``
and this small interface; the DTLS server underneath can be swapped without
touching them.  ``stock`` is aiocoap's experimental ``tinydtls_server`` with
the mitigations the measured pitfalls call for.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from aiocoap import Context, Message
from aiocoap.credentials import CredentialsMap

from ..const import MAX_IDENTITY_BYTES, MAX_PSK_BYTES
from ..dtls_build import patched_dtls
from ..errors import CoapdevError
from . import aiocoap_compat

#: The key for a PSK identity and the credential it stands for, or None.
PskLookup = Callable[[bytes], tuple[bytes, Any] | None]

#: Large enough that bursts of hundreds of handshakes are not dropped.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024

log = logging.getLogger("coapdev.transport")


@dataclass(frozen=True)
class TransportHooks:
    """What the owner plugs into a DTLS transport, given when it starts.

    A transport that cannot honour a hook given here refuses to start
    (:class:`UnsupportedHooks`): nothing is dropped silently.
    """

    #: Whether to take a new handshake from this host (rate limiting); None: always.
    admit_handshake: Callable[[str], bool] | None = None
    #: Learns of every failed handshake: (host, reason).
    handshake_failed: Callable[[str, str], None] | None = None
    #: A factory-key session's request the fast path left: None lets aiocoap
    #: take it, else the refusal to send (see DeviceSite.screen_factory).
    screen_factory: Callable[[Message], Message | None] | None = None

    def given(self) -> list[str]:
        return [name for name, hook in vars(self).items() if hook is not None]


class UnsupportedHooks(CoapdevError, ValueError):
    """The transport chosen cannot honour hooks it was given."""


class DtlsTransport(Protocol):
    """What the device server needs from a DTLS server transport."""

    context: Context
    host: str
    port: int

    def close_sessions(self, credentials: Collection[Any]) -> int:
        """Close live sessions authenticated with any of ``credentials``; returns how many."""
        ...

    async def shutdown(self) -> None: ...


class StoreCredentials(CredentialsMap):
    """Server credentials read from the credential store: O(1) per lookup.

    aiocoap's own ``find_dtls_psk`` scans every entry; this asks the store's
    dict.  The claim handed up with a request is the credential the key
    stands for (see :class:`coapdev.model.Credential`).
    """

    def __init__(self, lookup: PskLookup) -> None:
        super().__init__()
        self._lookup = lookup

    def __bool__(self) -> bool:
        # aiocoap swaps a falsy (empty) map for a fresh one of its own.
        return True

    def find_dtls_psk(self, identity: bytes) -> tuple[bytes, Any]:
        if len(identity) > MAX_IDENTITY_BYTES:
            raise KeyError(identity)
        found = self._lookup(identity)
        if found is None or not 0 < len(found[0]) <= MAX_PSK_BYTES:
            raise KeyError(identity)
        return found


@dataclass
class StockTransport:
    """aiocoap's ``tinydtls_server`` with the known mitigations applied.

    - only the DTLS transport is started (by default aiocoap would also serve
      the same site over plain UDP and TCP, unauthenticated);
    - no SO_REUSEPORT, so a second gateway on the same port fails loudly;
    - the port given is the port listened on (aiocoap adds 1 to it);
    - a 4 MiB receive buffer against bursts of handshakes;
    - revocation closes the revoked identity's live sessions.
    """

    context: Context
    host: str
    port: int

    @classmethod
    async def start(
        cls, site: Any, host: str, port: int, lookup: PskLookup, hooks: TransportHooks
    ) -> StockTransport:
        if hooks.given():
            raise UnsupportedHooks(
                "the aiocoap DTLS server transport cannot honour "
                + ", ".join(hooks.given())
                + " (use the coapdev transport, or start it without them)"
            )
        if port <= 1:
            raise ValueError("the aiocoap DTLS server needs an explicit port above 1")
        os.environ["AIOCOAP_REUSE_PORT"] = "0"
        context = await Context.create_server_context(
            site,
            bind=(host, port - 1),
            transports=["tinydtls_server"],
            server_credentials=StoreCredentials(lookup),
        )
        self = cls(context=context, host=host, port=port)
        sock = self._socket()
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        return self

    def _socket(self) -> socket.socket | None:
        return aiocoap_compat.stock_dtls_socket(self.context)

    def close_sessions(self, credentials: Collection[Any]) -> int:
        if not credentials:
            return 0
        return aiocoap_compat.stock_close_sessions(self.context, credentials, "key no longer valid")

    async def shutdown(self) -> None:
        await self.context.shutdown()


@dataclass
class OwnTransport:
    """coapdev's DTLS server transport (:mod:`coapdev.server.dtls`) under aiocoap's Context."""

    context: Context
    host: str
    port: int
    dtls: Any

    @classmethod
    async def start(
        cls,
        site: Any,
        host: str,
        port: int,
        lookup: PskLookup,
        options: Any = None,
        hooks: TransportHooks | None = None,
    ) -> OwnTransport:
        from .dtls import DtlsServerTransport
        from .fastpath import FastPath

        context = Context(serversite=site, loggername="coapdev.coap")
        made: list[DtlsServerTransport] = []

        async def make(mman: Any) -> Any:
            transport = await DtlsServerTransport.create(
                host,
                port,
                mman,
                lookup,
                options,
                hooks=hooks,
                fast_path=FastPath(site, aiocoap_compat.message_id_source(mman)),
            )
            made.append(transport)
            return transport.aiocoap

        await aiocoap_compat.add_message_transport(context, make)
        return cls(context=context, host=host, port=made[0].port, dtls=made[0])

    def close_sessions(self, credentials: Collection[Any]) -> int:
        return self.dtls.close_sessions(credentials)

    async def shutdown(self) -> None:
        await self.context.shutdown()


TRANSPORTS = ("coapdev", "aiocoap")


async def start_transport(
    site: Any,
    host: str,
    port: int,
    lookup: PskLookup,
    *,
    kind: str = "coapdev",
    options: Any = None,
    hooks: TransportHooks | None = None,
) -> DtlsTransport:
    """Serve ``site`` over DTLS.  ``kind``: "coapdev" (ours) or "aiocoap" (stock).

    Either runs on coapdev's DTLSSocket build (:mod:`coapdev.dtls_build`).
    ``hooks`` the transport cannot honour make it refuse to start.
    """
    patched_dtls()
    hooks = hooks or TransportHooks()
    if kind == "aiocoap":
        return await StockTransport.start(site, host, port, lookup, hooks)
    if kind == "coapdev":
        return await OwnTransport.start(site, host, port, lookup, options, hooks)
    raise ValueError(f"unknown DTLS transport {kind!r} (choose from {', '.join(TRANSPORTS)})")
