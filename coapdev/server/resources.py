"""The built-in resources: onboarding (native and Tradfri), device, clients, rekey, light.

Each is a :class:`~coapdev.server.guarded.GuardedResource` with its policy;
the gate (:mod:`~coapdev.server.gate`), the site (:mod:`~coapdev.server.site`)
and the observation machinery (:mod:`~coapdev.server.observe`) have modules of
their own (their names are importable from here too, as before).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from aiocoap import Code, Message, resource

from .. import authz, onboarding, typed
from ..atomic import write_atomic
from ..const import (
    PATH_CLIENTS,
    PATH_DEMO_LIGHT,
    PATH_DEVICE,
    PATH_ONBOARD,
    PATH_REKEY,
    PATH_TRADFRI_ONBOARD,
    PATH_WELL_KNOWN_CORE,
    PROTOCOL_VERSION,
    ContentFormat,
    Key,
    ResourceKind,
    Role,
)
from ..errors import (
    BadRequest,
    CoapdevError,
    NotAcceptable,
)
from ..model import ClientRecord, Principal
from ..payload import decode, encode, parse_switch
from .gate import ServerState, source_of
from .guarded import GuardedResource
from .observe import ObservableGuardedResource
from .responses import request_value, response_format, value_response
from .site import (  # noqa: F401  (re-exported: importable from here as before)
    ADMIN_ONLY,
    ALL_ROLES,
    BLOCK2_BYTES_PER_RESOURCE,
    BLOCK2_KEPT_PER_RESOURCE,
    BUILTIN_MAX_INPUT_BYTES,
    MAX_UPLOADS_PER_RESOURCE,
    WRITE_FAILURE_LOG_INTERVAL_S,
    DeviceSite,
    Observation,
    _source,
    bound_block1,
    log_request,
    refusal_message,
    with_diagnostic,
)

log = logging.getLogger("coapdev.server")
request_log = logging.getLogger("coapdev.requests")


# --- built-in resources ----------------------------------------------------------------------


class OnboardingResource(GuardedResource):
    """POST a name with the factory key; get a minted identity and key back."""

    rt = "coapdev.onboard"
    fast_path = True
    #: The factory identity while the window is open, and admins at any time.
    policy = authz.Policy({"POST": authz.Rule(ADMIN_ONLY, factory=True)})

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        bound_block1(self, onboarding.MAX_ONBOARD_PAYLOAD, state.max_uploads_per_resource)

    def get_link_description(self) -> dict[str, str] | None:
        return None  # not for clients' eyes in /.well-known/core

    async def render_post(self, request: Message, who: Principal) -> Message:
        if self.state.before_onboarding is not None:
            self.state.before_onboarding(request)
        return self.mint(request, who, self.state.clock())

    def mint(self, request: Message, who: Principal, now: float) -> Message:
        """The native exchange (CBOR, or JSON with a text key)."""
        state = self.state
        parsed = onboarding.parse_onboard_request(request.payload, request.opt.content_format)
        as_json = request.opt.content_format == ContentFormat.JSON or (
            request.opt.accept == ContentFormat.JSON
        )
        if as_json and "key-format" not in _raw_keys(request):
            parsed = onboarding.OnboardRequest(parsed.name, onboarding.KeyFormat.TEXT)
        if as_json and parsed.key_format is onboarding.KeyFormat.BYTES:
            raise BadRequest('a bytes key cannot travel in JSON; ask for "key-format": "text"')
        record = onboarding.onboard(state.store, parsed, now=now, actor=who.credential)
        log.info(
            "onboarded client %s (%s) as %s from %s",
            record.name,
            record.id,
            record.role.value,
            source_of(request),
        )
        body = onboarding.onboard_response(record, state.store.device.id)
        fmt = ContentFormat.JSON if as_json else ContentFormat.CBOR
        return Message(code=Code.CREATED, payload=encode(body, fmt), content_format=fmt)


def _raw_keys(request: Message) -> Collection[str]:
    try:
        body = decode(request.payload, request.opt.content_format or ContentFormat.CBOR)
    except CoapdevError:
        return ()
    return body.keys() if isinstance(body, dict) else ()


class TradfriOnboardingResource(OnboardingResource):
    """POST /15011/9063 ``{"9090": identity}`` → ``{"9091": psk, "9029": firmware}``."""

    def mint(self, request: Message, who: Principal, now: float) -> Message:
        identity = onboarding.parse_tradfri_request(request.payload)
        record = onboarding.tradfri_onboard(
            self.state.store, identity, now=now, actor=who.credential
        )
        log.info("onboarded Tradfri-style client %s from %s", record.id, source_of(request))
        return Message(
            code=Code.CREATED,
            payload=onboarding.tradfri_response(record),
            content_format=ContentFormat.JSON,
        )


class DeviceInfoResource(GuardedResource):
    rt = "coapdev.device"
    fast_path = True
    ct = f"{ContentFormat.CBOR:d} {ContentFormat.JSON:d}"
    policy = authz.Policy.of(GET=ALL_ROLES)

    async def render_get(self, request: Message, who: Principal) -> Message:
        device = self.state.store.device
        return value_response(
            request,
            who=who,
            value={
                Key.CLIENT_ID.value: device.id,
                Key.MODEL.value: device.model,
                Key.FIRMWARE.value: self.state.firmware,
                Key.PROTOCOL.value: PROTOCOL_VERSION,
                Key.UPTIME_S.value: round(self.state.uptime_s(), 3),
            },
        )


class WellKnownCoreResource(GuardedResource):
    """Link format of the resources the asking client's role can use."""

    ct = f"{ContentFormat.LINK_FORMAT:d}"
    policy = authz.Policy.of(GET=ALL_ROLES)

    def __init__(self, state: ServerState, site: DeviceSite) -> None:
        super().__init__(state)
        self.site = site

    def get_link_description(self) -> dict[str, str] | None:
        return None

    async def render_get(self, request: Message, who: Principal) -> Message:
        links = self.site.get_resources_as_linkheader(who.role)
        return Message(payload=str(links).encode("utf-8"), content_format=ContentFormat.LINK_FORMAT)


