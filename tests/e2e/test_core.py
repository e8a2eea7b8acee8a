"""The core, end to end: real gateway processes, real DTLS over loopback, the real CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest
from support import free_udp_port, run_cli, udp_port_in_use

from coapdev.client import Client, Credentials, DeviceAddress, onboard, rekey
from coapdev.const import FACTORY_IDENTITY
from coapdev.errors import HandshakeFailed, NotAuthorized
from coapdev.keys import factory_psk, mint_factory_key

pytestmark = pytest.mark.e2e


def cli_json(config_dir, *args):
    out = run_cli(config_dir, *args)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def test_listens_on_exactly_the_configured_port(gateway):
    assert udp_port_in_use(gateway.host, gateway.port)
    assert not udp_port_in_use(gateway.host, gateway.port - 1)
    assert not udp_port_in_use(gateway.host, gateway.port + 1)


def test_cli_onboard_get_put_observe(gateway, config_dir):
    out = run_cli(
        config_dir, "onboard", gateway.uri, "--key", gateway.factory_key(), "--name", "laptop"
    )
    assert out.returncode == 0, out.stderr.decode()
    assert b"role admin" in out.stdout
    device = cli_json(config_dir, "get", "/device")
    assert device["model"] == "coapdev-gateway" and device["uptime"] >= 0
    assert cli_json(config_dir, "put", "/light", "on") == {"on": True}
    assert cli_json(config_dir, "get", "/light") == {"on": True}
    assert cli_json(config_dir, "put", "/light", '{"on": false}') == {"on": False}

    observer = subprocess.Popen(
        [*_cli_argv(), "observe", "/light", "--count", "3", "--accept", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_cli_env(config_dir),
    )
    try:
        time.sleep(1.5)
        assert cli_json(config_dir, "post", "/light") == {"on": True}
        time.sleep(0.3)
        assert cli_json(config_dir, "post", "/light") == {"on": False}
        stdout, stderr = observer.communicate(timeout=20)
    finally:
        observer.kill()
    assert observer.returncode == 0, stderr.decode()
    values = [json.loads(line) for line in stdout.decode().splitlines()]
    assert values == [{"on": False}, {"on": True}, {"on": False}]


def _cli_argv():
    import sys

    return [sys.executable, "-m", "coapdev"]


def _cli_env(config_dir):
    import os

    return dict(os.environ, COAPDEV_CONFIG_DIR=str(config_dir))


def test_library_onboard_and_use(gateway, run):
    async def scenario():
        creds = await onboard(gateway.uri, gateway.factory_key(), "script")
        assert creds.role == "admin" and len(creds.key) == 32  # 256 bits
        async with Client(creds) as dev:
            assert (await dev.get("/device")).value["id"] == creds.device_id
            await dev.put("/light", {"on": True})
            seen = []

            async def watch():
                async for r in dev.observe("/light"):
                    seen.append(r.value["on"])
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.5)
            await dev.put("/light", {"on": False})
            await asyncio.sleep(0.2)
            await dev.put("/light", {"on": True})
            await asyncio.wait_for(task, 10)
            assert seen == [True, False, True]
            links = (await dev.get("/.well-known/core")).value
            assert "</light>" in links and "</clients>" in links and "onboard" not in links

    run(scenario())


def test_factory_key_gets_401_everywhere_but_onboarding(gateway, run):
    factory = Credentials(
        "",
        DeviceAddress("127.0.0.1", gateway.port),
        FACTORY_IDENTITY,
        factory_psk(gateway.factory_key()),
    )

    async def scenario():
        async with Client(factory, timeout_s=5) as dev:
            for path in ("/device", "/light", "/clients", "/.well-known/core", "/nothing"):
                with pytest.raises(NotAuthorized, match=r"4\.01.*only opens onboarding"):
                    await dev.get(path)
            with pytest.raises(NotAuthorized, match=r"4\.01"):
                await dev.put("/light", {"on": True})

    run(scenario())


def test_wrong_key_is_a_clear_cli_error(gateway, config_dir):
    other_key = mint_factory_key()
    started = time.monotonic()
    out = run_cli(config_dir, "--timeout", "4", "onboard", gateway.uri, "--key", other_key)
    assert out.returncode == 3, out
    err = out.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "handshake failed" in err and "wrong key" in err and gateway.uri in err
    assert time.monotonic() - started < 15


def test_mistyped_key_is_refused_before_any_traffic(config_dir):
    port = free_udp_port()
    key = mint_factory_key()
    typo = key[:3] + ("0" if key[3] != "0" else "1") + key[4:]
    out = run_cli(config_dir, "onboard", f"127.0.0.1:{port}", "--key", typo)
    assert out.returncode == 1
    assert b"mistyped" in out.stderr


def test_device_not_answering_names_the_address(config_dir):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        out = run_cli(
            config_dir,
            "--timeout",
            "2",
            "onboard",
            f"127.0.0.1:{port}",
            "--key",
            mint_factory_key(),
        )
    assert out.returncode == 5
    assert f"no answer from coaps://127.0.0.1:{port} within 2 s" in out.stderr.decode()


def test_revoked_client_is_refused_on_its_open_session(gateway, run):
    async def scenario():
        key = gateway.factory_key()
        admin = await onboard(gateway.uri, key, "admin")
        victim = await onboard(gateway.uri, key, "victim")
        async with Client(admin) as a, Client(victim, timeout_s=6) as v:
            assert (await v.get("/light")).ok  # the victim's session is open
            clients = (await a.get("/clients")).value
            assert {c["name"] for c in clients} == {"admin", "victim"}
            await a.delete(f"/clients/{victim.client_id}")
            with pytest.raises((NotAuthorized, HandshakeFailed)):
                await v.get("/light")
            names = {c["name"] for c in (await a.get("/clients")).value}
            assert names == {"admin"}

    run(scenario())
    assert "revoked client victim" in gateway.log()


def test_user_cannot_list_or_revoke(gateway, run):
    async def scenario():
        key = gateway.factory_key()
        admin = await onboard(gateway.uri, key, "admin")
        user = await onboard(gateway.uri, key, "user")
        async with Client(user) as u:
            with pytest.raises(NotAuthorized, match=r"4\.03.*needs role admin"):
                await u.get("/clients")
            with pytest.raises(NotAuthorized, match=r"4\.03"):
                await u.delete(f"/clients/{admin.client_id}")

    run(scenario())


def test_cli_clients_list_and_revoke(gateway, config_dir, tmp_path):
    key = gateway.factory_key()
    assert run_cli(config_dir, "onboard", gateway.uri, "--key", key, "--name", "me").returncode == 0
    other_cfg = tmp_path / "other"
    other_cfg.mkdir()
    assert run_cli(other_cfg, "onboard", gateway.uri, "--key", key, "--name", "tv").returncode == 0
    listed = run_cli(config_dir, "clients", "list")
    assert listed.returncode == 0 and b"tv" in listed.stdout and b"(this client)" in listed.stdout
    assert run_cli(config_dir, "clients", "revoke", "tv").returncode == 0
    refused = run_cli(other_cfg, "--timeout", "5", "get", "/light")
    assert refused.returncode in (3, 4), refused
    assert b"Traceback" not in refused.stderr


def test_restart_keeps_every_client(gateway, run):
    async def onboard_two():
        key = gateway.factory_key()
        return [await onboard(gateway.uri, key, n) for n in ("one", "two")]

    clients = run(onboard_two())
    gateway.restart()

    async def use_all():
        for creds in clients:
            async with Client(creds) as dev:
                assert (await dev.get("/device")).ok

    run(use_all())


def test_kill_9_right_after_onboarding_keeps_the_client(gateway, run):
    creds = run(onboard(gateway.uri, gateway.factory_key(), "survivor"))
    gateway.kill9()
    gateway.start()

    async def use():
        async with Client(creds) as dev:
            return (await dev.get("/device")).value

    assert run(use())["id"] == creds.device_id


def test_long_lived_client_survives_gateway_restart(gateway, run):
    async def scenario():
        creds = await onboard(gateway.uri, gateway.factory_key(), "long-lived")
        reconnects = []
        async with Client(creds, timeout_s=6, on_reconnect=lambda: reconnects.append(1)) as dev:
            assert (await dev.get("/device")).ok
            await asyncio.to_thread(gateway.restart)
            assert (await dev.get("/device")).ok
        assert reconnects

    run(scenario())


def test_rekey_rotates_and_old_key_stops(gateway, run):
    async def scenario():
        creds = await onboard(gateway.uri, gateway.factory_key(), "rotating")
        new = await rekey(creds)
        assert new.identity != creds.identity and new.key != creds.key
        async with Client(new) as dev:
            assert (await dev.get("/device")).ok
        async with Client(creds, timeout_s=4) as old:
            with pytest.raises((HandshakeFailed, NotAuthorized)):
                await old.get("/device")

    run(scenario())


def test_gateway_key_command_and_sigterm_exit(gateway):
    key = gateway.factory_key()
    assert len(key) == 20
    gateway.signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=10) == 0


def test_ipv6_loopback(gateway_factory, run):
    gw = gateway_factory("v6", host="::1")

    async def scenario():
        creds = await onboard(gw.uri, gw.factory_key(), "v6")
        async with Client(creds) as dev:
            return (await dev.get("/device")).ok

    assert run(scenario())


def test_stock_aiocoap_transport_still_serves(gateway_factory, tmp_path, run):
    """The transport seam: the same device over aiocoap's own DTLS server."""
    config = tmp_path / "stock.toml"
    config.write_text('[device]\ntransport = "aiocoap"\nadvertise = false\ndemo_light = true\n')
    gw = gateway_factory("stock", config=config)

    async def scenario():
        creds = await onboard(gw.uri, gw.factory_key(), "stock")
        async with Client(creds) as dev:
            assert (await dev.get("/device")).value["id"] == creds.device_id
            assert (await dev.put("/light", "on")).value == {"on": True}

    run(scenario())
    assert udp_port_in_use(gw.host, gw.port)
