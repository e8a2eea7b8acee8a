"""The benchmark's persistent handler (tools/bench-gateway.toml, /handler): answers
every GET with the same 5 bytes as the built-in /light, written with coapdev.handler."""

from coapdev import handler

PAYLOAD = bytes.fromhex("a1626f6ef4")  # CBOR {"on": false}


def answer(request: handler.Request) -> handler.Response:
    return handler.Response(PAYLOAD, content_format=60)


handler.serve(answer)
