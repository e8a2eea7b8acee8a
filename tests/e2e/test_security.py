"""Issue 10, played as an attacker would: real gateway processes, real DTLS over loopback.

Each test here failed on the code before the fix (see the commit that added it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import pytest
from support import send_with_options, wait_for

from coapdev.client import Client, Credentials, DeviceAddress, onboard, onboard_tradfri, rekey
from coapdev.const import FACTORY_IDENTITY, ContentFormat
from coapdev.errors import HandshakeFailed, NotAuthorized, RequestFailed
from coapdev.keys import factory_psk

pytestmark = pytest.mark.e2e


def factory_client(gateway, key: str, **kwargs) -> Client:
    creds = Credentials(
        "", DeviceAddress(gateway.host, gateway.port), FACTORY_IDENTITY, factory_psk(key)
    )
    return Client(creds, timeout_s=kwargs.pop("timeout_s", 3), **kwargs)


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text("[device]\nadvertise = false\n" + body.replace("{py}", sys.executable))
    return path


# --- 1. a session is only as good as the key that opened it -------------------------


def test_factory_reset_with_a_new_key_ends_sessions_of_the_old_one(gateway, run):
    """The owner believes the label leaked and resets with a new key, as docs/security.md
    says; the attacker holds a session opened with the old key and races to onboard
    first.  The first admin after the reset must be the owner, onboarded with the new key."""
    old_key = gateway.factory_key()

    async def scenario():
        owner = await onboard(gateway.uri, old_key, "owner")
        assert owner.role == "admin"
        async with factory_client(gateway, old_key) as attacker:
            with pytest.raises(NotAuthorized):
                await attacker.get("/device")  # the session is open
            await asyncio.to_thread(gateway.local, "factory-reset", "--new-key", "--yes")
            outcomes = []
            for _ in range(5):  # at once, and again while the gateway catches up
                try:
                    await attacker.post("/onboard", {"name": "evil"})
                    outcomes.append("onboarded")
                except (NotAuthorized, HandshakeFailed) as exc:
                    outcomes.append(type(exc).__name__)
                await asyncio.sleep(0.2)
            assert "onboarded" not in outcomes, outcomes
        new_key = gateway.factory_key()
        assert new_key != old_key
        again = await onboard(gateway.uri, new_key, "owner-again")
        assert again.role == "admin"
        async with Client(again) as dev:
            names = {c["name"] for c in (await dev.get("/clients")).value}
        assert names == {"owner-again"}

    run(scenario())


def test_a_local_revoke_closes_the_session_even_when_a_network_change_reloads_first(gateway, run):
    """A local revoke lands on disk; a request over the network makes the gateway re-read
    the store before its poll does.  The revoked session must still be closed at once."""
    key = gateway.factory_key()

    async def scenario():
        admin = await onboard(gateway.uri, key, "admin")
        victim = await onboard(gateway.uri, key, "victim")
        async with Client(admin) as a, Client(victim, timeout_s=3) as v:
            assert (await v.get("/light")).ok  # the victim's session is open
            await asyncio.to_thread(gateway.local, "clients", "revoke", "victim")
            await a.put(f"/clients/{admin.client_id}", {"name": "boss"})  # reloads the store
            await asyncio.to_thread(
                wait_for,
                lambda: "closed 1 live session" in gateway.log(),
                3,
                what="the victim's session to be closed",
            )
            with pytest.raises((NotAuthorized, HandshakeFailed)):
                await v.get("/light")

    run(scenario())


def test_a_rekey_ends_the_sessions_of_the_old_key(gateway, run):
    key = gateway.factory_key()

    async def scenario():
        await onboard(gateway.uri, key, "admin")
        creds = await onboard(gateway.uri, key, "phone")
        async with Client(creds, timeout_s=3) as old:
            assert (await old.get("/device")).ok
            new = await rekey(creds)
            assert new.identity != creds.identity
            with pytest.raises((NotAuthorized, HandshakeFailed)):
                await old.get("/device")
        async with Client(new) as fresh:
            assert (await fresh.get("/device")).ok

    run(scenario())


# --- 2. Observe registers only on GET ------------------------------------------------


DEMO_LIGHT = "[device]\ndemo_light = true\nadvertise = false\n"


def test_observe_on_a_put_runs_it_once_builtin_light(gateway_factory, tmp_path, run):
    config = tmp_path / "demo.toml"
    config.write_text(DEMO_LIGHT)
    gw = gateway_factory(config=config)
    key = gw.factory_key()

    async def scenario():
        admin = await onboard(gw.uri, key, "admin")
        user = await onboard(gw.uri, key, "user")
        async with Client(admin) as a, Client(user) as u:
            on = json.dumps({"on": True}).encode()
            answer = await send_with_options(
                u, "PUT", "/light", on, observe=True, content_format=ContentFormat.JSON
            )
            assert answer.code.is_successful() and answer.opt.observe is None
            await a.put("/light", {"on": False})
            await asyncio.sleep(1.0)
            assert (await a.get("/light")).value == {"on": False}
            # A GET with Observe still registers (and hears of changes).
            seen = []

            async def watch():
                async for state in a.observe("/light"):
                    seen.append(state.value["on"])
                    if len(seen) == 2:
                        return

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.5)
            await u.post("/light")
            await asyncio.wait_for(task, 10)
            assert seen == [False, True]

    run(scenario())


def test_observe_on_a_post_runs_the_script_once(gateway_factory, tmp_path, run):
    counter = tmp_path / "runs"
    counter.write_text("")
    config = write_config(
        tmp_path,
        f"""
