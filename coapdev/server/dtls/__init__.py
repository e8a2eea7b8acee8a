"""coapdev's DTLS server transport, on DTLSSocket (tinydtls), behind aiocoap's interfaces.

Modules, one concern each:

- :mod:`.records`: pure sniffing of DTLS record headers (numbers in
  :mod:`coapdev.dtls_numbers`);
- :mod:`.transport`: :class:`DtlsServerTransport`, the aiocoap message
  interface serving coaps:// on one UDP socket.

Only the names in ``__all__`` are the package's face; the underscore names
below are kept for callers that imported them from the former module.
"""

from __future__ import annotations

# The former module's names for the record sniffers (tests/fuzz feeds them by these names).
from .records import has_change_cipher_spec as _has_change_cipher_spec  # noqa: F401
from .records import has_epoch1_handshake as _has_epoch1_handshake  # noqa: F401
from .records import is_client_hello as _is_client_hello  # noqa: F401
from .records import is_finished_retransmit as _is_finished_retransmit  # noqa: F401
from .transport import DtlsPeer, DtlsServerOptions, DtlsServerTransport, PskLookup

__all__ = ["DtlsPeer", "DtlsServerOptions", "DtlsServerTransport", "PskLookup"]
