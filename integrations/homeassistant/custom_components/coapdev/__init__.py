"""coapdev for Home Assistant: coapdev devices, onboarded with their label, as entities.

Home Assistant is one onboarded client of the device like any other: it
presents the factory key once, gets its own identity and key (kept in the
config entry), and from then on speaks CoAP over DTLS with them.  The
device's typed resources (docs/protocol.md, 4.6) become entities; their
states are pushed by CoAP Observe.
"""

from __future__ import annotations

# Imported here, in the executor that loads the integration, so that nothing
# is first imported inside the event loop later.
import aiocoap
import aiocoap.transports.tinydtls
import aiocoap.util.linkformat  # noqa: F401
from coapdev.errors import ClientError, HandshakeRejected, NotAuthorized
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryAuthFailed, ConfigEntryNotReady

from .device import CoapdevDevice, credentials_from_entry

PLATFORMS = [
    Platform.BINARY_SENSOR,
    Platform.BUTTON,
    Platform.LIGHT,
    Platform.SENSOR,
    Platform.SWITCH,
]

type CoapdevConfigEntry = ConfigEntry[CoapdevDevice]


async def async_setup_entry(hass: HomeAssistant, entry: CoapdevConfigEntry) -> bool:
    """Connect with the stored credentials and create the device's entities."""
    device = CoapdevDevice(hass, entry, credentials_from_entry(entry.data))
    try:
        await device.async_connect()
    except (NotAuthorized, HandshakeRejected) as exc:
        await device.async_close()
        raise ConfigEntryAuthFailed(str(exc)) from exc
    except ClientError as exc:
        await device.async_close()
        raise ConfigEntryNotReady(str(exc)) from exc
    entry.runtime_data = device
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: CoapdevConfigEntry) -> bool:
    """Remove the entities, then end the observations and the DTLS session."""
    unloaded = await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
    if unloaded:
        await entry.runtime_data.async_close()
    return unloaded