[[resource]]
path = "/toggle"
get = {{ run = ["cat", "{counter}"] }}
post = {{ run = ["sh", "-c", "echo run >> {counter}"] }}
observe = {{ interval_s = 0.1 }}
""",
    )
    gw = gateway_factory(config=config)
    key = gw.factory_key()

    async def scenario():
        for who in ("admin", "user"):
            creds = await onboard(gw.uri, key, who)
            async with Client(creds) as c:
                before = counter.read_text().count("run")
                answer = await send_with_options(c, "POST", "/toggle", observe=True)
                assert answer.code.is_successful() and answer.opt.observe is None
                await asyncio.sleep(1.5)  # 15 polls
                assert counter.read_text().count("run") == before + 1, who

    run(scenario())


def test_a_get_with_observe_on_an_unobservable_resource_is_a_plain_get(
    gateway_factory, tmp_path, run
):
    config = write_config(
        tmp_path,
        """
[[resource]]
path = "/hello"
get = { run = ["echo", "hi"] }
""",
    )
    gw = gateway_factory(config=config)

    async def scenario():
        creds = await onboard(gw.uri, gw.factory_key(), "me")
        async with Client(creds) as c:
            for _ in range(5):
                answer = await send_with_options(c, "GET", "/hello", observe=True)
                assert answer.payload == b"hi\n" and answer.opt.observe is None

    run(scenario())
    assert "Traceback" not in gw.log()


# --- 3. one namespace for ids, identities and names ----------------------------------


def test_a_tradfri_identity_equal_to_a_rekeyed_clients_id_is_refused(gateway, run):
    key = gateway.factory_key()

    async def scenario():
        admin = await onboard(gateway.uri, key, "admin")
        admin = await rekey(admin)  # its id, its first identity, went over the air in clear
        assert admin.identity != admin.client_id
        with pytest.raises(RequestFailed, match=r"4\.09"):
            await onboard_tradfri(gateway.uri, key, admin.client_id)
        async with Client(admin) as a:
            clients = (await a.get("/clients")).value
            assert [c["role"] for c in clients] == ["admin"]

        return admin

    admin = run(scenario())
    gateway.restart()

    async def after_restart():
        # The admin's keys still work after a restart: its record was never replaced.
        async with Client(admin) as a:
            clients = (await a.get("/clients")).value
        assert [(c["id"], c["role"]) for c in clients] == [(admin.client_id, "admin")]

    run(after_restart())


def test_a_user_cannot_take_the_admins_id_as_its_name(gateway, run):
    key = gateway.factory_key()

    async def scenario():
        admin = await onboard(gateway.uri, key, "admin")
        user = await onboard(gateway.uri, key, "user")
        async with Client(user) as u:
            with pytest.raises(RequestFailed, match=r"4\.09"):
                await u.put(f"/clients/{user.client_id}", {"name": admin.client_id})
        out = await asyncio.to_thread(gateway.local, "clients", "list")
        assert out.stdout.count(admin.client_id) == 1

    run(scenario())


def test_a_user_learns_nothing_about_other_clients(gateway, run):
    key = gateway.factory_key()

    async def scenario():
        admin = await onboard(gateway.uri, key, "admin")
        user = await onboard(gateway.uri, key, "user")
        async with Client(user) as u:
            answers = []
            for ref in (admin.client_id, "admin", "no-such-client"):
                response = await u.request("GET", f"/clients/{ref}", check=False)
                answers.append((str(response.code), response.payload))
            assert len(set(answers)) == 1, answers
            assert answers[0][0].startswith("4.03")
            assert (await u.get(f"/clients/{user.client_id}")).value["name"] == "user"

    run(scenario())


# --- 4. an answer only for the requester it was computed for --------------------------


WHOAMI = """
[[resource]]
path = "/whoami"
get = { run = ["sh", "-c", "echo role=$COAPDEV_CLIENT_ROLE name=$COAPDEV_CLIENT_NAME \
q=$COAPDEV_QUERY"] }
observe = { interval_s = 0.2 }
"""


def test_observed_output_is_never_served_to_someone_else(gateway_factory, tmp_path, run):
    gw = gateway_factory(config=write_config(tmp_path, WHOAMI))
    key = gw.factory_key()

    async def scenario():
        admin = await onboard(gw.uri, key, "owner")
        user = await onboard(gw.uri, key, "guest")
        async with Client(admin) as a, Client(user) as u:
            first = []

            async def watch():
                async for state in a.observe("/whoami?token=secret"):
                    first.append(state.payload)
                    await asyncio.sleep(3600)

            task = asyncio.create_task(watch())
            await asyncio.to_thread(wait_for, lambda: first, 5, what="the admin's observation")
            try:
                for _ in range(3):
                    mine = (await u.get("/whoami")).payload
                    assert mine == b"role=user name=guest q=\n", mine
                    await asyncio.sleep(0.3)
            finally:
                task.cancel()
            assert first[0] == b"role=admin name=owner q=token=secret\n"

    run(scenario())


def test_a_shared_resource_shares_one_run(gateway_factory, tmp_path, run):
    counter = tmp_path / "runs"
    config = write_config(
        tmp_path,
        f"""
