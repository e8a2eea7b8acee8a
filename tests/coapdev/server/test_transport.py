"""The transport seam: hooks a transport cannot honour stop it from starting."""


def test_the_stock_transport_refuses_hooks_it_cannot_honour():
    import asyncio

    import pytest

    from coapdev.server import TransportHooks, UnsupportedHooks
    from coapdev.server.transport import StockTransport

    hooks = TransportHooks(handshake_failed=lambda host, reason: None)
    with pytest.raises(UnsupportedHooks, match="handshake_failed"):
        asyncio.run(StockTransport.start(None, "127.0.0.1", 5684, lambda identity: None, hooks))
