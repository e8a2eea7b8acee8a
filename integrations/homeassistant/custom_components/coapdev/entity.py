"""The base of every coapdev entity: one typed resource of one device."""

from __future__ import annotations

import logging
from typing import Any

from coapdev.client import Response
from coapdev.errors import ClientError
from coapdev.typed import TypedResource
from homeassistant.core import callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.entity import Entity

from .device import CoapdevDevice, response_value

_LOGGER = logging.getLogger(__name__)


class CoapdevEntity(Entity):
    """An entity whose state is pushed by the device (CoAP Observe), never polled."""

    _attr_should_poll = False
    _attr_has_entity_name = True

    def __init__(self, device: CoapdevDevice, resource: TypedResource) -> None:
        self.device = device
        self.resource = resource
        self._attr_unique_id = f"{device.device_id}{resource.path}"
        self._attr_name = resource.title or resource.path.strip("/").replace("/", " ")
        self._attr_device_info = device.device_info
        #: False while the device refuses Home Assistant's role this resource's state.
        self._readable = True

    @property
    def available(self) -> bool:
        return self.device.available and self._readable

    async def async_added_to_hass(self) -> None:
        self.async_on_remove(self.device.add_availability_listener(self.async_write_ha_state))
        if self.resource.has_state:
            self.async_on_remove(
                self.device.follow(self.resource, self._state_received, self._refused)
            )

    @callback
    def _state_received(self, value: Any) -> None:
        self._readable = True
        self.apply_state(value)
        self.async_write_ha_state()

    @callback
    def _refused(self, reason: str) -> None:
        if self._readable:
            _LOGGER.warning("%s: %s", self.entity_id, reason)
        self._readable = False
        self.async_write_ha_state()

    def apply_state(self, value: Any) -> None:
        """Take a state the device sent (None: unknown).  Stateful kinds override this."""

    async def send(self, method: str, payload: bytes | str = b"") -> Response:
        """Send a command to the resource; a failure is shown to the user as it is."""
        try:
            response = await self.device.async_command(method, self.resource.path, payload)
        except ClientError as exc:
            raise HomeAssistantError(str(exc)) from exc
        if self.resource.has_state and response.payload:
            # The answer carries the new state: show it now, the notification confirms.
            self.apply_state(response_value(response))
            self.async_write_ha_state()
        return response
