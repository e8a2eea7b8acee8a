"""Entities from a real gateway's typed resources; states both ways, availability, re-auth."""

from __future__ import annotations

import json
from pathlib import Path

from homeassistant.components.diagnostics import REDACTED
from homeassistant.config_entries import SOURCE_REAUTH, ConfigEntryState
from homeassistant.const import ATTR_DEVICE_CLASS, ATTR_UNIT_OF_MEASUREMENT, CONF_HOST, CONF_PORT
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry
from support import run_cli

from custom_components.coapdev.const import CONF_FACTORY_KEY, CONF_IDENTITY, CONF_PSK, DOMAIN
from custom_components.coapdev.diagnostics import async_get_config_entry_diagnostics

from .conftest import device_command, device_id_of, wait_until


async def set_up(hass: HomeAssistant, gw) -> MockConfigEntry:
    """Onboard through the config flow, as a user would, and wait for the entities."""
    flow = await hass.config_entries.flow.async_init(DOMAIN, context={"source": "user"})
    result = await hass.config_entries.flow.async_configure(
        flow["flow_id"], {CONF_HOST: gw.host, CONF_PORT: gw.port, CONF_FACTORY_KEY: gw.key}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    await hass.async_block_till_done()
    return result["result"]


def entity_id(hass: HomeAssistant, platform: str, gw, path: str) -> str:
    found = er.async_get(hass).async_get_entity_id(platform, DOMAIN, f"{device_id_of(gw)}{path}")
    assert found, f"no {platform} entity for {path}"
    return found


def state(hass: HomeAssistant, entity: str) -> str | None:
    current = hass.states.get(entity)
    return current.state if current else None


def write_state(gw, name: str, text: str) -> None:
    path = gw.data_dir / name
    path.with_suffix(".new").write_text(text)
    path.with_suffix(".new").replace(path)


async def test_each_kind_becomes_an_entity(hass: HomeAssistant, gateway) -> None:
    entry = await set_up(hass, gateway)
    registry = er.async_get(hass)
    ours = {e.unique_id: e for e in er.async_entries_for_config_entry(registry, entry.entry_id)}
    device_id = device_id_of(gateway)
    assert {uid.removeprefix(device_id): e.domain for uid, e in ours.items()} == {
        "/relay": "switch",
        "/light": "light",
        "/temperature": "sensor",
        "/status": "sensor",
        "/door": "binary_sensor",
        "/doorbell": "button",
    }  # and none for the untyped /plain

    temperature = entity_id(hass, "sensor", gateway, "/temperature")
    attributes = hass.states.get(temperature).attributes
    assert attributes[ATTR_UNIT_OF_MEASUREMENT] == "°C"
    assert attributes[ATTR_DEVICE_CLASS] == "temperature"
    door = entity_id(hass, "binary_sensor", gateway, "/door")
    assert hass.states.get(door).attributes[ATTR_DEVICE_CLASS] == "door"
    relay = entity_id(hass, "switch", gateway, "/relay")
    assert hass.states.get(relay).attributes[ATTR_DEVICE_CLASS] == "outlet"
    assert hass.states.get(relay).attributes["friendly_name"].endswith("Relay")

    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")
    await wait_until(lambda: state(hass, door) == "off", what="the door's state")
    await wait_until(
        lambda: state(hass, entity_id(hass, "sensor", gateway, "/status")) == "idle",
        what="the text sensor's state",
    )
    assert state(hass, temperature) == "unknown"  # the device reports {"celsius": null}

    device = dr.async_get(hass).async_get_device(identifiers={(DOMAIN, device_id)})
    assert device is not None and device.model == "coapdev-gateway"


async def test_a_switch_switched_in_home_assistant_reaches_the_script(
    hass: HomeAssistant, gateway
) -> None:
    await set_up(hass, gateway)
    relay = entity_id(hass, "switch", gateway, "/relay")
    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")
    await hass.services.async_call("switch", "turn_on", {"entity_id": relay}, blocking=True)
    assert (gateway.data_dir / "relay").read_text() == "on"
    assert state(hass, relay) == "on"
    await hass.services.async_call("switch", "turn_off", {"entity_id": relay}, blocking=True)
    assert (gateway.data_dir / "relay").read_text() == "off"
    assert state(hass, relay) == "off"


async def test_changes_on_the_device_are_pushed_to_home_assistant(
    hass: HomeAssistant, gateway
) -> None:
    await set_up(hass, gateway)
    temperature = entity_id(hass, "sensor", gateway, "/temperature")
    relay = entity_id(hass, "switch", gateway, "/relay")
    door = entity_id(hass, "binary_sensor", gateway, "/door")
    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")

    write_state(gateway, "temperature", '{"celsius": 21.5}')
    await wait_until(lambda: state(hass, temperature) == "21.5", what="the new temperature")
    write_state(gateway, "temperature", '{"celsius": 22}')
    await wait_until(lambda: state(hass, temperature) == "22", what="the next temperature")
    write_state(gateway, "relay", "on")  # switched on the device itself
    await wait_until(lambda: state(hass, relay) == "on", what="the relay switched on the device")
    write_state(gateway, "door", "1")
    await wait_until(lambda: state(hass, door) == "on", what="the door opening")
    write_state(gateway, "temperature", "not json")  # the script fails: 5.00
    await wait_until(lambda: state(hass, temperature) == "unknown", what="an unknown state")


async def test_the_built_in_light_and_a_button(hass: HomeAssistant, gateway) -> None:
    await set_up(hass, gateway)
    light = entity_id(hass, "light", gateway, "/light")
    await wait_until(lambda: state(hass, light) == "off", what="the light's state")
    await hass.services.async_call("light", "turn_on", {"entity_id": light}, blocking=True)
    await wait_until(lambda: state(hass, light) == "on", what="the light on")
    assert json.loads((Path(gateway.state_dir) / "light.json").read_text()) == {"on": True}

    doorbell = entity_id(hass, "button", gateway, "/doorbell")
    await hass.services.async_call("button", "press", {"entity_id": doorbell}, blocking=True)
    await hass.services.async_call("button", "press", {"entity_id": doorbell}, blocking=True)
    assert (gateway.data_dir / "presses").read_text() == "pressed\npressed\n"


async def test_entities_are_unavailable_while_the_device_is_down(
    hass: HomeAssistant, gateway, fast_timings
) -> None:
    await set_up(hass, gateway)
    relay = entity_id(hass, "switch", gateway, "/relay")
    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")
    gateway.kill9()  # no close_notify, no answer: gone without a word
    await wait_until(lambda: state(hass, relay) == "unavailable", what="unavailable")
    write_state(gateway, "relay", "on")  # changed while Home Assistant could not see it
    await hass.async_add_executor_job(gateway.start)
    await wait_until(lambda: state(hass, relay) == "on", timeout_s=30, what="the state, after")


async def test_a_revoked_home_assistant_is_asked_to_onboard_again(
    hass: HomeAssistant, gateway, tmp_path
) -> None:
    # Someone else is the admin, as on a device set up from a laptop first.
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    onboarded = await hass.async_add_executor_job(
        lambda: run_cli(laptop, "onboard", gateway.uri, "--key", gateway.key, "--name", "laptop")
    )
    assert onboarded.returncode == 0, onboarded.stderr
    entry = await set_up(hass, gateway)
    relay = entity_id(hass, "switch", gateway, "/relay")
    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")
    old_identity = entry.data[CONF_IDENTITY]

    await device_command(gateway, "clients", "revoke", "Home Assistant")
    flows = await wait_until(
        lambda: hass.config_entries.flow.async_progress_by_handler(
            DOMAIN, match_context={"source": SOURCE_REAUTH}
        ),
        what="a re-authentication flow",
    )
    assert state(hass, relay) == "unavailable"

    await device_command(gateway, "pair")
    result = await hass.config_entries.flow.async_configure(
        flows[0]["flow_id"], {CONF_FACTORY_KEY: gateway.key}
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "reauth_successful"
    assert entry.data[CONF_IDENTITY] != old_identity
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    await wait_until(lambda: state(hass, relay) == "off", what="the relay again")
    await hass.services.async_call("switch", "turn_on", {"entity_id": relay}, blocking=True)
    assert (gateway.data_dir / "relay").read_text() == "on"


async def test_an_entry_whose_identity_is_gone_starts_in_reauth(
    hass: HomeAssistant, gateway
) -> None:
    entry = await set_up(hass, gateway)
    await hass.config_entries.async_unload(entry.entry_id)
    await device_command(gateway, "clients", "revoke", "Home Assistant", "--force")
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert hass.config_entries.flow.async_progress_by_handler(
        DOMAIN, match_context={"source": SOURCE_REAUTH}
    )


async def test_an_unreachable_device_is_retried(hass: HomeAssistant, gateway, fast_timings) -> None:
    entry = await set_up(hass, gateway)
    await hass.config_entries.async_unload(entry.entry_id)
    gateway.stop()
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY


async def test_unloading_ends_the_session(hass: HomeAssistant, gateway_factory) -> None:
    gateway = gateway_factory(extra_args=["--log-level", "debug"])
    entry = await set_up(hass, gateway)
    relay = entity_id(hass, "switch", gateway, "/relay")
    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")
    closed = gateway.log().count("ended: closed by peer")  # the onboarding session's
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert entry.state is ConfigEntryState.NOT_LOADED
    await wait_until(
        lambda: gateway.log().count("ended: closed by peer") > closed,
        what="Home Assistant's close_notify",
    )


async def test_unloading_with_the_device_gone_is_clean(
    hass: HomeAssistant, gateway, fast_timings
) -> None:
    entry = await set_up(hass, gateway)
    relay = entity_id(hass, "switch", gateway, "/relay")
    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")
    gateway.stop()  # observations now try to come back, and fail
    await wait_until(lambda: state(hass, relay) == "unavailable", what="unavailable")
    assert await hass.config_entries.async_unload(entry.entry_id)
    # Home Assistant's harness fails the test on any error in the event loop and on
    # tasks or timers left behind.


async def test_diagnostics_hold_no_key(hass: HomeAssistant, gateway) -> None:
    entry = await set_up(hass, gateway)
    diagnostics = await async_get_config_entry_diagnostics(hass, entry)
    text = json.dumps(diagnostics)
    assert entry.data[CONF_PSK] not in text and entry.data[CONF_IDENTITY] not in text
    assert diagnostics["entry"][CONF_PSK] == REDACTED
    assert {r["path"] for r in diagnostics["resources"]} >= {"/relay", "/temperature"}
    assert diagnostics["device"]["id"] == device_id_of(gateway)


ROLE_CONFIG = """
[device]
advertise = false

[[resource]]
path = "/relay"
kind = "switch"
get = { run = ["{scripts}/state.sh", "relay", "get", "off"] }
put = { run = ["{scripts}/state.sh", "relay", "set"] }

[[resource]]
path = "/boiler"
kind = "switch"
get = { run = ["{scripts}/state.sh", "boiler", "get", "off"], roles = ["admin"] }
put = { run = ["{scripts}/state.sh", "boiler", "set"] }
"""


async def test_a_state_the_role_may_not_read_is_unavailable_not_a_reauth(
    hass: HomeAssistant, gateway_factory, tmp_path, fast_timings
) -> None:
    gateway = gateway_factory(config=ROLE_CONFIG)
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    onboarded = await hass.async_add_executor_job(
        lambda: run_cli(laptop, "onboard", gateway.uri, "--key", gateway.key, "--name", "laptop")
    )
    assert onboarded.returncode == 0, onboarded.stderr  # the admin; Home Assistant is a user
    await set_up(hass, gateway)
    relay = entity_id(hass, "switch", gateway, "/relay")
    boiler = entity_id(hass, "switch", gateway, "/boiler")
    await wait_until(lambda: state(hass, relay) == "off", what="the relay's state")
    await wait_until(lambda: state(hass, boiler) == "unavailable", what="the boiler refused")
    assert not hass.config_entries.flow.async_progress_by_handler(
        DOMAIN, match_context={"source": SOURCE_REAUTH}
    )
    await hass.services.async_call("switch", "turn_on", {"entity_id": relay}, blocking=True)
    assert state(hass, relay) == "on" and state(hass, boiler) == "unavailable"
