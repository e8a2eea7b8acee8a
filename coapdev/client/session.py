"""The Client: one device, one identity, one DTLS session reused and healed.

Each request is bounded by ``timeout_s`` as a whole: retries on a fresh
session, the other addresses of a host name and, with ``rediscover=True``,
the mDNS search for a device that moved all share that one budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import replace
from typing import Any

from ..const import PATH_DEVICE, PATH_WELL_KNOWN_CORE, Key, uri_path
from ..errors import (
    ClientError,
    DeviceUnreachable,
    HandshakeFailed,
    NotAuthorized,
    RequestFailed,
)
from .address import DeviceAddress, resolve_address
from .credentials import Credentials
from .failures import network_error, timeout_error
from .observe import observe as observe_resource
from .request import Payload, block_size_exponent, build_message, encode_payload, norm_path
from .response import Link, Response, check_response, from_message, parse_links

log = logging.getLogger("coapdev.client")

DEFAULT_TIMEOUT_S = 10.0


class Client:
    """Talks to one device with one identity; reuses its DTLS session.

    Each request is bounded by ``timeout_s`` as a whole.  A session the
    device no longer knows (the gateway restarted, evicted or closed it) is
    dropped and the request retried once on a fresh handshake, so long-lived
    clients heal.  A host name is resolved to all its addresses, tried in
    turn while nothing answers at one.

    With ``rediscover=True`` a device that does not answer at all at its
    address (no handshake reply, connection refused, no route) is looked for
    again by its id over mDNS within the same budget; it counts as moved only
    once it answered at the new address with the same id (``GET /device``):
    then ``credentials`` is updated and ``on_moved(credentials)`` called.

    ``on_reconnect()`` is called once per new session after the first one;
    ``on_observe_restored(path)`` each time an observation was re-registered
    on a new session and delivers again; ``on_observe_lost(path, reason)``
    once when an observation's device stopped answering (before it is back).
    ``trace(line)`` hears every DTLS handshake step and CoAP message.
    ``block_size`` (16 to 1024 bytes) caps blockwise transfers both ways.
    Each Client has its own DTLS context, socket and credentials: several
    Clients in one process, for one device or many, never share a session
    or a key.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_reconnect: Callable[[], None] | None = None,
        on_observe_restored: Callable[[str], None] | None = None,
        keepalive_s: float | None = None,
        on_observe_lost: Callable[[str, str], None] | None = None,
        rediscover: bool = False,
        on_moved: Callable[[Credentials], None] | None = None,
        trace: Callable[[str], None] | None = None,
        block_size: int | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.on_reconnect = on_reconnect
        self.on_observe_restored = on_observe_restored
        self.on_observe_lost = on_observe_lost
        self.rediscover = rediscover
        self.on_moved = on_moved
        self.trace = trace
        self.block_size_exp = block_size_exponent(block_size) if block_size else 6
        #: A silent observation is probed this often (see :meth:`observe`).
        self.keepalive_s = max(timeout_s * 3, 30.0) if keepalive_s is None else keepalive_s
        self._transport: Any = None
        self._generation: int | None = None
        #: The addresses the credentials' host resolves to, and the one in use.
        self._targets: list[DeviceAddress] = []
        self._target_index = 0

    async def __aenter__(self) -> Client:
        await self._ensure_transport()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def target(self) -> DeviceAddress:
        """The address requests go to now (an IP address once resolved)."""
        if self._targets:
            return self._targets[self._target_index]
        return self.credentials.address

    async def _ensure_transport(self, what: str = "") -> Any:
        if self._transport is None:
            from .transport import ClientTransport

            if not self._targets:
                self._targets = await resolve_address(self.credentials.address, what)
                self._target_index = 0
            creds = self.credentials
            self._transport = await ClientTransport.create(
                self.target.uri_base,
                creds.identity.encode("ascii"),
                creds.key,
                trace=self.trace,
                block_size_exp=self.block_size_exp,
            )
        return self._transport

    async def close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()

    def drop_session(self) -> None:
        if self._transport is not None:
            self._transport.drop_session()

    # --- requests ---

    def _message(
        self,
        method: str,
        path: str,
        payload: bytes,
        content_format: int | None,
        accept: int | None,
        observe: bool,
        options: Sequence[tuple[int, bytes]] = (),
        confirmable: bool = True,
    ) -> Any:
        """The aiocoap Message for a request on this client's target (test helpers use it)."""
        return build_message(
            self.target,
            method,
            path,
            payload,
            content_format=content_format,
            accept=accept,
            observe=observe,
            options=options,
            confirmable=confirmable,
            block_size_exp=self.block_size_exp,
        )

    async def request(
        self,
        method: str,
        path: str,
        payload: Payload = b"",
        *,
        content_format: int | None = None,
        accept: int | None = None,
        check: bool = True,
        options: Sequence[tuple[int, bytes]] = (),
        confirmable: bool = True,
    ) -> Response:
        """Send one request; raise a ClientError unless ``check`` is False.

        ``options`` are extra CoAP options as (number, encoded value);
        ``confirmable=False`` sends a NON request.
        """
        body, fmt = encode_payload(payload, content_format)
        what = f"{method.upper()} {self.credentials.address.uri_base}{norm_path(path)}"

        def build() -> Any:
            return self._message(
                method, path, body, fmt, accept, False, options, confirmable=confirmable
            )

        raw = await self._exchange(build, what)
        response = from_message(raw)
        return check_response(response, what) if check else response

    async def _exchange(self, build: Callable[[], Any], what: str) -> Any:
        """Send ``build()`` until answered, within ``timeout_s`` overall.

        A request on an established session that gets no answer is retried
        once on a fresh handshake (the device may have lost the session).
        Nothing at all answering at an address moves on to the host name's
        next address, then (``rediscover``) to where mDNS says the device is.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        retried = relocated = False
        while True:
            transport = await self._ensure_transport(what)
            had_session = transport.session().handshake_done
            generation = transport.generation
            budget = self._budget(transport, deadline, relocating=not relocated)
            try:
                raw = await self._await_response(
                    transport, transport.context.request(build()).response, what, budget
                )
            except DeviceUnreachable as exc:
                if await self._next_target():
                    continue
                if not self.rediscover or relocated or not self.credentials.device_id:
                    raise
                relocated = True
                if await self._relocate(deadline):
                    continue
                raise DeviceUnreachable(
                    f"{exc}; not found elsewhere over mDNS by its id {self.credentials.device_id}"
                ) from None
            except (NotAuthorized, RequestFailed, HandshakeFailed):
                raise
            except ClientError as exc:
                if not had_session or retried or loop.time() >= deadline:
                    raise
                # The session was good before: the device may have lost it
                # (restart, eviction).  Handshake anew and try once more.
                retried = True
                log.info("%s: session lost (%s); reconnecting", what, exc)
                transport.drop_session(generation)
                continue
            self._note_generation(transport)
            return raw

    def _note_generation(self, transport: Any) -> None:
        """Call ``on_reconnect`` once per new session after the first."""
        if self._generation is not None and transport.generation != self._generation:
            self._callback(self.on_reconnect)
        self._generation = transport.generation

    def _budget(self, transport: Any, deadline: float, *, relocating: bool = False) -> float:
        """How long to wait for this attempt, within the request's deadline."""
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.01)
        if transport.session().handshake_done:
            # On an established session a device answers in milliseconds; if
            # it does not within a few seconds, the session is likely gone,
            # and the retry on a fresh handshake still fits in the budget.
            return min(max(min(self.timeout_s / 3, 3.0), 0.5), remaining)
        if self.rediscover and relocating:
            # leave time to look for the device elsewhere if nothing answers
            return remaining * 0.6
        return remaining

    async def _next_target(self) -> bool:
        """Move on to the host name's next address, if any."""
        if self._target_index + 1 >= len(self._targets):
            return False
        await self.close()
        self._target_index += 1
        log.info("trying %s next", self.target)
        return True

    async def _relocate(self, deadline: float) -> bool:
        """Find the device again by its id (mDNS); move only where it answers with that id."""
        from ..discovery import find

        loop = asyncio.get_running_loop()
        creds = self.credentials
        remaining = deadline - loop.time()
        if not creds.device_id or remaining < 0.2:
            return False
        found = await find(creds.device_id, seconds=remaining)
        if found is None:
            return False
        tried = set(self._targets)
        for host in found.ranked_addresses():
            candidate = DeviceAddress(host, found.port)
            remaining = deadline - loop.time()
            if candidate in tried or remaining <= 0:
                continue
            probe = Client(
                replace(creds, address=candidate),
                timeout_s=remaining,
                trace=self.trace,
                block_size=2 ** (self.block_size_exp + 4),
            )
            try:
                info = (await probe.get(uri_path(PATH_DEVICE))).value
            except ClientError as exc:
                log.info("device %s not reachable at %s: %s", creds.device_id, candidate, exc)
                await probe.close()
                continue
            if not isinstance(info, dict) or info.get(Key.CLIENT_ID.value) != creds.device_id:
                await probe.close()
                continue
            # It answered there, with our key and its id: keep that session.
            await self.close()
            self._transport, probe._transport = probe._transport, None
            self._targets, self._target_index = [candidate], 0
            self.credentials = replace(creds, address=candidate).with_alias(creds.address)
            log.info("device %s moved to %s", creds.device_id, candidate)
            self._callback(self.on_moved, self.credentials)
            return True
        return False

    async def get(self, path: str, *, accept: int | None = None) -> Response:
        return await self.request("GET", path, accept=accept)

    async def put(
        self,
        path: str,
        payload: Payload,
        *,
        content_format: int | None = None,
        accept: int | None = None,
    ) -> Response:
        return await self.request(
            "PUT", path, payload, content_format=content_format, accept=accept
        )

    async def post(
        self,
        path: str,
        payload: Payload = b"",
        *,
        content_format: int | None = None,
        accept: int | None = None,
    ) -> Response:
        return await self.request(
            "POST", path, payload, content_format=content_format, accept=accept
        )

    async def delete(self, path: str) -> Response:
        return await self.request("DELETE", path)

    async def fetch(
        self,
        path: str,
        payload: Payload,
        *,
        content_format: int | None = None,
        accept: int | None = None,
    ) -> Response:
        return await self.request(
            "FETCH", path, payload, content_format=content_format, accept=accept
        )

    async def patch(
        self, path: str, payload: Payload, *, content_format: int | None = None
    ) -> Response:
        return await self.request("PATCH", path, payload, content_format=content_format)

    async def ipatch(
        self, path: str, payload: Payload, *, content_format: int | None = None
    ) -> Response:
        return await self.request("IPATCH", path, payload, content_format=content_format)

    async def resources(self) -> list[Link]:
        """The device's ``/.well-known/core``: what this client's role may use."""
        response = await self.get(uri_path(PATH_WELL_KNOWN_CORE))
        return parse_links(response.payload)

    def observe(
        self,
        path: str,
        *,
        accept: int | None = None,
        options: Sequence[tuple[int, bytes]] = (),
    ) -> AsyncGenerator[Response, None]:
        """Yield the current state, then every notification, for as long as iterated.

        If the observation dies (the gateway restarted, the session was closed,
        evicted or dropped after a timeout), it is re-registered on a fresh
        session, the state it then has is yielded, and it continues;
        ``on_reconnect`` is called once per new session and
        ``on_observe_restored(path)`` once per re-registration.  A silent
        observation is probed with a GET every ``keepalive_s``, so one that
        died without a word (a device killed and restarted, a network outage)
        is noticed too; a probe that finds a state not yet yielded yields it.
        When a registration or probe gets no answer, ``on_observe_lost(path,
        reason)`` is called once, before the observation is back.  A device
        that ends the observation with 5.03 (it was reconfigured) is asked
        again.  Retrying backs off up to 5 s between attempts and never gives
        up, except when access is refused: NotAuthorized (revoked) and
        HandshakeRejected (the identity or key is no longer accepted) end it.
        A resource that is not observable yields its state once and ends.
        """
        return observe_resource(self, path, accept=accept, options=options)

    @staticmethod
    def _callback(callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # the application's bug must not end the observation
            log.exception("callback %r failed", callback)

    async def _await_response(
        self, transport: Any, pending: Any, what: str, budget: float | None = None
    ) -> Any:
        import aiocoap.error

        generation = transport.generation
        if budget is None:
            budget = self._budget(transport, asyncio.get_running_loop().time() + self.timeout_s)
        # Never cancel aiocoap's future: aiocoap sets an error on it without
        # checking, and an error for the session arriving before it noticed the
        # cancellation raises half way through telling the session's other
        # requests.  Left alone, it ends with the answer, an error or the
        # session; its outcome is then read so nothing is logged as unretrieved.
        pending.add_done_callback(_retrieve)
        try:
            raw = await asyncio.wait_for(asyncio.shield(pending), budget)
        except TimeoutError:
            raise timeout_error(
                transport, self.credentials, self.timeout_s, what, generation
            ) from None
        except aiocoap.error.Error as exc:
            raise network_error(transport, self.credentials, exc, what, generation) from None
        except OSError as exc:
            raise DeviceUnreachable(f"{what}: {exc.strerror or exc}") from None
        transport.remote = raw.remote
        return raw

    async def ping(self) -> None:
        await self.get(uri_path(PATH_DEVICE))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
