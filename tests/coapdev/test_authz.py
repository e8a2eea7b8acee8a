"""authz.decide, the one decision, tested without sockets."""

import pytest

from coapdev import authz
from coapdev.authz import ADMIN_ONLY, ALL_ROLES, Policy, Rule
from coapdev.const import FACTORY_IDENTITY, Role
from coapdev.errors import (
    Forbidden,
    MethodNotAllowed,
    NotFound,
    StaleCredential,
    Unauthorized,
)
from coapdev.store import Credential, CredentialStore

NOW = 1_800_000_000.0
ONBOARDING = Policy({"POST": Rule(ADMIN_ONLY, factory=True)})
DEVICE = Policy.of(GET=ALL_ROLES)
CLIENT_ITEM = Policy(
    {
        "GET": Rule(ALL_ROLES, own_only=frozenset({Role.USER})),
        "PUT role": Rule(ADMIN_ONLY),
    }
)


@pytest.fixture
def store(tmp_path):
    return CredentialStore.open(tmp_path / "state", now=NOW, onboarding_window_s=600)


def decide(store, credential, operation, policy, **kw):
    return authz.decide(store, credential, operation, policy, now=NOW, **kw)


def cred(store, record):
    return store.current_credential(record.identity)


def test_no_credential_is_unauthorized(store):
    with pytest.raises(Unauthorized, match="minted identity"):
        decide(store, None, "GET", DEVICE)
    assert authz.credential_from_claims(["a-string", b"bytes", None]) is None


def test_a_credential_is_taken_from_the_claims_only_as_a_credential(store):
    c = Credential("x")
    assert authz.credential_from_claims([c]) is c


def test_revoked_or_rotated_credentials_are_stale(store):
    admin = store.mint_client("a", now=NOW)
    rec = store.mint_client("u", now=NOW)
    held = cred(store, rec)  # as held by a DTLS session opened before the change
    assert decide(store, held, "GET", DEVICE).client.id == rec.id
    pending = store.begin_rekey(rec.id, now=NOW)
    store.confirm_rekey(pending.identity)
    with pytest.raises(StaleCredential, match="no longer valid"):
        decide(store, held, "GET", DEVICE)
    fresh = cred(store, store.client(rec.id))
    decide(store, fresh, "GET", DEVICE)
    store.revoke(rec.id)
    with pytest.raises(StaleCredential):
        decide(store, fresh, "GET", DEVICE)
    decide(store, cred(store, admin), "GET", DEVICE)


def test_factory_identity_opens_only_onboarding_and_only_while_open(store):
    factory = store.current_credential(FACTORY_IDENTITY)
    assert decide(store, factory, "POST", ONBOARDING).is_factory
    for policy in (DEVICE, CLIENT_ITEM, Policy(), None):
        for op in ("GET", "POST", "PUT", "PUT role"):
            with pytest.raises(Unauthorized, match="only opens onboarding"):
                decide(store, factory, op, policy)
    with pytest.raises(Unauthorized, match="only opens onboarding"):
        decide(store, factory, "GET", ONBOARDING)
    store.open_onboarding(0, now=NOW)
    with pytest.raises(authz.OnboardingClosed, match="coapdev-gateway pair"):
        decide(store, factory, "POST", ONBOARDING)


def test_a_factory_session_of_an_earlier_generation_is_stale(store):
    old = store.current_credential(FACTORY_IDENTITY)
    store.factory_reset(new_factory_key=True, now=NOW, onboarding_window_s=600)
    with pytest.raises(StaleCredential):
        decide(store, old, "POST", ONBOARDING)
    new = store.current_credential(FACTORY_IDENTITY)
    assert new.generation == old.generation + 1
    decide(store, new, "POST", ONBOARDING)


def test_a_reset_without_a_new_key_also_ends_factory_sessions(store):
    old = store.current_credential(FACTORY_IDENTITY)
    store.factory_reset(new_factory_key=False, now=NOW, onboarding_window_s=600)
    with pytest.raises(StaleCredential):
        decide(store, old, "POST", ONBOARDING)


def test_roles_and_methods(store):
    admin = cred(store, store.mint_client("a", now=NOW))
    user = cred(store, store.mint_client("u", now=NOW))
    decide(store, admin, "POST", ONBOARDING)
    store.open_onboarding(0, now=NOW)
    decide(store, admin, "POST", ONBOARDING)  # an admin may mint at any time
    with pytest.raises(Forbidden, match="only an admin may mint"):
        decide(store, user, "POST", ONBOARDING)
    with pytest.raises(MethodNotAllowed):
        decide(store, user, "DELETE", DEVICE)
    with pytest.raises(NotFound, match="no resource /x"):
        decide(store, user, "GET", None, path="/x")
    with pytest.raises(Forbidden, match="needs role admin"):
        decide(store, user, "PUT role", CLIENT_ITEM, target=user.identity)


def test_a_user_may_address_only_itself_and_learns_nothing_of_others(store):
    admin = store.mint_client("a", now=NOW)
    user = store.mint_client("u", now=NOW)
    me = cred(store, user)
    for ref in (user.id, user.name):
        decide(store, me, "GET", CLIENT_ITEM, target=ref)
    answers = set()
    for ref in (admin.id, admin.name, "nobody", None):
        with pytest.raises(Forbidden) as info:
            decide(store, me, "GET", CLIENT_ITEM, target=ref)
        answers.add((info.value.code, info.value.message))
    assert len(answers) == 1  # the same for a missing and a forbidden client
    decide(store, cred(store, admin), "GET", CLIENT_ITEM, target="nobody")