class ClientsResource(GuardedResource):
    """GET /clients: every client but their keys (admin only)."""

    rt = "coapdev.clients"
    ct = f"{ContentFormat.CBOR:d} {ContentFormat.JSON:d}"
    policy = authz.Policy.of(GET=ADMIN_ONLY)

    async def render_get(self, request: Message, who: Principal) -> Message:
        me = who.client.id if who.client else None
        clients = self.state.store.clients()
        listing = [dict(c.public(), **{Key.SELF.value: c.id == me}) for c in clients]
        return value_response(request, listing, who=who)


_OWN_OR_ADMIN = authz.Rule(ALL_ROLES, own_only=frozenset({Role.USER}))


class ClientItemResource(GuardedResource, resource.PathCapable):
    """/clients/ID: GET (admin or self), PUT name (admin or self) or role (admin),
    DELETE (revoke; admin or self).  A user gets the same answer for another
    client's record and for one that does not exist."""

    policy = authz.Policy(
        {
            "GET": _OWN_OR_ADMIN,
            "PUT": _OWN_OR_ADMIN,
            "DELETE": _OWN_OR_ADMIN,
            "PUT role": authz.Rule(ADMIN_ONLY),
        }
    )

    def target_of(self, request: Message) -> str | None:
        path = request.opt.uri_path
        return path[0] if len(path) == 1 and path[0] else None

    def _target(self, request: Message) -> ClientRecord:
        ref = self.target_of(request)
        if ref is None:
            raise BadRequest("address one client as /clients/ID")
        return self.state.store.find_client(ref)

    async def render_get(self, request: Message, who: Principal) -> Message:
        return value_response(request, self._target(request).public(), who=who)

    async def render_put(self, request: Message, who: Principal) -> Message:
        target = self._target(request)
        self.state.check_change(request, who, "client-change")
        body = request_value(request)
        if not isinstance(body, dict) or not body.keys() <= {Key.NAME.value, Key.ROLE.value}:
            raise BadRequest('send a map with "name" and/or "role"')
        store = self.state.store
        actor = who.client.id if who.client else "?"
        if Key.ROLE.value in body:
            self.state.admit(request, self.policy, "PUT role")
            try:
                role = Role(body[Key.ROLE.value])
            except ValueError:
                raise BadRequest(
                    f"role must be one of {', '.join(r.value for r in Role)}"
                ) from None
            target = store.set_role(target.id, role, by=actor, actor=who.credential)
        if Key.NAME.value in body:
            target = store.rename(target.id, body[Key.NAME.value], by=actor, actor=who.credential)
        return value_response(request, target.public(), Code.CHANGED, who)

    async def render_delete(self, request: Message, who: Principal) -> Message:
        target = self._target(request)
        self.state.check_change(request, who, "revoke")
        actor = who.client.name if who.client else "?"
        self.state.store.revoke(
            target.id, by=who.client.id if who.client else "?", actor=who.credential
        )
        log.info("revoked client %s (%s) by %s", target.name, target.id, actor)
        return Message(code=Code.DELETED)


