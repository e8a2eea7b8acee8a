"""Diagnostics: what Home Assistant knows of the device, with keys and identities redacted."""

from __future__ import annotations

import dataclasses
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant

from .const import CONF_CLIENT_ID, CONF_IDENTITY, CONF_PSK

#: The key is a secret; the identity and client id name Home Assistant's access.
TO_REDACT = {CONF_PSK, CONF_IDENTITY, CONF_CLIENT_ID}


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: ConfigEntry
) -> dict[str, Any]:
    device = entry.runtime_data
    return {
        "entry": async_redact_data(dict(entry.data), TO_REDACT),
        "device": dict(device.info),
        "available": device.available,
        "resources": [dataclasses.asdict(resource) for resource in device.resources],
    }
