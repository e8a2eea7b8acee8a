"""The library's side of naming a device: references, the only device, moves, refusals.

No network: the registry lives in tmp_path and no Client is ever opened.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

import pytest

from coapdev.client import Client, Credentials, DeviceAddress, following_client
from coapdev.errors import DeviceTimeout, DeviceUnreachable, HandshakeFailed, UnknownDevice
from coapdev.registry import DeviceRegistry, NoKnownDevice, SeveralKnownDevices


def creds(dev: str, port: int = 5684) -> Credentials:
    return Credentials(dev, DeviceAddress("127.0.0.1", port), f"id-{dev}", os.urandom(16))


@pytest.fixture
def one(tmp_path) -> DeviceRegistry:
    reg = DeviceRegistry(tmp_path / "cfg")
    reg.save(creds("AAAA", 5700))
    return reg


@pytest.fixture
def two(one) -> DeviceRegistry:
    one.save(creds("BBBB", 5701))
    return one


def test_the_only_device_is_found_when_none_is_named(one):
    assert one.only_device().device_id == "AAAA"
    assert one.credentials_for(None).device_id == "AAAA"
    assert one.credentials_for("").device_id == "AAAA"


def test_no_device_and_several_devices_are_told_apart(tmp_path, two):
    with pytest.raises(NoKnownDevice, match="no known devices; onboard one first") as none:
        DeviceRegistry(tmp_path / "empty").only_device()
    assert isinstance(none.value, UnknownDevice)
    with pytest.raises(SeveralKnownDevices) as several:
        two.credentials_for(None)
    assert isinstance(several.value, UnknownDevice)
    assert several.value.device_ids == ["AAAA", "BBBB"]
    assert str(several.value) == "several devices are known (AAAA, BBBB); name one"


def test_a_reference_names_one_device(two):
    assert two.credentials_for("bbbb").device_id == "BBBB"
    assert two.credentials_for("127.0.0.1:5700").device_id == "AAAA"
    with pytest.raises(UnknownDevice, match="no credentials for device 'CCCC'"):
        two.credentials_for("CCCC")


@pytest.mark.parametrize(
    "uri, device, path",
    [
        ("AAAA/light", "AAAA", "/light"),
        ("BBBB", "BBBB", "/"),
        ("bbbb/a/b?x=1", "BBBB", "/a/b?x=1"),
        ("coaps://127.0.0.1:5701/light", "BBBB", "/light"),
        ("coaps://AAAA/light", "AAAA", "/light"),
    ],
)
def test_a_uri_as_typed_gives_credentials_and_path(two, uri, device, path):
    found, got = two.target(uri)
    assert (found.device_id, got) == (device, path)


def test_a_bare_path_goes_to_the_only_device(one):
    assert one.target("/light") == (one.resolve("AAAA"), "/light")


def test_a_bare_path_with_several_devices_must_name_one(two):
    with pytest.raises(SeveralKnownDevices):
        two.target("/light")


def test_a_uri_that_is_not_one_is_refused_with_escaped_text(two):
    with pytest.raises(UnknownDevice, match="not a URI or known device") as info:
        two.target("http://\x1b[2J/x")
    assert "\x1b" not in str(info.value)


def test_a_refused_handshake_is_remembered_and_explains_later_silence(one):
    address = DeviceAddress("127.0.0.1", 5700)
    with pytest.raises(DeviceTimeout) as quiet, one.remembering_handshakes(address):
        raise DeviceTimeout("GET x: no answer")
    assert "rate-limiting" not in str(quiet.value)
    with pytest.raises(HandshakeFailed), one.remembering_handshakes(address):
        raise HandshakeFailed("GET x: handshake failed")
    assert one.recent_handshake_failure(address)
    with pytest.raises(DeviceUnreachable) as explained, one.remembering_handshakes(address):
        raise DeviceUnreachable("GET x: no answer")
    assert str(explained.value).startswith("GET x: no answer — the device may be rate-limiting")
    with pytest.raises(DeviceTimeout) as elsewhere:
        with one.remembering_handshakes(DeviceAddress("127.0.0.1", 5799)):
            raise DeviceTimeout("GET y: no answer")
    assert str(elsewhere.value) == "GET y: no answer"


def test_the_registry_client_follows_a_move_and_saves_it(one):
    heard: list[str] = []
    known = one.resolve("AAAA")
    client = one.client(known, on_moved=lambda new: heard.append(str(new.address)), timeout_s=2)
    assert isinstance(client, Client)
    assert client.rediscover and client.timeout_s == 2
    moved = replace(known, address=DeviceAddress("127.0.0.9", 5700)).with_alias(known.address)
    client.on_moved(moved)
    assert heard == ["coaps://127.0.0.9:5700"]
    again = one.resolve("AAAA")
    assert again.address == DeviceAddress("127.0.0.9", 5700)
    assert one.resolve("127.0.0.1:5700").device_id == "AAAA"  # the old address is an alias


def test_following_client_tells_before_it_saves():
    order: list[str] = []
    client = following_client(
        creds("AAAA"), save=lambda c: order.append("save"), on_moved=lambda c: order.append("tell")
    )
    client.on_moved(creds("AAAA"))
    assert order == ["tell", "save"]
    quiet = following_client(creds("AAAA"), save=lambda c: order.append("saved"))
    quiet.on_moved(creds("AAAA"))
    assert order[-1] == "saved"


# --- the CLI keeps its own hints on top ----------------------------------------------


def test_cli_messages_for_an_unnamed_device_are_unchanged(tmp_path, two):
    from coapdev.cli.requests import _device_creds, resolve_target

    with pytest.raises(UnknownDevice) as none:
        resolve_target(DeviceRegistry(tmp_path / "empty"), "/light")
    assert str(none.value) == "no known devices; onboard one first (coapdev onboard)"
    assert type(none.value) is UnknownDevice
    with pytest.raises(UnknownDevice) as several:
        _device_creds(two, argparse.Namespace(device=None, device_opt=None))
    assert str(several.value) == (
        "several devices are known (AAAA, BBBB); name one (DEVICE/PATH, or -d DEVICE)"
    )
    assert _device_creds(two, argparse.Namespace(device="BBBB", device_opt=None)).device_id == (
        "BBBB"
    )
