"""Observing a resource (RFC 7641) for as long as iterated, through restarts and moves.

The loop re-registers on a fresh session whenever the observation dies,
probes a silent one every ``keepalive_s``, and ends only when access is
refused; :meth:`coapdev.client.Client.observe` documents what a caller sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import (
    ClientError,
    DeviceUnreachable,
    HandshakeRejected,
    NotAuthorized,
    RequestFailed,
)
from .request import norm_path
from .response import Response, check_response, from_message

if TYPE_CHECKING:
    from .session import Client

log = logging.getLogger("coapdev.client")


class ObservationLost(Exception):
    """An observation ended while its session may still be fine: register again."""


async def observe(
    client: Client,
    path: str,
    *,
    accept: int | None = None,
    options: Sequence[tuple[int, bytes]] = (),
) -> AsyncGenerator[Response, None]:
    """The loop behind :meth:`Client.observe` (which documents it)."""
    import aiocoap.error

    what = f"observe {client.credentials.address.uri_base}{norm_path(path)}"
    backoff_s = 0.2
    registrations = 0
    lost = False
    loop = asyncio.get_running_loop()
    while True:
        transport = await client._ensure_transport(what)
        generation = transport.generation
        msg = client._message("GET", path, b"", None, accept, True, options)
        request = transport.context.request(msg)
        drop = False
        asking = True  # a registration or probe of ours is waiting for its answer
        next_note: asyncio.Future[Any] | None = None
        try:
            deadline = loop.time() + client.timeout_s
            raw = await client._await_response(
                transport, request.response, what, client._budget(transport, deadline)
            )
            client._note_generation(transport)
            first = check_response(from_message(raw), what)
            asking = False
            registrations += 1
            if registrations > 1 or lost:
                log.info("%s: observation re-registered", what)
                lost = False
                client._callback(client.on_observe_restored, path)
            last = first.payload
            yield first
            if raw.opt.observe is None:
                return  # the resource is not observable: that was its state
            backoff_s = 0.2
            notes = request.observation.__aiter__()
            while True:
                # One wait for the next notification outlives keepalive
                # probes: cancelling aiocoap's __anext__ would break the
                # iterator (its next call raises CancelledError).
                if next_note is None:
                    next_note = asyncio.ensure_future(notes.__anext__())
                done, _ = await asyncio.wait({next_note}, timeout=client.keepalive_s)
                if not done:
                    asking = True
                    probe = await client.request(
                        "GET", path, accept=accept, check=False, options=options
                    )
                    asking = False
                    if transport.generation != generation:
                        raise ObservationLost("the session was renewed")
                    probe = check_response(probe, what)
                    if probe.payload != last:
                        last = probe.payload
                        yield probe  # a notification was lost on the way
                    continue
                finished, next_note = next_note, None
                try:
                    note = finished.result()
                except StopAsyncIteration:
                    raise ObservationLost("observation ended by the device") from None
                response = from_message(note)
                if response.code == "5.03":
                    raise ObservationLost(f"device asked to observe again: {response.code}")
                response = check_response(response, what)
                last = response.payload
                yield response
        except (NotAuthorized, HandshakeRejected):
            raise
        except ObservationLost as exc:
            log.info("%s: %s; re-registering", what, exc)
        except (ClientError, aiocoap.error.Error, OSError) as exc:
            if isinstance(exc, RequestFailed):
                raise
            log.info("%s: observation interrupted (%s); re-registering", what, exc)
            drop = True
            if asking and not lost:
                lost = True
                client._callback(client.on_observe_lost, path, str(exc))
            if asking and client.rediscover and isinstance(exc, DeviceUnreachable):
                with contextlib.suppress(ClientError):
                    if await client._relocate(loop.time() + client.timeout_s):
                        drop = False
        finally:
            if next_note is not None:
                next_note.cancel()
            end_observation(request)
        if drop:
            transport.drop_session(generation)
        await asyncio.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, 5.0)


def end_observation(request: Any) -> None:
    """Cancel an observation once aiocoap has settled its registration.

    Cancelled while the registration is still unanswered, aiocoap raises when
    the answer or an error arrives after all (into the loop, and before it
    told the session's other requests), so it is cancelled then.
    """

    def cancel(_: object = None) -> None:
        if not request.observation.cancelled:
            with contextlib.suppress(Exception):
                request.observation.cancel()

    if request.response.done():
        cancel()
    else:
        request.response.add_done_callback(cancel)
