"""The one gate: :class:`ServerState`, what every resource shares.

Every request, on the aiocoap path and on the fast path, and every
notification of an observation, is admitted by one call,
:meth:`ServerState.admit`, which asks :func:`coapdev.authz.decide` with the
resource's :class:`~coapdev.authz.Policy`.  It also counts observations
against their caps.  No I/O of its own: the transport's hooks are passed in.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Message

from .. import __version__, authz
from ..audit import AuditLog
from ..errors import StaleCredential, Unauthorized
from ..model import Credential, Principal
from ..store import CredentialStore
from . import budget
from .budget import Tally, host_of
from .request import CoapRequest
from .responses import path_text

log = logging.getLogger("coapdev.server")

#: Blockwise uploads in progress per resource (defined in budget; re-exported here).
MAX_UPLOADS_PER_RESOURCE = budget.MAX_UPLOADS_PER_RESOURCE


@dataclass
class ServerState:
    """What resources share: the store, the clock, and hooks into the transport."""

    store: CredentialStore
    audit: AuditLog | None = None
    firmware: str = __version__
    clock: Callable[[], float] = time.time
    started_monotonic: float = field(default_factory=time.monotonic)
    #: Called with credentials whose live DTLS sessions must end now.
    close_sessions: Callable[[Collection[Credential]], object] = lambda credentials: 0
    #: Optional check before onboarding (rate limits); raises RequestRefused.
    before_onboarding: Callable[[Message], None] | None = None
    #: Observations one DTLS session may hold; more are declined (served as plain GETs).
    max_observations_per_session: int = budget.MAX_OBSERVATIONS_PER_SESSION
    #: Observations one client (all its sessions), one source host, and the
    #: whole device may hold; likewise declined beyond.  Each costs about
    #: 10 KiB (docs/reliability.md).
    max_observations_per_client: int = budget.MAX_OBSERVATIONS_PER_CLIENT
    max_observations_per_host: int = budget.MAX_OBSERVATIONS_PER_HOST
    max_observations: int = budget.MAX_OBSERVATIONS
    #: Blockwise uploads in progress per resource; more get 5.03 until some finish.
    max_uploads_per_resource: int = MAX_UPLOADS_PER_RESOURCE
    #: Optional check before a state change a client asks for (rate limits);
    #: called with the request, who asks and the operation; raises RequestRefused.
    before_change: Callable[[Message, Principal, str], None] | None = None

    def __post_init__(self) -> None:
        self._observations_by_client = Tally(self.max_observations_per_client)
        self._observations_by_host = Tally(self.max_observations_per_host)
        self.observations_held = 0

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def check_change(self, request: Message, who: Principal, operation: str) -> None:
        """Rate limits of state changes (set by the gateway); raises RequestRefused."""
        if self.before_change is not None:
            self.before_change(request, who, operation)

    def reserve_observation(self, remote: Any, principal: Principal) -> Callable[[], None] | None:
        """Count one more observation against its session, client, host and the device;
        None if any of them is full (the observation is declined), else the release."""
        held = getattr(remote, "observations", 0)
        client = principal.client.id if principal.client else principal.identity
        host = host_of_remote(remote)
        if (
            held >= self.max_observations_per_session
            or self._observations_by_client.full(client)
            or self._observations_by_host.full(host)
            or self.observations_held >= self.max_observations
        ):
            log.debug("declining an observation from %s (%s): at a cap", host, principal.label)
            return None
        with contextlib.suppress(AttributeError):
            remote.observations = held + 1
        self._observations_by_client.add(client)
        self._observations_by_host.add(host)
        self.observations_held += 1

        def release() -> None:
            with contextlib.suppress(AttributeError):
                remote.observations = max(0, remote.observations - 1)
            self._observations_by_client.remove(client)
            self._observations_by_host.remove(host)
            self.observations_held -= 1

        return release

    def admit(
        self,
        request: CoapRequest,
        policy: authz.Policy | None,
        operation: str | None = None,
        *,
        target: str | None = None,
    ) -> Principal:
        """The principal allowed to make ``request``, or the refusal (raised).

        The one gate: every request and every notification passes here.  A
        session whose key is no longer valid is closed as well; a closed
        onboarding window is looked up on disk once more before refusing, so
        a window opened by `coapdev-gateway pair` a moment ago counts.
        """
        credential = authz.credential_from_claims(request.remote.authenticated_claims)
        operation = operation or str(request.code)
        path = path_text(request.opt.uri_path)

        def decide() -> Principal:
            return authz.decide(
                self.store,
                credential,
                operation,
                policy,
                now=self.clock(),
                target=target,
                path=path,
            )

        try:
            try:
                principal = decide()
            except authz.OnboardingClosed:
                if not self.store.refresh():
                    raise
                principal = decide()
        except StaleCredential:
            assert credential is not None
            self.close_sessions([credential])
            self._audit_refusal("refused", request, path=path)
            raise
        except authz.OnboardingClosed:
            self._audit_refusal("onboard-refused", request, reason="closed")
            raise
        except Unauthorized:
            self._audit_refusal("refused", request, path=path)
            raise
        return self._note_seen(principal)

    def _audit_refusal(self, event: str, request: Any, **details: Any) -> None:
        if self.audit is not None:
            self.audit.refusal(event, source_of(request), **details)

    def _note_seen(self, principal: Principal) -> Principal:
        """Last seen; and a first request under a rotated key confirms the rotation."""
        store = self.store
        if principal.client is None:
            return principal
        if store.is_pending_identity(principal.identity):
            record = store.confirm_rekey(principal.identity)
            log.info("client %s (%s) rotated its key", record.name, record.id)
            principal = Principal(principal.identity, record, principal.credential)
        store.touch(principal.client, self.clock())  # type: ignore[arg-type]
        return principal

    def label_for(self, request: Any) -> str:
        """Who sent ``request``, for the request log."""
        credential = authz.credential_from_claims(request.remote.authenticated_claims)
        principal = None if credential is None else self.store.principal_for(credential)
        return "-" if principal is None else principal.label


def source_of(request: Message) -> str:
    """The request's source address as text (for the audit log), "?" if unknown."""
    try:
        return str(request.remote.hostinfo)
    except Exception:
        return "?"


def host_of_remote(remote: Any) -> str:
    """The source host of a session, whichever transport it came on."""
    sockaddr = getattr(remote, "sockaddr", None)
    if sockaddr is not None:
        return host_of(sockaddr)
    try:
        return str(remote.hostinfo).rsplit(":", 1)[0].strip("[]")
    except Exception:
        return "?"
