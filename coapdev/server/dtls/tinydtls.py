"""The tinydtls boundary: one DTLSSocket context for all peers, its callbacks, its keys.

tinydtls calls back into Python from inside ``handleMessage``, ``write``,
``resetPeer`` and ``checkRetransmit``.  Here those callbacks only *record*
(into :class:`Outcome`) and send the records tinydtls writes; they never
raise into C and never call up into the transport, so aiocoap never
re-enters tinydtls from inside a callback.  The transport reads the outcome
once the call returned and acts on it.

The PSK identity a client presented reaches the transport the same way: the
key store DTLSSocket asks notes it in the outcome (:attr:`Outcome.asked`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from DTLSSocket import dtls

from ...const import MAX_IDENTITY_BYTES, MAX_PSK_BYTES
from ...dtls_build import patched_dtls
from ..budget import host_of
from .records import CT_APPLICATION_DATA, sent_handshake_signal

log = logging.getLogger("coapdev.dtls")

#: The key for a PSK identity and the claim (the credential) a session opened
#: with it carries, or None for an unknown identity.
PskLookup = Callable[[bytes], tuple[bytes, Any] | None]


class Outcome:
    """What tinydtls did while handling one datagram (reused: one per context).

    Valid from :meth:`TinyDtls.handle` until the next call of it; records
    written by later calls (``write``, ``reset``) of the same datagram's
    handling still set ``sent_fatal_alert``, as tinydtls may end a handshake
    on any of them.
    """

    __slots__ = ("asked", "events", "flight", "plaintexts", "sent_fatal_alert", "sent_server_hello")

    def __init__(self) -> None:
        #: Decrypted application data, in order.
        self.plaintexts: list[bytes] = []
        #: (level, code) of tinydtls's events and alerts it authenticated.
        self.events: list[tuple[int, int]] = []
        #: tinydtls sent a ServerHello: it accepted the cookie and created a session.
        self.sent_server_hello = False
        #: The description of a fatal alert tinydtls sent in the clear (it refused).
        self.sent_fatal_alert: int | None = None
        #: The identity tinydtls asked a key for, and its claim (None: unknown).
        self.asked: tuple[bytes, Any] | None = None
        #: The records sent while handling it, if recording was asked for.
        self.flight: list[bytes] | None = None


class _PskStore:
    """The dict-like object DTLSSocket asks for keys; notes which identity was asked."""

    def __init__(self, lookup: PskLookup, outcome: Outcome) -> None:
        self._lookup = lookup
        self._outcome = outcome

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
        key: bytes | None = None
        claim: Any = None
        try:
            if isinstance(identity, bytes) and len(identity) <= MAX_IDENTITY_BYTES:
                found = self._lookup(identity)
                if found is not None:
                    key, claim = found
            if key is not None and not 0 < len(key) <= MAX_PSK_BYTES:
                log.error("refusing a stored key of %d bytes (at most %d)", len(key), MAX_PSK_BYTES)
                key = claim = None
        except Exception:
            log.exception("key lookup failed")
            key = claim = None
        self._outcome.asked = (identity if isinstance(identity, bytes) else b"", claim)
        return key


def session_for(sockaddr: Any) -> dtls.Session:
    """tinydtls's name for a peer: an IPv6 (IPv4-mapped) address, port and scope."""
    host = sockaddr[0]
    scope_id = 0
    if "%" in host:
        host = host.split("%", 1)[0]
        scope_id = sockaddr[3] if len(sockaddr) > 3 else 0
    if ":" not in host:
        host = "::ffff:" + host
    return dtls.Session(host, sockaddr[1], 0, scope_id)


class TinyDtls:
    """One tinydtls context.  ``send(data, sockaddr)`` puts a record on the wire;
    ``by_session_key`` finds the peer (its ``sockaddr``) of records tinydtls
    writes on its own (retransmissions from :meth:`check_retransmit`)."""

    def __init__(
        self,
        lookup: PskLookup,
        send: Callable[[bytes, Any], None],
        by_session_key: Mapping[tuple[str, int], Any],
        *,
        require_extended_master_secret: bool,
        require_renegotiation_info: bool,
    ) -> None:
        self._send = send
        self._by_session_key = by_session_key
        self.outcome = Outcome()
        #: Where the records tinydtls writes during the current call go.
        self._to: Any = None
        self._recording: list[bytes] | None = None
        self._ctx = patched_dtls().DTLS(
            read=self._on_read,
            write=self._on_write,
            event=self._on_event,
            pskId=b"coapdev",
            pskStore=_PskStore(lookup, self.outcome),
            forceExtendedMasterSecret=require_extended_master_secret,
            forceRenegotiationInfo=require_renegotiation_info,
        )

    def set_policy(
        self, *, require_extended_master_secret: bool, require_renegotiation_info: bool
    ) -> None:
        self._ctx.forceExtendedMasterSecret = require_extended_master_secret
        self._ctx.forceRenegotiationInfo = require_renegotiation_info

    # --- calls into tinydtls ---

    def handle(
        self, session: dtls.Session, data: bytes, sockaddr: Any, *, record_flight: bool
    ) -> Outcome:
        """Hand one datagram to tinydtls; what it did is in the returned outcome."""
        out = self.outcome
        out.plaintexts = []
        out.events = []
        out.sent_server_hello = False
        out.sent_fatal_alert = None
        out.asked = None
        self._recording = [] if record_flight else None
        self._to = sockaddr
        try:
            self._ctx.handleMessage(session, data)
        except Exception:
            log.exception("tinydtls rejected a datagram from %s", host_of(sockaddr))
        finally:
            self._to = None
            out.flight, self._recording = self._recording, None
        return out

    def write(self, session: dtls.Session, data: bytes, sockaddr: Any) -> None:
        """Encrypt ``data`` as application data on an established session."""
        self._to = sockaddr
        try:
            self._ctx.write(session, data)
        except Exception:
            log.exception("encrypting for %s failed", host_of(sockaddr))
        finally:
            self._to = None

    def reset(self, session: dtls.Session, sockaddr: Any) -> None:
        """Free tinydtls's state of a session (an established one gets close_notify)."""
        self._to = sockaddr
        try:
            self._ctx.resetPeer(session)
        except Exception:
            log.exception("resetting the session of %s failed", host_of(sockaddr))
        finally:
            self._to = None

    def check_retransmit(self) -> bool:
        """Resend what is due; whether tinydtls still holds anything to retransmit."""
        try:
            return bool(self._ctx.checkRetransmit())
        except Exception:
            log.exception("checking retransmissions failed")
            return False

    # --- callbacks from tinydtls: never raise, only record ---

    def _on_read(self, _addr6: tuple, data: bytes) -> int:
        self.outcome.plaintexts.append(data)
        return len(data)

    def _on_write(self, addr6: tuple, data: bytes) -> int:
        try:
            sockaddr = self._to
            if sockaddr is None:
                peer = self._by_session_key.get((addr6[0], addr6[1]))
                if peer is None:
                    return len(data)
                sockaddr = peer.sockaddr
            if data and data[0] != CT_APPLICATION_DATA:  # the hot path sends only that
                server_hello, fatal_alert = sent_handshake_signal(data)
                if server_hello:
                    self.outcome.sent_server_hello = True
                elif fatal_alert is not None:
                    self.outcome.sent_fatal_alert = fatal_alert
            if self._recording is not None:
                self._recording.append(data)
            self._send(data, sockaddr)
        except Exception:
            log.exception("sending a DTLS record failed")
        return len(data)

    def _on_event(self, level: int, code: int) -> int:
        self.outcome.events.append((level, code))
        return 0
