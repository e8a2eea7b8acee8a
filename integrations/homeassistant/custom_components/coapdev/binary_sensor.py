"""Binary sensors: typed resources of kind ``binary_sensor`` (on/off states, read only)."""

from __future__ import annotations

from typing import Any

from coapdev.const import ResourceKind
from coapdev.typed import switch_state
from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
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
        CoapdevBinarySensor(device, resource)
        for resource in device.resources
        if resource.kind is ResourceKind.BINARY_SENSOR
    )


class CoapdevBinarySensor(CoapdevEntity, BinarySensorEntity):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._attr_device_class = device_class(BinarySensorDeviceClass, self.resource)

    def apply_state(self, value: Any) -> None:
        self._attr_is_on = switch_state(value, self.resource.value_key)
