"""The device's site and the one gate: ServerState, DeviceSite, GuardedResource.

Every request, on the aiocoap path and on the fast path, and every
notification of an observation, is admitted by one call,
:meth:`ServerState.admit`, which asks :func:`coapdev.authz.decide` with the
resource's :class:`~coapdev.authz.Policy`.  A resource's handlers then get
the admitted principal; none of them decides access on its own.
Observations register only on GET (RFC 7641); a PUT or POST carrying
Observe runs once, as a plain request.  The built-in resources are in
:mod:`coapdev.server.resources`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Code, Message, resource
from aiocoap import error as coap_error

from .. import __version__, authz
from ..audit import AuditLog
from ..const import (
    ContentFormat,
    Role,
)
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotAcceptable,
    PayloadError,
    RequestRefused,
    StaleCredential,
    StateWriteError,
    Unauthorized,
    UnsupportedContentFormat,
)
from ..model import Credential, Origin, Principal
from ..payload import decode, encode
from ..store import CredentialStore
from . import budget
from .aiocoap_compat import bound_block2
from .budget import Tally, host_of
from .request import CoapRequest

log = logging.getLogger("coapdev.server")
request_log = logging.getLogger("coapdev.requests")

ALL_ROLES = authz.ALL_ROLES
ADMIN_ONLY = authz.ADMIN_ONLY


@dataclass
class ServerState:
    """What resources share: the store, the clock, and hooks into the transport."""

    store: CredentialStore
    audit: AuditLog | None = None
    firmware: str = __version__
    clock: Callable[[], float] = time.time
    started_monotonic: float = field(default_factory=time.monotonic)
    #: Called with credentials whose live DTLS sessions must end now.
    close_sessions: Callable[[Collection[Credential]], object] = lambda credentials: 0
    #: Optional check before onboarding (rate limits); raises RequestRefused.
    before_onboarding: Callable[[Message], None] | None = None
    #: Observations one DTLS session may hold; more are declined (served as plain GETs).
    max_observations_per_session: int = budget.MAX_OBSERVATIONS_PER_SESSION
    #: Observations one client (all its sessions), one source host, and the
    #: whole device may hold; likewise declined beyond.  Each costs about
    #: 10 KiB (docs/reliability.md).
    max_observations_per_client: int = budget.MAX_OBSERVATIONS_PER_CLIENT
    max_observations_per_host: int = budget.MAX_OBSERVATIONS_PER_HOST
    max_observations: int = budget.MAX_OBSERVATIONS
    #: Blockwise uploads in progress per resource; more get 5.03 until some finish.
    max_uploads_per_resource: int = budget.MAX_UPLOADS_PER_RESOURCE
    #: Optional check before a state change a client asks for (rate limits);
    #: called with the request, who asks and the operation; raises RequestRefused.
    before_change: Callable[[Message, Principal, str], None] | None = None

    def __post_init__(self) -> None:
        self._observations_by_client = Tally(self.max_observations_per_client)
        self._observations_by_host = Tally(self.max_observations_per_host)
        self.observations_held = 0

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def check_change(self, request: Message, who: Principal, operation: str) -> None:
        """Rate limits of state changes (set by the gateway); raises RequestRefused."""
        if self.before_change is not None:
            self.before_change(request, who, operation)

    def reserve_observation(self, remote: Any, principal: Principal) -> Callable[[], None] | None:
        """Count one more observation against its session, client, host and the device;
        None if any of them is full (the observation is declined), else the release."""
        held = getattr(remote, "observations", 0)
        client = principal.client.id if principal.client else principal.identity
        host = _host_of_remote(remote)
        if (
            held >= self.max_observations_per_session
            or self._observations_by_client.full(client)
            or self._observations_by_host.full(host)
            or self.observations_held >= self.max_observations
        ):
            log.debug("declining an observation from %s (%s): at a cap", host, principal.label)
            return None
        with contextlib.suppress(AttributeError):
            remote.observations = held + 1
        self._observations_by_client.add(client)
        self._observations_by_host.add(host)
        self.observations_held += 1

        def release() -> None:
            with contextlib.suppress(AttributeError):
                remote.observations = max(0, remote.observations - 1)
            self._observations_by_client.remove(client)
            self._observations_by_host.remove(host)
            self.observations_held -= 1

        return release

    def admit(
        self,
        request: CoapRequest,
        policy: authz.Policy | None,
        operation: str | None = None,
        *,
        target: str | None = None,
    ) -> Principal:
        """The principal allowed to make ``request``, or the refusal (raised).

        The one gate: every request and every notification passes here.  A
        session whose key is no longer valid is closed as well; a closed
        onboarding window is looked up on disk once more before refusing, so
        a window opened by `coapdev-gateway pair` a moment ago counts.
        """
        credential = authz.credential_from_claims(request.remote.authenticated_claims)
        operation = operation or str(request.code)
        path = _path_text(request.opt.uri_path)

        def decide() -> Principal:
            return authz.decide(
                self.store,
                credential,
                operation,
                policy,
                now=self.clock(),
                target=target,
                path=path,
            )

        try:
            try:
                principal = decide()
            except authz.OnboardingClosed:
                if not self.store.refresh():
                    raise
                principal = decide()
        except StaleCredential:
            assert credential is not None
            self.close_sessions([credential])
            self._audit_refusal("refused", request, path=path)
            raise
        except authz.OnboardingClosed:
            self._audit_refusal("onboard-refused", request, reason="closed")
            raise
        except Unauthorized:
            self._audit_refusal("refused", request, path=path)
            raise
        return self._note_seen(principal)

    def _audit_refusal(self, event: str, request: Any, **details: Any) -> None:
        if self.audit is not None:
            self.audit.refusal(event, _source(request), **details)

    def _note_seen(self, principal: Principal) -> Principal:
        """Last seen; and a first request under a rotated key confirms the rotation."""
        store = self.store
        if principal.client is None:
            return principal
        if store.is_pending_identity(principal.identity):
            record = store.confirm_rekey(principal.identity)
            log.info("client %s (%s) rotated its key", record.name, record.id)
            principal = Principal(principal.identity, record, principal.credential)
        store.touch(principal.client, self.clock())  # type: ignore[arg-type]
        return principal

    def label_for(self, request: Any) -> str:
        """Who sent ``request``, for the request log."""
        credential = authz.credential_from_claims(request.remote.authenticated_claims)
        principal = None if credential is None else self.store.principal_for(credential)
        return "-" if principal is None else principal.label


# --- helpers ------------------------------------------------------------------------


def refusal_message(exc: RequestRefused) -> Message:
    """The response for a refusal: its code, its text as diagnostic, Max-Age if given.

    Domain errors of the model and the store (:class:`~coapdev.errors.StoreError`)
    arrive here too: each is the refusal coapdev.errors names for it.
    """
    cls, detail = (int(part) for part in exc.code.split("."))
    message = with_diagnostic(
        Message(
            code=Code(cls * 32 + detail),
            payload=exc.message.encode("utf-8"),
            content_format=ContentFormat.TEXT if exc.message else None,
        )
    )
    if exc.retry_after_s is not None:
        message.opt.max_age = max(1, math.ceil(exc.retry_after_s))
    return message


def with_diagnostic(response: Message, request: Message | None = None) -> Message:
    """Give an error response without a payload a short diagnostic (docs/protocol.md).

    aiocoap's own refusals (no such resource, method not allowed, bad
    option) come without one; a client should still learn why.
    """
    code = response.code
    if code is None or response.payload or int(code) < int(Code.BAD_REQUEST):
        return response
    path = _path_text(request.opt.uri_path) if request is not None else ""
    if code == Code.NOT_FOUND and request is not None:
        text = f"no resource at {path} (GET /.well-known/core lists them)"
    elif code == Code.METHOD_NOT_ALLOWED and request is not None:
        text = f"{request.code} is not allowed on {path}"
    else:
        text = str(code).split(" ", 1)[-1].lower()
    response.payload = text.encode("utf-8")
    response.opt.content_format = ContentFormat.TEXT
    return response


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
    if not request.payload:
        fmt = ContentFormat.TEXT  # empty is empty, whatever format it declares
    elif fmt is None:
        fmt = ContentFormat.CBOR
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
        with_diagnostic(response, self._original_request)
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
#: Large answers kept per resource for blockwise transfers (Block2), and their
#: bytes; the worst case is this times the number of resources.
BLOCK2_KEPT_PER_RESOURCE = 16
BLOCK2_BYTES_PER_RESOURCE = 256 * 1024


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
    """The root of the device: dispatches, logs, and answers for paths that do not exist."""

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state

    async def render_to_pipe(self, pipe: Any) -> None:
        started = time.perf_counter()
        request = pipe.request
        logged = _LoggedPipe(pipe, self.state.label_for(request), started)
        try:
            await super().render_to_pipe(logged)
        except coap_error.NotFound:
            # No resource here: clients learn that, the factory identity does not.
            try:
                self.state.admit(request, None)
            except RequestRefused as exc:
                logged.add_response(refusal_message(exc), is_last=True)
        except coap_error.RenderableError as exc:
            logged.add_response(exc.to_message(), is_last=True)

    def screen_factory(self, request: Message) -> Message | None:
        """A factory-key session's request the fast path left: None if it asks at a door the
        factory key opens (aiocoap serves it), else the refusal, decided, audited and logged
        here like any other, so aiocoap never holds what the factory key sent elsewhere."""
        started = time.perf_counter()
        res = self._resources.get(tuple(request.opt.uri_path))
        policy = getattr(res, "policy", None)
        if policy is not None and policy.opens_to_factory:
            return None
        try:
            self.state.admit(request, policy)
            refusal: RequestRefused = Unauthorized("the factory key only opens onboarding")
        except RequestRefused as exc:
            refusal = exc
        log_request(request, self.state.label_for(request), refusal.code, started)
        return refusal_message(refusal)

    # --- the fast path (see coapdev.server.fastpath) ---

    def fast_resource(self, path: tuple[str, ...]) -> GuardedResource | None:
        """The resource at exactly ``path`` if it takes fast-path requests."""
        res = self._resources.get(path)
        return res if getattr(res, "fast_path", False) else None

    def render_fast(
        self, res: GuardedResource, request: CoapRequest, reply: Callable[[Message], None]
    ) -> None:
        """Admit and render a fast-path request; ``reply`` gets the response, always."""
        from .fastpath import run_to_completion

        started = time.perf_counter()
        try:
            principal = self.state.admit(request, res.policy)
        except RequestRefused as exc:
            log_request(request, self.state.label_for(request), exc.code, started)
            reply(refusal_message(exc))
            return

        def done(response: Message | None, exc: BaseException | None) -> None:
            if exc is not None:
                if isinstance(exc, coap_error.RenderableError):
                    response = exc.to_message()
                else:
                    log.error("rendering %s failed", _path_text(request.opt.uri_path), exc_info=exc)
                    response = Message(code=Code.INTERNAL_SERVER_ERROR)
            assert response is not None
            reply(with_diagnostic(response, request))  # first: nothing may keep it back
            log_request(request, principal.label, response.code, started)

        run_to_completion(
            res.render_admitted(request, principal),
            done,
            in_task=getattr(res, "renders_in_task", False),
        )

    def get_resources_as_linkheader(self, role: Role | None = None) -> Any:
        from aiocoap.util.linkformat import Link, LinkFormat

        links = []
        for path, res in self._resources.items():
            policy = getattr(res, "policy", None)
            roles = policy.visible_to if policy is not None else frozenset()
            if role is not None and role not in roles:
                continue
            details = res.get_link_description() if hasattr(res, "get_link_description") else {}
            if details is None:
                continue
            methods = _methods_for(res, role)
            if methods:
                details = dict(details, methods=methods)
            links.append(Link("/" + "/".join(path), **details))
        return LinkFormat(links)


def _methods_for(res: Any, role: Role | None) -> str:
    """The methods ``role`` may use on ``res`` ("GET PUT"), for /.well-known/core."""
    policy = getattr(res, "policy", None)
    return " ".join(policy.methods_for(role)) if policy is not None else ""


def _source(request: Message) -> str:
    try:
        return str(request.remote.hostinfo)
    except Exception:
        return "?"


# --- guarded resources --------------------------------------------------------------


Handler = Callable[[Message, Principal], Awaitable[Message]]

_DEFAULT_CODES = {"GET": Code.CONTENT, "DELETE": Code.DELETED, "POST": Code.CHANGED}
#: Methods that may register an observation (RFC 7641 section 1.2; FETCH: RFC 8132).
_OBSERVING_METHODS = frozenset({Code.GET, Code.FETCH})
#: Observe option values are 24-bit sequence numbers.
_OBSERVE_SEQUENCE_MODULO = 1 << 24


class GuardedResource(resource.Resource):
    """A resource whose handlers receive the principal that :meth:`ServerState.admit` let in.

    ``policy`` says who may do what; handlers are ``render_get(request, who)``
    and so on.  Refusals raised as :class:`RequestRefused` become CoAP error
    responses here.
    """

    policy: authz.Policy = authz.Policy()
    #: Whether GET with Observe registers an observation (see ObservableGuardedResource).
    observable = False

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state
        bound_block1(self, BUILTIN_MAX_INPUT_BYTES, state.max_uploads_per_resource)
        bound_block2(self, BLOCK2_KEPT_PER_RESOURCE, BLOCK2_BYTES_PER_RESOURCE)

    def target_of(self, request: Message) -> str | None:
        """The client record a request addresses (for ``own_only`` rules)."""
        return None

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        try:
            principal = self.state.admit(request, self.policy, target=self.target_of(request))
        except RequestRefused as exc:
            pipe.add_response(refusal_message(exc), is_last=True)
            return
        if self.observable and request.opt.observe == 0 and request.code in _OBSERVING_METHODS:
            await self._serve_observation(pipe, request, principal)  # type: ignore[attr-defined]
            return
        try:
            response = await self._render_blockwise(request, principal)
        except coap_error.RenderableError as exc:
            response = exc.to_message()
        pipe.add_response(response, is_last=True)

    async def render(self, request: Message) -> Message:
        """aiocoap's entry for callers that bypass :meth:`render_to_pipe`: admitted too."""
        try:
            principal = self.state.admit(request, self.policy, target=self.target_of(request))
        except RequestRefused as exc:
            return refusal_message(exc)
        return await self.render_admitted(request, principal)

    async def _render_blockwise(self, request: Message, principal: Principal) -> Message:
        """Block1 uploads assembled (bounded, see bound_block1), Block2 answers sliced."""
        if not await self.needs_blockwise_assembly(request):
            return await self.render_admitted(request, principal)
        whole = self._block1.feed_and_take(request)
        response = await self._block2.extract_or_insert(
            whole, lambda: self.render_admitted(whole, principal)
        )
        response.opt.block1 = whole.opt.block1
        return response

    async def render_admitted(self, request: Message, principal: Principal) -> Message:
        """Run the handler for the request's method; refusals become error responses."""
        method = str(request.code)
        handler: Handler | None = getattr(self, f"render_{method.lower()}", None)
        try:
            if handler is None:
                raise MethodNotAllowed(f"{method} is not supported here")
            response = await handler(request, principal)
        except StateWriteError as exc:
            _log_write_failure(exc)
            return refusal_message(exc)
        except RequestRefused as exc:
            return refusal_message(exc)
        except PayloadError as exc:
            return refusal_message(BadRequest(str(exc)))
        if response.code is None:
            response.code = _DEFAULT_CODES.get(method, Code.CHANGED)
        return response


