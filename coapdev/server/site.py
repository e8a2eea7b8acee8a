"""The device's site: DeviceSite, which dispatches, logs and screens every request.

The gate (:class:`~coapdev.server.gate.ServerState`), the guarded resources
(:mod:`coapdev.server.guarded`, :mod:`coapdev.server.observe`) and the shape
of answers (:mod:`coapdev.server.responses`) are in their own modules; their
names are importable from here too, as before.  The built-in resources are in
:mod:`coapdev.server.resources`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiocoap import Code, Message, resource
from aiocoap import error as coap_error

from .. import authz
from ..const import Role
from ..errors import RequestRefused, Unauthorized
from .aiocoap_compat import bound_block1, bound_block2, site_resources
from .fastpath import run_to_completion
from .gate import MAX_UPLOADS_PER_RESOURCE, ServerState, host_of_remote, source_of
from .guarded import (
    BLOCK2_BYTES_PER_RESOURCE,
    BLOCK2_KEPT_PER_RESOURCE,
    BUILTIN_MAX_INPUT_BYTES,
    WRITE_FAILURE_LOG_INTERVAL_S,
    GuardedResource,
    Handler,
)
from .observe import ObservableGuardedResource, Observation
from .request import CoapRequest
from .responses import (
    LoggedPipe,
    log_request,
    path_text,
    refusal_message,
    request_value,
    response_format,
    value_response,
    with_diagnostic,
)

__all__ = [
    "ADMIN_ONLY",
    "ALL_ROLES",
    "BLOCK2_BYTES_PER_RESOURCE",
    "BLOCK2_KEPT_PER_RESOURCE",
    "BUILTIN_MAX_INPUT_BYTES",
    "MAX_UPLOADS_PER_RESOURCE",
    "WRITE_FAILURE_LOG_INTERVAL_S",
    "DeviceSite",
    "GuardedResource",
    "Handler",
    "ObservableGuardedResource",
    "Observation",
    "ServerState",
    "bound_block1",
    "bound_block2",
    "log_request",
    "refusal_message",
    "request_value",
    "response_format",
    "value_response",
    "with_diagnostic",
]

log = logging.getLogger("coapdev.server")

ALL_ROLES = authz.ALL_ROLES
ADMIN_ONLY = authz.ADMIN_ONLY

#: Former private names, kept for code that imported them from here.
_source = source_of
_path_text = path_text
_host_of_remote = host_of_remote


class DeviceSite(resource.Site):
    """The root of the device: dispatches, logs, and answers for paths that do not exist."""

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state

    async def render_to_pipe(self, pipe: Any) -> None:
        started = time.perf_counter()
        request = pipe.request
        logged = LoggedPipe(pipe, self.state.label_for(request), started)
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
        res = site_resources(self).get(tuple(request.opt.uri_path))
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
        res = site_resources(self).get(path)
        return res if getattr(res, "fast_path", False) else None  # type: ignore[return-value]

    def render_fast(
        self, res: GuardedResource, request: CoapRequest, reply: Callable[[Message], None]
    ) -> None:
        """Admit and render a fast-path request; ``reply`` gets the response, always."""
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
                    log.error("rendering %s failed", path_text(request.opt.uri_path), exc_info=exc)
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
        for path, res in site_resources(self).items():
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
