"""CoAP resources backed by local scripts, as configured in the gateway's TOML file."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiocoap import Code, Message

from coapdev.const import ContentFormat
from coapdev.errors import (
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

from .config import InputMode, MethodConfig, OutputFormat, ResourceConfig
from .runner import (
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
_SUCCESS = {"GET": Code.CONTENT, "PUT": Code.CHANGED, "POST": Code.CREATED, "DELETE": Code.DELETED}
#: Requests allowed to wait for a busy resource, per unit of concurrency.
QUEUE_PER_SLOT = 8


class ScriptResource(ObservableGuardedResource):
    """A resource whose methods run scripts; optionally observable."""

    def __init__(
        self, state: ServerState, config: ResourceConfig, *, data_dir: Path | None = None
    ) -> None:
        super().__init__(state)
        self.config = config
        #: The scripts' working directory (never the state directory, which holds the keys).
        self.data_dir = data_dir or prepare_data_dir(state.store.directory)
        self.roles = {method: m.roles for method, m in config.methods}
        if config.observe is not None and config.observe.watch is not None:
            self.roles.setdefault("GET", frozenset().union(*self.roles.values()) or _all_roles())
        self.rt = "coapdev.script"
        self.ct = f"{int(_OUTPUT_FORMATS[config.output]):d}"
        bound_block1(self, config.max_input_bytes, state.max_uploads_per_resource)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._waiting = 0
        #: Latest output (bytes) and when it was produced (monotonic).
        self._latest: tuple[bytes, float] | None = None
        #: What observers were last told (or served), to notify on change only.
        self._last_notified: bytes | None = None
        self._observers = 0
        self._observer_task: asyncio.Task[None] | None = None
        self._retired = False

    # --- aiocoap hooks ---------------------------------------------------------------

    def get_link_description(self) -> dict[str, Any]:
        links = super().get_link_description()
        if self.config.observe is None:
            links.pop("obs", None)
        if self.config.title:
            links["title"] = self.config.title
        return links

    async def add_observation(self, request: Message, serverobservation: Any) -> None:
        if self.config.observe is None:
            return  # not observable: the request is served as a plain GET
        await super().add_observation(request, serverobservation)

    def update_observation_count(self, newcount: int) -> None:
        self._observers = newcount
        if newcount > 0 and self._observer_task is None and not self._retired:
            self._observer_task = asyncio.get_running_loop().create_task(
                self._observe_loop(), name=f"observe {self.config.path_text}"
            )
        elif newcount == 0 and self._observer_task is not None:
            self._observer_task.cancel()
            self._observer_task = None
            self._latest = None
            self._last_notified = None

    # --- methods ---------------------------------------------------------------------

    async def render_get(self, request: Message, who: Principal) -> Message:
        observe = self.config.observe
        if observe is not None and self._observers and self._latest is not None:
            output, when = self._latest
            fresh_for = observe.interval_s if observe.interval_s is not None else float("inf")
            if time.monotonic() - when <= fresh_for:
                return self._response(request, output, "GET")
        if "GET" not in self.config.method_map:
            return await self._watched_state(request)
        output = await self._run("GET", request, who)
        if self._observers:
            self._latest = (output, time.monotonic())
            self._last_notified = output
        return self._response(request, output, "GET")

    async def render_put(self, request: Message, who: Principal) -> Message:
        return await self._change("PUT", request, who)

    async def render_post(self, request: Message, who: Principal) -> Message:
        return await self._change("POST", request, who)

    async def render_delete(self, request: Message, who: Principal) -> Message:
        return await self._change("DELETE", request, who)

    async def render(self, request: Message) -> Message:
        if self._retired:
            return refusal_message(ServiceUnavailable("resource reconfigured; observe again"))
        return await super().render(request)

    async def _change(self, method: str, request: Message, who: Principal) -> Message:
        output = await self._run(method, request, who)
        observe = self.config.observe
        if self._observers and observe is not None and observe.interval_s is not None:
            # Observers hear of the change now rather than at the next poll.
            self._latest = None
            asyncio.get_running_loop().create_task(self._refresh())
        if not output:
            return Message(code=_SUCCESS[method])
        return self._response(request, output, method)

    # --- running ---------------------------------------------------------------------

    async def _run(self, method: str, request: Message, who: Principal) -> bytes:
        mc = self.config.method_map[method]
        if self._waiting >= QUEUE_PER_SLOT * self.config.concurrency:
            raise ServiceUnavailable(f"{self.config.path_text} is busy; try again")
        self._waiting += 1
        try:
            try:
                async with asyncio.timeout(mc.timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise ServiceUnavailable(f"{self.config.path_text} is busy; try again") from None
        finally:
            self._waiting -= 1
        try:
            return await self._run_now(mc, method, request, who)
        finally:
            self._slots.release()

    async def _run_now(
        self, mc: MethodConfig, method: str, request: Message, who: Principal
    ) -> bytes:
        payload = request.payload
        if len(payload) > self.config.max_input_bytes:
            raise PayloadTooLarge(f"payload over {self.config.max_input_bytes} bytes")
        stdin = self._script_input(payload, request.opt.content_format)
        try:
            result = await run_script(
                mc.argv,
                stdin=stdin,
                env=self._environment(method, request, who),
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

    def _environment(self, method: str, request: Message, who: Principal) -> dict[str, str]:
        client = who.client
        query = "&".join(urllib.parse.quote(q, safe="=") for q in request.opt.uri_query)
        env = {
            **base_environment(self.data_dir),
            "COAPDEV_METHOD": method,
            "COAPDEV_PATH": self.config.path_text,
            "COAPDEV_QUERY": query,
            "COAPDEV_CLIENT_ID": client.id if client else "",
            "COAPDEV_CLIENT_NAME": client.name if client else "",
            "COAPDEV_CLIENT_ROLE": client.role.value if client else "",
            "COAPDEV_CONTENT_FORMAT": _format_number(request.opt.content_format),
            "COAPDEV_ACCEPT": _format_number(request.opt.accept),
            "COAPDEV_DEVICE_ID": self.state.store.device.id,
        }
        # Names are validated printable at onboarding; be sure nothing odd slips in.
        return {k: v.replace("\x00", "") for k, v in env.items()}

    def _response(self, request: Message, output: bytes, method: str) -> Message:
        fmt = _OUTPUT_FORMATS[self.config.output]
        accept = request.opt.accept
        payload = output
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
        return Message(code=_SUCCESS[method], payload=payload, content_format=fmt)

    # --- observation -----------------------------------------------------------------

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
        """Run the GET script every interval while observed; notify on change only.

        The first observer's own GET set the state, so polling starts one
        interval later.
        """
        while True:
            await asyncio.sleep(interval_s)
            await self._refresh()

    async def _refresh(self) -> None:
        """Run the GET script once; notify observers if its output changed."""
        mc = self.config.method_map["GET"]
        try:
            result = await run_script(
                mc.argv,
                stdin=b"",
                env=self._environment("GET", Message(code=Code.GET), Principal("", None)),
                timeout_s=mc.timeout_s,
                max_output_bytes=self.config.max_output_bytes,
                cwd=str(self.data_dir),
            )
        except ScriptFailure as failure:
            log.warning("polling %s: %s", self.config.path_text, failure)
            return
        self._latest = (result.stdout, time.monotonic())
        # Compared with what observers were last told, after the run: two
        # refreshes racing each other (a poll and a PUT's) notify once.
        if result.stdout != self._last_notified and self._observers:
            self._last_notified = result.stdout
            self.notify()

    async def _watch(self, argv: tuple[str, ...]) -> None:
        """Keep a watcher running while observed; each line it prints is the new state."""

        def line(state: bytes) -> None:
            self._latest = (state, time.monotonic())
            # Observers are told of a state they have not been served yet;
            # the very first line answers the observation's first GET.
            if self._last_notified is not None and state != self._last_notified:
                self._last_notified = state
                self.notify()

        await supervise_lines(
            argv,
            line,
            what=f"watcher of {self.config.path_text}",
            env=self._environment("GET", Message(code=Code.GET), Principal("", None)),
            cwd=str(self.data_dir),
            max_line_bytes=self.config.max_output_bytes,
        )

    async def _watched_state(self, request: Message) -> Message:
        """GET of a watch-only resource: the watcher's latest line (waiting briefly for one)."""
        deadline = time.monotonic() + self.config.timeout_s
        while self._latest is None and time.monotonic() < deadline:
            if self._observer_task is None and not self._retired:
                # Not observed yet: run the watcher for this request's sake.
                self._observer_task = asyncio.get_running_loop().create_task(self._observe_loop())
            await asyncio.sleep(0.05)
        if self._latest is None:
            raise GatewayTimeout(f"{self.config.path_text} has no state yet")
        output = self._latest[0]
        if self._observers:
            self._last_notified = output
        if not self._observers and self._observer_task is not None:
            self._observer_task.cancel()
            self._observer_task = None
            self._latest = None
        return self._response(request, output, "GET")

    def retire(self) -> None:
        """Stop background work; observers get a final 5.03 and re-register."""
        self._retired = True
        if self._observer_task is not None:
            self._observer_task.cancel()
            self._observer_task = None
        self.roles = {}
        self.notify()


def _all_roles() -> frozenset:
    from coapdev.const import Role

    return frozenset(Role)


def _format_number(value: Any) -> str:
    return "" if value is None else str(int(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)