_write_failures_logged: dict[str, float] = {}
#: One line per kind of storage failure per this many seconds, however many requests fail.
WRITE_FAILURE_LOG_INTERVAL_S = 60.0


def _log_write_failure(exc: StateWriteError) -> None:
    now = time.monotonic()
    if now - _write_failures_logged.get(exc.message, -WRITE_FAILURE_LOG_INTERVAL_S) >= (
        WRITE_FAILURE_LOG_INTERVAL_S
    ):
        _write_failures_logged[exc.message] = now
        log.error("change refused, %s: %s (reads are still served)", exc.message, exc.detail)


class Observation:
    """One registered observer: its request, and the inputs its notifications depend on."""

    __slots__ = ("changed", "key", "principal", "request")

    def __init__(self, request: Message, principal: Principal, key: Hashable) -> None:
        self.request = request
        self.principal = principal
        self.key = key
        self.changed = asyncio.Event()


class ObservableGuardedResource(GuardedResource):
    """Observable with GET.  Each notification is admitted again and rendered for
    its own observer's request, so a revoked observer stops hearing and nobody
    is told what was computed for someone else.

    Subclasses say what a notification depends on (:meth:`observation_key`)
    and call :meth:`notify` (all observers, or those of one key).
    """

    observable = True

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.observations: set[Observation] = set()

    def observation_key(self, request: Message, principal: Principal) -> Hashable:
        """What the state an observer is told depends on (built-ins: nothing)."""
        return None

    def get_link_description(self) -> dict[str, Any] | None:
        links = super().get_link_description()
        if links is not None and self.observable:
            links["obs"] = None
        return links

    def notify(self, key: Hashable = ..., /) -> None:
        """Observers (of ``key``, or all) get a notification, rendered for each."""
        for observation in list(self.observations):
            if key is ... or observation.key == key:
                observation.changed.set()

    def observation_added(self, observation: Observation) -> None:
        """Hook: an observation was registered."""

    def observation_removed(self, observation: Observation) -> None:
        """Hook: an observation ended (cancelled, refused, or its session closed)."""

    async def _serve_observation(self, pipe: Any, request: Message, principal: Principal) -> None:
        release = self.state.reserve_observation(request.remote, principal)
        if release is None:
            # Declined: the current state without Observe (RFC 7641 4.1); the client knows.
            pipe.add_response(await self.render_admitted(request, principal), is_last=True)
            return
        observation = Observation(request, principal, self.observation_key(request, principal))
        self.observations.add(observation)
        self.observation_added(observation)
        try:
            first = await self.render_admitted(request, principal)
            if not first.code.is_successful():
                pipe.add_response(first, is_last=True)
                return
            first.opt.observe = sequence = 0
            pipe.add_response(first, is_last=False)
            while True:
                await observation.changed.wait()
                observation.changed.clear()
                try:
                    principal = self.state.admit(request, self.policy, "GET")
                except RequestRefused as exc:
                    pipe.add_response(refusal_message(exc), is_last=True)
                    return
                observation.principal = principal
                response = await self.render_admitted(request, principal)
                if not response.code.is_successful():
                    pipe.add_response(response, is_last=True)
                    return
                sequence = (sequence + 1) % _OBSERVE_SEQUENCE_MODULO
                response.opt.observe = sequence
                pipe.add_response(response, is_last=False)
        finally:
            self.observations.discard(observation)
            release()
            self.observation_removed(observation)


def _host_of_remote(remote: Any) -> str:
    sockaddr = getattr(remote, "sockaddr", None)
    if sockaddr is not None:
        return host_of(sockaddr)
    try:
        return str(remote.hostinfo).rsplit(":", 1)[0].strip("[]")
    except Exception:
        return "?"
