"""Both kinds of request the resource layer gets satisfy the one Protocol it reads."""

from aiocoap import Code, Message

from coapdev.server.fastpath import parse_request
from coapdev.server.request import CoapOptions, CoapRequest


def test_aiocoap_messages_and_fast_requests_are_coap_requests():
    message = Message(code=Code.GET, uri_path=("light",))
    fast = parse_request(bytes([0x40, 1, 0, 1]) + b"\xb5light", remote=None)
    assert fast is not None
    for request in (message, fast):
        assert isinstance(request, CoapRequest)
        assert isinstance(request.opt, CoapOptions)
        assert tuple(request.opt.uri_path) == ("light",)
