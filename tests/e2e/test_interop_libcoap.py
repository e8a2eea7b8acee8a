"""Interop with software we did not write: libcoap's coap-client (Debian libcoap3-bin)."""

from __future__ import annotations

import os
import shutil
import subprocess

import cbor2
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

COAP_CLIENT = shutil.which("coap-client-openssl")


@pytest.fixture(autouse=True)
def _need_libcoap():
    if COAP_CLIENT is None:
        if os.environ.get("CI"):
            pytest.fail("coap-client-openssl is missing: install Debian's libcoap3-bin")
        pytest.skip("coap-client-openssl not installed (Debian: libcoap3-bin)")


def coap_client(*args: str, timeout_s: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [COAP_CLIENT, "-B", "5", *args],
        capture_output=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def test_libcoap_onboards_then_uses_its_minted_key(gateway, tmp_path):
    key = gateway.factory_key()
    request = tmp_path / "onboard.cbor"
    # The documented payload: a CBOR map with the chosen name; libcoap takes a
    # PSK only as text, so it asks for a text key.
    request.write_bytes(cbor2.dumps({"name": "libcoap", "key-format": "text"}))
    answer = tmp_path / "answer.cbor"
    out = coap_client(
        "-u",
        "Client_identity",
        "-k",
        key,
        "-m",
        "post",
        "-t",
        "60",
        "-f",
        str(request),
        "-o",
        str(answer),
        f"{gateway.uri}/onboard",
    )
    assert answer.exists(), out.stderr.decode()
    minted = cbor2.loads(answer.read_bytes())
    assert minted["name"] == "libcoap" and len(minted["key"]) == 16

    out = coap_client(
        "-u", minted["identity"], "-k", minted["key"], "-A", "50", f"{gateway.uri}/device"
    )
    import json

    device = json.loads(out.stdout)
    assert device["id"] == minted["device"] and device["model"] == "coapdev-gateway"

    out = coap_client(
        "-u",
        minted["identity"],
        "-k",
        minted["key"],
        "-m",
        "put",
        "-t",
        "0",
        "-e",
        "on",
        "-A",
        "50",
        f"{gateway.uri}/light",
    )
    assert json.loads(out.stdout) == {"on": True}


def test_libcoap_with_factory_key_gets_401(gateway):
    out = coap_client("-u", "Client_identity", "-k", gateway.factory_key(), f"{gateway.uri}/device")
    # libcoap prints error responses on stderr: code, then the diagnostic payload
    assert out.stderr.startswith(b"4.01 the factory key only opens onboarding"), out
    assert out.stdout == b""


def test_libcoap_with_wrong_key_gets_nothing(gateway):
    from coapdev.keys import mint_factory_key

    out = coap_client("-u", "Client_identity", "-k", mint_factory_key(), f"{gateway.uri}/device")
    output = out.stdout + out.stderr
    assert b"4.01" not in output and b"coapdev-gateway" not in output


SCRIPTS_CONFIG = """
[device]
demo_light = true
advertise = false

[[resource]]
path = "/big"
shared = true
max_age_s = 600
get = {{ run = ["{py}", "-c", "print('x' * 2999)"] }}

[[resource]]
path = "/slow"
get = {{ run = ["sh", "-c", "sleep 0.6; echo late"] }}

[[resource]]
path = "/bigslow"
get = {{ run = ["{py}", "-c", "import time; time.sleep(0.6); print('y' * 2999)"] }}
"""


def _libcoap_user(gateway):
    """A native client minted for libcoap (text key: libcoap takes a PSK only as text)."""
    import asyncio

    from coapdev.client import onboard

    creds = asyncio.run(onboard(gateway.uri, gateway.factory_key(), "libcoap", text_key=True))
    return creds


def test_libcoap_reads_a_large_and_a_slow_script_answer(gateway_factory, tmp_path):
    """Script resources are served on the fast path: a large answer goes out blockwise (the
    first block from the fast path, the rest from aiocoap's Block2 cache) and a slow one is
    acknowledged at once and sent separately; libcoap reads both whole, aiocoap's client a
    large one that is also slow.

    (libcoap's coap-client does not ask for block 1 after a *separate* first block, from
    aiocoap's message layer just as from the fast path; so its large answer here comes from
    the cache, at once, and a slow large answer is read by aiocoap's client.)"""
    import asyncio
    import sys

    from coapdev.client import Client

    config = tmp_path / "gateway.toml"
    config.write_text(SCRIPTS_CONFIG.format(py=sys.executable))
    gw = gateway_factory(config=config)
    creds = _libcoap_user(gw)
    identity, key = creds.identity, creds.key.decode("ascii")

    async def with_aiocoap() -> tuple[bytes, bytes]:
        async with Client(creds, timeout_s=20) as dev:
            return (await dev.get("/big")).payload, (await dev.get("/bigslow")).payload

    warmed, slow_and_large = asyncio.run(with_aiocoap())
    assert warmed == b"x" * 2999 + b"\n" and slow_and_large == b"y" * 2999 + b"\n"
    out = coap_client("-u", identity, "-k", key, f"{gw.uri}/big")
    assert out.stdout.rstrip(b"\n") == b"x" * 2999, out.stderr  # coap-client adds a newline
    out = coap_client("-u", identity, "-k", key, f"{gw.uri}/slow")
    assert out.stdout.rstrip(b"\n") == b"late", out.stderr
    assert "Traceback" not in gw.log()
