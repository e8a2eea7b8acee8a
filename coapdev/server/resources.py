"""aiocoap resources: a thin shell around the store, onboarding and authorization.

Every request is authenticated twice over: :class:`DeviceSite` refuses
unknown and revoked identities and keeps the factory identity to the
onboarding paths before any resource runs, and :class:`GuardedResource`
re-checks the principal and its role on every render, which also covers each
notification of an observation (so a revoked observer stops hearing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiocoap import Code, Message, resource
from aiocoap import error as coap_error

from .. import __version__, authz, onboarding
from ..atomic import write_atomic
from ..audit import AuditLog
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
    Role,
)
from ..errors import (
    BadRequest,
    CoapdevError,
    MethodNotAllowed,
    NotAcceptable,
    PayloadError,
    RequestRefused,
    UnsupportedContentFormat,
)
from ..payload import decode, encode, parse_switch
from ..store import ClientRecord, CredentialStore, Origin, Principal

log = logging.getLogger("coapdev.server")
request_log = logging.getLogger("coapdev.requests")

ALL_ROLES: frozenset[Role] = frozenset(Role)
ADMIN_ONLY: frozenset[Role] = frozenset({Role.ADMIN})


@dataclass
class ServerState:
    """What resources share: the store, the clock, and hooks into the transport."""

    store: CredentialStore
    audit: AuditLog | None = None
    firmware: str = __version__
    clock: Callable[[], float] = time.time
    started_monotonic: float = field(default_factory=time.monotonic)
    #: Called with identities that must lose their live DTLS sessions now.
    drop_sessions: Callable[[Collection[str]], object] = lambda identities: 0
    #: Optional check before onboarding (rate limits); raises RequestRefused.
    before_onboarding: Callable[[Message], None] | None = None
    #: Observations one DTLS session may hold; more are declined (served as plain GETs).
    max_observations_per_session: int = 64
    #: Blockwise uploads in progress per resource; more get 5.03 until some finish.
    max_uploads_per_resource: int = 32
    #: Optional check before a state change a client asks for (rate limits);
    #: called with the request, who asks and the operation; raises RequestRefused.
    before_change: Callable[[Message, Principal, str], None] | None = None

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def check_change(self, request: Message, who: Principal, operation: str) -> None:
        if self.before_change is not None:
            self.before_change(request, who, operation)

    def identities_removed(self, identities: Collection[str]) -> None:
        if identities:
            self.drop_sessions(identities)


# --- helpers ------------------------------------------------------------------------


def refusal_message(exc: RequestRefused) -> Message:
    cls, detail = (int(part) for part in exc.code.split("."))
    message = Message(
        code=Code(cls * 32 + detail),
        payload=exc.message.encode("utf-8"),
        content_format=ContentFormat.TEXT if exc.message else None,
    )
    if exc.retry_after_s is not None:
        message.opt.max_age = max(1, math.ceil(exc.retry_after_s))
    return message


def response_format(request: Message, who: Principal | None = None) -> int:
    """The content format to answer in: what the client Accepts, CBOR or JSON.

    Without an Accept option: CBOR, except for clients onboarded the Tradfri
    way, whose code expects JSON as a Tradfri gateway speaks it.
    """
    accept = request.opt.accept
    if accept is None:
        client = who.client if who is not None else None
        tradfri = client is not None and client.origin is Origin.TRADFRI
        return ContentFormat.JSON if tradfri else ContentFormat.CBOR
    if accept in (ContentFormat.CBOR, ContentFormat.JSON):
        return int(accept)
    raise NotAcceptable("this resource answers in CBOR (60) or JSON (50)")


def value_response(
    request: Message, value: Any, code: Code | None = None, who: Principal | None = None
) -> Message:
    fmt = response_format(request, who)
    return Message(code=code, payload=encode(value, fmt), content_format=fmt)


def request_value(request: Message) -> Any:
    """The request payload decoded by its content format (CBOR if none is given)."""
    fmt = request.opt.content_format
    if fmt is None:
        fmt = ContentFormat.CBOR if request.payload else ContentFormat.TEXT
    if fmt not in (ContentFormat.CBOR, ContentFormat.JSON, ContentFormat.TEXT):
        raise UnsupportedContentFormat("send CBOR (60), JSON (50) or text (0)")
    try:
        return decode(request.payload, int(fmt))
    except PayloadError as exc:
        raise BadRequest(str(exc)) from None


def _path_text(path: Collection[str]) -> str:
    return "/" + "/".join(path)


class _LoggedPipe:
    """Wraps a pipe to log one line per request with its first response code."""

    def __init__(self, pipe: Any, who: str, started: float) -> None:
        self._pipe = pipe
        self._original_request = pipe.request
        self.request = pipe.request  # the site replaces this with the path-stripped request
        self._who = who
        self._started = started
        self._logged = False

    def add_response(self, response: Message, is_last: bool = False) -> None:
        if not self._logged:
            self._logged = True
            log_request(self._original_request, self._who, response.code, self._started)
        self._pipe.add_response(response, is_last)


def log_request(request: Message, who: str, code: Any, started: float) -> None:
    if request_log.isEnabledFor(logging.INFO):
        duration_ms = (time.perf_counter() - started) * 1000
        request_log.info(
            "client=%s %s %s %s %.1fms",
            who,
            request.code,
            _path_text(request.opt.uri_path),
            code,
            duration_ms,
        )


# --- bounded blockwise uploads ------------------------------------------------------


#: Largest request payload a built-in resource accepts.
BUILTIN_MAX_INPUT_BYTES = 4096


def bound_block1(res: resource.Resource, max_bytes: int, max_uploads: int) -> None:
    """Cap blockwise (Block1) uploads to ``res``: size and number in progress.

    aiocoap would assemble any upload in memory, of any size, from any
    number of clients at once.
    """
    from aiocoap.blockwise import Block1Spool

    class BoundedBlock1Spool(Block1Spool):
        def feed_and_take(self, req: Message) -> Message:
            block1 = req.opt.block1
            if block1 is not None:
                end = block1.start + len(req.payload)
                if end > max_bytes:
                    raise coap_error.RequestEntityTooLarge(f"payload over {max_bytes} bytes")
                in_progress = len(self._assemblies._items)  # aiocoap TimeoutDict: no len()
                if block1.block_number == 0 and in_progress >= max_uploads:
                    raise coap_error.ServiceUnavailable("too many uploads in progress")
            elif len(req.payload) > max_bytes:
                raise coap_error.RequestEntityTooLarge(f"payload over {max_bytes} bytes")
            try:
                return super().feed_and_take(req)
            except ValueError:  # a block that does not continue the upload (size, offset)
                raise coap_error.RequestEntityIncomplete() from None

    res._block1 = BoundedBlock1Spool()


# --- the site -----------------------------------------------------------------------


class DeviceSite(resource.Site):
    """The root of the device: authenticates every request before dispatching it."""

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state

    def _admit(self, request: Any, started: float) -> Principal | Message:
        """The principal of a request, or the refusal to send (already logged)."""
        who = "-"
        try:
            principal = authz.authenticate(self.state.store, request.remote.authenticated_claims)
            who = principal.label
            authz.check_path(principal, tuple(request.opt.uri_path))
            return self._note_seen(principal)
        except RequestRefused as exc:
            log_request(request, who, exc.code, started)
            if self.state.audit is not None and isinstance(exc, authz.Unauthorized):
                self.state.audit.refusal(
                    "refused", _source(request), path=_path_text(request.opt.uri_path)
                )
            return refusal_message(exc)

    async def render_to_pipe(self, pipe: Any) -> None:
        started = time.perf_counter()
        admitted = self._admit(pipe.request, started)
        if isinstance(admitted, Message):
            pipe.add_response(admitted, is_last=True)
            return
        logged = _LoggedPipe(pipe, admitted.label, started)
        try:
            await super().render_to_pipe(logged)
        except coap_error.RenderableError as exc:
            response = exc.to_message()
            logged.add_response(response, is_last=True)

    # --- the fast path (see coapdev.server.fastpath) ---

    def fast_resource(self, path: tuple[str, ...]) -> resource.Resource | None:
        """The resource at exactly ``path`` if it takes fast-path requests."""
        res = self._resources.get(path)
        return res if getattr(res, "fast_path", False) else None

    def render_fast(
        self, res: resource.Resource, request: Any, reply: Callable[[Message], None]
    ) -> None:
        """Admit and render a fast-path request; ``reply`` gets the response."""
        from .fastpath import run_to_completion

        started = time.perf_counter()
        admitted = self._admit(request, started)
        if isinstance(admitted, Message):
            reply(admitted)
            return
        who = admitted.label

        def done(response: Message | None, exc: BaseException | None) -> None:
            if exc is not None:
                if isinstance(exc, coap_error.RenderableError):
                    response = exc.to_message()
                else:
                    log.error("rendering %s failed", _path_text(request.opt.uri_path), exc_info=exc)
                    response = Message(code=Code.INTERNAL_SERVER_ERROR)
            assert response is not None
            log_request(request, who, response.code, started)
            reply(response)

        run_to_completion(res.render(request), done)

    def _note_seen(self, principal: Principal) -> Principal:
        store = self.state.store
        if principal.client is None:
            return principal
        if store.is_pending_identity(principal.identity):
            old_identity = principal.client.identity
            record = store.confirm_rekey(principal.identity)
            log.info("client %s (%s) rotated its key", record.name, record.id)
            self.state.identities_removed([old_identity])
            principal = Principal(principal.identity, record)
        store.touch(principal.client, self.state.clock())  # type: ignore[arg-type]
        return principal

    def get_resources_as_linkheader(self, role: Role | None = None) -> Any:
        from aiocoap.util.linkformat import Link, LinkFormat

        links = []
        for path, res in self._resources.items():
            roles = getattr(res, "visible_to", ALL_ROLES)
            if role is not None and role not in roles:
                continue
            details = res.get_link_description() if hasattr(res, "get_link_description") else {}
            if details is None:
                continue
            links.append(Link("/" + "/".join(path), **details))
        return LinkFormat(links)


def _source(request: Message) -> str:
    try:
        return str(request.remote.hostinfo)
    except Exception:
        return "?"


# --- guarded resources --------------------------------------------------------------


Handler = Callable[[Message, Principal], Awaitable[Message]]


class GuardedResource(resource.Resource):
    """A resource whose handlers receive the authenticated principal.

    ``roles`` maps a method name ("GET", "PUT", ...) to the roles allowed;
    handlers are ``render_get(request, who)`` and so on.  Refusals raised as
    :class:`RequestRefused` become CoAP error responses here.
    """

    roles: Mapping[str, frozenset[Role]] = {}

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state
        bound_block1(self, BUILTIN_MAX_INPUT_BYTES, state.max_uploads_per_resource)

    @property
    def visible_to(self) -> frozenset[Role]:
        visible: set[Role] = set()
        for allowed in self.roles.values():
            visible |= allowed
        return frozenset(visible)

    async def render(self, request: Message) -> Message:
        method = str(request.code)
        handler: Handler | None = getattr(self, f"render_{method.lower()}", None)
        try:
            principal = authz.authenticate(self.state.store, request.remote.authenticated_claims)
            if handler is None or method not in self.roles:
                raise MethodNotAllowed(f"{method} is not supported here")
            authz.require_role(principal, self.roles[method])
            response = await handler(request, principal)
        except RequestRefused as exc:
            return refusal_message(exc)
        except PayloadError as exc:
            return refusal_message(BadRequest(str(exc)))
        if response.code is None:
            response.code = {
                "GET": Code.CONTENT,
                "DELETE": Code.DELETED,
                "POST": Code.CHANGED,
            }.get(method, Code.CHANGED)
        return response


class ObservableGuardedResource(GuardedResource, resource.ObservableResource):
    """Observable; notifications are re-rendered per observer, so re-authorized."""

    async def add_observation(self, request: Message, serverobservation: Any) -> None:
        """Accept an observation unless its session already holds its maximum.

        A declined observation is not an error: the client gets the current
        state without an Observe option (RFC 7641, 4.1), and knows.
        """
        remote = request.remote
        held = getattr(remote, "observations", 0)
        if held >= self.state.max_observations_per_session:
            log.info("declining an observation from %s: %d held", _source(request), held)
            return
        remote.observations = held + 1
        self._observations.add(serverobservation)

        def cancelled() -> None:
            self._observations.discard(serverobservation)
            remote.observations = max(0, remote.observations - 1)
            self.update_observation_count(len(self._observations))

        serverobservation.accept(cancelled)
        self.update_observation_count(len(self._observations))

    def notify(self) -> None:
        self.updated_state()


# --- built-in resources ----------------------------------------------------------------------


class OnboardingResource(resource.Resource):
    """POST a name with the factory key; get a minted identity and key back."""

    rt = "coapdev.onboard"
    fast_path = True

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state
        bound_block1(self, onboarding.MAX_ONBOARD_PAYLOAD, state.max_uploads_per_resource)

    def get_link_description(self) -> dict[str, str] | None:
        return None  # not for clients' eyes in /.well-known/core

    async def render_post(self, request: Message) -> Message:
        """Who may onboard is checked here; what is minted, by :meth:`mint`."""
        state = self.state
        try:
            principal = authz.authenticate(state.store, request.remote.authenticated_claims)
            now = state.clock()
            self._check(request, principal, now)
            return self.mint(request, now)
        except RequestRefused as exc:
            return refusal_message(exc)

    def mint(self, request: Message, now: float) -> Message:
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
        record = onboarding.onboard(state.store, parsed, now=now)
        log.info(
            "onboarded client %s (%s) as %s from %s",
            record.name,
            record.id,
            record.role.value,
            _source(request),
        )
        body = onboarding.onboard_response(record, state.store.device.id)
        fmt = ContentFormat.JSON if as_json else ContentFormat.CBOR
        return Message(code=Code.CREATED, payload=encode(body, fmt), content_format=fmt)

    def _check(self, request: Message, principal: Principal, now: float) -> None:
        if self.state.before_onboarding is not None:
            self.state.before_onboarding(request)
        try:
            onboarding.check_onboarding_allowed(self.state.store, principal, now)
        except RequestRefused:
            if self.state.audit is not None:
                self.state.audit.refusal("onboard-refused", _source(request), reason="closed")
            raise


def _raw_keys(request: Message) -> Collection[str]:
    try:
        body = decode(request.payload, request.opt.content_format or ContentFormat.CBOR)
    except CoapdevError:
        return ()
    return body.keys() if isinstance(body, dict) else ()


class TradfriOnboardingResource(OnboardingResource):
    """POST /15011/9063 ``{"9090": identity}`` → ``{"9091": psk, "9029": firmware}``."""

    def mint(self, request: Message, now: float) -> Message:
        identity = onboarding.parse_tradfri_request(request.payload)
        record = onboarding.tradfri_onboard(self.state.store, identity, now=now)
        log.info("onboarded Tradfri-style client %s from %s", record.id, _source(request))
        return Message(
            code=Code.CREATED,
            payload=onboarding.tradfri_response(record),
            content_format=ContentFormat.JSON,
        )


class DeviceInfoResource(GuardedResource):
    rt = "coapdev.device"
    fast_path = True
    ct = f"{ContentFormat.CBOR:d} {ContentFormat.JSON:d}"
    roles = {"GET": ALL_ROLES}

    async def render_get(self, request: Message, who: Principal) -> Message:
        device = self.state.store.device
        return value_response(
            request,
            who=who,
            value={
                Key.ID.value: device.id,
                Key.MODEL.value: device.model,
                Key.FIRMWARE.value: self.state.firmware,
                Key.PROTOCOL.value: PROTOCOL_VERSION,
                Key.UPTIME_S.value: round(self.state.uptime_s(), 3),
            },
        )


class WellKnownCoreResource(GuardedResource):
    """Link format of the resources the asking client's role can use."""

    ct = f"{ContentFormat.LINK_FORMAT:d}"
    roles = {"GET": ALL_ROLES}

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
    roles = {"GET": ADMIN_ONLY}

    async def render_get(self, request: Message, who: Principal) -> Message:
        me = who.client.id if who.client else None
        clients = self.state.store.clients()
        listing = [dict(c.public(), **{Key.SELF.value: c.id == me}) for c in clients]
        return value_response(request, listing, who=who)


