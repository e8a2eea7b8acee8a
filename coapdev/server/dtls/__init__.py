"""coapdev's DTLS server transport, on DTLSSocket (tinydtls), behind aiocoap's interfaces.

Modules, one concern each:

- :mod:`.records`: pure sniffing of DTLS record headers (numbers in
  :mod:`coapdev.dtls_numbers`);
- :mod:`.sessions`: the socket-free :class:`~.sessions.SessionTable` (phases,
  caps, eviction and expiry decisions; the clock passed in);
- :mod:`.tinydtls`: the tinydtls boundary (context, callbacks, key store);
- :mod:`.udp`: the socket and its batched reader;
- :mod:`.peer`: :class:`DtlsPeer`, one session and aiocoap's remote for it;
- :mod:`.adapter`: the thin aiocoap MessageInterface above the transport;
- :mod:`.transport`: :class:`DtlsServerTransport`, which ties them together
  and hands plaintext up to a :class:`PlaintextConsumer` (the fast path),
  then to aiocoap.

Only the names in ``__all__`` are the package's face; the underscore names
below are kept for callers that imported them from the former module.
"""

from __future__ import annotations

# The former module's names for the record sniffers (tests/fuzz feeds them by these names).
from .records import has_change_cipher_spec as _has_change_cipher_spec  # noqa: F401
from .records import has_epoch1_handshake as _has_epoch1_handshake  # noqa: F401
from .records import is_client_hello as _is_client_hello  # noqa: F401
from .records import is_finished_retransmit as _is_finished_retransmit  # noqa: F401
from .transport import (
    DtlsPeer,
    DtlsServerOptions,
    DtlsServerTransport,
    PlaintextConsumer,
    PskLookup,
)

__all__ = [
    "DtlsPeer",
    "DtlsServerOptions",
    "DtlsServerTransport",
    "PlaintextConsumer",
    "PskLookup",
]
