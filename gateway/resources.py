"""CoAP resources backed by local scripts, as configured in the gateway's TOML file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import Hashable
from dataclasses import dataclass
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
    Observation,
    ServerState,
    bound_block1,
    refusal_message,
)
from coapdev.store import Principal

from .config import InputMode, MethodConfig, OutputFormat, ResourceConfig
from .handler import Answer, Handler
from .scripts import (
    ScriptFailure,
    base_environment,
    prepare_data_dir,
    run_script,
    supervise_lines,
)

log = logging.getLogger("coapdev.gateway")

_OUTPUT_FORMATS = {
    OutputFormat.TEXT: ContentFormat.TEXT,
    OutputFormat.JSON: ContentFormat.JSON,
    OutputFormat.CBOR: ContentFormat.CBOR,
    OutputFormat.OCTETS: ContentFormat.OCTET_STREAM,
}
_SUCCESS = {"GET": "2.05", "PUT": "2.04", "POST": "2.01", "DELETE": "2.02"}
_SUCCESS_CODES = frozenset(_SUCCESS.values())
#: Requests allowed to wait for a busy resource, per unit of concurrency;
#: beyond it they are answered 5.03 with Max-Age.
QUEUE_PER_SLOT = 8
#: A watcher started for a GET keeps running this long after the last one.
WATCH_KEEP_S = 30.0
#: GET answers kept per resource with ``max_age_s`` (one per set of inputs);
#: beyond, the oldest goes.  Each holds at most ``max_output_bytes``.
CACHED_ANSWERS_PER_RESOURCE = 64


@dataclass(frozen=True, slots=True)
class ScriptInputs:
    """Everything a script run can depend on: runs with equal inputs give one answer.

    For a resource declared ``shared``, the client fields are left empty:
    its output does not depend on who asks.
    """

    client_id: str
    client_name: str
    client_role: str
    query: tuple[str, ...]
    payload: bytes
    content_format: int | None
    accept: int | None


@dataclass(slots=True)
class _ObservedState:
    """What observers with one set of inputs were told, and how many there are."""

    inputs: ScriptInputs
    observers: int = 0
    #: Latest answer and when it was produced (monotonic).
    latest: tuple[Answer, float] | None = None
    #: What these observers were last told (or served), to notify on change only.
    last_notified: Answer | None = None


@dataclass(frozen=True, slots=True)
class _Cached:
    """A GET answer kept for ``max_age_s``, with the ETag of its content."""

    payload: bytes
    content_format: int | None
    etag: bytes
    expires: float  # monotonic

    @classmethod
    def of(cls, response: Message, expires: float) -> _Cached:
        fmt = response.opt.content_format
        digest = hashlib.blake2b(digest_size=8)
        digest.update(b"%d:" % (-1 if fmt is None else int(fmt)))
        digest.update(response.payload)
        return cls(bytes(response.payload), fmt, digest.digest(), expires)

    def answer(self, request: Message, now: float) -> Message:
        """2.05 with the content, or 2.03 if the client holds this ETag; Max-Age what is left."""
        if self.etag in request.opt.etags:
            response = Message(code=Code.VALID)
        else:
            response = Message(
                code=Code.CONTENT, payload=self.payload, content_format=self.content_format
            )
        response.opt.etag = self.etag
        response.opt.max_age = max(0, int(self.expires - now))
        return response


#: The key under which a watch resource's single state is kept: the watcher
#: runs without any client's environment, so everyone sees the same state.
_WATCHED = "watched"


#: A script resource is answered on the fast path, its answer piggybacked on the
#: acknowledgement however late it comes, only when its slowest answer (a wait
#: for a slot, then the run, each up to the method's ``timeout_s``) comes within
#: this long: a client retransmits a confirmable request for RFC 7252's
#: MAX_TRANSMIT_SPAN (45 s) and waits for an acknowledgement a while after.
#: Slower resources go through aiocoap, which acknowledges at once and answers
#: separately.
FAST_PATH_MAX_WAIT_S = 40.0


class ScriptResource(ObservableGuardedResource):
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
        self._cache: dict[ScriptInputs, _Cached] = {}
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
        self.ct = f"{int(_OUTPUT_FORMATS[config.output]):d}"
        bound_block1(self, config.max_input_bytes, state.max_uploads_per_resource)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._waiting = 0
        #: Observed state per set of inputs (or one, _WATCHED, for a watcher).
        self._observed: dict[Hashable, _ObservedState] = {}
        #: GET runs in progress per set of inputs, shared by concurrent GETs.
        self._in_flight: dict[ScriptInputs, asyncio.Task[Answer]] = {}
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

    def observation_key(self, request: Message, principal: Principal) -> Hashable:
        observe = self.config.observe
        if observe is not None and observe.watch is not None:
            return _WATCHED
        return self.inputs(request, principal)

    def observation_added(self, observation: Observation) -> None:
        key = observation.key
        observed = self._observed.get(key)
        if observed is None:
            inputs = (
                key
                if isinstance(key, ScriptInputs)
                else self.inputs(observation.request, observation.principal)
            )
            observed = self._observed[key] = _ObservedState(inputs)
        observed.observers += 1
        if self._observer_task is None and not self._retired:
            self._observer_task = asyncio.get_running_loop().create_task(
                self._observe_loop(), name=f"observe {self.config.path_text}"
            )

    def observation_removed(self, observation: Observation) -> None:
        observed = self._observed.get(observation.key)
        if observed is not None:
            observed.observers -= 1
            if observed.observers <= 0:
                del self._observed[observation.key]
        if not self._observed and self._observer_task is not None:
            if asyncio.get_running_loop().time() < self._watch_wanted_until:
                self._schedule_watch_stop()  # plain GETs may still want the watcher a while
                return
            self._observer_task.cancel()
            self._observer_task = None
            self._watched = None
            self._watched_event.clear()

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
        cached = _Cached.of(response, now + max_age_s)
        if changes == self._changes:  # no change ran meanwhile: the answer is current
            self._keep(inputs, cached)
        return cached.answer(request, now) if plain else response

    def _keep(self, inputs: ScriptInputs, cached: _Cached) -> None:
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
        if not output.payload and output.code in _SUCCESS_CODES:
            return Message(code=_code(output.code))
        return self._response(request, output, method)

    # --- running ---------------------------------------------------------------------

    async def _shared_get(self, inputs: ScriptInputs) -> Answer:
        """The GET script's output for ``inputs``; concurrent callers share one run."""
        task = self._in_flight.get(inputs)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run("GET", inputs))
            self._in_flight[inputs] = task

            def finished(done: asyncio.Task[Answer]) -> None:
                if self._in_flight.get(inputs) is done:
                    del self._in_flight[inputs]
                if not done.cancelled():
                    done.exception()  # retrieved: the callers re-raise it

            task.add_done_callback(finished)
        return await asyncio.shield(task)

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
            return Answer(_SUCCESS[method], None, await self._run_now(mc, method, inputs))
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
                return json.dumps(value, default=_json_default).encode()
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
            "COAPDEV_CONTENT_FORMAT": _format_number(inputs.content_format if inputs else None),
            "COAPDEV_ACCEPT": _format_number(inputs.accept if inputs else None),
            "COAPDEV_DEVICE_ID": self.state.store.device.id,
        }
        # Names are validated printable at onboarding; be sure nothing odd slips in.
        return {k: v.replace("\x00", "") for k, v in env.items()}

    def _response(self, request: Message, answer: Answer, method: str) -> Message:
        code = _code(answer.code)
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
        fmt = _OUTPUT_FORMATS[self.config.output]
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

    # --- background observation work -----------------------------------------------------

    async def _observe_loop(self) -> None:
        observe = self.config.observe
        assert observe is not None
        try:
            if observe.interval_s is not None:
                await self._poll(observe.interval_s)
            elif observe.watch is not None:
                await self._watch(observe.watch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("observing %s failed", self.config.path_text)

    async def _poll(self, interval_s: float) -> None:
        """Run the GET script every interval while observed, once per set of inputs;
        notify the observers of those inputs on change only.

        The first observer's own GET set the state, so polling starts one
        interval later.
        """
        while True:
            await asyncio.sleep(interval_s)
            await self._refresh_all()

    async def _refresh_all(self) -> None:
        await asyncio.gather(*(self._refresh(key) for key in list(self._observed)))

    async def _refresh(self, key: Hashable) -> None:
        """Run the GET script once for one set of inputs; notify its observers on change."""
        observed = self._observed.get(key)
        if observed is None:
            return
        try:
            output = await self._shared_get(observed.inputs)
        except Exception as exc:  # a refusal or failure of the script: logged where it happened
            log.debug("polling %s: %s", self.config.path_text, exc)
            return
        observed = self._observed.get(key)
        if observed is None:
            return
        observed.latest = (output, time.monotonic())
        # Compared with what observers were last told, after the run: two
        # refreshes racing each other (a poll and a PUT's) notify once.
        if output != observed.last_notified:
            observed.last_notified = output
            self._cache.pop(observed.inputs, None)  # plain GETs: no older answer than observers'
            self.notify(key)

    async def _watch(self, argv: tuple[str, ...]) -> None:
        """Keep a watcher running while observed; each line it prints is the new state."""
        await supervise_lines(
            argv,
            self._new_watched_state,
            what=f"watcher of {self.config.path_text}",
            env=self._environment("GET", None),
            cwd=str(self.data_dir),
            max_line_bytes=self.config.max_output_bytes,
        )

    def _new_watched_state(self, line: bytes) -> None:
        state = Answer("2.05", None, line)
        self._watched = (state, time.monotonic())
        self._watched_event.set()
        observed = self._observed.get(_WATCHED)
        # Observers are told of a state they have not been served yet; the
        # very first line answers the observation's first GET.
        if observed is not None and observed.last_notified is not None:
            if state != observed.last_notified:
                observed.last_notified = state
                self.notify(_WATCHED)

    async def _watched_state(self, request: Message) -> Message:
        """GET of a watch-only resource: the watcher's latest line, at once.

        The watcher is started for the first GET and kept running for
        ``WATCH_KEEP_S`` after the last one, so a burst of GETs costs one
        process and no queue; only while it has printed nothing yet do GETs
        wait (a bounded number of them, the rest get 5.03 with Max-Age).
        """
        loop = asyncio.get_running_loop()
        if request.opt.observe is None:  # a plain GET (an observer keeps it running anyway)
            self._watch_wanted_until = loop.time() + WATCH_KEEP_S
        if self._observer_task is None and not self._retired:
            self._observer_task = loop.create_task(self._observe_loop())
            self._schedule_watch_stop()
        if self._watched is None:
            if self._watch_waiters >= QUEUE_PER_SLOT * self.config.concurrency:
                raise ServiceUnavailable(
                    f"{self.config.path_text} has no state yet", retry_after_s=1
                )
            self._watch_waiters += 1
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    await self._watched_event.wait()
            except TimeoutError:
                raise GatewayTimeout(f"{self.config.path_text} has no state yet") from None
            finally:
                self._watch_waiters -= 1
        assert self._watched is not None
        output = self._watched[0]
        observed = self._observed.get(_WATCHED)
        if observed is not None:
            observed.last_notified = output
        return self._response(request, output, "GET")

    def _schedule_watch_stop(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_at(self._watch_wanted_until, self._stop_unwanted_watcher)

    def _stop_unwanted_watcher(self) -> None:
        """Stop a watcher nobody observes and nobody asked for lately."""
        if self._observed or self._observer_task is None:
            return
        if asyncio.get_running_loop().time() < self._watch_wanted_until:
            self._schedule_watch_stop()
            return
        self._observer_task.cancel()
        self._observer_task = None
        self._watched = None
        self._watched_event.clear()

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


def _code(text: str) -> Code:
    """ "2.05" as aiocoap's Code."""
    cls, detail = text.split(".")
    return Code(int(cls) * 32 + int(detail))


def _format_number(value: Any) -> str:
    return "" if value is None else str(int(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)