[[resource]]
path = "/slow"
shared = true
concurrency = 4
get = {{ run = ["sh", "-c", "echo run >> {counter}; sleep 0.5; echo same"] }}
""",
    )
    gw = gateway_factory(config=config)
    key = gw.factory_key()

    async def scenario():
        clients = [await onboard(gw.uri, key, f"c{i}") for i in range(4)]
        async with contextlib.AsyncExitStack() as stack:
            devs = [await stack.enter_async_context(Client(c)) for c in clients]
            answers = await asyncio.gather(*(d.get("/slow") for d in devs for _ in range(2)))
        assert {a.payload for a in answers} == {b"same\n"}
        assert counter.read_text().count("run") == 1

    run(scenario())


def test_onboarding_right_after_pair_is_never_refused(gateway, run):
    """`pair` returns once the window is open on disk; the running gateway must not refuse
    an onboarding that follows at once because it has not polled the state directory yet."""
    key = gateway.factory_key()
    outcomes = []
    for i in range(4):
        gateway.local("pair", "--close")
        time.sleep(0.7)  # the gateway has seen the window closed
        gateway.local("pair", "--seconds", "60")
        try:
            run(onboard(gateway.uri, key, f"right-after-pair-{i}"))
            outcomes.append("onboarded")
        except NotAuthorized as exc:
            outcomes.append(str(exc))
    assert outcomes == ["onboarded"] * 4, outcomes
