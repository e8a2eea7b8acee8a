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
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .const import (
    DEFAULT_COAPS_PORT,
    FACTORY_IDENTITY,
    TRADFRI_IDENTITY,
    TRADFRI_PSK,
    ContentFormat,
    Key,
    KeyFormat,
)
from .errors import (
    ClientError,
    DeviceTimeout,
    HandshakeFailed,
    HandshakeRejected,
    NotAuthorized,
    PayloadError,
    RequestFailed,
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

    def __repr__(self) -> str:  # never print a key by accident
        return (
            f"Credentials(device_id={self.device_id!r}, address={self.address}, "
            f"identity={self.identity!r}, name={self.name!r}, role={self.role!r})"
        )


_CODE_NAMES = {
    "2.01": "Created",
    "2.02": "Deleted",
    "2.03": "Valid",
    "2.04": "Changed",
    "2.05": "Content",
}


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


def _diagnostic(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:300]


def check_response(response: Response, what: str) -> Response:
    """Raise the matching ClientError for an error response."""
    if response.ok:
        return response
    reason = _diagnostic(response.payload)
    if response.code in ("4.01", "4.03"):
        label = "not authorized" if response.code == "4.01" else "forbidden"
        raise NotAuthorized(f"{what}: {label} ({response.code}): {reason or 'no reason given'}")
    raise RequestFailed(response.code, f"{what}: {reason}" if reason else what)


# --- the client ---------------------------------------------------------------------


Payload = bytes | str | Any


class Client:
    """Talks to one device with one identity; reuses its DTLS session.

    Requests are bounded by ``timeout_s``.  A session the device no longer
    knows (the gateway restarted, evicted or closed it) is dropped and the
    request retried once on a fresh handshake, so long-lived clients heal.

    ``on_reconnect()`` is called once per new session after the first one;
    ``on_observe_restored(path)`` each time an observation was re-registered
    on a new session and delivers again.  Each Client has its own DTLS
    context, socket and credentials: several Clients in one process, for one
    device or many, never share a session or a key.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_reconnect: Callable[[], None] | None = None,
        on_observe_restored: Callable[[str], None] | None = None,
        keepalive_s: float | None = None,
    ) -> None:
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.on_reconnect = on_reconnect
        self.on_observe_restored = on_observe_restored
        #: A silent observation is probed this often (see :meth:`observe`).
        self.keepalive_s = max(timeout_s * 3, 30.0) if keepalive_s is None else keepalive_s
        self._transport: Any = None
        self._generation: int | None = None

    async def __aenter__(self) -> Client:
        await self._ensure_transport()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ensure_transport(self) -> Any:
        if self._transport is None:
            from .client_transport import ClientTransport

            creds = self.credentials
            self._transport = await ClientTransport.create(
                creds.address.uri_base, creds.identity.encode("ascii"), creds.key
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
    ) -> Any:
        from aiocoap import Code, Message

        msg = Message(
            code=getattr(Code, method),
            uri=self.credentials.address.uri_base + ("/" + path.lstrip("/")),
            payload=payload,
        )
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        if observe:
            msg.opt.observe = 0
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
    ) -> Response:
        """Send one request; raise a ClientError unless ``check`` is False."""
        body, fmt = _encode_payload(payload, content_format)
        what = f"{method} {self.credentials.address.uri_base}{_norm(path)}"
        response = await self._send(method, path, body, fmt, accept, what)
        return check_response(response, what) if check else response

    async def _send(
        self, method: str, path: str, body: bytes, fmt: int | None, accept: int | None, what: str
    ) -> Response:
        transport = await self._ensure_transport()
        had_session = transport.session().handshake_done
        generation = transport.generation
        try:
            response = await self._send_once(transport, method, path, body, fmt, accept, what)
            self._note_generation(transport)
            return response
        except ClientError as exc:
            if not had_session or isinstance(exc, NotAuthorized | RequestFailed):
                raise
            # The session was good before: the device may have lost it (restart,
            # eviction).  Handshake anew and try once more.
            log.info("%s: session lost (%s); reconnecting", what, exc)
            transport.drop_session(generation)
            response = await self._send_once(transport, method, path, body, fmt, accept, what)
            self._note_generation(transport)
            return response

    def _note_generation(self, transport: Any) -> None:
        """Call ``on_reconnect`` once per new session after the first."""
        if self._generation is not None and transport.generation != self._generation:
            self._callback(self.on_reconnect)
        self._generation = transport.generation

    async def _send_once(
        self,
        transport: Any,
        method: str,
        path: str,
        body: bytes,
        fmt: int | None,
        accept: int | None,
        what: str,
    ) -> Response:
        msg = self._message(method, path, body, fmt, accept, observe=False)
        raw = await self._await_response(transport, transport.context.request(msg).response, what)
        return _response(raw)

    def _budget(self, transport: Any) -> float:
        # On an established session a device answers in milliseconds; if it
        # does not within a few seconds, the session is likely gone, and the
        # retry on a fresh handshake still fits in the caller's budget.
        if transport.session().handshake_done:
            return max(min(self.timeout_s / 3, 3.0), 0.5)
        return self.timeout_s

    def _timeout_error(self, transport: Any, what: str, generation: int) -> ClientError:
        session = transport.session()
        address = self.credentials.address.uri_base
        if session.exists and not session.handshake_done and session.datagrams_received:
            transport.drop_session(generation)
            return HandshakeFailed(
                f"{what}: handshake failed: the device at {address} answered but did not "
                f"accept the key for identity {self.credentials.identity!r} "
                "(wrong key, or not this device)"
            )
        transport.drop_session(generation)
        return DeviceTimeout(f"{what}: no answer from {address} within {self.timeout_s:g} s")

    def _network_error(
        self, transport: Any, exc: Exception, what: str, generation: int
    ) -> ClientError:
        cause = exc.__cause__
        address = self.credentials.address.uri_base
        transport.drop_session(generation)
        if isinstance(cause, ConnectionRefusedError):
            return DeviceTimeout(f"{what}: nothing is listening at {address} (connection refused)")
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
        if isinstance(cause, socket.gaierror | OSError):
            return ClientError(f"{what}: {cause}")
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

    async def observe(self, path: str, *, accept: int | None = None) -> AsyncIterator[Response]:
        """Yield the current state, then every notification, for as long as iterated.

        If the observation dies (the gateway restarted, the session was closed,
        evicted or dropped after a timeout), it is re-registered on a fresh
        session, the state it then has is yielded, and it continues;
        ``on_reconnect`` is called once per new session and
        ``on_observe_restored(path)`` once per re-registration.  A silent
        observation is probed with a GET every ``keepalive_s``, so one that
        died without a word (a device killed and restarted, a network outage)
        is noticed too; a probe that finds a state not yet yielded yields it.
        A device that ends the observation with 5.03 (it was reconfigured) is
        asked again.  Retrying backs off up to 5 s between attempts and never
        gives up, except when access is refused: NotAuthorized (revoked) and
        HandshakeRejected (the identity or key is no longer accepted) end it.
        A resource that is not observable yields its state once and ends.
        """
        import aiocoap.error

        what = f"observe {self.credentials.address.uri_base}{_norm(path)}"
        backoff_s = 0.2
        registrations = 0
        while True:
            transport = await self._ensure_transport()
            generation = transport.generation
            msg = self._message("GET", path, b"", None, accept, observe=True)
            request = transport.context.request(msg)
            drop = False
            next_note: asyncio.Future[Any] | None = None
            try:
                raw = await self._await_response(transport, request.response, what)
                self._note_generation(transport)
                first = check_response(_response(raw), what)
                registrations += 1
                if registrations > 1:
                    log.info("%s: observation re-registered", what)
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
                        probe = await self.request("GET", path, accept=accept, check=False)
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

    async def _await_response(self, transport: Any, pending: Any, what: str) -> Any:
        import aiocoap.error

        generation = transport.generation
        # Never cancel aiocoap's future: aiocoap sets an error on it without
        # checking, and an error for the session arriving before it noticed the
        # cancellation raises half way through telling the session's other
        # requests.  Left alone, it ends with the answer, an error or the
        # session; its outcome is then read so nothing is logged as unretrieved.
        pending.add_done_callback(_retrieve)
        try:
            raw = await asyncio.wait_for(asyncio.shield(pending), self._budget(transport))
        except TimeoutError:
            raise self._timeout_error(transport, what, generation) from None
        except aiocoap.error.Error as exc:
            raise self._network_error(transport, exc, what, generation) from None
        except OSError as exc:
            raise ClientError(f"{what}: {exc.strerror or exc}") from None
        transport.remote = raw.remote
        return raw

    async def ping(self) -> None:
        await self.get("/device")


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


async def onboard(
    address: DeviceAddress | str,
    key: str,
    name: str | None = None,
    *,
    text_key: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Credentials:
    """Present the factory key, get a minted identity and key for this client.

    The key is checked locally first (its check character), so a typo fails
    before any packet is sent.  The factory session is closed afterwards.
    """
    if isinstance(address, str):
        address, _ = parse_address(address)
    canonical = canonical_factory_key(key)
    factory = Credentials(
        device_id="", address=address, identity=FACTORY_IDENTITY, key=factory_psk(canonical)
    )
    body: dict[str, str] = {Key.NAME.value: name or default_client_name()}
    if text_key:
        body[Key.KEY_FORMAT.value] = KeyFormat.TEXT.value
    async with Client(factory, timeout_s=timeout_s) as client:
        response = await client.post("/onboard", body, content_format=ContentFormat.CBOR)
    try:
        answer = response.value
        minted_key = answer[Key.PSK.value]
        key_format = KeyFormat.TEXT if isinstance(minted_key, str) else KeyFormat.BYTES
        return Credentials(
            device_id=str(answer[Key.DEVICE_ID.value]),
            address=address,
            identity=str(answer[Key.IDENTITY.value]),
            key=minted_key.encode("ascii") if isinstance(minted_key, str) else bytes(minted_key),
            client_id=str(answer[Key.CLIENT_ID.value]),
            name=str(answer[Key.NAME.value]),
            role=str(answer[Key.ROLE.value]),
            key_format=key_format,
        )
    except (KeyError, TypeError, AttributeError, PayloadError, UnicodeError) as exc:
        raise ClientError(f"onboarding answer from {address} is malformed: {exc!r}") from None


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
            "/15011/9063",
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
        device = (await client.get("/device")).value
    creds.device_id = device[Key.ID.value]
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
        answer = (await client.post("/rekey")).value
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
        await client.get("/device")  # first use confirms; the old key stops working
    return new
