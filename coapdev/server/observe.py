"""Observations (RFC 7641) on guarded resources, each notification admitted again.

Observations register only on GET (and FETCH); a PUT or POST carrying
Observe runs once, as a plain request (aiocoap would re-run it for every
notification).  Each observation counts against the caps of
:meth:`~coapdev.server.gate.ServerState.reserve_observation`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from aiocoap import Message

from ..errors import RequestRefused
from ..model import Principal
from .gate import ServerState
from .guarded import GuardedResource
from .responses import refusal_message

#: Observe option values are 24-bit sequence numbers.
_OBSERVE_SEQUENCE_MODULO = 1 << 24


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
