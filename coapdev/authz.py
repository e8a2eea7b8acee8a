"""Who may do what: one decision, made from the session's credential, without any I/O.

The transport authenticates a peer by its PSK identity and hands the
credential it used (identity and generation, see
:class:`~coapdev.model.Credential`) up as the request's only authenticated
claim.  :func:`decide` is the only place that turns a credential, an
operation and a resource's :class:`Policy` into a principal or a refusal; it
is called for every request (fast path and aiocoap path alike) and again
before every notification of an observation, so a key revoked, rotated away
or superseded by a factory reset opens nothing from that moment on, even on
a DTLS session opened before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .const import Role
from .errors import (
    Forbidden,
    MethodNotAllowed,
    NotFound,
    StaleCredential,
    Unauthorized,
)
from .model import Credential, Principal
from .store import CredentialStore

ALL_ROLES: frozenset[Role] = frozenset(Role)
ADMIN_ONLY: frozenset[Role] = frozenset({Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may perform one operation on a resource.

    ``roles``: the roles of minted clients that may.  ``factory``: the
    factory identity may too, while onboarding is open (the one door it
    opens).  ``own_only``: these roles may only address their own client
    record (the request's target).
    """

    roles: frozenset[Role] = frozenset()
    factory: bool = False
    own_only: frozenset[Role] = frozenset()


@dataclass(frozen=True, slots=True)
class Policy:
    """A resource's rules by operation: a method ("GET"), or a finer operation
    a handler asks about once it has read the request ("PUT role")."""

    rules: Mapping[str, Rule] = field(default_factory=dict)

    @classmethod
    def of(cls, **methods: frozenset[Role]) -> Policy:
        """A policy from roles per method: ``Policy.of(GET=ALL_ROLES)``."""
        return cls({method: Rule(roles) for method, roles in methods.items()})

    def methods_for(self, role: Role | None) -> list[str]:
        """The methods (not finer operations) ``role`` may use; every one for None."""
        return [
            op
            for op, rule in self.rules.items()
            if " " not in op and (role is None or role in rule.roles)
        ]

    @property
    def opens_to_factory(self) -> bool:
        """Whether any operation here is one the factory identity may ask for."""
        return any(rule.factory for rule in self.rules.values())

    @property
    def visible_to(self) -> frozenset[Role]:
        """Roles for which the resource is listed in /.well-known/core."""
        visible: set[Role] = set()
        for rule in self.rules.values():
            visible |= rule.roles - rule.own_only
        return frozenset(visible)


class OnboardingClosed(Forbidden):
    """The factory identity asked while the onboarding window is closed."""


def credential_from_claims(claims: Iterable[object] | None) -> Credential | None:
    """The credential a request's session was authenticated with, if any."""
    for claim in claims or ():
        if isinstance(claim, Credential):
            return claim
    return None


def decide(
    store: CredentialStore,
    credential: Credential | None,
    operation: str,
    policy: Policy | None,
    *,
    now: float,
    target: str | None = None,
    path: str = "",
) -> Principal:
    """The principal allowed to perform ``operation``, or the refusal to answer.

    ``policy`` None: there is no resource at ``path`` (clients learn that;
    the factory identity and unknown sessions learn nothing).  ``target``:
    the client record the request addresses, for ``own_only`` rules; a user
    gets the same answer for someone else's record and for a missing one.
    """
    if credential is None:
        raise Unauthorized("this resource needs a DTLS session with a minted identity")
    principal = store.principal_for(credential)
    if principal is None:
        raise StaleCredential(
            "this identity is no longer valid on this device (revoked, rotated or reset)"
        )
    rule = policy.rules.get(operation) if policy is not None else None
    if principal.is_factory:
        if rule is None or not rule.factory:
            raise Unauthorized(
                "the factory key only opens onboarding; onboard to get an identity of your own"
            )
        if not store.onboarding_open(now):
            raise OnboardingClosed(
                "onboarding is closed; on the device run `coapdev-gateway pair` "
                "(or press its pairing button) to open it"
            )
        return principal
    client = principal.client
    assert client is not None
    if policy is None:
        raise NotFound(f"no resource {path}" if path else "no such resource")
    if rule is None:
        raise MethodNotAllowed(f"{operation} is not supported here")
    if client.role not in rule.roles:
        if rule.factory and not rule.roles - ADMIN_ONLY:
            raise Forbidden("already onboarded; only an admin may mint further clients")
        needed = " or ".join(sorted(r.value for r in rule.roles)) or "no role"
        raise Forbidden(f"needs role {needed}; client {client.name!r} has role {client.role.value}")
    if client.role in rule.own_only and not _is_own(principal, target):
        raise Forbidden("only an admin may act on another client")
    return principal


def _is_own(principal: Principal, target: str | None) -> bool:
    client = principal.client
    if client is None or target is None:
        return False
    own = {client.id, client.identity, client.name}
    if client.pending is not None:
        own.add(client.pending.identity)
    return target in own


__all__ = [
    "ADMIN_ONLY",
    "ALL_ROLES",
    "OnboardingClosed",
    "Policy",
    "Rule",
    "credential_from_claims",
    "decide",
]
