"""One coapdev device as Home Assistant holds it: one Client, its typed resources, availability.

Every entity of a device shares its one :class:`coapdev.client.Client`, so one
DTLS session and one identity (the one Home Assistant was given when it
onboarded).  States arrive by CoAP Observe through ``Client.observe``, which
re-registers by itself after a restart or an outage; a probe of ``/device``
every ``PING_INTERVAL_S`` tells whether the device is there at all, and
entities are unavailable while it is not.  When the device no longer accepts
Home Assistant's identity (it was revoked), the config entry asks for
re-authentication.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from coapdev.client import Client, Credentials, DeviceAddress, Response
from coapdev.const import KeyFormat
from coapdev.errors import (
    ClientError,
    HandshakeRejected,
    NotAuthorized,
    PayloadError,
    RequestFailed,
)
from coapdev.typed import TypedResource, parse_typed_resources
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import CONF_HOST, CONF_PORT
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.device_registry import DeviceInfo

from . import const
from .const import (
    CONF_CLIENT_ID,
    CONF_CLIENT_NAME,
    CONF_DEVICE_ID,
    CONF_IDENTITY,
    CONF_KEY_FORMAT,
    CONF_PSK,
    CONF_ROLE,
    DOMAIN,
)

_LOGGER = logging.getLogger(__name__)

type StateCallback = Callable[[Any], None]
type RefusedCallback = Callable[[str], None]


def credentials_from_entry(data: Mapping[str, Any]) -> Credentials:
    """The Client's credentials from what the config entry stores."""
    return Credentials(
        device_id=data[CONF_DEVICE_ID],
        address=DeviceAddress(data[CONF_HOST], int(data[CONF_PORT])),
        identity=data[CONF_IDENTITY],
        key=bytes.fromhex(data[CONF_PSK]),
        client_id=data.get(CONF_CLIENT_ID, ""),
        name=data.get(CONF_CLIENT_NAME, ""),
        role=data.get(CONF_ROLE, ""),
        key_format=KeyFormat(data.get(CONF_KEY_FORMAT, KeyFormat.BYTES.value)),
    )


def entry_data_from_credentials(credentials: Credentials) -> dict[str, Any]:
    """What the config entry stores of freshly minted credentials."""
    return {
        CONF_HOST: credentials.address.host,
        CONF_PORT: credentials.address.port,
        CONF_DEVICE_ID: credentials.device_id,
        CONF_IDENTITY: credentials.identity,
        CONF_PSK: credentials.key.hex(),
        CONF_KEY_FORMAT: credentials.key_format.value,
        CONF_CLIENT_ID: credentials.client_id,
        CONF_CLIENT_NAME: credentials.name,
        CONF_ROLE: credentials.role,
    }


def response_value(response: Response) -> Any:
    """The decoded payload, or None if it does not decode (an unknown state)."""
    try:
        return response.value
    except PayloadError as exc:
        _LOGGER.debug("undecodable state: %s", exc)
        return None


class CoapdevDevice:
    """The connection to one device, shared by its entities."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry, credentials: Credentials) -> None:
        self.hass = hass
        self.entry = entry
        self.device_id = credentials.device_id
        self.client = Client(credentials, timeout_s=const.REQUEST_TIMEOUT_S)
        self.info: dict[str, Any] = {}
        self.resources: list[TypedResource] = []
        self.available = True
        self._availability_listeners: set[Callable[[], None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._access_lost = False

    @property
    def device_info(self) -> DeviceInfo:
        return DeviceInfo(
            identifiers={(DOMAIN, self.device_id)},
            name=self.entry.title,
            manufacturer="coapdev",
            model=str(self.info.get("model") or "coapdev device"),
            sw_version=str(self.info.get("firmware") or "") or None,
            serial_number=self.device_id,
        )

    # --- start and stop ------------------------------------------------------------

    async def async_connect(self) -> None:
        """Read the device and its typed resources; raises ClientError subclasses."""
        info = response_value(await self.client.get("/device"))
        listing = response_value(await self.client.get("/.well-known/core"))
        self.info = dict(info) if isinstance(info, Mapping) else {}
        try:
            self.resources = parse_typed_resources(listing if isinstance(listing, str) else "")
        except PayloadError as exc:
            _LOGGER.error("%s lists its resources unreadably (%s): no entities", self.name, exc)
            self.resources = []
        self._start(self._probe_forever(), "probe")

    async def async_close(self) -> None:
        """Stop every observation and the probe, then end the DTLS session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self.client.close()

    @property
    def name(self) -> str:
        return f"coapdev device {self.entry.title} ({self.device_id})"

    def _start(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = self.entry.async_create_background_task(
            self.hass, coro, f"coapdev {self.device_id} {what}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- availability ----------------------------------------------------------------

    @callback
    def add_availability_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        self._availability_listeners.add(listener)
        return lambda: self._availability_listeners.discard(listener)

    @callback
    def _set_available(self, available: bool) -> None:
        if available == self.available:
            return
        self.available = available
        if available:
            _LOGGER.info("%s answers again", self.name)
        for listener in list(self._availability_listeners):
            listener()

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(const.PING_INTERVAL_S)
            await self.async_probe()

    async def async_probe(self) -> bool:
        """GET /device: is the device there, and does it still accept us?"""
        try:
            await self.client.get("/device")
        except (NotAuthorized, HandshakeRejected) as exc:
            self._lost_access(exc)
            return False
        except ClientError as exc:
            if self.available:
                _LOGGER.warning("%s is unreachable: %s", self.name, exc)
            self._set_available(False)
            return False
        self._set_available(True)
        return True

    @callback
    def _lost_access(self, exc: Exception) -> None:
        """The device no longer accepts our identity: ask the user to onboard again."""
        self._set_available(False)
        if self._access_lost:
            return
        self._access_lost = True
        _LOGGER.warning("%s no longer accepts Home Assistant (%s): re-authenticate", self.name, exc)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.entry.async_start_reauth(self.hass)

    # --- states and commands -----------------------------------------------------------

    @callback
    def follow(
        self, resource: TypedResource, on_state: StateCallback, on_refused: RefusedCallback
    ) -> Callable[[], None]:
        """Deliver the resource's state now and at every change, until the returned
        function is called.  ``on_refused(reason)`` is called when this resource's
        state may not be read by Home Assistant's role (other resources go on)."""
        task = self._start(self._follow(resource, on_state, on_refused), resource.path)
        return task.cancel

    async def _follow(
        self, resource: TypedResource, on_state: StateCallback, on_refused: RefusedCallback
    ) -> None:
        while True:
            try:
                async for response in self.client.observe(resource.path):
                    self._set_available(True)
                    on_state(response_value(response))
                # Not observable: that was its state; read it again in a while.
            except HandshakeRejected as exc:
                self._lost_access(exc)
                return
            except NotAuthorized as exc:
                # Revoked, or this resource is not for our role: /device tells which.
                await self.async_probe()
                if self._access_lost:
                    return
                on_refused(str(exc))
            except RequestFailed as exc:
                _LOGGER.warning("%s %s: %s", self.name, resource.path, exc)
                on_state(None)
            await asyncio.sleep(const.POLL_INTERVAL_S)

    async def async_command(self, method: str, path: str, payload: bytes | str = b"") -> Response:
        """Send a command; ClientError subclasses tell why it failed."""
        try:
            return await self.client.request(method, path, payload)
        except (NotAuthorized, HandshakeRejected):
            self._start(self.async_probe_once(), "probe after a refusal")
            raise

    async def async_probe_once(self) -> None:
        await self.async_probe()
