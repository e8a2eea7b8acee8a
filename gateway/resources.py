"""CoAP resources backed by local scripts, as configured in the gateway's TOML file."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from aiocoap import Code, Message

from coapdev import authz, typed
from coapdev.const import ContentFormat
from coapdev.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    InternalError,
    NotAcceptable,
    PayloadTooLarge,
    ServiceUnavailable,
)
from coapdev.payload import decode
from coapdev.server.resources import (
    ObservableGuardedResource,
    ServerState,
    bound_block1,
    refusal_message,
)
from coapdev.store import Principal

from .answers import (
    OUTPUT_FORMATS,
    SUCCESS,
    SUCCESS_CODES,
    CachedAnswer,
    ScriptInputs,
    code_of,
    format_number,
    json_default,
)
from .config import InputMode, MethodConfig, OutputFormat, ResourceConfig
from .flight import SingleFlight
from .handler import Answer, Handler
from .observed import QUEUE_PER_SLOT, ObservedScripts, ObservedState
from .scripts import (
    ScriptFailure,
    base_environment,
    prepare_data_dir,
    run_script,
)

log = logging.getLogger("coapdev.gateway")

#: GET answers kept per resource with ``max_age_s`` (one per set of inputs);
#: beyond, the oldest goes.  Each holds at most ``max_output_bytes``.
CACHED_ANSWERS_PER_RESOURCE = 64


#: A script resource is answered on the fast path, its answer piggybacked on the
#: acknowledgement however late it comes, only when its slowest answer (a wait
#: for a slot, then the run, each up to the method's ``timeout_s``) comes within
#: this long: a client retransmits a confirmable request for RFC 7252's
#: MAX_TRANSMIT_SPAN (45 s) and waits for an acknowledgement a while after.
#: Slower resources go through aiocoap, which acknowledges at once and answers
#: separately.
FAST_PATH_MAX_WAIT_S = 40.0


class ScriptResource(ObservedScripts, ObservableGuardedResource):
    """A resource whose methods run scripts; optionally observable.

    An answer is only ever served to requests with the same script inputs as
    the run that produced it (:class:`ScriptInputs`): observed output is kept
    per set of inputs, and concurrent GETs with equal inputs share one run.
    """

    #: A fast-path request runs in a task from the start (the methods wait, in
    #: ``asyncio.timeout``, which needs one).
    renders_in_task = True

    def __init__(
        self, state: ServerState, config: ResourceConfig, *, data_dir: Path | None = None
    ) -> None:
        super().__init__(state)
        self.config = config
        #: The scripts' working directory (never the state directory, which holds the keys).
        self.data_dir = data_dir or prepare_data_dir(state.store.directory)
        #: The persistent handler answering every method, if the config names one.
        self.handler: Handler | None = None
        if config.handler is not None:
            self.handler = Handler(
                config.handler,
                path=config.path_text,
                env=self._environment("", None),
                cwd=str(self.data_dir),
                max_pending=config.max_pending,
                max_output_bytes=config.max_output_bytes,
            )
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # started by its first request
            else:
                self.handler.start()
        #: GET answers kept for max_age_s, per set of inputs; and the count of
        #: changes, so a GET that ran across a change does not keep its answer.
        self._cache: dict[ScriptInputs, CachedAnswer] = {}
        self._changes = 0
        roles = {method: m.roles for method, m in config.methods}
        if config.observe is not None and config.observe.watch is not None:
            roles.setdefault("GET", frozenset().union(*roles.values()) or _all_roles())
        self.policy = authz.Policy.of(**roles)
        self.observable = config.observe is not None
        slowest = max((m.timeout_s for _, m in config.methods), default=config.timeout_s)
        #: Served without aiocoap's message layer (see FAST_PATH_MAX_WAIT_S).
        self.fast_path = 2 * max(slowest, config.timeout_s) <= FAST_PATH_MAX_WAIT_S
        self.rt = "coapdev.script"
        self.ct = f"{int(OUTPUT_FORMATS[config.output]):d}"
        bound_block1(self, config.max_input_bytes, state.max_uploads_per_resource)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._waiting = 0
        #: Observed state per set of inputs (or one, _WATCHED, for a watcher).
        self._observed: dict[Hashable, ObservedState] = {}
        #: GET runs in progress per set of inputs, shared by concurrent GETs.
        self._in_flight: SingleFlight[Answer] = SingleFlight()
        self._observer_task: asyncio.Task[None] | None = None
        #: The watcher's latest line, and when it came (monotonic); set once it has one.
        self._watched: tuple[Answer, float] | None = None
        self._watched_event = asyncio.Event()
        self._watch_waiters = 0
        self._watch_wanted_until = 0.0
        self._retired = False

    # --- observation -------------------------------------------------------------------

    def get_link_description(self) -> dict[str, Any]:
        links = super().get_link_description() or {}
        if self.config.title:
            links["title"] = self.config.title
        if self.config.kind is not None:
            typed.add_link_attributes(
                links,
                self.config.kind,
                unit=self.config.unit,
                device_class=self.config.device_class,
                value_key=self.config.value_key,
            )
        return links

    def inputs(self, request: Message, who: Principal) -> ScriptInputs:
        client = None if self.config.shared else who.client
        return ScriptInputs(
            client_id=client.id if client else "",
            client_name=client.name if client else "",
            client_role=client.role.value if client else "",
            query=tuple(request.opt.uri_query),
            payload=bytes(request.payload),
            content_format=request.opt.content_format,
            accept=request.opt.accept,
        )

    # --- methods ---------------------------------------------------------------------

    async def render_get(self, request: Message, who: Principal) -> Message:
        if "GET" not in self.config.method_map:
            return await self._watched_state(request)
        inputs = self.inputs(request, who)
        max_age_s = self.config.max_age_s
        plain = request.opt.observe is None  # notifications come from the observed state
        if max_age_s is not None and plain:
            cached = self._cache.get(inputs)
            if cached is not None and cached.expires > time.monotonic():
                return cached.answer(request, time.monotonic())
        observed = self._observed.get(inputs)
        observe = self.config.observe
        if observed is not None and observed.latest is not None and observe is not None:
            output, when = observed.latest
            fresh_for = observe.interval_s if observe.interval_s is not None else float("inf")
            if time.monotonic() - when <= fresh_for:
                observed.last_notified = output
                return self._response(request, output, "GET")
        changes = self._changes
        output = await self._shared_get(inputs)
        observed = self._observed.get(inputs)
        if observed is not None:
            observed.latest = (output, time.monotonic())
            observed.last_notified = output
        response = self._response(request, output, "GET")
        if max_age_s is None or response.code != Code.CONTENT:
            return response
        now = time.monotonic()
        cached = CachedAnswer.of(response, now + max_age_s)
        if changes == self._changes:  # no change ran meanwhile: the answer is current
            self._keep(inputs, cached)
        return cached.answer(request, now) if plain else response

    def _keep(self, inputs: ScriptInputs, cached: CachedAnswer) -> None:
        self._cache.pop(inputs, None)
        if len(self._cache) >= CACHED_ANSWERS_PER_RESOURCE:
            now = time.monotonic()
            for key in [k for k, c in self._cache.items() if c.expires <= now]:
                del self._cache[key]
            if len(self._cache) >= CACHED_ANSWERS_PER_RESOURCE:
                del self._cache[next(iter(self._cache))]  # the oldest
        self._cache[inputs] = cached

    async def render_put(self, request: Message, who: Principal) -> Message:
        return await self._change("PUT", request, who)

    async def render_post(self, request: Message, who: Principal) -> Message:
        return await self._change("POST", request, who)

    async def render_delete(self, request: Message, who: Principal) -> Message:
        return await self._change("DELETE", request, who)

    async def render_admitted(self, request: Message, principal: Principal) -> Message:
        if self._retired:
            return refusal_message(ServiceUnavailable("resource reconfigured; observe again"))
        return await super().render_admitted(request, principal)

    async def _change(self, method: str, request: Message, who: Principal) -> Message:
        try:
            output = await self._run(method, self.inputs(request, who))
        finally:
            # Whatever the outcome, the state may have changed: cached GETs are stale.
            self._changes += 1
            self._cache.clear()
        observe = self.config.observe
        if self._observed and observe is not None and observe.interval_s is not None:
            # Observers hear of the change now rather than at the next poll.
            for observed in self._observed.values():
                observed.latest = None
            asyncio.get_running_loop().create_task(self._refresh_all())
        if not output.payload and output.code in SUCCESS_CODES:
            return Message(code=code_of(output.code))
        return self._response(request, output, method)

    # --- running ---------------------------------------------------------------------

    async def _shared_get(self, inputs: ScriptInputs) -> Answer:
        """The GET script's output for ``inputs``; concurrent callers share one run."""
        return await self._in_flight.run(inputs, lambda: self._run("GET", inputs))

    async def _run(self, method: str, inputs: ScriptInputs) -> Answer:
        mc = self.config.method_map[method]
        if self.handler is not None:
            return await self._ask_handler(self.handler, mc, method, inputs)
        if self._waiting >= QUEUE_PER_SLOT * self.config.concurrency:
            raise ServiceUnavailable(f"{self.config.path_text} is busy; try again", retry_after_s=1)
        self._waiting += 1
        try:
            try:
                async with asyncio.timeout(mc.timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise ServiceUnavailable(
                    f"{self.config.path_text} is busy; try again", retry_after_s=1
                ) from None
        finally:
            self._waiting -= 1
        try:
            return Answer(SUCCESS[method], None, await self._run_now(mc, method, inputs))
        finally:
            self._slots.release()

    async def _ask_handler(
        self, handler: Handler, mc: MethodConfig, method: str, inputs: ScriptInputs
    ) -> Answer:
        payload = inputs.payload
        if len(payload) > self.config.max_input_bytes:
            raise PayloadTooLarge(f"payload over {self.config.max_input_bytes} bytes")
        fields = {
            "method": method,
            "path": self.config.path_text,
            "query": list(inputs.query),
            "client": {
                "id": inputs.client_id,
                "name": inputs.client_name,
                "role": inputs.client_role,
            },
            "content_format": inputs.content_format,
            "accept": inputs.accept,
        }
        stdin = self._script_input(payload, inputs.content_format)
        try:
            return await handler.ask(fields, stdin, mc.timeout_s)
        except (GatewayTimeout, BadGateway) as refusal:
            log.warning("%s %s: %s", method, self.config.path_text, refusal)
            raise

    async def _run_now(self, mc: MethodConfig, method: str, inputs: ScriptInputs) -> bytes:
        payload = inputs.payload
        if len(payload) > self.config.max_input_bytes:
            raise PayloadTooLarge(f"payload over {self.config.max_input_bytes} bytes")
        stdin = self._script_input(payload, inputs.content_format)
        try:
            result = await run_script(
                mc.argv,
                stdin=stdin,
                env=self._environment(method, inputs),
                timeout_s=mc.timeout_s,
                max_output_bytes=self.config.max_output_bytes,
                cwd=str(self.data_dir),
            )
        except ScriptFailure as failure:
            log.warning("%s %s: %s", method, self.config.path_text, failure)
            if failure.kind == "timeout":
                raise GatewayTimeout(str(failure)) from None
            if failure.kind == "bad-input":
                raise BadRequest(str(failure)) from None
            raise InternalError(str(failure)) from None
        return result.stdout

    def _script_input(self, payload: bytes, content_format: int | None) -> bytes:
        if not payload:
            return b""  # empty whatever its declared format (clients send one on every request)
        if self.config.input is InputMode.JSON and content_format in (
            ContentFormat.CBOR,
            ContentFormat.JSON,
        ):
            try:
                value = decode(payload, content_format)
                return json.dumps(value, default=json_default).encode()
            except Exception as exc:
                raise BadRequest(f"payload cannot be turned into JSON: {exc}") from None
        return payload

    def _environment(self, method: str, inputs: ScriptInputs | None) -> dict[str, str]:
        query = ""
        if inputs is not None:
            query = "&".join(urllib.parse.quote(q, safe="=") for q in inputs.query)
        env = {
            **base_environment(self.data_dir),
            "COAPDEV_METHOD": method,
            "COAPDEV_PATH": self.config.path_text,
            "COAPDEV_QUERY": query,
            "COAPDEV_CLIENT_ID": inputs.client_id if inputs else "",
            "COAPDEV_CLIENT_NAME": inputs.client_name if inputs else "",
            "COAPDEV_CLIENT_ROLE": inputs.client_role if inputs else "",
            "COAPDEV_CONTENT_FORMAT": format_number(inputs.content_format if inputs else None),
            "COAPDEV_ACCEPT": format_number(inputs.accept if inputs else None),
            "COAPDEV_DEVICE_ID": self.state.store.device.id,
        }
        # Names are validated printable at onboarding; be sure nothing odd slips in.
        return {k: v.replace("\x00", "") for k, v in env.items()}

    def _response(self, request: Message, answer: Answer, method: str) -> Message:
        code = code_of(answer.code)
        if not code.is_successful():  # a handler's refusal, passed on as it gave it
            fmt = answer.content_format
            if fmt is None and answer.payload:
                fmt = ContentFormat.TEXT
            return Message(code=code, payload=answer.payload, content_format=fmt)
        accept = request.opt.accept
        payload = answer.payload
        if answer.content_format is not None:
            if accept is not None and accept != answer.content_format:
                raise NotAcceptable(
                    f"{self.config.path_text} answered in content format {answer.content_format}"
                )
            return Message(code=code, payload=payload, content_format=answer.content_format)
        fmt = OUTPUT_FORMATS[self.config.output]
        output = payload
        if self.config.output is OutputFormat.JSON:
            try:
                value = json.loads(output.decode("utf-8")) if output.strip() else None
            except (UnicodeDecodeError, ValueError):
                raise InternalError("the script's output is not valid JSON") from None
            if accept == ContentFormat.CBOR:
                import cbor2

                payload, fmt = cbor2.dumps(value), ContentFormat.CBOR
        if accept is not None and accept != fmt:
            raise NotAcceptable(f"{self.config.path_text} answers in content format {int(fmt)}")
        return Message(code=code, payload=payload, content_format=fmt)

    def retire(self) -> None:
        """Stop background work; observers get a final 5.03 and re-register."""
        self._retired = True
        if self.handler is not None:
            self.handler.stop()
        if self._observer_task is not None:
            self._observer_task.cancel()
            self._observer_task = None
        self.notify()


def _all_roles() -> frozenset:
    from coapdev.const import Role

    return frozenset(Role)
