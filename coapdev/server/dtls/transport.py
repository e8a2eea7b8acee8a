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
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from aiocoap import interfaces

from ...dtls_numbers import TINYDTLS_EVENT_CONNECTED, AlertDescription, AlertLevel
from .. import budget
from ..budget import BoundedDuplicates, host_of
from ..transport import TransportHooks
from .adapter import AiocoapAdapter
from .peer import DtlsPeer
from .records import (
    has_change_cipher_spec,
    has_epoch1_handshake,
    is_client_hello,
    is_finished_retransmit,
    plain_fatal_alert,
    refusal_reason,
    starts_renegotiation,
)
from .sessions import CLOSED, CONNECTED, HANDSHAKE, Eviction, SessionTable
from .tinydtls import Outcome, PskLookup, TinyDtls, session_for
from .udp import DatagramSocket

log = logging.getLogger("coapdev.dtls")

_LEVEL_EVENT = int(AlertLevel.EVENT)
_LEVEL_WARNING = int(AlertLevel.WARNING)
_LEVEL_FATAL = int(AlertLevel.FATAL)
_EVENT_CONNECTED = TINYDTLS_EVENT_CONNECTED
_ALERT_CLOSE_NOTIFY = int(AlertDescription.CLOSE_NOTIFY)


@dataclass
class DtlsServerOptions:
    #: Most concurrent sessions (connected or handshaking); beyond it the least
    #: recently active session is evicted.
    max_sessions: int = budget.MAX_SESSIONS
    #: A session with no traffic for this long is closed (close_notify).
    idle_timeout_s: float = budget.IDLE_TIMEOUT_S
    #: A handshake not finished within this long is abandoned.
    handshake_timeout_s: float = budget.HANDSHAKE_TIMEOUT_S
    #: Most handshakes in progress; beyond it the oldest is abandoned.  Only
    #: handshakes past the cookie exchange count (they come from real addresses).
    max_handshakes: int = budget.MAX_HANDSHAKES
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


class PlaintextConsumer(Protocol):
    """The transport's one upward edge: decrypted application data of an
    established session.  True: taken (answered, or dropped on purpose)."""

    def on_plaintext(self, peer: DtlsPeer, data: bytes) -> bool: ...


