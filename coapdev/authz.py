"""Who may do what: decided from the DTLS identity, without any I/O.

The transport authenticates a peer by its PSK identity and hands the
identity up as the request's only authenticated claim.  Here that identity
is looked up in the store *on every request*, so a revoked or rotated-away
identity is refused from its next request on, even on a DTLS session that
was opened before the revocation.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from .const import PATH_ONBOARD, PATH_TRADFRI_ONBOARD, Role
from .errors import Forbidden, Unauthorized
from .store import ClientRecord, CredentialStore, Principal

#: The only resources the factory identity may reach.
FACTORY_PATHS = frozenset({PATH_ONBOARD, PATH_TRADFRI_ONBOARD})


def identity_from_claims(claims: Iterable[object] | None) -> str | None:
    """The PSK identity a request was authenticated with, if any."""
    for claim in claims or ():
        if isinstance(claim, bytes):
            try:
                return claim.decode("ascii")
            except UnicodeDecodeError:
                return None
        if isinstance(claim, str):
            return claim
    return None


def authenticate(store: CredentialStore, claims: Iterable[object] | None) -> Principal:
    """The principal behind a request, or :class:`Unauthorized`."""
    identity = identity_from_claims(claims)
    if identity is None:
        raise Unauthorized("this resource needs a DTLS session with a minted identity")
    principal = store.principal_for(identity)
    if principal is None:
        raise Unauthorized("this identity is no longer valid on this device (revoked or rotated)")
    return principal


def check_path(principal: Principal, path: tuple[str, ...]) -> None:
    """The factory key opens exactly one door: onboarding."""
    if principal.is_factory and path not in FACTORY_PATHS:
        raise Unauthorized(
            "the factory key only opens onboarding; onboard to get an identity of your own"
        )


def require_client(principal: Principal) -> ClientRecord:
    if principal.client is None:
        raise Unauthorized("the factory key only opens onboarding")
    return principal.client


def require_role(principal: Principal, allowed: Collection[Role]) -> ClientRecord:
    """The client behind ``principal`` if its role is in ``allowed``, else Forbidden."""
    client = require_client(principal)
    if client.role not in allowed:
        needed = " or ".join(sorted(r.value for r in allowed)) or "no role"
        raise Forbidden(f"needs role {needed}; client {client.name!r} has role {client.role.value}")
    return client


def require_admin_or_self(principal: Principal, target: ClientRecord) -> ClientRecord:
    client = require_client(principal)
    if client.role is not Role.ADMIN and client.id != target.id:
        raise Forbidden("only an admin may act on another client")
    return client
