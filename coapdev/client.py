"""Client library: onboard to a device, then talk to it with the minted identity.

    creds = await onboard("192.168.1.20", key="7QJ2-M4KX-9TZC-8RNW", name="laptop")
    async with Client(creds) as device:
        print((await device.get("/light")).value)
        await device.put("/light", {"on": True})
        async for state in device.observe("/light"):
            print(state.value)

Every failure is a :class:`~coapdev.errors.ClientError` subclass with a
one-line message: the handshake was rejected, the device did not answer (with
the address tried), or it answered 4.01/4.03 (with its reason).

Each request is bounded by ``timeout_s`` as a whole: retries on a fresh
session, the other addresses of a host name and, with ``rediscover=True``,
the mDNS search for a device that moved all share that one budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .const import (
    DEFAULT_COAPS_PORT,
    FACTORY_IDENTITY,
    PATH_DEVICE,
    PATH_ONBOARD,
    PATH_REKEY,
    PATH_TRADFRI_ONBOARD,
    PATH_WELL_KNOWN_CORE,
    TRADFRI_IDENTITY,
    TRADFRI_PSK,
    ContentFormat,
    Key,
    KeyFormat,
    uri_path,
)
from .errors import (
    ClientError,
    DeviceTimeout,
    DeviceUnreachable,
    HandshakeFailed,
    HandshakeRejected,
    NotAuthorized,
    PayloadError,
    RequestFailed,
    UnknownDevice,
)
from .keys import canonical_factory_key, factory_psk
from .payload import decode, encode

log = logging.getLogger("coapdev.client")

DEFAULT_TIMEOUT_S = 10.0
#: TLS alert a coapdev device sends when a client's Finished does not verify.
ALERT_DECRYPT_ERROR = 51


# --- addresses ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    host: str
    port: int = DEFAULT_COAPS_PORT

    @property
    def hostinfo(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def uri_base(self) -> str:
        return f"coaps://{self.hostinfo}"

    @property
    def is_literal(self) -> bool:
        """The host is an IP address (not a name to resolve)."""
        try:
            ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return self.uri_base


def parse_address(text: str) -> tuple[DeviceAddress, str]:
    """``coaps://host[:port][/path]`` or ``host[:port][/path]`` → (address, path).

    IPv6 literals go in brackets: ``[fe80::1%eth0]:5684``.
    """
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != "coaps":
            raise ClientError(f"{text}: only coaps:// is spoken here (got {scheme}://)")
    hostport, slash, path = rest.partition("/")
    path = "/" + path if slash else "/"
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise ClientError(f"{text}: unclosed '[' in IPv6 address")
        port_text = after[1:] if after.startswith(":") else ""
        if after and not after.startswith(":"):
            raise ClientError(f"{text}: unexpected text after ']'")
    elif hostport.count(":") > 1:
        host, port_text = hostport, ""  # a bare IPv6 address
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise ClientError(f"{text}: no host given")
    port = DEFAULT_COAPS_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ClientError(f"{text}: invalid port {port_text!r}")
        port = int(port_text)
    return DeviceAddress(host, port), path


# --- credentials and responses ------------------------------------------------------


@dataclass
class Credentials:
    """What onboarding yields: everything needed to talk to one device."""

    device_id: str
    address: DeviceAddress
    identity: str
    key: bytes
    client_id: str = ""
    name: str = ""
    role: str = ""
    key_format: KeyFormat = KeyFormat.BYTES
    onboarded: float = field(default_factory=time.time)
    #: The device's own name (as advertised over mDNS), if known.
    device_name: str = ""
    #: Other ``host:port`` spellings the device is known at: the address it
    #: was onboarded with, and addresses it answered from after it moved.
    aliases: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never print a key by accident
        return (
            f"Credentials(device_id={self.device_id!r}, address={self.address}, "
            f"identity={self.identity!r}, name={self.name!r}, role={self.role!r})"
        )

    def known_at(self) -> list[DeviceAddress]:
        """Every address this device is known at, the current one first."""
        seen = [self.address]
        for alias in self.aliases:
            with contextlib.suppress(ClientError):
                address, _ = parse_address(alias)
                if address not in seen:
                    seen.append(address)
        return seen

    def with_alias(self, address: DeviceAddress) -> Credentials:
        """A copy that also remembers ``address``."""
        aliases = list(self.aliases)
        if address != self.address and address.hostinfo not in aliases:
            aliases.append(address.hostinfo)
        return replace(self, aliases=aliases)


_CODE_NAMES = {
    "2.01": "Created",
    "2.02": "Deleted",
    "2.03": "Valid",
    "2.04": "Changed",
    "2.05": "Content",
    "2.31": "Continue",
    "4.00": "Bad Request",
    "4.01": "Unauthorized",
    "4.02": "Bad Option",
    "4.03": "Forbidden",
    "4.04": "Not Found",
    "4.05": "Method Not Allowed",
    "4.06": "Not Acceptable",
    "4.08": "Request Entity Incomplete",
    "4.09": "Conflict",
    "4.12": "Precondition Failed",
    "4.13": "Request Entity Too Large",
    "4.15": "Unsupported Content-Format",
    "4.22": "Unprocessable Entity",
    "4.29": "Too Many Requests",
    "5.00": "Internal Server Error",
    "5.01": "Not Implemented",
    "5.02": "Bad Gateway",
    "5.03": "Service Unavailable",
    "5.04": "Gateway Timeout",
    "5.05": "Proxying Not Supported",
}

#: Request methods by name (RFC 7252 and RFC 8132).
METHODS = ("GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "IPATCH")


@dataclass
class Response:
    code: str  # "2.05"
    payload: bytes
    content_format: int | None

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")

    @property
    def value(self) -> Any:
        """The payload decoded by its content format (raw bytes if it has none)."""
        return decode(self.payload, self.content_format)

    def __str__(self) -> str:
        return f"{self.code} {_CODE_NAMES.get(self.code, '')}".rstrip()


def _code_text(code: Any) -> str:
    number = int(code)
    return f"{number >> 5}.{number & 0x1F:02d}"


def code_name(code: str) -> str:
    """``"4.04"`` → ``"4.04 Not Found"``."""
    return f"{code} {_CODE_NAMES.get(code, '')}".rstrip()


def escape_text(text: str) -> str:
    """A device-supplied string made safe for a terminal: control characters escaped.

    ESC, CR, backspace and friends could otherwise rewrite what the user
    sees (or forge lines); they are shown as ``\\x1b`` and the like.
    """
    out = []
    for char in text:
        if char.isprintable() or char == " ":
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _diagnostic(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    return escape_text(" ".join(text.split()))[:300]


def check_response(response: Response, what: str) -> Response:
    """Raise the matching ClientError for an error response.

    The message is ``WHAT: CODE NAME: REASON``, the reason being the
    device's diagnostic payload with control characters escaped.
    """
    if response.ok:
        return response
    reason = _diagnostic(response.payload) or "no reason given"
    message = f"{what}: {code_name(response.code)}: {reason}"
    if response.code in ("4.01", "4.03"):
        raise NotAuthorized(message)
    error = RequestFailed(response.code, message)
    error.args = (message,)  # str() is the one line, without the code repeated in front
    error.diagnostic = reason
    raise error


# --- the client ---------------------------------------------------------------------


Payload = bytes | str | Any


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
            from .client_transport import ClientTransport

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
        from aiocoap import Message, Reliable, Unreliable
        from aiocoap.numbers import OptionNumber
        from aiocoap.optiontypes import BlockOption

        msg = Message(
            code=method_code(method),
            uri=self.target.uri_base + ("/" + path.lstrip("/")),
            payload=payload,
            transport_tuning=Reliable if confirmable else Unreliable,
        )
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        if observe:
            msg.opt.observe = 0
        if self.block_size_exp < 6 and method.upper() in ("GET", "FETCH"):
            # ask for small blocks from the first one (early negotiation)
            msg.opt.block2 = BlockOption.BlockwiseTuple(0, False, self.block_size_exp)
        for number, value in options:
            msg.opt.add_option(OptionNumber(number).create_option(decode=value))
        return msg

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
        body, fmt = _encode_payload(payload, content_format)
        what = f"{method.upper()} {self.credentials.address.uri_base}{_norm(path)}"

        def build() -> Any:
            return self._message(
                method, path, body, fmt, accept, False, options, confirmable=confirmable
            )

        raw = await self._exchange(build, what)
        response = _response(raw)
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
        from .discovery import find

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

    def _timeout_error(self, transport: Any, what: str, generation: int) -> ClientError:
        session = transport.session()
        address = self.credentials.address.uri_base
        transport.drop_session(generation)
        if session.exists and not session.handshake_done and session.datagrams_received:
            return HandshakeFailed(
                f"{what}: handshake failed: the device at {address} answered but did not "
                f"accept the key for identity {self.credentials.identity!r} "
                "(wrong key, or not this device)"
            )
        message = f"{what}: no answer from {address} within {round(self.timeout_s, 1):g} s"
        if not session.handshake_done:
            return DeviceUnreachable(message)  # not a single datagram came back
        return DeviceTimeout(message)

    def _network_error(
        self, transport: Any, exc: Exception, what: str, generation: int
    ) -> ClientError:
        cause = exc.__cause__
        address = self.credentials.address.uri_base
        transport.drop_session(generation)
        if isinstance(cause, ConnectionRefusedError):
            return DeviceUnreachable(
                f"{what}: nothing is listening at {address} (connection refused)"
            )
        if type(cause).__name__ == "FatalDTLSError":
            alert = cause.args[0] if cause.args else None
            if alert == ALERT_DECRYPT_ERROR:
                return HandshakeRejected(
                    f"{what}: handshake failed: the device at {address} did not accept the key "
                    f"for identity {self.credentials.identity!r} (wrong key, or not this device)"
                )
            return HandshakeRejected(
                f"{what}: handshake rejected by {address} (alert {alert}): identity "
                f"{self.credentials.identity!r} is not known there (revoked, expired, "
                "or not this device)"
            )
        if isinstance(cause, socket.gaierror):
            return ClientError(f"{what}: cannot resolve {self.credentials.address.host}: {cause}")
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause)
            return DeviceUnreachable(f"{what}: cannot reach {address}: {reason}")
        if type(cause).__name__ == "CloseNotifyReceived":
            return ClientError(f"{what}: the device closed the session")
        return ClientError(f"{what}: {exc}")

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

    async def observe(
        self,
        path: str,
        *,
        accept: int | None = None,
        options: Sequence[tuple[int, bytes]] = (),
    ) -> AsyncIterator[Response]:
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
        import aiocoap.error

        what = f"observe {self.credentials.address.uri_base}{_norm(path)}"
        backoff_s = 0.2
        registrations = 0
        lost = False
        loop = asyncio.get_running_loop()
        while True:
            transport = await self._ensure_transport(what)
            generation = transport.generation
            msg = self._message("GET", path, b"", None, accept, True, options)
            request = transport.context.request(msg)
            drop = False
            asking = True  # a registration or probe of ours is waiting for its answer
            next_note: asyncio.Future[Any] | None = None
            try:
                deadline = loop.time() + self.timeout_s
                raw = await self._await_response(
                    transport, request.response, what, self._budget(transport, deadline)
                )
                self._note_generation(transport)
                first = check_response(_response(raw), what)
                asking = False
                registrations += 1
                if registrations > 1 or lost:
                    log.info("%s: observation re-registered", what)
                    lost = False
                    self._callback(self.on_observe_restored, path)
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
                    done, _ = await asyncio.wait({next_note}, timeout=self.keepalive_s)
                    if not done:
                        asking = True
                        probe = await self.request(
                            "GET", path, accept=accept, check=False, options=options
                        )
                        asking = False
                        if transport.generation != generation:
                            raise _ObservationLost("the session was renewed")
                        probe = check_response(probe, what)
                        if probe.payload != last:
                            last = probe.payload
                            yield probe  # a notification was lost on the way
                        continue
                    finished, next_note = next_note, None
                    try:
                        note = finished.result()
                    except StopAsyncIteration:
                        raise _ObservationLost("observation ended by the device") from None
                    response = _response(note)
                    if response.code == "5.03":
                        raise _ObservationLost(f"device asked to observe again: {response.code}")
                    response = check_response(response, what)
                    last = response.payload
                    yield response
            except (NotAuthorized, HandshakeRejected):
                raise
            except _ObservationLost as exc:
                log.info("%s: %s; re-registering", what, exc)
            except (ClientError, aiocoap.error.Error, OSError) as exc:
                if isinstance(exc, RequestFailed):
                    raise
                log.info("%s: observation interrupted (%s); re-registering", what, exc)
                drop = True
                if asking and not lost:
                    lost = True
                    self._callback(self.on_observe_lost, path, str(exc))
                if asking and self.rediscover and isinstance(exc, DeviceUnreachable):
                    with contextlib.suppress(ClientError):
                        if await self._relocate(loop.time() + self.timeout_s):
                            drop = False
            finally:
                if next_note is not None:
                    next_note.cancel()
                _end_observation(request)
            if drop:
                transport.drop_session(generation)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)

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
            raise self._timeout_error(transport, what, generation) from None
        except aiocoap.error.Error as exc:
            raise self._network_error(transport, exc, what, generation) from None
        except OSError as exc:
            raise DeviceUnreachable(f"{what}: {exc.strerror or exc}") from None
        transport.remote = raw.remote
        return raw

    async def ping(self) -> None:
        await self.get(uri_path(PATH_DEVICE))


def _end_observation(request: Any) -> None:
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


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def method_code(method: str) -> Any:
    """The aiocoap Code of a method name (``iPATCH`` in any case)."""
    from aiocoap import Code

    name = method.upper()
    if name not in METHODS:
        raise ClientError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    return Code.iPATCH if name == "IPATCH" else getattr(Code, name)


def block_size_exponent(size: int) -> int:
    """16, 32, ... 1024 bytes → the SZX of RFC 7959 (0 to 6)."""
    if size not in (16, 32, 64, 128, 256, 512, 1024):
        raise ClientError(f"block size must be 16, 32, 64, 128, 256, 512 or 1024, not {size}")
    return size.bit_length() - 5


async def resolve_address(address: DeviceAddress, what: str = "") -> list[DeviceAddress]:
    """The IP addresses to try for ``address``: itself if literal, else all of its name's."""
    if address.is_literal:
        return [address]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        prefix = f"{what}: " if what else ""
        raise UnknownDevice(f"{prefix}cannot resolve {address.host}: {exc.strerror}") from None
    found: list[DeviceAddress] = []
    for family, _, _, _, sockaddr in infos:
        host = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) > 3 and sockaddr[3]:
            host = f"{host}%{sockaddr[3]}"
        candidate = DeviceAddress(host, address.port)
        if candidate not in found:
            found.append(candidate)
    return found or [address]


