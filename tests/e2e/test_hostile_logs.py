"""The gateway's log cannot be forged or flooded by what peers send.

Real gateway, real DTLS: the factory identity and a user send requests whose
Uri-Path and Uri-Query hold newlines, carriage returns, ESC sequences, NUL,
DEL, C1 controls and Unicode line separators and direction overrides, to
resources that exist and that do not, with every method.  The gateway's log
(level info: one line per request) must hold no traceback and no control
character but the newlines that end its own lines.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from aiocoap import Code, Message
from support import wait_for

from coapdev.client import Client, onboard
from coapdev.const import FACTORY_IDENTITY
from coapdev.keys import factory_psk
from coapdev.registry import Credentials, DeviceAddress

pytestmark = pytest.mark.e2e

HOSTILE = [
    "a\nb",
    "\n2026-01-01 00:00:00,000 ERROR coapdev.gateway: forged line",
    "\r\x1b[2K\x1b[1Aoverwritten",
    "\x1b]0;title\x07",
    "nul\x00byte",
    "del\x7f",
    "c1\x9b31m",
    "line\u2028separator",
    "\u202eesrever",
    "tab\there",
]
#: What no log line may hold: C0 controls but the newline, DEL, C1 controls,
#: Unicode line and paragraph separators, and direction overrides.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
METHODS = [Code.GET, Code.PUT, Code.POST, Code.DELETE, Code.FETCH, Code.PATCH]


async def hostile_requests(dev: Client, targets: list[tuple[str, ...]]) -> int:
    """Send every hostile request on ``dev``'s session; returns how many were answered."""
    context = dev._transport.context
    base = dev.credentials.address.uri_base
    answered = 0
    for target in targets:
        for segment in HOSTILE:
            for code in METHODS:
                msg = Message(code=code, uri=f"{base}/", payload=segment.encode())
                msg.opt.uri_path = (*target, segment)
                msg.opt.uri_query = (f"q={segment}",)
                if code == Code.GET:
                    msg.opt.observe = 0
                try:
                    response = await context.request(msg).response
                except Exception:
                    continue
                answered += 1
                assert response.code.is_successful() or response.code.class_ == 4, (
                    code,
                    target,
                    segment,
                    response,
                )
    return answered


@pytest.fixture
def hostile_gateway(gateway_factory, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[device]\ndemo_light = true\nadvertise = false\n[limits]\nlog_burst = 100000\n"
        "[onboarding]\nalways_open = true\n"
        '[[resource]]\npath = "/echo"\nget = { run = ["echo", "hi"] }\n'
    )
    return gateway_factory("hostile", config=config, extra_args=["--log-level", "info"])


def test_hostile_paths_neither_forge_log_lines_nor_cause_tracebacks(hostile_gateway, run):
    gw = hostile_gateway
    key = gw.factory_key()
    factory = Credentials(
        "", DeviceAddress("127.0.0.1", gw.port), FACTORY_IDENTITY, factory_psk(key)
    )

    async def scenario() -> int:
        await onboard(gw.uri, key, "admin")
        user = await onboard(gw.uri, key, "user")
        answered = 0
        async with Client(factory, timeout_s=5) as dev:
            answered += await hostile_requests(dev, [(), ("onboard",), ("15011", "9063")])
        async with Client(user, timeout_s=5) as dev:
            answered += await hostile_requests(
                dev, [(), ("light",), ("echo",), ("clients",), (".well-known",)]
            )
        return answered

    answered = run(scenario(), timeout_s=300)
    assert answered > 0.9 * len(HOSTILE) * len(METHODS) * 8
    log = gw.log()
    assert "forged line" in log  # the hostile requests were logged ...
    assert "Traceback" not in log
    bad = [(n, line) for n, line in enumerate(log.split("\n"), 1) if UNSAFE.search(line)]
    assert not bad, f"{len(bad)} log lines hold raw control characters, e.g. {bad[:3]}"
    forged = [line for line in log.split("\n") if line.startswith("2026-01-01")]
    assert not forged  # ... but never as a line of their own
    audit = (gw.state_dir / "audit.jsonl").read_text()
    assert "refused" in audit
    for line in audit.splitlines():
        json.loads(line)
        assert not UNSAFE.search(line), line


def test_a_request_flood_writes_a_bounded_number_of_log_lines(gateway_factory, tmp_path, run):
    config = tmp_path / "gateway.toml"
    config.write_text("[device]\nadvertise = false\n[limits]\nlog_burst = 20\n")
    gw = gateway_factory("flood", config=config, extra_args=["--log-level", "info"])

    async def scenario() -> float:
        creds = await onboard(gw.uri, gw.factory_key(), "flooder")
        async with Client(creds, timeout_s=5) as dev:
            started = time.monotonic()
            for _ in range(400):
                await dev.get("/device")
            await asyncio.sleep(3.5)  # one line's allowance refills (20 a minute)
            await dev.get("/device")
            return time.monotonic() - started

    elapsed_s = run(scenario(), timeout_s=120)
    summary = re.compile(r"\((\d+) similar messages suppressed\)")
    # ... or in the summary the limiter writes within a minute when no later line came
    # (the flooder is the only client whose requests are logged here)
    flushed = re.compile(r"(\d+) similar messages suppressed \(coapdev\.requests: client=%s")

    def logged() -> tuple[list[str], list[int]]:
        log = gw.log().split("\n")
        lines = [line for line in log if "client=flooder" in line]
        counts = [int(m) for line in lines for m in summary.findall(line)]
        return lines, counts + [int(m) for line in log for m in flushed.findall(line)]

    def accounted_for() -> bool:
        lines, counts = logged()
        return len(lines) + sum(counts) >= 401

    # The gateway answers first and logs after: the last request's line may come later.
    wait_for(accounted_for, 10, what="the line of the last request")
    lines, counts = logged()
    refills = int(elapsed_s / 3.0) + 1  # 20 a minute: one more line per 3 s, however slow
    assert 20 <= len(lines) <= 20 + refills, (len(lines), elapsed_s)
    assert counts, lines[-1]
    # every request is either a line or counted in the next line of its kind: none vanish
    assert len(lines) + sum(counts) == 401, (len(lines), counts)


def test_a_block1_that_does_not_continue_the_upload_is_4_08_without_traceback(gateway):
    """Found by tools/fuzz --mode grammar: block 0 of 16 bytes, then block 1 claiming 32-byte
    blocks made aiocoap raise ValueError: 5.00 and a traceback, for any identity."""
    from reliability import coapgrammar as g
    from reliability.dtlsclient import RawDtlsClient

    client = RawDtlsClient(
        "127.0.0.1", gateway.port, FACTORY_IDENTITY.encode(), factory_psk(gateway.factory_key())
    )
    codes = []
    try:
        assert client.handshake(3.0)
        for mid, (number, szx) in enumerate(((0, 0), (1, 1)), 1):
            options = [(g.URI_PATH, b"onboard"), (g.BLOCK1, g.block(number, number == 0, szx))]
            client.received.clear()
            client.send_plain(g.encode(g.CON, g.POST, mid, bytes([mid]), options, b"x" * 16))
            deadline = time.monotonic() + 3
            while not client.received and time.monotonic() < deadline:
                client.pump(0.02)
            answer = g.decode(client.received[0]) if client.received else None
            codes.append(answer.code_text if answer else "no answer")
    finally:
        client.close()
    assert codes == ["2.31", "4.08"]
    assert "Traceback" not in gateway.log()
