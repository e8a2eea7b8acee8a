"""Switches: typed resources of kind ``switch`` (PUT on/off)."""

from __future__ import annotations

from typing import Any

from coapdev.const import SWITCH_OFF, SWITCH_ON, ResourceKind
from coapdev.typed import switch_state
from homeassistant.components.switch import SwitchDeviceClass, SwitchEntity
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from .entity import CoapdevEntity
from .helpers import device_class


async def async_setup_entry(
    hass: HomeAssistant, entry: ConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    device = entry.runtime_data
    async_add_entities(
        CoapdevSwitch(device, resource)
        for resource in device.resources
        if resource.kind is ResourceKind.SWITCH
    )


class CoapdevSwitch(CoapdevEntity, SwitchEntity):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._attr_device_class = device_class(SwitchDeviceClass, self.resource)

    def apply_state(self, value: Any) -> None:
        self._attr_is_on = switch_state(value, self.resource.value_key)

    async def async_turn_on(self, **kwargs: Any) -> None:
        await self.send("PUT", SWITCH_ON)

    async def async_turn_off(self, **kwargs: Any) -> None:
        await self.send("PUT", SWITCH_OFF)