@dataclass
class Link:
    """One entry of ``/.well-known/core``."""

    path: str
    attributes: dict[str, str]

    @property
    def observable(self) -> bool:
        return "obs" in self.attributes

    @property
    def methods(self) -> list[str]:
        return self.attributes.get("methods", "").split()


def parse_links(payload: bytes) -> list[Link]:
    """Link format (RFC 6690) as coapdev devices serve it; odd entries are skipped."""
    from aiocoap.util.linkformat import parse

    try:
        links = parse(payload.decode("utf-8", "replace")).links
    except Exception as exc:  # the parser raises several types on bad input
        raise ClientError(f"the device's /.well-known/core is not link format: {exc}") from None
    out = []
    for link in links:
        attributes: dict[str, str] = {}
        for key, value in link.attr_pairs:
            attributes[str(key)] = "" if value is None else str(value)
        out.append(Link(str(link.href), attributes))
    return out


def _response(raw: Any) -> Response:
    return Response(_code_text(raw.code), raw.payload, raw.opt.content_format)


class _ObservationLost(Exception):
    """An observation ended while its session may still be fine: register again."""


def _norm(path: str) -> str:
    return "/" + path.lstrip("/")


def _encode_payload(payload: Payload, content_format: int | None) -> tuple[bytes, int | None]:
    if isinstance(payload, bytes):
        return payload, content_format
    if isinstance(payload, str) and content_format in (None, ContentFormat.TEXT):
        return payload.encode(), ContentFormat.TEXT
    fmt = ContentFormat.CBOR if content_format is None else content_format
    try:
        return encode(payload, fmt), fmt
    except (PayloadError, TypeError, ValueError) as exc:
        raise ClientError(f"cannot encode payload: {exc}") from None


