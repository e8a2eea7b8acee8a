import pytest

from coapdev import authz
from coapdev.const import FACTORY_IDENTITY, PATH_ONBOARD, PATH_TRADFRI_ONBOARD, Role
from coapdev.errors import Forbidden, Unauthorized
from coapdev.store import CredentialStore

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    return CredentialStore.open(tmp_path / "state", now=NOW)


def test_no_claims_is_unauthorized(store):
    with pytest.raises(Unauthorized):
        authz.authenticate(store, [])
    with pytest.raises(Unauthorized):
        authz.authenticate(store, None)


def test_claims_as_bytes_or_text(store):
    rec = store.mint_client("a", now=NOW)
    assert authz.authenticate(store, [rec.identity]).client.id == rec.id
    assert authz.authenticate(store, [rec.identity.encode()]).client.id == rec.id


def test_revoked_identity_is_refused_on_its_next_request(store):
    rec = store.mint_client("a", now=NOW)
    claims = [rec.identity]  # as held by a DTLS session opened before the revocation
    authz.authenticate(store, claims)
    store.revoke(rec.id)
    with pytest.raises(Unauthorized, match="no longer valid"):
        authz.authenticate(store, claims)


def test_factory_identity_reaches_only_onboarding(store):
    who = authz.authenticate(store, [FACTORY_IDENTITY])
    assert who.is_factory
    authz.check_path(who, PATH_ONBOARD)
    authz.check_path(who, PATH_TRADFRI_ONBOARD)
    for path in [("device",), ("light",), ("clients",), (".well-known", "core"), ("nope",), ()]:
        with pytest.raises(Unauthorized, match="only opens onboarding"):
            authz.check_path(who, path)
    with pytest.raises(Unauthorized):
        authz.require_role(who, {Role.ADMIN, Role.USER})


def test_roles(store):
    admin = authz.authenticate(store, [store.mint_client("a", now=NOW).identity])
    user = authz.authenticate(store, [store.mint_client("u", now=NOW).identity])
    authz.require_role(admin, {Role.ADMIN})
    authz.require_role(user, {Role.USER, Role.ADMIN})
    with pytest.raises(Forbidden, match="needs role admin"):
        authz.require_role(user, {Role.ADMIN})
    authz.require_admin_or_self(user, user.client)
    authz.require_admin_or_self(admin, user.client)
    with pytest.raises(Forbidden):
        authz.require_admin_or_self(user, admin.client)
