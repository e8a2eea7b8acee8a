"""The config flow against a real gateway: onboarding with the label, and its failures."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from coapdev.keys import CLIENT_KEY_BYTES, mint_factory_key
from coapdev.qr import QRPayload
from homeassistant import config_entries, loader
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import CONF_HOST, CONF_PORT
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from support import free_udp_port

from custom_components.coapdev.const import (
    CONF_DEVICE_ID,
    CONF_FACTORY_KEY,
    CONF_IDENTITY,
    CONF_PSK,
    DOMAIN,
)

from .conftest import device_command, device_id_of, wait_until


async def start_user_flow(hass: HomeAssistant) -> dict:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "user"
    return result


async def submit(hass: HomeAssistant, flow: dict, **fields: object) -> dict:
    return await hass.config_entries.flow.async_configure(flow["flow_id"], fields)


def discovery(gw, *, name: str = "kitchen-pi", **properties: str) -> ZeroconfServiceInfo:
    props = {"id": device_id_of(gw), "md": "coapdev-gateway", "pv": "1", "ob": "1"}
    props.update(properties)
    return ZeroconfServiceInfo(
        ip_address=ip_address(gw.host),
        ip_addresses=[ip_address(gw.host)],
        port=gw.port,
        hostname=f"{name}.local.",
        type="_coaps._udp.local.",
        name=f"{name}._coaps._udp.local.",
        properties=props,
    )


def clients_on(gw) -> str:
    return gw.local("clients", "list").stdout


async def test_manual_entry_onboards_and_keeps_only_the_minted_credentials(
    hass: HomeAssistant, gateway
) -> None:
    flow = await start_user_flow(hass)
    result = await submit(
        hass,
        flow,
        **{CONF_HOST: gateway.host, CONF_PORT: gateway.port, CONF_FACTORY_KEY: gateway.key},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    entry = result["result"]
    assert entry.unique_id == device_id_of(gateway) == entry.data[CONF_DEVICE_ID]
    assert len(bytes.fromhex(entry.data[CONF_PSK])) == CLIENT_KEY_BYTES
    assert entry.data[CONF_IDENTITY]
    assert gateway.key.replace("-", "") not in repr(entry.data).replace("-", "")
    assert entry.data[CONF_IDENTITY] in gateway.local("clients", "list").stdout
    assert "Home Assistant" in clients_on(gateway)
    assert entry.state is ConfigEntryState.LOADED


async def test_the_qr_text_carries_key_and_port(hass: HomeAssistant, gateway) -> None:
    qr_text = QRPayload(device_id_of(gateway), gateway.key.replace("-", ""), gateway.port).text()
    flow = await start_user_flow(hass)
    result = await submit(
        hass, flow, **{CONF_HOST: gateway.host, CONF_PORT: 5684, CONF_FACTORY_KEY: qr_text}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["result"].data[CONF_PORT] == gateway.port


async def test_a_wrong_key_is_refused_and_the_right_one_then_works(
    hass: HomeAssistant, gateway
) -> None:
    flow = await start_user_flow(hass)
    fields = {CONF_HOST: gateway.host, CONF_PORT: gateway.port}
    result = await submit(hass, flow, **fields, **{CONF_FACTORY_KEY: mint_factory_key()})
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_FACTORY_KEY: "wrong_key"}
    assert "Home Assistant" not in clients_on(gateway)
    result = await submit(hass, result, **fields, **{CONF_FACTORY_KEY: gateway.key})
    assert result["type"] is FlowResultType.CREATE_ENTRY, result


async def test_text_that_is_no_key_fails_before_any_traffic(hass: HomeAssistant) -> None:
    flow = await start_user_flow(hass)
    # Nothing listens on this port: an attempt to onboard would say cannot_connect.
    port = free_udp_port()
    result = await submit(
        hass, flow, **{CONF_HOST: "127.0.0.1", CONF_PORT: port, CONF_FACTORY_KEY: "hello"}
    )
    assert result["errors"] == {CONF_FACTORY_KEY: "invalid_key"}
    assert "16" in result["description_placeholders"]["reason"]


async def test_a_closed_window_says_to_run_pair(hass: HomeAssistant, gateway) -> None:
    await device_command(gateway, "pair", "--close")
    flow = await start_user_flow(hass)
    fields = {CONF_HOST: gateway.host, CONF_PORT: gateway.port, CONF_FACTORY_KEY: gateway.key}
    result = await submit(hass, flow, **fields)
    assert result["errors"] == {"base": "onboarding_closed"}
    assert "coapdev-gateway pair" in result["description_placeholders"]["reason"]
    await device_command(gateway, "pair")
    result = await submit(hass, result, **fields)
    assert result["type"] is FlowResultType.CREATE_ENTRY, result


async def test_an_unreachable_device_is_reported(hass: HomeAssistant, fast_timings) -> None:
    flow = await start_user_flow(hass)
    port = free_udp_port()
    result = await submit(
        hass,
        flow,
        **{CONF_HOST: "127.0.0.1", CONF_PORT: port, CONF_FACTORY_KEY: mint_factory_key()},
    )
    assert result["errors"] == {"base": "cannot_connect"}
    assert f"127.0.0.1:{port}" in result["description_placeholders"]["reason"]


async def test_zeroconf_is_routed_to_this_integration(hass: HomeAssistant) -> None:
    matchers = await loader.async_get_zeroconf(hass)
    assert {"domain": DOMAIN} in matchers["_coaps._udp.local."]


async def test_discovered_device_onboards_with_its_label(hass: HomeAssistant, gateway) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=discovery(gateway)
    )
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "discovery_confirm"
    assert result["description_placeholders"]["device_id"] == device_id_of(gateway)
    result = await submit(hass, result, **{CONF_FACTORY_KEY: gateway.key})
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["title"] == "kitchen-pi"
    assert result["result"].unique_id == device_id_of(gateway)


async def test_a_label_of_another_device_is_refused(hass: HomeAssistant, gateway) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=discovery(gateway)
    )
    other = QRPayload("ZZZZZZZZZZ", gateway.key.replace("-", "")).text()
    result = await submit(hass, result, **{CONF_FACTORY_KEY: other})
    assert result["errors"] == {CONF_FACTORY_KEY: "other_device"}
    assert "Home Assistant" not in clients_on(gateway)


@pytest.mark.parametrize("device_id", [None, "", "not an id", "K" * 33, "<script>"])
async def test_a_service_without_a_device_id_is_not_offered(
    hass: HomeAssistant, gateway, device_id
) -> None:
    info = discovery(gateway)
    if device_id is None:
        info.properties.pop("id")
    else:
        info.properties["id"] = device_id
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=info
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "not_coapdev_device"


async def test_discovery_follows_a_device_to_its_new_address(
    hass: HomeAssistant, gateway_factory, fast_timings
) -> None:
    gw = gateway_factory()
    flow = await start_user_flow(hass)
    result = await submit(
        hass, flow, **{CONF_HOST: gw.host, CONF_PORT: gw.port, CONF_FACTORY_KEY: gw.key}
    )
    entry = result["result"]
    await hass.async_block_till_done()
    relay = er.async_get(hass).async_get_entity_id("switch", DOMAIN, f"{entry.unique_id}/relay")
    await wait_until(lambda: hass.states.get(relay).state == "off", what="relay read")

    # The device moves (DHCP gave it another address; here 127.0.0.2 and another port).
    gw.stop()
    gw.host = "127.0.0.2"
    gw.port = free_udp_port(gw.host)
    await hass.async_add_executor_job(gw.start)
    await wait_until(
        lambda: hass.states.get(relay).state == "unavailable", what="relay unavailable"
    )
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_ZEROCONF}, data=discovery(gw)
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "already_configured"
    assert (entry.data[CONF_HOST], entry.data[CONF_PORT]) == ("127.0.0.2", gw.port)
    await wait_until(lambda: hass.states.get(relay).state == "off", what="relay read again")