# --- onboarding ---------------------------------------------------------------------


def default_client_name() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    return f"{user}@{socket.gethostname()}"[:64]


@dataclass
class Located:
    """Where a device named by address, mDNS name or id was found."""

    address: DeviceAddress
    #: Known when mDNS (or a QR code) told: the device's id and advertised name.
    device_id: str = ""
    name: str = ""
    #: Every address the device advertised, best first.
    addresses: list[DeviceAddress] = field(default_factory=list)


async def locate(
    ref: str | None,
    *,
    device_id: str | None = None,
    port: int | None = None,
    timeout_s: float = 3.0,
) -> Located:
    """Find a device by ``HOST[:PORT]``, ``coaps://`` URI, mDNS name or id.

    An address is taken as it is (``port`` fills in a missing port, as a QR
    code's port does); anything else is looked up over mDNS for up to
    ``timeout_s``, then tried as a host name.  ``device_id`` (from a QR code)
    is searched for when ``ref`` is empty.
    """
    from .discovery import can_resolve, find, looks_like_address

    if ref and looks_like_address(ref):
        address, _ = parse_address(ref)
        if port and not _has_port(ref):
            address = DeviceAddress(address.host, port)
        return Located(address)
    wanted = ref or device_id
    if not wanted:
        raise UnknownDevice("name the device: HOST[:PORT], its mDNS name or its id")
    found = await find(wanted, seconds=timeout_s)
    if found is not None:
        addresses = [DeviceAddress(a, found.port) for a in found.ranked_addresses()]
        return Located(addresses[0], found.device_id, found.name, addresses)
    if ref and await asyncio.to_thread(can_resolve, ref):
        return Located(DeviceAddress(ref, port or DEFAULT_COAPS_PORT))
    raise UnknownDevice(
        f"no device {escape_text(wanted)!r} answered on mDNS within {timeout_s:g} s "
        "(and it is not a host name); give its address"
    )


