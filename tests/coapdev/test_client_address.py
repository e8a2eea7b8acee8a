import pytest

from coapdev.client import DeviceAddress, parse_address
from coapdev.errors import ClientError


@pytest.mark.parametrize(
    "text, address, path",
    [
        ("coaps://127.0.0.1:5700/light", DeviceAddress("127.0.0.1", 5700), "/light"),
        ("127.0.0.1", DeviceAddress("127.0.0.1", 5684), "/"),
        ("pi.local:6000/a/b", DeviceAddress("pi.local", 6000), "/a/b"),
        ("coaps://[::1]:5700/x", DeviceAddress("::1", 5700), "/x"),
        ("[fe80::1%eth0]", DeviceAddress("fe80::1%eth0", 5684), "/"),
        ("::1", DeviceAddress("::1", 5684), "/"),
    ],
)
def test_parse(text, address, path):
    assert parse_address(text) == (address, path)


@pytest.mark.parametrize("text", ["coap://h/x", "h:0", "h:70000", "h:x", "[::1", ":5684"])
def test_bad(text):
    with pytest.raises(ClientError):
        parse_address(text)


def test_hostinfo_brackets_ipv6():
    assert DeviceAddress("::1", 5700).uri_base == "coaps://[::1]:5700"
