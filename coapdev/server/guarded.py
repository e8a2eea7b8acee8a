"""GuardedResource: a resource whose handlers get the principal the gate let in.

Every way into a resource (aiocoap's pipe, aiocoap's plain ``render``, the
fast path's :meth:`GuardedResource.render_admitted` after the site admitted
the request) goes through :meth:`~coapdev.server.gate.ServerState.admit`
first; a handler never decides access on its own.  Uploads and large answers
are bounded per resource.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiocoap import Code, Message, resource
from aiocoap import error as coap_error

from .. import authz
from ..errors import BadRequest, MethodNotAllowed, PayloadError, RequestRefused, StateWriteError
from ..model import Principal
from .aiocoap_compat import assemble_and_slice, bound_block1, bound_block2
from .gate import ServerState
from .responses import refusal_message

log = logging.getLogger("coapdev.server")

#: Largest request payload a built-in resource accepts.
BUILTIN_MAX_INPUT_BYTES = 4096
#: Large answers kept per resource for blockwise transfers (Block2), and their
#: bytes; the worst case is this times the number of resources.
BLOCK2_KEPT_PER_RESOURCE = 16
BLOCK2_BYTES_PER_RESOURCE = 256 * 1024
#: One line per kind of storage failure per this many seconds, however many requests fail.
WRITE_FAILURE_LOG_INTERVAL_S = 60.0

Handler = Callable[[Message, Principal], Awaitable[Message]]

_DEFAULT_CODES = {"GET": Code.CONTENT, "DELETE": Code.DELETED, "POST": Code.CHANGED}
#: Methods that may register an observation (RFC 7641 section 1.2; FETCH: RFC 8132).
OBSERVING_METHODS = frozenset({Code.GET, Code.FETCH})


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
        if self.observable and request.opt.observe == 0 and request.code in OBSERVING_METHODS:
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
        return await assemble_and_slice(
            self, request, lambda whole: self.render_admitted(whole, principal)
        )

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


def _log_write_failure(exc: StateWriteError) -> None:
    now = time.monotonic()
    if now - _write_failures_logged.get(exc.message, -WRITE_FAILURE_LOG_INTERVAL_S) >= (
        WRITE_FAILURE_LOG_INTERVAL_S
    ):
        _write_failures_logged[exc.message] = now
        log.error("change refused, %s: %s (reads are still served)", exc.message, exc.detail)
