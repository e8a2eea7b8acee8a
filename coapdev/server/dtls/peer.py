"""One DTLS session: an entry of the session table and aiocoap's remote of its messages.

A new object per handshake, so observations, blockwise transfers and
duplicate detection never cross from one session into the next.  What each
layer keeps on it is named here, with the layer that owns it:

- the transport: address, tinydtls session, phase, times, the final flight;
- the session table: ``counted_identity``;
- the fast path: ``recent_exchanges`` (its duplicate cache for this session);
- the resources: ``observations`` (how many this session holds).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiocoap import interfaces

from .sessions import HANDSHAKE, Phase
from .tinydtls import session_for


class PeerOwner(Protocol):
    """What a peer asks of the transport that holds it."""

    hostinfo_local: str

    def send_plaintext(self, peer: DtlsPeer, data: bytes) -> None: ...


class DtlsPeer(interfaces.EndpointAddress):
    """One DTLS session; also the aiocoap remote of every message on it."""

    scheme = "coaps"
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, transport: PeerOwner, sockaddr: Any, key: tuple, now: float):
        self._transport = transport
        self.sockaddr = sockaddr
        self.key = key
        self.session = session_for(sockaddr)
        self.session_key = (self.session.addr, self.session.port)
        self.phase: Phase = HANDSHAKE
        self.identity: str | None = None
        #: The identity tinydtls asked a key for in this handshake, and its credential.
        self._asked_identity: bytes | None = None
        self._asked_claim: Any = None
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

    # --- the handshake ---

    def key_asked(self, identity: bytes, claim: Any) -> bool:
        """tinydtls asked the key of ``identity`` (``claim`` None: unknown).
        True the first time this handshake presents an unknown identity."""
        self._asked_identity = identity
        self._asked_claim = claim
        if claim is None and not self.identity_unknown:
            self.identity_unknown = True
            return True
        return False

    @property
    def presented_identity(self) -> bool:
        """The client got as far as presenting an identity (its ClientKeyExchange)."""
        return self._asked_identity is not None

    def authenticated(self) -> str:
        """The handshake finished: the identity asked last is the session's, with its claim."""
        self.identity = (self._asked_identity or b"").decode("ascii", "replace")
        self._claims = () if self._asked_claim is None else (self._asked_claim,)
        return self.identity

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

    def owned_by(self, transport: object) -> bool:
        return self._transport is transport

    def __repr__(self) -> str:
        return f"<DtlsPeer {self.hostinfo} {self.phase.value} {self.identity!r}>"

    def send(self, data: bytes) -> None:
        self._transport.send_plaintext(self, data)
