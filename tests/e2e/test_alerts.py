"""Alerts end a session only when tinydtls authenticated them.

A plaintext (epoch 0) alert can be sent by anyone who can put a client's
address and port on a datagram; on an established session it must change
nothing.  The encrypted close_notify of the real client still ends the
session and its observations.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path

import pytest
from reliability.dtls12 import (
    ALERT_CLOSE_NOTIFY,
    ALERT_FATAL,
    ALERT_WARNING,
    CT_APPLICATION_DATA,
    AlertReceived,
    Dtls12PskClient,
    plaintext_alert,
)

from coapdev.client import Client, onboard

pytestmark = pytest.mark.e2e

#: What a forger would send: close_notify, and fatal alerts (handshake_failure, bad_record_mac).
FORGED = [
    plaintext_alert(ALERT_WARNING, ALERT_CLOSE_NOTIFY, seq=7),
    plaintext_alert(ALERT_FATAL, 40, seq=8),
    plaintext_alert(ALERT_FATAL, 20, seq=9),
]


def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text("[device]\ndemo_light = true\nadvertise = false\n")
    return path


def spoof_udp(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> None:
    """One IPv4 datagram with a source address and port of our choosing (needs root)."""
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,  # the kernel fills in the checksum
        socket.inet_aton(source[0]),
        socket.inet_aton(destination[0]),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(header + udp, (destination[0], 0))


def coap(code, *path: str, mid: int, observe: int | None = None, payload: bytes = b""):
    from aiocoap import Message

    message = Message(code=code, uri_path=path, payload=payload)
    if observe is not None:
        message.opt.observe = observe
    message.mtype, message.mid, message.token = 0, mid, b"obs" if observe is not None else b"r"
    return message.encode()


def notifications(client: Dtls12PskClient, timeout_s: float) -> list:
    """CoAP messages received within ``timeout_s`` (notifications, answers)."""
    from aiocoap import Message

    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for content_type, plaintext in client.receive(deadline - time.monotonic()):
            if content_type == CT_APPLICATION_DATA:
                got.append(Message.decode(plaintext))
    return got


@pytest.mark.parametrize("sender", ["raw socket", "the client's socket"])
def test_forged_plaintext_alerts_end_neither_the_session_nor_its_observations(
    gateway_factory, tmp_path, run, sender
):
    """...while the client's own encrypted close_notify still ends both."""
    from aiocoap import Code

    if sender == "raw socket" and os.geteuid() != 0:
        pytest.skip("spoofing a source address needs a raw socket: run as root (CI does)")
    gw = gateway_factory(config=config(tmp_path))
    watcher = run(onboard(gw.uri, gw.factory_key(), "watcher"))
    switch = run(onboard(gw.uri, gw.factory_key(), "switch"))

    async def toggle(on: bool) -> None:
        async with Client(switch, timeout_s=5) as c:
            assert (await c.put("/light", {"on": on})).ok

    def observe_forge_and_close() -> dict[str, object]:
        seen: dict[str, object] = {}
        with Dtls12PskClient("127.0.0.1", gw.port, watcher.identity.encode(), watcher.key) as c:
            c.handshake()
            first = c.request(coap(Code.GET, "light", mid=1, observe=0))
            seen["registered"] = first[:1] != b""
            for alert in FORGED:
                if sender == "raw socket":
                    spoof_udp(c.local_address, ("127.0.0.1", gw.port), alert)
                else:
                    c.send_datagram(alert)
            time.sleep(0.3)
            asyncio.run(toggle(True))
            seen["notified after forgery"] = [
                m.payload for m in notifications(c, 2.0) if m.opt.observe is not None
            ]
            answer = c.request(coap(Code.GET, "device", mid=2))
            seen["served after forgery"] = answer[:1] != b""
            c.close_notify()
            try:
                c.receive(1.0)
                seen["answer to close_notify"] = "nothing"
            except AlertReceived as alert:
                seen["answer to close_notify"] = (alert.level, alert.description, alert.encrypted)
            asyncio.run(toggle(False))
            try:
                seen["notified after close"] = [
                    m.payload for m in notifications(c, 1.5) if m.opt.observe is not None
                ]
            except AlertReceived:
                seen["notified after close"] = "alert"
            c.send_application_data(coap(Code.GET, "device", mid=3))
            seen["served after close"] = notifications(c, 1.0) != []
        return seen

    seen = run(asyncio.to_thread(observe_forge_and_close), 60)
    assert seen["registered"]
    assert len(seen["notified after forgery"]) == 1, seen
    assert seen["served after forgery"], seen
    assert seen["answer to close_notify"] == (ALERT_WARNING, ALERT_CLOSE_NOTIFY, True), seen
    assert seen["notified after close"] == [], seen
    assert seen["served after close"] is False, seen
    assert gw.proc.poll() is None
    assert "Traceback" not in gw.log()
