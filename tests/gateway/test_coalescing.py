"""Concurrent GETs share one script run, and ``max_age_s`` keeps a GET answer (with
Max-Age and an ETag) for the inputs it was computed for only: real gateway, real DTLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coapdev.client import Client, onboard
from coapdev.const import ContentFormat

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parent / "scripts"
COUNT = f"{SCRIPTS}/count_run.sh"

CONFIG = f"""
[device]
advertise = false

[limits]
max_sessions_per_identity = 64

[[resource]]
path = "/slow"
get = {{ run = ["{COUNT}", "get", "0.2"] }}

[[resource]]
path = "/cached"
max_age_s = 30
get = {{ run = ["{COUNT}", "get", "0"] }}
put = {{ run = ["{COUNT}", "put"] }}

[[resource]]
path = "/everyone"
shared = true
max_age_s = 30
get = {{ run = ["{COUNT}", "get", "0"] }}
"""


@pytest.fixture
def gw(gateway_factory, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    return gateway_factory("coalescing", config=config)


@pytest.fixture
def admin_and_user(gw, run):
    async def both():
        key = gw.factory_key()
        return await onboard(gw.uri, key, "alice"), await onboard(gw.uri, key, "bob")

    return run(both())


def runs(gw, name: str) -> int:
    path = gw.data_dir / f"runs-{name}.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def get(dev: Client, path: str, query: tuple[str, ...] = (), etag: bytes | None = None):
    """A GET returning aiocoap's message, to see Max-Age and ETag."""
    from aiocoap import GET, Message

    transport = await dev._ensure_transport()
    msg = Message(code=GET, uri=f"{dev.credentials.address.uri_base}{path}")
    msg.opt.uri_query = list(query)
    if etag is not None:
        msg.opt.etags = [etag]
    return await asyncio.wait_for(transport.context.request(msg).response, 20)


def test_32_concurrent_gets_with_equal_inputs_cause_one_run(gw, admin_and_user, run):
    async def scenario() -> list[bytes]:
        clients = [Client(admin_and_user[0], timeout_s=30) for _ in range(32)]
        try:
            # every session is up first, so the 32 GETs arrive together
            await asyncio.gather(*(dev.get("/cached") for dev in clients))
            answers = await asyncio.gather(*(dev.get("/slow") for dev in clients))
            return [a.payload for a in answers]
        finally:
            for dev in clients:
                await dev.close()

    payloads = run(scenario(), timeout_s=120)
    assert payloads == [b"unset for alice ()\n"] * 32
    assert runs(gw, "slow") == 1


def test_a_cached_answer_has_max_age_and_an_etag_and_revalidates(gw, admin_and_user, run):
    admin, _ = admin_and_user

    async def scenario():
        async with Client(admin) as dev:
            first = await get(dev, "/cached")
            again = await get(dev, "/cached")
            valid = await get(dev, "/cached", etag=first.opt.etag)
            ran = runs(gw, "cached")
            await dev.put("/cached", b"on", content_format=ContentFormat.TEXT)
            changed = await get(dev, "/cached")
            stale = await get(dev, "/cached", etag=first.opt.etag)
            valid_again = await get(dev, "/cached", etag=changed.opt.etag)
            return first, again, valid, ran, changed, stale, valid_again

    first, again, valid, ran, changed, stale, valid_again = run(scenario())
    assert str(first.code).startswith("2.05") and first.payload == b"unset for alice ()\n"
    assert 25 <= first.opt.max_age <= 30 and len(first.opt.etag) == 8
    assert again.payload == first.payload and again.opt.etag == first.opt.etag
    assert str(valid.code).startswith("2.03") and valid.payload == b""
    assert valid.opt.etag == first.opt.etag and valid.opt.max_age <= 30
    assert ran == 1  # three GETs, one run
    # a change (PUT) drops what was kept: the next GET runs and gets a new ETag
    assert changed.payload == b"on for alice ()\n" and changed.opt.etag != first.opt.etag
    assert str(stale.code).startswith("2.05") and stale.payload == changed.payload
    assert str(valid_again.code).startswith("2.03")
    assert runs(gw, "cached") == 2


def test_a_kept_answer_is_never_served_to_another_client_or_query(gw, admin_and_user, run):
    """The attacker: bob asks right after alice; he must not get what alice was given."""
    admin, user = admin_and_user

    async def scenario():
        async with Client(admin) as alice, Client(user) as bob:
            a = await get(alice, "/cached")
            b = await get(bob, "/cached")
            b_with_alices_etag = await get(bob, "/cached", etag=a.opt.etag)
            q = await get(alice, "/cached", query=("x=1",))
            shared = [(await get(dev, "/everyone")).payload for dev in (alice, bob, alice)]
            return a, b, b_with_alices_etag, q, shared

    a, b, b_etag, q, shared = run(scenario())
    assert a.payload == b"unset for alice ()\n"
    assert b.payload == b"unset for bob ()\n"
    assert str(b_etag.code).startswith("2.05") and b_etag.payload == b.payload
    assert q.payload == b"unset for alice (x=1)\n"
    assert runs(gw, "cached") == 3  # alice, bob, alice with a query
    # shared = true: the output does not depend on who asks, so one run serves all
    assert shared == [b"unset for anyone ()\n"] * 3 and runs(gw, "everyone") == 1
