"""Tradfri client code gets past onboarding: the whole Home Assistant IKEA sequence on pytradfri."""

from __future__ import annotations

import secrets

import pytest

from coapdev import __version__
from coapdev.store import read_state

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

#: pytradfri always talks to port 5684: an address of this test's own avoids collisions.
HOST = "127.0.0.5"


def test_pytradfri_onboards_then_reads_gateway_info_devices_and_groups(gateway_factory, run):
    """What Home Assistant's config flow and set-up ask, through pytradfri's own API."""
    pytest.importorskip("pytradfri")
    from pytradfri import Gateway
    from pytradfri.api.aiocoap_api import APIFactory
    from pytradfri.command import Command

    gw = gateway_factory("tradfri-setup", host=HOST, port=5684)
    identity = f"home-assistant-{secrets.token_hex(4)}"

    async def config_flow() -> tuple[str, str]:
        factory = await APIFactory.init(host=HOST, psk_id=identity)
        psk = await factory.generate_psk(gw.factory_key())
        info = await factory.request(Gateway().get_gateway_info())
        await factory.shutdown()
        return psk, info.id

    async def set_up(psk: str):
        factory = await APIFactory.init(host=HOST, psk_id=identity, psk=psk)
        api, gateway = factory.request, Gateway()
        try:
            info = await api(gateway.get_gateway_info())
            devices = await api(await api(gateway.get_devices()))
            groups = await api(await api(gateway.get_groups()))
            raw = Command("get", ["15011", "15012"])
            await api(raw)
            return info, devices, groups, raw.raw_result
        finally:
            await factory.shutdown()

    psk, gateway_id = run(config_flow())
    info, devices, groups, raw = run(set_up(psk))
    _, clients = read_state(gw.state_dir)
    device_id = clients and read_state(gw.state_dir)[0].id
    assert gateway_id == info.id == device_id
    assert info.firmware_version == __version__
    assert info.current_time is not None and info.first_setup is not None
    assert raw["9001"] == f"coapdev-{device_id}"
    assert devices == [] and groups == []
    assert [(c.identity, c.origin.value) for c in clients] == [(identity, "tradfri")]


def test_the_tradfri_resources_are_refused_to_the_factory_identity(gateway_factory, run):
    from coapdev.client import Client, Credentials, DeviceAddress
    from coapdev.const import FACTORY_IDENTITY
    from coapdev.errors import NotAuthorized

    gw = gateway_factory()
    factory = Credentials("", DeviceAddress("127.0.0.1", gw.port), FACTORY_IDENTITY, b"")
    factory.key = gw.factory_key().replace("-", "").encode()

    async def ask() -> None:
        async with Client(factory, timeout_s=5) as c:
            await c.get("/15011/15012")

    with pytest.raises(NotAuthorized):
        run(ask())