class DtlsServerTransport:
    """coaps:// on one UDP socket: sessions, tinydtls, timers; aiocoap above it
    through :attr:`aiocoap` (an :class:`AiocoapAdapter`), the fast path first."""

    def __init__(
        self,
        mman: interfaces.MessageManager,
        lookup: PskLookup,
        options: DtlsServerOptions,
        loop: asyncio.AbstractEventLoop,
        udp: DatagramSocket,
        *,
        hooks: TransportHooks,
        fast_path: PlaintextConsumer | None,
    ) -> None:
        self.options = options
        self._loop = loop
        self._udp: DatagramSocket | None = udp
        self.port = udp.port
        self.hostinfo_local = udp.hostinfo_local
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
        self._tls = TinyDtls(
            lookup,
            udp.send,
            self.sessions.by_session_key,
            require_extended_master_secret=options.require_extended_master_secret,
            require_renegotiation_info=options.require_renegotiation_info,
        )
        self._retransmit_handle: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: Hooks for rate limiting (see coapdev.ratelimit): admit a new
        #: handshake from a host, and learn of a failed one.
        self.admit_handshake: Callable[[str], bool] = hooks.admit_handshake or _admit_all
        self.handshake_failed: Callable[[str, str], None] = hooks.handshake_failed or _ignore
        self.stats = collections.Counter()
        #: Serves simple requests without aiocoap's message layer, before aiocoap.
        self.fast_path = fast_path
        #: aiocoap above this transport: what the fast path leaves over.
        self.aiocoap = AiocoapAdapter(
            self,
            mman,
            max_exchanges_per_session=options.max_exchanges_per_session,
            max_exchanges=options.max_exchanges,
            screen_factory=hooks.screen_factory,
            stats=self.stats,
        )

    @property
    def duplicates(self) -> BoundedDuplicates:
        """aiocoap's duplicate detection, bounded (see aiocoap_compat)."""
        return self.aiocoap.duplicates

    # --- set-up and tear-down ---------------------------------------------------

    @classmethod
    async def create(
        cls,
        host: str,
        port: int,
        mman: interfaces.MessageManager,
        lookup: PskLookup,
        options: DtlsServerOptions | None = None,
        *,
        hooks: TransportHooks | None = None,
        fast_path: PlaintextConsumer | None = None,
    ) -> DtlsServerTransport:
        loop = asyncio.get_running_loop()
        options = options or DtlsServerOptions()
        udp = DatagramSocket.open(host, port, options.receive_buffer_bytes, loop)
        try:
            self = cls(
                mman,
                lookup,
                options,
                loop,
                udp,
                hooks=hooks or TransportHooks(),
                fast_path=fast_path,
            )
        except BaseException:
            udp.close()
            raise
        udp.start(self.datagram_received, self.stats)
        self._sweeper = loop.create_task(self._sweep(), name="coapdev DTLS session sweeper")
        return self

    def _send_datagram(self, data: bytes, sockaddr: Any) -> None:
        if self._udp is not None:
            self._udp.send(data, sockaddr)

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
        if self._udp is not None:
            self._udp.close()
            self._udp = None

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
        self._tls.set_policy(
            require_extended_master_secret=require_extended_master_secret,
            require_renegotiation_info=require_renegotiation_info,
        )

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
        key = (addr[0], addr[1])
        peer = self.sessions.get(key)
        if peer is None:
            if not is_client_hello(data):
                self.stats["dropped-unknown-peer"] += 1
                return  # only a handshake may start a session
            if not self.admit_handshake(host_of(addr)):
                self.stats["dropped-throttled"] += 1
                return
            session = session_for(addr)
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
        recording = peer is not None and peer.phase is HANDSHAKE
        out = self._tls.handle(session, data, addr, record_flight=recording)
        self._after_datagram(addr, key, peer, data, out)

    def _after_datagram(
        self, addr: Any, key: tuple, peer: DtlsPeer | None, data: bytes, out: Outcome
    ) -> None:
        now = time.monotonic()
        if out.sent_server_hello:
            # tinydtls accepted the cookie and created (or restarted) a session.
            if peer is not None:
                self._forget_peer(peer, "new handshake from the same address")
            peer = self._new_peer(addr, key, now)
        if peer is None:
            if out.sent_fatal_alert is not None:
                # tinydtls refused a ClientHello that had passed the cookie exchange.
                self._handshake_refused(addr, refusal_reason(data, out.sent_fatal_alert))
            return
        if out.asked is not None:
            if peer.key_asked(*out.asked):
                self.stats["handshake-unknown-identity"] += 1
                self.handshake_failed(host_of(addr), "unknown identity")
        if out.events and self._on_events(peer, out, addr):
            return  # an authenticated alert ended the session
        if peer.phase is HANDSHAKE and self._handshake_ended_here(peer, out, data, addr):
            return
        self.sessions.touch(peer, now)
        if out.plaintexts:
            peer.final_flight = []  # the client has our Finished: it sends application data
            self._deliver(peer, out.plaintexts)
        self._schedule_retransmit()

    def _on_events(self, peer: DtlsPeer, out: Outcome, addr: Any) -> bool:
        """tinydtls's events: the handshake finished, or an alert it authenticated
        ended the session (True)."""
        for level, code in out.events:
            if level == _LEVEL_EVENT and code == _EVENT_CONNECTED:
                victim = self.sessions.connected(peer, peer.authenticated())
                if victim is not None:
                    self._evict(victim)
                peer.final_flight = out.flight or []
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
                return True
        return False

    def _handshake_ended_here(self, peer: DtlsPeer, out: Outcome, data: bytes, addr: Any) -> bool:
        """A handshake still in progress that this datagram ended (True): tinydtls
        refused it with a fatal alert, or the client's Finished did not verify."""
        if out.sent_fatal_alert is not None:
            # tinydtls ended this handshake with a fatal alert (it may still hold
            # the peer, closing): end it on both sides, reported once.
            unknown_identity = out.asked is not None and not out.asked[1]
            reason = refusal_reason(data, out.sent_fatal_alert)
            if not unknown_identity:
                self._handshake_refused(addr, reason)
            self._close_peer(peer, reason, notify=False)
            return True
        if not peer.saw_ccs:
            peer.saw_ccs = has_change_cipher_spec(data)
        if peer.saw_ccs and peer.presented_identity and has_epoch1_handshake(data):
            # The client's Finished did not verify: its key is wrong (an
            # unknown identity has no key at all, and was counted already).
            if not peer.identity_unknown:
                self.stats["handshake-wrong-key"] += 1
                self.handshake_failed(host_of(addr), "wrong key")
            self._send_plain_alert(addr, AlertDescription.DECRYPT_ERROR)
            self._close_peer(peer, "wrong key", notify=False)
            return True
        return False

    def _deliver(self, peer: DtlsPeer, plaintexts: list[bytes]) -> None:
        if peer.phase is not CONNECTED:
            return
        fast = self.fast_path
        upper = self.aiocoap
        for plaintext in plaintexts:
            if fast is not None:
                try:
                    taken = fast.on_plaintext(peer, plaintext)
                except Exception:  # never handed on: aiocoap would run it a second time
                    log.exception("fast path failed on a request from %s", peer.hostinfo)
                    continue
                if taken:
                    self.stats["requests-fast"] += 1
                    continue
            upper.on_plaintext(peer, plaintext)

    # --- sending ---------------------------------------------------------------------

    def send_plaintext(self, peer: DtlsPeer, data: bytes) -> None:
        if peer.phase != CONNECTED or not self.sessions.holds(peer):
            self.stats["dropped-send-closed"] += 1
            return
        self._tls.write(peer.session, data, peer.sockaddr)
        peer.last_active = time.monotonic()

    def _resend_final_flight(self, peer: DtlsPeer) -> None:
        self.stats["final-flight-resent"] += 1
        for datagram in peer.final_flight:
            self._send_datagram(datagram, peer.sockaddr)

    def _send_plain_alert(self, sockaddr: Any, description: int) -> None:
        """An unencrypted (epoch 0) fatal alert, for a peer whose key did not verify."""
        self._send_datagram(plain_fatal_alert(description), sockaddr)

    # --- peers -----------------------------------------------------------------------

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
            if not (notify and was_connected):
                peer.phase = CLOSED  # without close_notify: tinydtls still frees its state
            self._tls.reset(peer.session, peer.sockaddr)  # connected: sends close_notify
        self._forget_peer(peer, reason, was_connected=was_connected)

    def _forget_peer(
        self, peer: DtlsPeer, reason: str, *, was_connected: bool | None = None
    ) -> None:
        if was_connected is None:
            was_connected = peer.phase is CONNECTED
        self.sessions.remove(peer)
        log.debug("session %s ended: %s", peer.hostinfo, reason)
        self.aiocoap.session_ended(peer, reason, was_connected=was_connected)

    # --- timers ----------------------------------------------------------------------

    def _schedule_retransmit(self) -> None:
        """Tick tinydtls's retransmission queue while it holds anything."""
        if self._retransmit_handle is not None:
            return
        pending = self._tls.check_retransmit()
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


def _admit_all(host: str) -> bool:
    return True


def _ignore(host: str, reason: str) -> None:
    return None
