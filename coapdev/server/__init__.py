"""The device side: aiocoap resources around the sans-I/O core, on a DTLS transport.

This is the package's face: the names in ``__all__`` are what the gateway,
the tools and other users build on.  They are loaded on first use (PEP 562),
so importing one submodule (``coapdev.server.budget``, say) does not load
aiocoap, DTLSSocket and the whole server.  Submodules:

- ``device``: DeviceServer, its options and hooks;
- ``gate``: ServerState, the one gate every request passes;
- ``site``: DeviceSite; ``guarded`` and ``observe``: the resource base classes;
- ``responses``: refusals, diagnostics, content formats, the request log;
- ``resources``: the built-in resources and ``build_site``; ``tradfri``;
- ``transport``: the seam to the DTLS server; ``dtls``: coapdev's own;
- ``fastpath``: simple requests without aiocoap's layers;
- ``budget``: bounds and their defaults; ``aiocoap_compat``: every use of
  aiocoap's private parts; ``request``: what resources read of a request.
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
    "MAX_UPLOADS_PER_RESOURCE": "gate",
    "ServerState": "gate",
    "DeviceSite": "site",
    "GuardedResource": "guarded",
    "ObservableGuardedResource": "observe",
    "Observation": "observe",
    "refusal_message": "responses",
    "request_value": "responses",
    "response_format": "responses",
    "value_response": "responses",
    "with_diagnostic": "responses",
    "bound_block1": "aiocoap_compat",
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
    "MAX_UPLOADS_PER_RESOURCE",
    "CoapRequest",
    "DeviceHooks",
    "DeviceOptions",
    "DeviceServer",
    "DeviceSite",
    "DtlsServerOptions",
    "DtlsTransport",
    "GuardedResource",
    "ObservableGuardedResource",
    "Observation",
    "ServerState",
    "TransportHooks",
    "UnsupportedHooks",
    "add_tradfri_resources",
    "bound_block1",
    "build_site",
    "default_state_dir",
    "refusal_message",
    "request_value",
    "response_format",
    "start_transport",
    "value_response",
    "with_diagnostic",
]

if TYPE_CHECKING:
    from .aiocoap_compat import bound_block1
    from .device import DAY_S, DeviceHooks, DeviceOptions, DeviceServer, default_state_dir
    from .dtls import DtlsServerOptions
    from .gate import MAX_UPLOADS_PER_RESOURCE, ServerState
    from .guarded import GuardedResource
    from .observe import ObservableGuardedResource, Observation
    from .request import CoapRequest
    from .resources import build_site
    from .responses import (
        refusal_message,
        request_value,
        response_format,
        value_response,
        with_diagnostic,
    )
    from .site import DeviceSite
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
