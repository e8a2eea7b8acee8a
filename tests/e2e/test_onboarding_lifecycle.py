"""Discovery, QR onboarding, Tradfri compatibility, client lifecycle, onboarding hardening."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import REPO, run_cli, wait_for

from coapdev.audit import read_audit
from coapdev.client import Client, onboard
from coapdev.discovery import browse
from coapdev.errors import HandshakeFailed, NotAuthorized, RequestFailed
from coapdev.keys import mint_factory_key
from coapdev.store import read_state

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"gateway-{secrets.token_hex(4)}.toml"
    path.write_text(text)
    return path


def cli_ok(config_dir, *args):
    out = run_cli(config_dir, *args)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout.decode()


# --- discovery ----------------------------------------------------------------------


def test_discover_finds_the_gateway_started_here(gateway_factory, tmp_path, config_dir, run):
    name = f"test-dev-{secrets.token_hex(3)}"
    gw = gateway_factory(config=write_config(tmp_path, f'[device]\nname = "{name}"\n'))
    device_id = json.loads((gw.state_dir / "credentials.json").read_text())["device"]["id"]

    out = cli_ok(config_dir, "discover", "--seconds", "6")
    line = next(line for line in out.splitlines() if device_id in line)
    assert name in line and f"port {gw.port}" in line and "onboarding open" in line
    assert "127.0.0.1" in line

    # onboard by the advertised name: the CLI finds the address over mDNS
    cli_ok(config_dir, "onboard", name, "--key", gw.factory_key(), "--name", "by-name")
    assert json.loads(cli_ok(config_dir, "get", f"{device_id}/device"))["id"] == device_id

    # the record is withdrawn on shutdown
    gw.stop()
    later = run(browse(3.0))
    assert device_id not in [d.device_id for d in later]


def test_onboarding_state_is_advertised(gateway_factory, tmp_path, run):
    gw = gateway_factory()
    device_id = json.loads((gw.state_dir / "credentials.json").read_text())["device"]["id"]

    async def advertised_open():
        for d in await browse(4.0, stop_when=lambda d: d.device_id == device_id):
            if d.device_id == device_id:
                return d.onboarding_open
        return None

    assert run(advertised_open()) is True
    gw.local("pair", "--close")
    time.sleep(2.5)
    assert run(advertised_open()) is False


def test_moved_device_is_found_again_by_id(gateway_factory, config_dir):
    gw = gateway_factory()
    cli_ok(config_dir, "onboard", gw.uri, "--key", gw.factory_key())
    device_id = json.loads((gw.state_dir / "credentials.json").read_text())["device"]["id"]
    gw.stop()
    from support import free_udp_port

    gw.port = free_udp_port()  # "DHCP" gave it a new address (here: a new port)
    gw.start()
    out = run_cli(config_dir, "--timeout", "3", "get", f"{device_id}/device")
    assert out.returncode == 0, out.stderr
    assert f"moved to coaps://127.0.0.1:{gw.port}" in out.stderr.decode()
    registry = json.loads((config_dir / "devices.json").read_text())
    assert registry["devices"][device_id]["address"] == f"127.0.0.1:{gw.port}"


# --- QR codes and provisioning ------------------------------------------------------


@pytest.fixture
def provisioned(gateway_factory, tmp_path):
    """A device initialised from a manufacturing batch (tools/provision), then started."""
    batch = tmp_path / "batch"
    gw = gateway_factory("provisioned", start=False)
    out = subprocess.run(
        [
            str(REPO / "tools" / "provision"),
            "--count",
            "2",
            "--out",
            str(batch),
            "--port",
            str(gw.port),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    manifest = json.loads((batch / "manifest.json").read_text())["devices"]
    assert len(manifest) == 2 and out.stdout.count("\n") == 2
    device = manifest[0]
    gw.local("init", "--manifest", str(batch / "manifest.json"), "--device-id", device["device_id"])
    gw.start()
    return gw, batch, device


def test_onboard_from_qr_text(provisioned, config_dir):
    gw, _, device = provisioned
    assert gw.factory_key() == device["factory_key"]
    out = cli_ok(config_dir, "onboard", "127.0.0.1", "--qr-text", device["qr_payload"].lower())
    assert device["device_id"] in out
    assert json.loads(cli_ok(config_dir, "get", "/device"))["id"] == device["device_id"]


def test_onboard_from_png_label_found_by_id_over_mdns(provisioned, config_dir):
    gw, batch, device = provisioned
    # no address given: the device id in the QR code is looked up over mDNS
    out = cli_ok(config_dir, "onboard", "--qr-image", str(batch / device["png"]))
    assert f"device {device['device_id']} at coaps://127.0.0.1:{gw.port}" in out


def test_svg_label_holds_the_key_in_groups(provisioned):
    _, batch, device = provisioned
    svg = (batch / device["svg"]).read_text()
    assert device["factory_key_label"] in svg and svg.count("<path") == 1


def test_mistyped_key_in_qr_text_is_refused_locally(config_dir):
    key = mint_factory_key()
    bad = key[:5] + ("A" if key[5] != "A" else "B") + key[6:]
    out = run_cli(config_dir, "onboard", "127.0.0.1:1", "--qr-text", f"COAPDEV:1:ABCDEFGHJK:{bad}")
    assert out.returncode == 1
    assert b"mistyped" in out.stderr and b"Traceback" not in out.stderr


def test_image_without_a_code_is_a_clear_error(tmp_path, config_dir):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    out = run_cli(config_dir, "onboard", "127.0.0.1:1", "--qr-image", str(blank))
    assert out.returncode == 1
    assert out.stderr.decode().strip() == f"coapdev: {blank}: no QR code found in this image"
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    out = run_cli(config_dir, "onboard", "127.0.0.1:1", "--qr-image", str(not_image))
    assert out.returncode == 1 and b"not a readable image" in out.stderr


# --- Tradfri compatibility ----------------------------------------------------------


@pytest.mark.interop
def test_pytradfri_generates_a_psk_and_then_makes_a_request(gateway_factory, run):
    pytradfri = pytest.importorskip("pytradfri")
    from pytradfri.api.aiocoap_api import APIFactory
    from pytradfri.command import Command

    # pytradfri always talks to port 5684: a loopback address of our own avoids collisions
    gw = gateway_factory("tradfri", host="127.0.0.2", port=5684)
    identity = f"home-assistant-{secrets.token_hex(4)}"

    async def scenario():
        factory = await APIFactory.init(host="127.0.0.2", psk_id=identity)
        psk = await factory.generate_psk(gw.factory_key())
        assert isinstance(psk, str) and len(psk) == 16
        device = Command("get", ["device"])
        await factory.request(device)
        await factory.shutdown()

        again = await APIFactory.init(host="127.0.0.2", psk_id=identity, psk=psk)
        light = Command("get", ["light"])
        await again.request(light)
        await again.shutdown()
        return device.raw_result, light.raw_result

    device, light = run(scenario())
    assert device["model"] == "coapdev-gateway" and light == {"on": False}
    assert pytradfri.__name__ == "pytradfri"
    _, clients = read_state(gw.state_dir)
    assert [(c.identity, c.origin.value) for c in clients] == [(identity, "tradfri")]


# --- client lifecycle ---------------------------------------------------------------


def test_remote_rename_role_revoke_and_rekey(gateway, tmp_path, config_dir, run):
    key = gateway.factory_key()
    cli_ok(config_dir, "onboard", gateway.uri, "--key", key, "--name", "owner")
    tv_cfg = tmp_path / "tv"
    tv_cfg.mkdir()
    cli_ok(tv_cfg, "onboard", gateway.uri, "--key", key, "--name", "tv")

    assert "renamed" in cli_ok(config_dir, "clients", "rename", "tv", "living-room-tv")
    listing = cli_ok(config_dir, "clients", "list")
    assert "living-room-tv" in listing and " tv " not in listing
    cli_ok(config_dir, "clients", "role", "living-room-tv", "admin")
    assert "admin" in cli_ok(tv_cfg, "clients", "list")  # now it may list

    old = json.loads((tv_cfg / "devices.json").read_text())["devices"]
    (old_creds,) = old.values()
    out = cli_ok(tv_cfg, "rekey")
    assert "new key in use" in out
    new = json.loads((tv_cfg / "devices.json").read_text())["devices"]
    (new_creds,) = new.values()
    assert new_creds["identity"] != old_creds["identity"] and new_creds["key"] != old_creds["key"]
    cli_ok(tv_cfg, "get", "/light")
    # the old key stopped working once the new one was used
    from coapdev.registry import _decode

    stale = _decode(next(iter(old)), old_creds)

    async def use_stale():
        async with Client(stale, timeout_s=4) as dev:
            await dev.get("/light")

    with pytest.raises((HandshakeFailed, NotAuthorized)):
        run(use_stale())

    cli_ok(config_dir, "clients", "revoke", "living-room-tv")
    refused = run_cli(tv_cfg, "--timeout", "4", "get", "/light")
    assert refused.returncode in (3, 4)
    events = [e["event"] for e in read_audit(gateway.state_dir)]
    for event in ("onboard", "rename", "role", "rekey-begin", "rekey", "revoke"):
        assert event in events


def test_local_revoke_and_rename_while_running(gateway, run):
    creds = run(onboard(gateway.uri, gateway.factory_key(), "laptop"))

    async def scenario():
        async with Client(creds, timeout_s=4) as dev:
            assert (await dev.get("/light")).ok  # session open
            out = await asyncio.to_thread(gateway.local, "clients", "rename", "laptop", "old-pc")
            assert "old-pc" in out.stdout
            await asyncio.sleep(1.0)  # the running gateway notices within a second
            listed = await asyncio.to_thread(gateway.local, "clients", "list")
            assert "old-pc" in listed.stdout
            await asyncio.to_thread(gateway.local, "clients", "revoke", "old-pc", "--force")
            await asyncio.sleep(1.0)
            with pytest.raises((NotAuthorized, HandshakeFailed)):
                await dev.get("/light")

    run(scenario())
    assert "closed 1 live session(s) whose key is no longer valid" in gateway.log()


def test_idle_clients_expire(gateway_factory, tmp_path, run):
    cfg = write_config(tmp_path, "[onboarding]\nexpire_after_days = 0.00004\n")  # ~3.5 s
    gw = gateway_factory(config=cfg)
    creds = run(onboard(gw.uri, gw.factory_key(), "forgetful"))
    wait_for(
        lambda: any(e["event"] == "expire" for e in read_audit(gw.state_dir)), 15, what="expiry"
    )

    async def use():
        async with Client(creds, timeout_s=4) as dev:
            await dev.get("/device")

    with pytest.raises((NotAuthorized, HandshakeFailed)):
        run(use())


def test_factory_reset_removes_clients_and_can_mint_a_new_key(gateway, run):
    old_key = gateway.factory_key()
    creds = run(onboard(gateway.uri, old_key, "before-reset"))
    out = gateway.local("factory-reset", "--yes", "--new-key")
    assert "every client removed" in out.stdout and "new factory key" in out.stdout
    new_key = gateway.factory_key()
    assert new_key != old_key
    time.sleep(1.0)

    async def use():
        async with Client(creds, timeout_s=4) as dev:
            await dev.get("/device")

    with pytest.raises((NotAuthorized, HandshakeFailed)):
        run(use())
    # like a first start, the reset device is open for onboarding
    again = run(onboard(gateway.uri, new_key, "after-reset"))
    assert again.role == "admin"


def test_factory_reset_refuses_without_yes_when_not_interactive(gateway):
    out = gateway.local("factory-reset", check=False)
    assert out.returncode == 1 and "--yes" in out.stderr


# --- onboarding hardening -----------------------------------------------------------


def test_closed_onboarding_gives_403_and_pair_opens_it(gateway, config_dir):
    key = gateway.factory_key()
    gateway.local("pair", "--close")
    time.sleep(1.0)
    out = run_cli(config_dir, "onboard", gateway.uri, "--key", key)
    assert out.returncode == 4
    assert b"4.03" in out.stderr and b"coapdev-gateway pair" in out.stderr
    paired = gateway.local("pair", "--seconds", "60")
    assert "Onboarding is open" in paired.stdout and "COAPDEV:1:" in paired.stdout
    time.sleep(1.0)
    cli_ok(config_dir, "onboard", gateway.uri, "--key", key)
    events = read_audit(gateway.state_dir)
    assert any(e["event"] == "onboard-refused" for e in events)


def test_button_command_opens_onboarding(gateway_factory, tmp_path, config_dir):
    presses = tmp_path / "presses"
    script = tmp_path / "button.sh"
    script.write_text(
        f"#!/bin/sh\nwhile sleep 0.2; do [ -e {presses} ] && rm {presses} && echo pressed; done\n"
    )
    script.chmod(0o755)
    cfg = write_config(tmp_path, f'[onboarding]\nbutton = ["{script}"]\nwindow_s = 60\n')
    gw = gateway_factory(config=cfg)
    gw.local("pair", "--close")
    time.sleep(1.0)
    assert run_cli(config_dir, "onboard", gw.uri, "--key", gw.factory_key()).returncode == 4
    presses.touch()
    wait_for(lambda: "pairing button pressed" in gw.log(), 10, what="button press")
    time.sleep(0.7)
    cli_ok(config_dir, "onboard", gw.uri, "--key", gw.factory_key())


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("coap-client-openssl") is None, reason="needs libcoap3-bin")
def test_wrong_key_burst_is_throttled_while_others_onboard(gateway_factory, tmp_path, run):
    # 10 failures in a burst, then one more per minute (slow, so the test is not racing it)
    cfg = write_config(tmp_path, "[onboarding]\nattempts_burst = 10\nattempts_per_minute = 1\n")
    gw = gateway_factory(host="0.0.0.0", config=cfg)
    wrong = mint_factory_key()

    def attempt(key: str, source: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "coap-client-openssl",
                "-B",
                "2",
                "-a",
                source,
                "-u",
                "Client_identity",
                "-k",
                key,
                "-m",
                "post",
                "-t",
                "50",
                "-e",
                '{"name": "x", "key-format": "text"}',
                f"coaps://127.0.0.1:{gw.port}/onboard",
            ],
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )

    started = time.monotonic()
    for _ in range(15):
        out = attempt(wrong, "127.0.0.3")
        assert b"2.01" not in out.stdout + out.stderr
    burst_s = time.monotonic() - started
    # Now even the right key from that address is ignored: its allowance is used up ...
    throttled = attempt(gw.factory_key(), "127.0.0.3")
    assert b'"identity"' not in throttled.stdout
    # ... while a client elsewhere onboards at once.
    creds = run(onboard(gw.uri, gw.factory_key(), "legit"))
    assert creds.identity
    events = read_audit(gw.state_dir)
    failures = [e for e in events if e["event"] == "handshake-failed"]
    assert failures and all(e["source"] == "127.0.0.3" for e in failures)
    assert any(e.get("reason") == "wrong key" for e in failures)
    assert burst_s < 60


def test_onboarding_attempts_are_rate_limited(gateway_factory, tmp_path, run):
    cfg = write_config(tmp_path, "[onboarding]\nattempts_burst = 3\nattempts_per_minute = 1\n")
    gw = gateway_factory(config=cfg)
    key = gw.factory_key()

    async def scenario():
        for i in range(3):
            await onboard(gw.uri, key, f"c{i}")
        with pytest.raises(RequestFailed, match=r"4\.29.*too many onboarding attempts"):
            await onboard(gw.uri, key, "one-too-many")

    run(scenario())


def test_max_clients(gateway_factory, tmp_path, run):
    gw = gateway_factory(config=write_config(tmp_path, "[onboarding]\nmax_clients = 2\n"))
    key = gw.factory_key()

    async def scenario():
        await onboard(gw.uri, key, "a")
        await onboard(gw.uri, key, "b")
        with pytest.raises(RequestFailed, match=r"4\.29.*maximum of 2 clients"):
            await onboard(gw.uri, key, "c")

    run(scenario())


def test_audit_log_is_json_lines_without_secrets(gateway, run):
    key = gateway.factory_key()
    creds = run(onboard(gateway.uri, key, "audited"))
    lines = (gateway.state_dir / "audit.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert entries[-1]["event"] == "onboard" and entries[-1]["name"] == "audited"
    text = "\n".join(lines)
    assert key not in text and creds.key.hex() not in text
    assert (gateway.state_dir / "audit.jsonl").stat().st_mode & 0o777 == 0o600
