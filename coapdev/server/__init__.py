"""The device side: aiocoap resources around the sans-I/O core, on a DTLS transport.

This is the package's face: the names in ``__all__``.  They are loaded on
first use (PEP 562), so importing one submodule (``coapdev.server.budget``,
say) does not load aiocoap, DTLSSocket and the whole server.  Submodules:
``device`` (DeviceServer), ``resources`` (the site and its resources),
``transport`` (the seam to the DTLS server), ``dtls`` (coapdev's DTLS server
transport), ``fastpath``, ``budget``, ``aiocoap_compat``, ``request``,
``tradfri``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule defining it.
_EXPORTS = {
    "DAY_S": "device",
    "DeviceHooks": "device",
    "DeviceOptions": "device",
    "DeviceServer": "device",
    "default_state_dir": "device",
    "DeviceSite": "resources",
    "ServerState": "resources",
    "build_site": "resources",
    "DtlsTransport": "transport",
    "TransportHooks": "transport",
    "UnsupportedHooks": "transport",
    "start_transport": "transport",
    "DtlsServerOptions": "dtls",
    "CoapRequest": "request",
    "add_tradfri_resources": "tradfri",
}

__all__ = [
    "DAY_S",
    "CoapRequest",
    "DeviceHooks",
    "DeviceOptions",
    "DeviceServer",
    "DeviceSite",
    "DtlsServerOptions",
    "DtlsTransport",
    "ServerState",
    "TransportHooks",
    "UnsupportedHooks",
    "add_tradfri_resources",
    "build_site",
    "default_state_dir",
    "start_transport",
]

if TYPE_CHECKING:
    from .device import DAY_S, DeviceHooks, DeviceOptions, DeviceServer, default_state_dir
    from .dtls import DtlsServerOptions
    from .request import CoapRequest
    from .resources import DeviceSite, ServerState, build_site
    from .tradfri import add_tradfri_resources
    from .transport import DtlsTransport, TransportHooks, UnsupportedHooks, start_transport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