class RekeyResource(GuardedResource):
    """POST /rekey: a new identity and key; the old ones work until the new are used."""

    rt = "coapdev.rekey"
    fast_path = True
    policy = authz.Policy.of(POST=ALL_ROLES)

    async def render_post(self, request: Message, who: Principal) -> Message:
        client = who.client
        assert client is not None  # the policy admits no factory identity here
        self.state.check_change(request, who, "rekey")
        pending = self.state.store.begin_rekey(
            client.id, now=self.state.clock(), actor=who.credential
        )
        body = {
            Key.IDENTITY.value: pending.identity,
            Key.PSK.value: client.key_for_wire(pending.key),
        }
        fmt = response_format(request, who)
        if fmt == ContentFormat.JSON and isinstance(body[Key.PSK.value], bytes):
            raise NotAcceptable("a bytes key cannot travel in JSON; ask for CBOR")
        return Message(code=Code.CHANGED, payload=encode(body, fmt), content_format=fmt)


class LightResource(ObservableGuardedResource):
    """A demo light: GET ``{"on": bool}``, PUT on/off, POST toggles; observable.

    Its state is kept in the state directory so it survives restarts.
    """

    rt = "coapdev.light"
    fast_path = True
    ct = f"{ContentFormat.CBOR:d} {ContentFormat.JSON:d}"
    policy = authz.Policy.of(GET=ALL_ROLES, PUT=ALL_ROLES, POST=ALL_ROLES)

    def __init__(self, state: ServerState, state_file: Path) -> None:
        super().__init__(state)
        self.state_file = state_file
        self.on = False
        try:
            self.on = bool(json.loads(state_file.read_text()).get(Key.ON.value, False))
        except (OSError, ValueError, AttributeError):
            pass

    def get_link_description(self) -> dict[str, Any]:
        """Typed as a light, so home-automation clients offer it as one (protocol.md, 4.6)."""
        links = super().get_link_description()
        links["title"] = "Demo light"
        return typed.add_link_attributes(links, ResourceKind.LIGHT)

    async def render_get(self, request: Message, who: Principal) -> Message:
        return value_response(request, {Key.ON.value: self.on}, who=who)

    async def render_put(self, request: Message, who: Principal) -> Message:
        self._set(parse_switch(request_value(request), self.on))
        return value_response(request, {Key.ON.value: self.on}, Code.CHANGED, who)

    async def render_post(self, request: Message, who: Principal) -> Message:
        self._set(not self.on)
        return value_response(request, {Key.ON.value: self.on}, Code.CHANGED, who)

    def _set(self, on: bool) -> None:
        changed = on != self.on
        self.on = on
        write_atomic(self.state_file, json.dumps({Key.ON.value: on}).encode())
        if changed:
            # Let the response go out first, then notify observers.
            asyncio.get_running_loop().call_soon(self.notify)


def build_site(state: ServerState, *, demo_light: Path | None = None) -> DeviceSite:
    """The built-in resources; the gateway adds its configured ones to the site."""
    site = DeviceSite(state)
    site.add_resource(PATH_ONBOARD, OnboardingResource(state))
    site.add_resource(PATH_TRADFRI_ONBOARD, TradfriOnboardingResource(state))
    site.add_resource(PATH_DEVICE, DeviceInfoResource(state))
    site.add_resource(PATH_CLIENTS, ClientsResource(state))
    site.add_resource(PATH_CLIENTS, ClientItemResource(state))
    site.add_resource(PATH_REKEY, RekeyResource(state))
    site.add_resource(PATH_WELL_KNOWN_CORE, WellKnownCoreResource(state, site))
    if demo_light is not None:
        site.add_resource(PATH_DEMO_LIGHT, LightResource(state, demo_light))
    return site
