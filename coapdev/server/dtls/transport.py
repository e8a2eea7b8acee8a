"""coapdev's own DTLS server transport, on DTLSSocket (tinydtls), behind aiocoap's interfaces.

Why not aiocoap's ``tinydtls_server``: it keeps one tinydtls context and
Python state per source address from the first datagram on, never frees
sessions (close_notify is ignored, the session cap is never enforced), binds
a port off by one, refuses wildcard addresses and cannot close a revoked
identity's session.  This transport:

- one tinydtls context for all peers, sessions keyed by the real address;
- Python state for a peer only once tinydtls accepted its cookie (the
  server has sent a ServerHello), so spoofed sources cost nothing;
- close_notify and fatal alerts free the session, once tinydtls has
  authenticated them (a plaintext alert for an established session is
  dropped); idle sessions are evicted; a configurable cap evicts the least
  recently active session;
- handshakes that stall (the client vanished, or its key was wrong) are
  reset after a timeout; a wrong key is answered at once with a fatal
  ``decrypt_error`` alert, so clients fail fast instead of timing out;
- which TLS extensions a client must offer is a setting
  (``extended_master_secret``, ``renegotiation_info``); a handshake tinydtls
  refuses, for that or any other reason, is reported like every failed one;
  an established session is never renegotiated;
- a lost final server flight is sent again when the client retransmits its
  Finished (tinydtls would ignore it and the handshake would hang);
- a large receive buffer against bursts of handshakes;
- wildcard binds (``::`` serves IPv4 and IPv6).

Every callback from tinydtls is guarded: nothing raises into C.  Plaintext
and events are collected during ``handleMessage`` and acted on after it
returns, so aiocoap never re-enters tinydtls from inside a callback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiocoap import CON, NON, Code, interfaces
from aiocoap import error as coap_error
from aiocoap.message import Message
from aiocoap.numbers.types import ACK
from DTLSSocket import dtls

from ...const import MAX_IDENTITY_BYTES, MAX_PSK_BYTES
from ...dtls_build import patched_dtls
from ...dtls_numbers import TINYDTLS_EVENT_CONNECTED, AlertDescription, AlertLevel
from .. import budget
from ..budget import host_of
from .records import (
    CT_APPLICATION_DATA,
    has_change_cipher_spec,
    has_epoch1_handshake,
    is_client_hello,
    is_finished_retransmit,
    plain_fatal_alert,
    refusal_reason,
    sent_handshake_signal,
    starts_renegotiation,
)
from .sessions import CLOSED, CONNECTED, HANDSHAKE, Eviction, SessionTable

log = logging.getLogger("coapdev.dtls")

#: The key for a PSK identity and the claim (the credential) a session opened
#: with it carries, or None for an unknown identity.
PskLookup = Callable[[bytes], tuple[bytes, Any] | None]

_LEVEL_EVENT = int(AlertLevel.EVENT)
_LEVEL_WARNING = int(AlertLevel.WARNING)
_LEVEL_FATAL = int(AlertLevel.FATAL)
_EVENT_CONNECTED = TINYDTLS_EVENT_CONNECTED
_ALERT_CLOSE_NOTIFY = int(AlertDescription.CLOSE_NOTIFY)
_CT_APPLICATION_DATA = CT_APPLICATION_DATA
#: Receive buffer: a DTLS record of tinydtls is at most 1400 bytes.
_RECEIVE_BYTES = 4096
#: Datagrams read per wake-up before other work gets a turn.
_READ_BATCH = 64


@dataclass
class DtlsServerOptions:
    #: Most concurrent sessions (connected or handshaking); beyond it the least
    #: recently active session is evicted.
    max_sessions: int = 5000
    #: A session with no traffic for this long is closed (close_notify).
    idle_timeout_s: float = 3600.0
    #: A handshake not finished within this long is abandoned.
    handshake_timeout_s: float = 20.0
    #: Most handshakes in progress; beyond it the oldest is abandoned.  Only
    #: handshakes past the cookie exchange count (they come from real addresses).
    max_handshakes: int = 256
    #: Socket receive buffer (bursts of handshakes overflow the default).
    receive_buffer_bytes: int = 4 * 1024 * 1024
    #: Sessions one source host may hold; beyond it its least recently active
    #: one is evicted (so a host can only crowd out itself).
    max_sessions_per_host: int = budget.MAX_SESSIONS_PER_HOST
    #: Sessions one identity may hold at once; likewise.
    max_sessions_per_identity: int = budget.MAX_SESSIONS_PER_IDENTITY
    #: Exchanges remembered for duplicate detection on aiocoap's path, per
    #: session and in total (aiocoap alone keeps every one 247 s); the oldest
    #: are forgotten first.  The fast path's own cache is bounded separately.
    max_exchanges_per_session: int = budget.MAX_EXCHANGES_PER_SESSION
    max_exchanges: int = budget.MAX_EXCHANGES
    #: Refuse a ClientHello without the extended_master_secret extension
    #: (RFC 7627).  Either way it is used whenever the client offers it.
    require_extended_master_secret: bool = False
    #: Refuse a ClientHello with neither the renegotiation_info extension nor
    #: TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746); answered whenever offered.
    require_renegotiation_info: bool = False


class DtlsPeer(interfaces.EndpointAddress):
    """One DTLS session; also the aiocoap remote of every message on it.

    A new object per handshake, so observations, blockwise transfers and
    duplicate detection never cross from one session into the next.
    """

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, transport: DtlsServerTransport, sockaddr: Any, key: tuple, now: float):
        self._transport = transport
        self.sockaddr = sockaddr
        self.key = key
        self.session = transport._session_for(sockaddr)
        self.session_key = (self.session.addr, self.session.port)
        self.phase = HANDSHAKE
        self.identity: str | None = None
        self._pending_identity: bytes | None = None
        #: The credential the key looked up for this handshake stands for.
        self._pending_claim: Any = None
        self.started = now
        self.last_active = now
        #: The datagrams of the server's final flight, resent if it was lost.
        self.final_flight: list[bytes] = []
        #: Observations this session holds (see ObservableGuardedResource).
        self.observations = 0
        #: Recent exchanges for duplicate detection on the fast path.
        self.recent_exchanges: Any = None
        #: The client's ChangeCipherSpec was seen (so its Finished is decryptable).
        self.saw_ccs = False
        #: The identity this session counts against (once connected).
        self.counted_identity: str | None = None
        #: Its identity is unknown: that failure is counted once, not again as a wrong key.
        self.identity_unknown = False
        self._claims: tuple[Any, ...] = ()

    # --- EndpointAddress ---

    @property
    def hostinfo(self) -> str:
        host, port = self.sockaddr[0], self.sockaddr[1]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def hostinfo_local(self) -> str:
        return self._transport.hostinfo_local

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    @property
    def authenticated_claims(self) -> tuple[Any, ...]:
        """The credential this session was authenticated with (a one-element tuple)."""
        return self._claims

    @property
    def credential(self) -> Any:
        return self._claims[0] if self._claims else None

    @property
    def blockwise_key(self) -> tuple:
        return (self.key, self.identity, id(self))

    def __repr__(self) -> str:
        return f"<DtlsPeer {self.hostinfo} {self.phase} {self.identity!r}>"

    def send(self, data: bytes) -> None:
        self._transport._send_plaintext(self, data)


class _PskStore:
    """The dict-like object DTLSSocket asks for keys; remembers which identity was asked."""

    def __init__(self, transport: DtlsServerTransport) -> None:
        self._transport = transport

    def keys(self) -> _PskStore:
        return self

    def __contains__(self, identity: object) -> bool:
        return self._key(identity) is not None

    def __getitem__(self, identity: bytes) -> bytes:
        key = self._key(identity)
        if key is None:  # DTLSSocket only asks after __contains__ said yes
            raise KeyError(identity)
        return key

    def _key(self, identity: object) -> bytes | None:
        transport = self._transport
        key: bytes | None = None
        claim: Any = None
        try:
            if isinstance(identity, bytes) and len(identity) <= MAX_IDENTITY_BYTES:
                found = transport._lookup(identity)
                if found is not None:
                    key, claim = found
            if key is not None and not 0 < len(key) <= MAX_PSK_BYTES:
                log.error("refusing a stored key of %d bytes (at most %d)", len(key), MAX_PSK_BYTES)
                key = claim = None
        except Exception:
            log.exception("key lookup failed")
            key = claim = None
        transport._note_identity(identity if isinstance(identity, bytes) else b"", claim)
        return key


class DtlsServerTransport(interfaces.MessageInterface):
    """aiocoap MessageInterface serving coaps:// on one UDP socket."""

    def __init__(
        self,
        mman: interfaces.MessageManager,
        lookup: PskLookup,
        options: DtlsServerOptions,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._mman: interfaces.MessageManager | None = mman
        self._lookup = lookup
        self.options = options
        self._loop = loop
        self._sock: socket.socket | None = None
        self._buffer = bytearray(_RECEIVE_BYTES)
        self._view = memoryview(self._buffer)
        self._family = socket.AF_INET6
        self.hostinfo_local = ""
        #: Sessions by (host, port), least recently active first.
        self.sessions = SessionTable(
            max_sessions=options.max_sessions,
            max_handshakes=options.max_handshakes,
            max_sessions_per_host=options.max_sessions_per_host,
            max_sessions_per_identity=options.max_sessions_per_identity,
            handshake_timeout_s=options.handshake_timeout_s,
            idle_timeout_s=options.idle_timeout_s,
        )
        self._by_session_key = self.sessions.by_session_key
        self._ctx = patched_dtls().DTLS(
            read=self._on_read,
            write=self._on_write,
            event=self._on_event,
            pskId=b"coapdev",
            pskStore=_PskStore(self),
            forceExtendedMasterSecret=options.require_extended_master_secret,
            forceRenegotiationInfo=options.require_renegotiation_info,
        )
        # Per-datagram scratch state, filled by the callbacks.
        self._current_sockaddr: Any = None
        self._current_peer: DtlsPeer | None = None
        self._sent_server_hello = False
        #: Description of a fatal alert tinydtls sent in the clear (it refused the handshake).
        self._sent_fatal_alert: int | None = None
        self._recording_flight: list[bytes] | None = None
        self._plaintexts: list[bytes] = []
        self._events: list[tuple[int, int]] = []
        #: The identity tinydtls last asked a key for, and its claim (None: unknown).
        self._asked_identity: tuple[bytes, Any] | None = None
        self._retransmit_handle: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: Hooks for rate limiting (see coapdev.ratelimit): admit a new
        #: handshake from a host, and learn of a failed one.
        self.admit_handshake: Callable[[str], bool] = lambda host: True
        self.handshake_failed: Callable[[str, str], None] = lambda host, reason: None
        self.stats = collections.Counter()
        #: aiocoap's duplicate detection, bounded (set by the owner, see aiocoap_compat).
        self.duplicates: Any = None
        self._next_mid = int.from_bytes(os.urandom(2), "big")
        #: Serves simple requests without aiocoap's message layer (set by the owner).
        self.fast_path: Any = None
        #: Decides on a factory-key session's request aiocoap would take: None lets it
        #: through, else the refusal to send (see _admit_to_aiocoap).
        self.screen_factory: Callable[[Message], Message | None] | None = None

    # --- set-up and tear-down ---------------------------------------------------

    @classmethod
    async def create(
        cls,
        host: str,
        port: int,
        mman: interfaces.MessageManager,
        lookup: PskLookup,
        options: DtlsServerOptions | None = None,
    ) -> DtlsServerTransport:
        loop = asyncio.get_running_loop()
        self = cls(mman, lookup, options or DtlsServerOptions(), loop)
        sock = _bind(host, port)
        self._family = sock.family
        _set_buffers(sock, self.options.receive_buffer_bytes)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._on_readable)
        bound = sock.getsockname()
        self.port = bound[1]
        shown = bound[0] if ":" not in bound[0] else f"[{bound[0]}]"
        self.hostinfo_local = f"{shown}:{self.port}"
        self._sweeper = loop.create_task(self._sweep(), name="coapdev DTLS session sweeper")
        return self

    def _on_readable(self) -> None:
        """Read what is waiting, up to a batch, straight into one reused buffer.

        (asyncio's datagram transport allocates a 256 KiB buffer per datagram
        and wakes the loop once per datagram.)
        """
        sock = self._sock
        if sock is None:
            return
        view = self._view
        for _ in range(_READ_BATCH):
            try:
                size, addr = sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors reported on the socket
                log.debug("socket error: %s", exc)
                continue
            try:
                self.datagram_received(bytes(view[:size]), addr)
            except Exception:  # one datagram must never stop the server
                log.exception("handling a datagram from %s failed", host_of(addr))

    def _send_datagram(self, data: bytes, sockaddr: Any) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, sockaddr)
        except (BlockingIOError, InterruptedError):
            self.stats["dropped-send-buffer-full"] += 1
        except OSError as exc:
            log.debug("sending to %s failed: %s", host_of(sockaddr), exc)

    async def shutdown(self) -> None:
        """Send close_notify to every peer, then close the socket."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for peer in self.sessions:
            self._close_peer(peer, "server shutting down", notify=True)
        if self._retransmit_handle is not None:
            self._retransmit_handle.cancel()
        self._mman = None
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # --- aiocoap MessageInterface ----------------------------------------------------

    def send(self, message: Message) -> None:
        remote = message.remote
        if not isinstance(remote, DtlsPeer) or remote._transport is not self:
            log.warning("not sending %r: not a remote of this transport", message)
            return
        remote.send(message.encode())

    async def determine_remote(self, message: Message) -> None:
        return None  # a server does not initiate sessions

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, DtlsPeer) and remote._transport is self

    # --- management ------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    def set_handshake_policy(
        self, *, require_extended_master_secret: bool, require_renegotiation_info: bool
    ) -> None:
        """Change which extensions the next ClientHello must offer (open sessions stay)."""
        self.options.require_extended_master_secret = require_extended_master_secret
        self.options.require_renegotiation_info = require_renegotiation_info
        self._ctx.forceExtendedMasterSecret = require_extended_master_secret
        self._ctx.forceRenegotiationInfo = require_renegotiation_info

    def connected_identities(self) -> list[str]:
        return [p.identity for p in self.sessions if p.identity is not None]

    def close_sessions(self, credentials: Collection[Any]) -> int:
        """Close (close_notify) every session authenticated with one of ``credentials``."""
        victims = self.sessions.with_credential(credentials)
        for peer in victims:
            self._close_peer(peer, "key no longer valid", notify=True)
        return len(victims)

    # --- the datagram path -----------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Every record goes to tinydtls, alerts too: it ends a session only for an
        alert that decrypted and verified under the session's keys, and drops a
        plaintext alert for an established session (anyone can forge one)."""
        self._handle_records(data, addr)

    def _handle_records(self, data: bytes, addr: Any) -> None:
        key = (addr[0], addr[1])
        peer = self.sessions.get(key)
        if peer is None:
            if not is_client_hello(data):
                self.stats["dropped-unknown-peer"] += 1
                return  # only a handshake may start a session
            if not self.admit_handshake(host_of(addr)):
                self.stats["dropped-throttled"] += 1
                return
            session = self._session_for(addr)
        else:
            session = peer.session
            if peer.phase == CONNECTED and peer.final_flight and is_finished_retransmit(data):
                self._resend_final_flight(peer)
                return
            if peer.phase == CONNECTED and starts_renegotiation(data):
                # No renegotiation (docs/security.md, handshake policy): tinydtls
                # would start a new handshake inside this session.
                self.stats["dropped-renegotiation"] += 1
                return
        self._current_sockaddr = addr
        self._current_peer = peer
        self._sent_server_hello = False
        self._sent_fatal_alert = None
        self._plaintexts = []
        self._events = []
        self._asked_identity = None
        recording = peer is not None and peer.phase == HANDSHAKE
        self._recording_flight = [] if recording else None
        try:
            self._ctx.handleMessage(session, data)
        except Exception:
            log.exception("tinydtls rejected a datagram from %s", host_of(addr))
        finally:
            self._current_sockaddr = None
            self._current_peer = None
        self._after_datagram(addr, key, peer, data)

    def _after_datagram(self, addr: Any, key: tuple, peer: DtlsPeer | None, data: bytes) -> None:
        now = time.monotonic()
        flight = self._recording_flight
        self._recording_flight = None
        if self._sent_server_hello:
            # tinydtls accepted the cookie and created (or restarted) a session.
            if peer is not None:
                self._forget_peer(peer, "new handshake from the same address")
            peer = self._new_peer(addr, key, now)
        if peer is None:
            if self._sent_fatal_alert is not None:
                # tinydtls refused a ClientHello that had passed the cookie exchange.
                self._handshake_refused(addr, refusal_reason(data, self._sent_fatal_alert))
            return
        if self._asked_identity is not None:
            identity, claim = self._asked_identity
            peer._pending_identity = identity
            peer._pending_claim = claim
            if claim is None and not peer.identity_unknown:
                peer.identity_unknown = True
                self.stats["handshake-unknown-identity"] += 1
                self.handshake_failed(host_of(addr), "unknown identity")
        for level, code in self._events:
            if level == _LEVEL_EVENT and code == _EVENT_CONNECTED:
                peer.identity = (peer._pending_identity or b"").decode("ascii", "replace")
                peer._claims = () if peer._pending_claim is None else (peer._pending_claim,)
                victim = self.sessions.connected(peer, peer.identity or "")
                if victim is not None:
                    self._evict(victim)
                peer.final_flight = flight or []
                self.stats["handshakes"] += 1
            elif level == _LEVEL_FATAL or (level == _LEVEL_WARNING and code == _ALERT_CLOSE_NOTIFY):
                # tinydtls authenticated the alert and has freed its side of the session.
                self.stats["alerts"] += 1
                reason = f"alert {level}/{code}"
                if code == _ALERT_CLOSE_NOTIFY:
                    reason = "closed by peer"
                if peer.phase == HANDSHAKE:
                    reason = f"handshake ended by the client: {reason}"
                    self.handshake_failed(host_of(addr), reason)
                self._forget_peer(peer, reason)
                return
        if self._sent_fatal_alert is not None and peer.phase == HANDSHAKE:
            # tinydtls ended this handshake with a fatal alert (it may still hold
            # the peer, closing): end it on both sides, reported once.
            unknown_identity = self._asked_identity is not None and not self._asked_identity[1]
            reason = refusal_reason(data, self._sent_fatal_alert)
            if not unknown_identity:
                self._handshake_refused(addr, reason)
            self._close_peer(peer, reason, notify=False)
            return
        if peer.phase == HANDSHAKE and not peer.saw_ccs:
            peer.saw_ccs = has_change_cipher_spec(data)
        if (
            peer.phase == HANDSHAKE
            and peer.saw_ccs
            and peer._pending_identity is not None
            and has_epoch1_handshake(data)
        ):
            # The client's Finished did not verify: its key is wrong (an
            # unknown identity has no key at all, and was counted already).
            if not peer.identity_unknown:
                self.stats["handshake-wrong-key"] += 1
                self.handshake_failed(host_of(addr), "wrong key")
            self._send_plain_alert(addr, AlertDescription.DECRYPT_ERROR)
            self._close_peer(peer, "wrong key", notify=False)
            return
        self.sessions.touch(peer, now)
        if self._plaintexts:
            peer.final_flight = []  # the client has our Finished: it sends application data
            self._deliver(peer)
        self._schedule_retransmit()

    def _deliver(self, peer: DtlsPeer) -> None:
        plaintexts, self._plaintexts = self._plaintexts, []
        mman = self._mman
        if mman is None or peer.phase != CONNECTED:
            return
        fast = self.fast_path
        for plaintext in plaintexts:
            if fast is not None:
                try:
                    taken = fast.handle(peer, plaintext)
                except Exception:  # never handed on: aiocoap would run it a second time
                    log.exception("fast path failed on a request from %s", peer.hostinfo)
                    continue
                if taken:
                    self.stats["requests-fast"] += 1
                    continue
            try:
                message = Message.decode(plaintext, remote=peer)
            except (coap_error.UnparsableMessage, ValueError, IndexError):
                # Malformed (e.g. an option that is not UTF-8): dropped, counted,
                # never a logged traceback a client could flood the log with.
                self.stats["unparsable"] += 1
                log.debug("dropping an unparsable message from %s", peer.hostinfo)
                continue
            except Exception:  # a decoder bug must not take the server down
                self.stats["unparsable"] += 1
                log.debug("decoding a CoAP message from %s failed", peer.hostinfo, exc_info=True)
                continue
            if message.mtype in (CON, NON) and not self._admit_to_aiocoap(peer, message):
                continue
            self.stats["requests"] += 1
            mman.dispatch_message(message)

    def _admit_to_aiocoap(self, peer: DtlsPeer, message: Message) -> bool:
        """Whether aiocoap may take this message; else it is answered here.

        A factory-key session may reach aiocoap only at the doors the factory
        key opens (onboarding, for what the fast path leaves over, such as a
        Block1 upload); anything else it sends is refused here, decided and
        audited by the site like every other request, and aiocoap, which
        would remember it, never sees it.
        """
        credential = peer.credential
        if credential is not None and not getattr(credential, "is_factory", False):
            return True
        screen = self.screen_factory
        refusal = None if screen is None else screen(message)
        if screen is not None and refusal is None:
            return True
        self.stats["refused-factory-slow-path"] += 1
        if refusal is None:
            refusal = Message(
                code=Code.UNAUTHORIZED,
                payload=b"the factory key only opens onboarding",
                content_format=0,
            )
        self._answer_with(peer, message, refusal)
        return False

    def _answer_directly(
        self,
        peer: DtlsPeer,
        request: Message,
        code: Code,
        diagnostic: str,
        max_age_s: float | None = None,
    ) -> None:
        """An error answer built and sent here, so aiocoap keeps nothing of the request."""
        response = Message(code=code, payload=diagnostic.encode(), content_format=0)
        if max_age_s is not None:
            response.opt.max_age = max(1, math.ceil(max_age_s))
        self._answer_with(peer, request, response)

    def _answer_with(self, peer: DtlsPeer, request: Message, response: Message) -> None:
        """Send ``response`` to ``request`` from here (piggybacked on the ACK of a CON)."""
        if not request.code.is_request():
            return  # an empty message (ping) or a stray response: nothing to answer
        if request.mtype == CON:
            response.mtype, response.mid = ACK, request.mid
        else:
            self._next_mid = (self._next_mid + 1) & 0xFFFF
            response.mtype, response.mid = NON, self._next_mid
        response.token = request.token
        self._send_plaintext(peer, response.encode())

    # --- tinydtls callbacks: never raise, only record --------------------------------

    def _on_read(self, _addr6: tuple, data: bytes) -> int:
        self._plaintexts.append(data)
        return len(data)

    def _on_write(self, addr6: tuple, data: bytes) -> int:
        try:
            sockaddr = self._current_sockaddr
            if sockaddr is None:
                peer = self._by_session_key.get((addr6[0], addr6[1]))
                if peer is None:
                    return len(data)
                sockaddr = peer.sockaddr
            if data and data[0] != _CT_APPLICATION_DATA:  # the hot path sends only that
                server_hello, fatal_alert = sent_handshake_signal(data)
                if server_hello:
                    self._sent_server_hello = True
                elif fatal_alert is not None:
                    self._sent_fatal_alert = fatal_alert
            if self._recording_flight is not None:
                self._recording_flight.append(data)
            self._send_datagram(data, sockaddr)
        except Exception:
            log.exception("sending a DTLS record failed")
        return len(data)

    def _on_event(self, level: int, code: int) -> int:
        self._events.append((level, code))
        return 0

    def _note_identity(self, identity: bytes, claim: Any) -> None:
        self._asked_identity = (identity, claim)

    # --- sending ---------------------------------------------------------------------

    def _send_plaintext(self, peer: DtlsPeer, data: bytes) -> None:
        if peer.phase != CONNECTED or not self.sessions.holds(peer):
            self.stats["dropped-send-closed"] += 1
            return
        self._current_sockaddr = peer.sockaddr
        try:
            self._ctx.write(peer.session, data)
        except Exception:
            log.exception("encrypting for %s failed", peer.hostinfo)
        finally:
            self._current_sockaddr = None
        peer.last_active = time.monotonic()

    def _resend_final_flight(self, peer: DtlsPeer) -> None:
        self.stats["final-flight-resent"] += 1
        for datagram in peer.final_flight:
            self._send_datagram(datagram, peer.sockaddr)

    def _send_plain_alert(self, sockaddr: Any, description: int) -> None:
        """An unencrypted (epoch 0) fatal alert, for a peer whose key did not verify."""
        self._send_datagram(plain_fatal_alert(description), sockaddr)

    # --- peers -----------------------------------------------------------------------

    def _session_for(self, sockaddr: Any) -> dtls.Session:
        host = sockaddr[0]
        scope_id = 0
        if "%" in host:
            host = host.split("%", 1)[0]
            scope_id = sockaddr[3] if len(sockaddr) > 3 else 0
        if ":" not in host:
            host = "::ffff:" + host
        return dtls.Session(host, sockaddr[1], 0, scope_id)

    def _new_peer(self, sockaddr: Any, key: tuple, now: float) -> DtlsPeer:
        for eviction in self.sessions.evictions_for_new(host_of(sockaddr)):
            self._evict(eviction)
        peer = DtlsPeer(self, sockaddr, key, now)
        self.sessions.add(peer)
        return peer

    def _evict(self, eviction: Eviction) -> None:
        """Perform the session table's decision: a handshake is abandoned (it counts
        as a failed one), an established session is closed with close_notify."""
        peer, cause = eviction
        self.stats[cause.stat] += 1
        if cause.is_handshake:
            self._handshake_abandoned(peer, cause.reason)
        else:
            self._close_peer(peer, cause.reason, notify=True)

    def _handshake_refused(self, sockaddr: Any, reason: str) -> None:
        """tinydtls refused a handshake from a real address (past the cookie exchange)."""
        self.stats["handshake-refused"] += 1
        log.info("refused a handshake from %s: %s", host_of(sockaddr), reason)
        self.handshake_failed(host_of(sockaddr), reason)

    def _handshake_abandoned(self, peer: DtlsPeer, reason: str) -> None:
        """A handshake that will not finish; it counts against its source's allowance."""
        self.handshake_failed(host_of(peer.sockaddr), reason)
        self._close_peer(peer, reason, notify=False)

    def _close_peer(self, peer: DtlsPeer, reason: str, *, notify: bool) -> None:
        """End a session on our side; with ``notify`` the client gets close_notify."""
        was_connected = peer.phase == CONNECTED
        if self.sessions.holds(peer):
            self._current_sockaddr = peer.sockaddr
            try:
                if notify and peer.phase == CONNECTED:
                    self._ctx.resetPeer(peer.session)  # sends close_notify, frees
                else:
                    # Without close_notify: tinydtls still frees its state.
                    peer.phase = CLOSED
                    self._ctx.resetPeer(peer.session)
            except Exception:
                log.exception("resetting the session of %s failed", peer.hostinfo)
            finally:
                self._current_sockaddr = None
        self._forget_peer(peer, reason, was_connected=was_connected)

    def _forget_peer(
        self, peer: DtlsPeer, reason: str, *, was_connected: bool | None = None
    ) -> None:
        if was_connected is None:
            was_connected = peer.phase is CONNECTED
        self.sessions.remove(peer)
        if self.duplicates is not None:
            self.duplicates.forget(peer)
        log.debug("session %s ended: %s", peer.hostinfo, reason)
        if was_connected and self._mman is not None:
            with contextlib.suppress(Exception):
                self._mman.dispatch_error(coap_error.LibraryShutdown(reason), peer)

    # --- timers ----------------------------------------------------------------------

    def _schedule_retransmit(self) -> None:
        """Tick tinydtls's retransmission queue while it holds anything."""
        if self._retransmit_handle is not None:
            return
        try:
            pending = self._ctx.checkRetransmit()
        except Exception:
            log.exception("checking retransmissions failed")
            return
        if pending:
            self._retransmit_handle = self._loop.call_later(0.2, self._retransmit_tick)

    def _retransmit_tick(self) -> None:
        self._retransmit_handle = None
        self._schedule_retransmit()

    async def _sweep(self) -> None:
        """Abandon stalled handshakes and evict idle sessions."""
        options = self.options
        interval = max(0.5, min(options.handshake_timeout_s / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            for eviction in self.sessions.expired(time.monotonic()):
                if self.sessions.holds(eviction.entry):  # (not closed by an earlier one)
                    self._evict(eviction)


# --- helpers ------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    if host in ("", "::", "*"):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.setblocking(False)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _set_buffers(sock: socket.socket, size: int) -> None:
    """Large socket buffers; as root past the system maximum (the ...FORCE options)."""
    for plain, forced in (("SO_RCVBUF", "SO_RCVBUFFORCE"), ("SO_SNDBUF", "SO_SNDBUFFORCE")):
        force = getattr(socket, forced, None)
        if force is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
                continue
            except OSError:
                pass
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, plain), size)
