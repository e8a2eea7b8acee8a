"""The resource layer without sockets: every path goes through the one gate."""

import asyncio

import cbor2
import pytest
from aiocoap import Code, Message
from aiocoap.message import Direction

from coapdev.const import FACTORY_IDENTITY
from coapdev.server.resources import ServerState, build_site
from coapdev.store import CredentialStore

NOW = 1_800_000_000.0


class Remote:
    def __init__(self, credential):
        self.authenticated_claims = (credential,)
        self.hostinfo = "127.0.0.1:1"


@pytest.fixture
def device(tmp_path):
    store = CredentialStore.open(tmp_path / "state", onboarding_window_s=3600)
    state = ServerState(store=store)
    return store, build_site(state, demo_light=tmp_path / "light.json")


def render(site, credential, method, path, payload=b""):
    request = Message(code=getattr(Code, method), uri_path=path, payload=payload)
    request.remote = Remote(credential)
    request.direction = Direction.INCOMING
    resource = site._resources[path]
    return asyncio.run(resource.render(request))


def test_the_factory_rule_holds_on_the_socket_free_path_too(device):
    store, site = device
    factory = store.current_credential(FACTORY_IDENTITY)
    for path in [("device",), ("light",), ("clients",), (".well-known", "core"), ("rekey",)]:
        for method in ("GET", "POST", "PUT"):
            response = render(site, factory, method, path)
            assert response.code == Code.UNAUTHORIZED, (method, path, response)
            assert b"only opens onboarding" in response.payload
    minted = render(site, factory, "POST", ("onboard",), cbor2.dumps({"name": "x"}))
    assert minted.code == Code.CREATED


def test_a_stale_credential_is_refused_and_its_sessions_closed(tmp_path):
    store = CredentialStore.open(tmp_path / "state", onboarding_window_s=3600)
    closed = []
    state = ServerState(store=store, close_sessions=closed.extend)
    site = build_site(state)
    admin = store.mint_client("a", now=NOW)
    user = store.mint_client("u", now=NOW)
    held = store.current_credential(user.identity)
    assert render(site, held, "GET", ("device",)).code == Code.CONTENT
    store.revoke(user.id)
    assert render(site, held, "GET", ("device",)).code == Code.UNAUTHORIZED
    assert closed == [held]
    assert render(
        site, store.current_credential(admin.identity), "GET", ("device",)
    ).code.is_successful()
