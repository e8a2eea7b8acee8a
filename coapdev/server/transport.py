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

from aiocoap import Context
from aiocoap.credentials import CredentialsMap

from ..const import MAX_IDENTITY_BYTES, MAX_PSK_BYTES
from ..dtls_build import patched_dtls

#: The key for a PSK identity and the credential it stands for, or None.
PskLookup = Callable[[bytes], tuple[bytes, Any] | None]

#: Large enough that bursts of hundreds of handshakes are not dropped.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024

log = logging.getLogger("coapdev.transport")


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
    async def start(cls, site: Any, host: str, port: int, lookup: PskLookup) -> StockTransport:
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

    def _pool(self) -> Any:
        for interface in self.context.request_interfaces:
            message_interface = getattr(
                getattr(interface, "token_interface", None), "message_interface", None
            )
            pool = getattr(message_interface, "_pool", None)
            if pool is not None and hasattr(pool, "_connections"):
                return pool
        return None

    def _socket(self) -> socket.socket | None:
        pool = self._pool()
        transport = getattr(pool, "_transport", None)
        return None if transport is None else transport.get_extra_info("socket")

    def close_sessions(self, credentials: Collection[Any]) -> int:
        pool = self._pool()
        if pool is None or not credentials:
            return 0
        from aiocoap.error import LibraryShutdown

        wanted = set(credentials)
        dropped = 0
        for address in list(pool._connections.values()):
            if address._psk_store._claims in wanted:
                address._inject_error(LibraryShutdown("key no longer valid"))
                dropped += 1
        return dropped

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
        cls, site: Any, host: str, port: int, lookup: PskLookup, options: Any = None
    ) -> OwnTransport:
        from .dtls import DtlsServerTransport

        context = Context(serversite=site, loggername="coapdev.coap")
        made: list[DtlsServerTransport] = []

        async def make(mman: Any) -> DtlsServerTransport:
            from .aiocoap_compat import bound_duplicate_detection, message_id_source
            from .budget import BoundedDuplicates
            from .fastpath import FastPath

            transport = await DtlsServerTransport.create(host, port, mman, lookup, options)
            transport.fast_path = FastPath(site, message_id_source(mman))
            transport.screen_factory = getattr(site, "screen_factory", None)
            transport.duplicates = BoundedDuplicates(
                transport.options.max_exchanges_per_session, transport.options.max_exchanges
            )
            bound_duplicate_detection(mman, transport.duplicates)
            made.append(transport)
            return transport

        await context._append_tokenmanaged_messagemanaged_transport(make)
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
) -> DtlsTransport:
    """Serve ``site`` over DTLS.  ``kind``: "coapdev" (ours) or "aiocoap" (stock).

    Either runs on coapdev's DTLSSocket build (:mod:`coapdev.dtls_build`).
    """
    patched_dtls()
    if kind == "aiocoap":
        return await StockTransport.start(site, host, port, lookup)
    if kind == "coapdev":
        return await OwnTransport.start(site, host, port, lookup, options)
    raise ValueError(f"unknown DTLS transport {kind!r} (choose from {', '.join(TRANSPORTS)})")
