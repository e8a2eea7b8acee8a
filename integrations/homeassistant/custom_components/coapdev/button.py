"""Buttons: typed resources of kind ``button``; pressing one POSTs to it."""

from __future__ import annotations

from typing import Any

from coapdev.const import ResourceKind
from homeassistant.components.button import ButtonDeviceClass, ButtonEntity
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
        CoapdevButton(device, resource)
        for resource in device.resources
        if resource.kind is ResourceKind.BUTTON
    )


class CoapdevButton(CoapdevEntity, ButtonEntity):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._attr_device_class = device_class(ButtonDeviceClass, self.resource)

    async def async_press(self) -> None:
        await self.send("POST")