def _has_port(ref: str) -> bool:
    hostport = ref.split("://", 1)[-1].split("/", 1)[0]
    return ":" in hostport.rsplit("]", 1)[-1]


async def onboard(
    address: DeviceAddress | str,
    key: str,
    name: str | None = None,
    *,
    text_key: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Credentials:
    """Present the factory key, get a minted identity and key for this client.

    ``address`` may also be the device's mDNS name or id, which is then kept
    with the credentials (``device_name``).  The key is checked locally first
    (its check character), so a typo fails before any packet is sent.  The
    factory session is closed afterwards.
    """
    canonical = canonical_factory_key(key)
    located = await locate(address) if isinstance(address, str) else Located(address)
    return await _onboard_at(located, canonical, name, text_key=text_key, timeout_s=timeout_s)


async def _onboard_at(
    located: Located,
    canonical_key: str,
    name: str | None,
    *,
    text_key: bool,
    timeout_s: float,
    trace: Callable[[str], None] | None = None,
) -> Credentials:
    address = located.address
    factory = Credentials(
        device_id="", address=address, identity=FACTORY_IDENTITY, key=factory_psk(canonical_key)
    )
    body: dict[str, str] = {Key.NAME.value: name or default_client_name()}
    if text_key:
        body[Key.KEY_FORMAT.value] = KeyFormat.TEXT.value
    async with Client(factory, timeout_s=timeout_s, trace=trace) as client:
        response = await client.post(
            uri_path(PATH_ONBOARD), body, content_format=ContentFormat.CBOR
        )
        answered_at = client.target
    try:
        answer = response.value
        minted_key = answer[Key.PSK.value]
        key_format = KeyFormat.TEXT if isinstance(minted_key, str) else KeyFormat.BYTES
        creds = Credentials(
            device_id=str(answer[Key.DEVICE_ID.value]),
            address=address,
            identity=str(answer[Key.IDENTITY.value]),
            key=minted_key.encode("ascii") if isinstance(minted_key, str) else bytes(minted_key),
            client_id=str(answer[Key.CLIENT_ID.value]),
            name=str(answer[Key.NAME.value]),
            role=str(answer[Key.ROLE.value]),
            key_format=key_format,
            device_name=located.name,
        )
    except (KeyError, TypeError, AttributeError, PayloadError, UnicodeError) as exc:
        raise ClientError(f"onboarding answer from {address} is malformed: {exc!r}") from None
    for known in [answered_at, *located.addresses]:
        creds = creds.with_alias(known)
    return creds


async def revoke_self(
    credentials: Credentials,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    trace: Callable[[str], None] | None = None,
) -> None:
    """Revoke this client on its device (any role may revoke itself).

    The device ends the session as it revokes, so its answer may never
    arrive; then a fresh handshake being rejected confirms the revocation.
    A refusal (the last admin, 4.09) is raised as :class:`RequestFailed`.
    """
    target = credentials.client_id or credentials.identity
    try:
        async with Client(credentials, timeout_s=timeout_s, trace=trace) as client:
            await client.delete(f"/clients/{target}")
        return
    except (NotAuthorized, RequestFailed, HandshakeFailed):
        raise
    except ClientError as lost:
        answer_lost = lost
    try:
        async with Client(credentials, timeout_s=timeout_s, trace=trace) as client:
            await client.get(uri_path(PATH_DEVICE))
    except HandshakeRejected:
        return  # the identity is gone: revoked
    except ClientError:
        pass
    raise answer_lost


async def onboard_tradfri(
    address: DeviceAddress | str, key: str, identity: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Credentials:
    """The Tradfri exchange (for completeness; Tradfri client code does the same)."""
    import json

    if isinstance(address, str):
        address, _ = parse_address(address)
    canonical = canonical_factory_key(key)
    factory = Credentials("", address, FACTORY_IDENTITY, factory_psk(canonical))
    async with Client(factory, timeout_s=timeout_s) as client:
        response = await client.post(
            uri_path(PATH_TRADFRI_ONBOARD),
            json.dumps({TRADFRI_IDENTITY: identity}).encode(),
            content_format=ContentFormat.JSON,
        )
        info = await _device_id_with(address, identity, response, timeout_s)
    return info


async def _device_id_with(
    address: DeviceAddress, identity: str, response: Response, timeout_s: float
) -> Credentials:
    psk = response.value[TRADFRI_PSK]
    creds = Credentials(
        "",
        address,
        identity,
        psk.encode("ascii"),
        client_id=identity,
        name=identity,
        key_format=KeyFormat.TEXT,
    )
    async with Client(creds, timeout_s=timeout_s) as client:
        device = (await client.get(uri_path(PATH_DEVICE))).value
    creds.device_id = device[Key.CLIENT_ID.value]
    return creds


async def rekey(
    credentials: Credentials,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    save: Callable[[Credentials], None] | None = None,
) -> Credentials:
    """Rotate this client's key; returns the new credentials, confirmed in use.

    The device keeps the old key valid until the new one is used, and the
    new credentials are saved (``save``) before that first use, so a crash
    or lost packet at any point leaves a working key on both sides.
    """
    async with Client(credentials, timeout_s=timeout_s) as client:
        answer = (await client.post(uri_path(PATH_REKEY))).value
    try:
        new_key = answer[Key.PSK.value]
        new = replace(
            credentials,
            identity=str(answer[Key.IDENTITY.value]),
            key=new_key.encode("ascii") if isinstance(new_key, str) else bytes(new_key),
        )
    except (KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise ClientError(f"rekey answer is malformed: {exc!r}") from None
    if save is not None:
        save(new)
    async with Client(new, timeout_s=timeout_s) as client:
        await client.get(uri_path(PATH_DEVICE))  # first use confirms; the old key stops working
    return new
