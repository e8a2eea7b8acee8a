"""Observation of script resources: polled scripts, watchers, and who was told what.

:class:`ObservedScripts` is the observation half of
:class:`~gateway.resources.ScriptResource` (a mixin: it uses the resource's
config, its shared GET and its response building).  An answer is only ever
notified to observers with the same script inputs as the run that produced it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from aiocoap import Message

from coapdev.errors import GatewayTimeout, ServiceUnavailable
from coapdev.server.resources import Observation
from coapdev.store import Principal

from .answers import ScriptInputs
from .handler import Answer
from .scripts import supervise_lines

log = logging.getLogger("coapdev.gateway")

#: Requests allowed to wait for a busy resource, per unit of concurrency;
#: beyond it they are answered 5.03 with Max-Age.
QUEUE_PER_SLOT = 8
#: A watcher started for a GET keeps running this long after the last one.
WATCH_KEEP_S = 30.0

#: The key under which a watch resource's single state is kept: the watcher
#: runs without any client's environment, so everyone sees the same state.
_WATCHED = "watched"


@dataclass(slots=True)
class ObservedState:
    """What observers with one set of inputs were told, and how many there are."""

    inputs: ScriptInputs
    observers: int = 0
    #: Latest answer and when it was produced (monotonic).
    latest: tuple[Answer, float] | None = None
    #: What these observers were last told (or served), to notify on change only.
    last_notified: Answer | None = None


class ObservedScripts:
    """Observers per set of inputs, the poll loop, and the watcher of a watch resource."""

    # provided by the resource
    config: Any
    data_dir: Any
    _observed: dict[Hashable, ObservedState]
    _cache: dict[ScriptInputs, Any]
    _observer_task: asyncio.Task[None] | None
    _watched: tuple[Answer, float] | None
    _watched_event: asyncio.Event
    _watch_waiters: int
    _watch_wanted_until: float
    _retired: bool

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
            observed = self._observed[key] = ObservedState(inputs)
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