class ClientItemResource(GuardedResource, resource.PathCapable):
    """/clients/ID: GET (admin or self), PUT name/role (admin; self may rename), DELETE (revoke)."""

    roles = {"GET": ALL_ROLES, "PUT": ALL_ROLES, "DELETE": ALL_ROLES}

    @property
    def visible_to(self) -> frozenset[Role]:
        return ADMIN_ONLY

    def _target(self, request: Message) -> ClientRecord:
        path = request.opt.uri_path
        if len(path) != 1 or not path[0]:
            raise BadRequest("address one client as /clients/ID")
        return self.state.store.find_client(path[0])

    async def render_get(self, request: Message, who: Principal) -> Message:
        target = self._target(request)
        authz.require_admin_or_self(who, target)
        return value_response(request, target.public(), who=who)

    async def render_put(self, request: Message, who: Principal) -> Message:
        target = self._target(request)
        actor = authz.require_admin_or_self(who, target)
        self.state.check_change(request, who, "client-change")
        body = request_value(request)
        if not isinstance(body, dict) or not body.keys() <= {Key.NAME.value, Key.ROLE.value}:
            raise BadRequest('send a map with "name" and/or "role"')
        store = self.state.store
        if Key.ROLE.value in body:
            authz.require_role(who, ADMIN_ONLY)
            try:
                role = Role(body[Key.ROLE.value])
            except ValueError:
                raise BadRequest(
                    f"role must be one of {', '.join(r.value for r in Role)}"
                ) from None
            target = store.set_role(target.id, role, by=actor.id)
        if Key.NAME.value in body:
            target = store.rename(target.id, body[Key.NAME.value], by=actor.id)
        return value_response(request, target.public(), Code.CHANGED, who)

    async def render_delete(self, request: Message, who: Principal) -> Message:
        target = self._target(request)
        actor = authz.require_admin_or_self(who, target)
        self.state.check_change(request, who, "revoke")
        gone = [target.identity] + ([target.pending.identity] if target.pending else [])
        self.state.store.revoke(target.id, by=actor.id)
        log.info("revoked client %s (%s) by %s", target.name, target.id, actor.name)
        self.state.identities_removed(gone)
        return Message(code=Code.DELETED)


class RekeyResource(GuardedResource):
    """POST /rekey: a new identity and key; the old ones work until the new are used."""

    rt = "coapdev.rekey"
    fast_path = True
    roles = {"POST": ALL_ROLES}

    async def render_post(self, request: Message, who: Principal) -> Message:
        client = authz.require_client(who)
        self.state.check_change(request, who, "rekey")
        pending = self.state.store.begin_rekey(client.id, now=self.state.clock())
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
    roles = {"GET": ALL_ROLES, "PUT": ALL_ROLES, "POST": ALL_ROLES}

    def __init__(self, state: ServerState, state_file: Path) -> None:
        super().__init__(state)
        self.state_file = state_file
        self.on = False
        try:
            self.on = bool(json.loads(state_file.read_text()).get(Key.ON.value, False))
        except (OSError, ValueError, AttributeError):
            pass

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
