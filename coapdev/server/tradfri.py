"""What Tradfri client code asks right after onboarding, answered as a Tradfri gateway does.

pytradfri (and Home Assistant's IKEA integration built on it) onboards with
``POST /15011/9063`` (coapdev.onboarding) and then reads the gateway's
information, ``GET /15011/15012``, for its id, and the lists of devices
(``GET /15001``) and groups (``GET /15004``).  Without answers its set-up
stops (a 4.04 with an empty payload made pytradfri raise a ``TypeError``).

- ``/15011/15012``: every key pytradfri's ``GatewayInfo`` requires, with
  the device's id (9081), name (9001) and firmware (9029), the current time
  and the device's creation time; the rest (OTA, cloud pairing, HomeKit) are
  the values of a gateway that has none of these.
- ``/15001`` and ``/15004``: empty lists.  coapdev's resources are not
  Tradfri bulbs or groups; a client sees a gateway with nothing paired,
  which is what Tradfri client code handles without special cases.

Every minted client may read them, whatever way it was onboarded; clients
onboarded the Tradfri way get JSON, others CBOR unless they Accept JSON (as
for every built-in resource).  The factory identity may not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiocoap import Message

from .. import authz
from ..const import (
    PATH_TRADFRI_DEVICES,
    PATH_TRADFRI_GATEWAY_INFO,
    PATH_TRADFRI_GROUPS,
    ContentFormat,
    TradfriGatewayKey,
)
from ..model import Principal
from .resources import ALL_ROLES, GuardedResource, ServerState, value_response


class _TradfriResource(GuardedResource):
    ct = f"{ContentFormat.JSON:d} {ContentFormat.CBOR:d}"
    # GET for every role, in whichever form GuardedResource reads it: ``roles``,
    # or ``policy`` where authorization is made by authz.decide.
    roles = {"GET": ALL_ROLES}
    if hasattr(authz, "Policy"):
        policy = authz.Policy.of(GET=ALL_ROLES)


class GatewayInfoResource(_TradfriResource):
    """GET /15011/15012."""

    rt = "tradfri.gateway"

    def __init__(self, state: ServerState, name: Callable[[], str]) -> None:
        super().__init__(state)
        self.name = name

    async def render_get(self, request: Message, who: Principal) -> Message:
        info = gateway_info(self.state, self.name(), time.time())
        return value_response(request, info, who=who)


class EmptyListResource(_TradfriResource):
    """GET /15001 (devices) or /15004 (groups): nothing paired."""

    async def render_get(self, request: Message, who: Principal) -> Message:
        return value_response(request, [], who=who)


def gateway_info(state: ServerState, name: str, now: float) -> dict[str, Any]:
    device = state.store.device
    key = TradfriGatewayKey
    return {
        key.GATEWAY_ID.value: device.id,
        key.NAME.value: name,
        key.FIRMWARE.value: state.firmware,
        key.CURRENT_TIME.value: int(now),
        key.CURRENT_TIME_ISO8601.value: datetime.fromtimestamp(now, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        key.FIRST_SETUP.value: int(device.created),
        key.COMMISSIONING_MODE.value: 0,
        key.NTP_SERVER.value: "",
        key.HOMEKIT_ID.value: "",
        key.CERTIFICATE_PROVISIONED.value: 0,
        key.OTA_TYPE.value: 0,
        key.OTA_UPDATE_STATE.value: 0,
        key.UPDATE_PROGRESS.value: 0,
        key.TIME_SOURCE.value: 0,
        key.ALEXA_PAIR_STATUS.value: 0,
        key.GOOGLE_HOME_PAIR_STATUS.value: 0,
    }


def add_tradfri_resources(server: Any, name: Callable[[], str]) -> None:
    """Serve these on a :class:`~coapdev.server.device.DeviceServer` (before it starts);
    ``name()`` is the device's name, asked at every request (it may be reconfigured)."""
    server.add_resource(PATH_TRADFRI_GATEWAY_INFO, GatewayInfoResource(server.state, name))
    server.add_resource(PATH_TRADFRI_DEVICES, EmptyListResource(server.state))
    server.add_resource(PATH_TRADFRI_GROUPS, EmptyListResource(server.state))
