"""Set up a coapdev device: found by zeroconf or typed in, onboarded with its label.

The user gives the factory key as printed on the label (``7QJ2-M4KX-9TZC-8RNW``)
or the text of its QR code (``COAPDEV:1:<device id>:<key>``).  Home Assistant
onboards with it once and stores only the identity and key the device mints
for it; the factory key is not kept.  When the device revoked that identity,
the re-authentication step onboards again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import voluptuous as vol
from coapdev.client import Credentials, DeviceAddress, onboard
from coapdev.const import DEFAULT_COAPS_PORT, QR_PREFIX, TXT_DEVICE_ID, TXT_ONBOARDING
from coapdev.errors import (
    ClientError,
    DeviceTimeout,
    HandshakeFailed,
    InvalidKeyText,
    InvalidQRPayload,
    NotAuthorized,
    RequestFailed,
)
from coapdev.keys import ALPHABET, canonical_factory_key
from coapdev.qr import parse_qr_text
from homeassistant.config_entries import ConfigFlow, ConfigFlowResult
from homeassistant.const import CONF_HOST, CONF_PORT
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo

from . import const
from .const import CLIENT_NAME, CONF_FACTORY_KEY, DOMAIN
from .device import entry_data_from_credentials

_LOGGER = logging.getLogger(__name__)

_PORT = vol.All(vol.Coerce(int), vol.Range(min=1, max=65535))
_SERVICE_SUFFIX = "._coaps._udp.local."
#: Longest device id taken from a zeroconf advertisement.
MAX_DEVICE_ID_CHARS = 32


@dataclass(frozen=True, slots=True)
class Label:
    """What the user read off the device's label."""

    factory_key: str
    device_id: str | None = None
    port: int | None = None


def read_label(text: str) -> Label:
    """A factory key as printed, or a QR payload; raises InvalidKeyText/InvalidQRPayload."""
    text = text.strip()
    if text.upper().startswith(QR_PREFIX + ":"):
        payload = parse_qr_text(text)
        return Label(payload.factory_key, payload.device_id, payload.port)
    return Label(canonical_factory_key(text))


def _is_device_id(text: str) -> bool:
    """What a coapdev device advertises as its id: up to 32 of the key alphabet."""
    return 0 < len(text) <= MAX_DEVICE_ID_CHARS and all(c in ALPHABET for c in text)


class OnboardingFailed(Exception):
    """Onboarding did not work; ``error`` is the form error, ``reason`` the device's words."""

    def __init__(self, error: str, reason: str = "", field: str = "base") -> None:
        super().__init__(error)
        self.error = error
        self.reason = reason
        self.field = field


async def onboard_with_label(host: str, port: int, text: str, device_id: str | None) -> Credentials:
    """Onboard as Home Assistant; every failure is an OnboardingFailed the form can show."""
    try:
        label = read_label(text)
    except (InvalidKeyText, InvalidQRPayload) as exc:
        raise OnboardingFailed("invalid_key", str(exc), CONF_FACTORY_KEY) from None
    if device_id and label.device_id and label.device_id != device_id:
        raise OnboardingFailed(
            "other_device", f"{label.device_id}, not {device_id}", CONF_FACTORY_KEY
        )
    address = DeviceAddress(host, label.port or port)
    try:
        credentials = await onboard(
            address, label.factory_key, CLIENT_NAME, timeout_s=const.REQUEST_TIMEOUT_S
        )
    except HandshakeFailed as exc:
        raise OnboardingFailed("wrong_key", str(exc), CONF_FACTORY_KEY) from None
    except NotAuthorized as exc:
        raise OnboardingFailed("onboarding_closed", str(exc)) from None
    except DeviceTimeout as exc:
        raise OnboardingFailed("cannot_connect", str(exc)) from None
    except RequestFailed as exc:
        error = "too_many_attempts" if exc.code == "4.29" else "device_refused"
        raise OnboardingFailed(error, str(exc)) from None
    except ClientError as exc:
        raise OnboardingFailed("cannot_connect", str(exc)) from None
    _LOGGER.info(
        "onboarded to %s as %r (%s)", credentials.device_id, credentials.name, credentials.role
    )
    return credentials


