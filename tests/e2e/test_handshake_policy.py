"""Handshake policy ([dtls]) against a real gateway, with ClientHellos built by hand.

OpenSSL, GnuTLS and tinydtls clients always offer extended_master_secret and
renegotiation_info, so this suite drives its own DTLS 1.2 PSK client
(tools/reliability/dtls12.py), which offers exactly what a test asks for:
each extension, the renegotiation SCSV instead of the extension, or nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from reliability.dtls12 import (
    ALERT_FATAL,
    ALERT_HANDSHAKE_FAILURE,
    AlertReceived,
    HelloOptions,
)
from reliability.dtls12 import Dtls12PskClient as Client12
from support import wait_for

from coapdev.audit import read_audit
from coapdev.client import onboard

pytestmark = pytest.mark.e2e

#: extended_master_secret x (renegotiation_info extension | SCSV | neither).
HELLOS = [
    HelloOptions(extended_master_secret=True, renegotiation_info=True),
    HelloOptions(extended_master_secret=True, renegotiation_info=False, scsv=True),
    HelloOptions(extended_master_secret=True, renegotiation_info=False),
    HelloOptions(extended_master_secret=False, renegotiation_info=True),
    HelloOptions(extended_master_secret=False, renegotiation_info=False, scsv=True),
    HelloOptions(extended_master_secret=False, renegotiation_info=False),
]


def config(tmp_path: Path, dtls: str = "", onboarding: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[device]\ndemo_light = true\nadvertise = false\n"
        f"[onboarding]\nattempts_burst = 1000\nattempts_per_minute = 1000\n{onboarding}\n"
        f"[dtls]\n{dtls}\n"
    )
    return path


def coap_get(*path: str, mid: int = 1) -> bytes:
    from aiocoap import Code, Message

    message = Message(code=Code.GET, uri_path=path)
    message.mtype, message.mid, message.token = 0, mid, mid.to_bytes(2, "big")
    return message.encode()


def attempt(
    port: int, identity: bytes, key: bytes, hello: HelloOptions, timeout_s: float = 5.0
) -> str:
    """Handshake with ``hello`` and GET /device: what came of it, in a word or two."""
    from aiocoap import Message

    with Client12("127.0.0.1", port, identity, key, hello=hello, timeout_s=timeout_s) as client:
        try:
            client.handshake()
        except AlertReceived as alert:
            return f"alert {alert.level}/{alert.description}"
        except TimeoutError:
            return "no answer"
        answer = Message.decode(client.request(coap_get("device")))
        used = "EMS" if client.uses_extended_master_secret else "no EMS"
        client.close_notify()
        return f"{answer.code} ({used})"


def outcomes(gw, run) -> dict[str, str]:
    creds = run(onboard(gw.uri, gw.factory_key(), "policy-test"))

    def each() -> dict[str, str]:
        identity, key = creds.identity.encode(), creds.key
        return {h.describe(): attempt(gw.port, identity, key, h) for h in HELLOS}

    return run(asyncio.to_thread(each), 120)


def test_by_default_every_client_hello_is_served_and_offered_extensions_are_used(
    gateway_factory, tmp_path, run
):
    gw = gateway_factory(config=config(tmp_path))
    assert outcomes(gw, run) == {
        "EMS+renegotiation_info": "2.05 Content (EMS)",
        "EMS+SCSV": "2.05 Content (EMS)",
        "EMS": "2.05 Content (EMS)",
        "renegotiation_info": "2.05 Content (no EMS)",
        "SCSV": "2.05 Content (no EMS)",
        "no extensions": "2.05 Content (no EMS)",
    }


def test_required_extensions_refuse_client_hellos_without_them(gateway_factory, tmp_path, run):
    strict = "require_extended_master_secret = true\nrequire_renegotiation_info = true\n"
    gw = gateway_factory(config=config(tmp_path, strict))
    refused = f"alert {ALERT_FATAL}/{ALERT_HANDSHAKE_FAILURE}"
    assert outcomes(gw, run) == {
        "EMS+renegotiation_info": "2.05 Content (EMS)",
        "EMS+SCSV": "2.05 Content (EMS)",
        "EMS": refused,
        "renegotiation_info": refused,
        "SCSV": refused,
        "no extensions": refused,
    }

    def reasons() -> list[str]:
        audit = read_audit(gw.state_dir)
        return [e.get("reason") for e in audit if e["event"] == "handshake-failed"]

    # the alert goes out before the refusal is written: wait for the fourth line
    wait_for(lambda: len(reasons()) >= 4, 10, what="four refused handshakes audited")
    assert reasons() == [
        "ClientHello without renegotiation_info refused (handshake_failure)",
        "ClientHello without extended_master_secret refused (handshake_failure)",
        "ClientHello without extended_master_secret refused (handshake_failure)",
        "ClientHello without extended_master_secret and renegotiation_info refused "
        "(handshake_failure)",
    ]


def test_one_required_extension_refuses_only_hellos_without_that_one(
    gateway_factory, tmp_path, run
):
    gw = gateway_factory(config=config(tmp_path, "require_renegotiation_info = true\n"))
    refused = f"alert {ALERT_FATAL}/{ALERT_HANDSHAKE_FAILURE}"
    assert outcomes(gw, run) == {
        "EMS+renegotiation_info": "2.05 Content (EMS)",
        "EMS+SCSV": "2.05 Content (EMS)",
        "EMS": refused,
        "renegotiation_info": "2.05 Content (no EMS)",
        "SCSV": "2.05 Content (no EMS)",
        "no extensions": refused,
    }


def test_a_client_hello_without_extensions_onboards_the_tradfri_way_and_is_served(
    gateway_factory, tmp_path, run
):
    """The whole Tradfri story with a stack that offers no extension at all."""
    from aiocoap import Code, Message

    gw = gateway_factory(config=config(tmp_path))
    bare = HelloOptions(extended_master_secret=False, renegotiation_info=False)
    factory_psk = gw.factory_key().replace("-", "").encode()

    def story() -> tuple[Message, Message]:
        with Client12("127.0.0.1", gw.port, b"Client_identity", factory_psk, hello=bare) as c:
            c.handshake()
            request = Message(
                code=Code.POST, uri_path=("15011", "9063"), payload=b'{"9090": "bare-stack"}'
            )
            request.mtype, request.mid, request.token = 0, 1, b"ob"
            minted = Message.decode(c.request(request.encode()))
            c.close_notify()
        psk = json.loads(minted.payload)["9091"].encode()
        with Client12("127.0.0.1", gw.port, b"bare-stack", psk, hello=bare) as c:
            c.handshake()
            light = Message.decode(c.request(coap_get("light", mid=2)))
            c.close_notify()
        return minted, light

    minted, light = run(asyncio.to_thread(story), 60)
    assert minted.code == Code.CREATED
    assert light.code == Code.CONTENT


def test_refused_handshakes_are_logged_audited_and_throttled(gateway_factory, tmp_path, run):
    """A ClientHello refused by policy costs its source like any failed handshake."""
    strict = "require_extended_master_secret = true\n"
    burst = "attempts_burst = 3\nattempts_per_minute = 1\n"
    path = tmp_path / "gateway.toml"
    path.write_text(f"[device]\nadvertise = false\n[onboarding]\n{burst}[dtls]\n{strict}")
    gw = gateway_factory(config=path, extra_args=["--log-level", "info"])
    creds = run(onboard(gw.uri, gw.factory_key(), "throttle-test"))
    bare = HelloOptions(extended_master_secret=False, renegotiation_info=False)
    good = HelloOptions()

    def flood() -> list[str]:
        identity, key = creds.identity.encode(), creds.key
        # refused three times; then that source is ignored, even with a good ClientHello
        tries = [attempt(gw.port, identity, key, bare, timeout_s=2) for _ in range(6)]
        return [*tries, attempt(gw.port, identity, key, good, timeout_s=2)]

    results = run(asyncio.to_thread(flood), 120)
    refused = f"alert {ALERT_FATAL}/{ALERT_HANDSHAKE_FAILURE}"
    assert results == [refused] * 3 + ["no answer"] * 4, results
    failures = [e for e in read_audit(gw.state_dir) if e["event"] == "handshake-failed"]
    assert len(failures) == 3 and {e["source"] for e in failures} == {"127.0.0.1"}
    assert gw.log().count("refused a handshake from 127.0.0.1") == 3
