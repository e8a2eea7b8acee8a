"""Sensors: typed resources of kind ``sensor`` (numbers with a unit, or text)."""

from __future__ import annotations

import logging
from typing import Any

from coapdev.const import ResourceKind
from coapdev.typed import sensor_value
from homeassistant.components.sensor import SensorDeviceClass, SensorEntity
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from .entity import CoapdevEntity
from .helpers import device_class

_LOGGER = logging.getLogger(__name__)


async def async_setup_entry(
    hass: HomeAssistant, entry: ConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    device = entry.runtime_data
    async_add_entities(
        CoapdevSensor(device, resource)
        for resource in device.resources
        if resource.kind is ResourceKind.SENSOR
    )


class CoapdevSensor(CoapdevEntity, SensorEntity):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._attr_device_class = device_class(SensorDeviceClass, self.resource)
        self._attr_native_unit_of_measurement = self.resource.unit or None
        #: With a unit or a class, Home Assistant takes numbers only.
        self._numeric = bool(self.resource.unit or self._attr_device_class)

    def apply_state(self, value: Any) -> None:
        number = sensor_value(value, self.resource.value_key)
        if isinstance(number, str) and self._numeric:
            _LOGGER.debug("%s: %r is not a number; state unknown", self.entity_id, number)
            number = None
        self._attr_native_value = number