class CoapdevConfigFlow(ConfigFlow, domain=DOMAIN):
    """Discovery, manual entry and re-authentication."""

    VERSION = 1

    def __init__(self) -> None:
        self._host = ""
        self._port = DEFAULT_COAPS_PORT
        self._device_id: str | None = None
        self._title = ""
        self._onboarding_open: bool | None = None

    # --- by hand ---------------------------------------------------------------------

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        reason = ""
        if user_input is not None:
            host = user_input[CONF_HOST].strip().strip("[]")
            try:
                credentials = await onboard_with_label(
                    host, user_input[CONF_PORT], user_input[CONF_FACTORY_KEY], None
                )
            except OnboardingFailed as failed:
                errors[failed.field] = failed.error
                reason = failed.reason
            else:
                return await self._finish(credentials)
        schema = vol.Schema(
            {
                vol.Required(CONF_HOST): str,
                vol.Required(CONF_PORT, default=DEFAULT_COAPS_PORT): _PORT,
                vol.Required(CONF_FACTORY_KEY): str,
            }
        )
        if user_input is not None:
            schema = self.add_suggested_values_to_schema(
                schema, {k: v for k, v in user_input.items() if k != CONF_FACTORY_KEY}
            )
        return self.async_show_form(
            step_id="user",
            data_schema=schema,
            errors=errors,
            description_placeholders={"reason": reason},
        )

    # --- found by zeroconf -------------------------------------------------------------

    async def async_step_zeroconf(self, discovery_info: ZeroconfServiceInfo) -> ConfigFlowResult:
        device_id = str(discovery_info.properties.get(TXT_DEVICE_ID) or "")
        if not _is_device_id(device_id) or discovery_info.port is None:
            return self.async_abort(reason="not_coapdev_device")
        await self.async_set_unique_id(device_id)
        # A known device seen at a new address: follow it (the entry reloads).
        self._abort_if_unique_id_configured(
            updates={CONF_HOST: discovery_info.host, CONF_PORT: discovery_info.port}
        )
        self._host = discovery_info.host
        self._port = discovery_info.port
        self._device_id = device_id
        self._title = discovery_info.name.removesuffix(_SERVICE_SUFFIX) or device_id
        self._onboarding_open = discovery_info.properties.get(TXT_ONBOARDING) == "1"
        self.context["title_placeholders"] = {"name": self._title}
        return await self.async_step_discovery_confirm()

    async def async_step_discovery_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        reason = ""
        if user_input is not None:
            try:
                credentials = await onboard_with_label(
                    self._host, self._port, user_input[CONF_FACTORY_KEY], self._device_id
                )
            except OnboardingFailed as failed:
                errors[failed.field] = failed.error
                reason = failed.reason
            else:
                return await self._finish(credentials)
        return self.async_show_form(
            step_id="discovery_confirm",
            data_schema=vol.Schema({vol.Required(CONF_FACTORY_KEY): str}),
            errors=errors,
            description_placeholders={
                "name": self._title,
                "device_id": self._device_id or "",
                "address": DeviceAddress(self._host, self._port).hostinfo,
                "onboarding": "open" if self._onboarding_open else "closed",
                "reason": reason,
            },
        )

    async def _finish(self, credentials: Credentials) -> ConfigFlowResult:
        data = entry_data_from_credentials(credentials)
        await self.async_set_unique_id(credentials.device_id, raise_on_progress=False)
        # Set up already: it gets the new identity and address (and reloads).
        self._abort_if_unique_id_configured(updates=data)
        title = self._title or f"coapdev {credentials.device_id}"
        return self.async_create_entry(title=title, data=data)

    # --- the device revoked Home Assistant ----------------------------------------------

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        self._host = entry_data[CONF_HOST]
        self._port = int(entry_data[CONF_PORT])
        self._device_id = self._get_reauth_entry().unique_id
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        reason = ""
        entry = self._get_reauth_entry()
        if user_input is not None:
            try:
                credentials = await onboard_with_label(
                    self._host, self._port, user_input[CONF_FACTORY_KEY], self._device_id
                )
            except OnboardingFailed as failed:
                errors[failed.field] = failed.error
                reason = failed.reason
            else:
                await self.async_set_unique_id(credentials.device_id, raise_on_progress=False)
                self._abort_if_unique_id_mismatch(
                    reason="wrong_device",
                    description_placeholders={"device_id": credentials.device_id},
                )
                return self.async_update_reload_and_abort(
                    entry, data_updates=entry_data_from_credentials(credentials)
                )
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=vol.Schema({vol.Required(CONF_FACTORY_KEY): str}),
            errors=errors,
            description_placeholders={
                "name": entry.title,
                "address": DeviceAddress(self._host, self._port).hostinfo,
                "reason": reason,
            },
        )
