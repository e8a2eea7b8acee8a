"""coapdev's DTLS server transport, piece by piece, in one process over loopback."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from coapdev.client import Client, Credentials, DeviceAddress
from coapdev.errors import HandshakeFailed
from coapdev.server.device import DeviceOptions, DeviceServer
from coapdev.server.dtls import DtlsServerOptions
from coapdev.store import CredentialStore

pytestmark = pytest.mark.integration


NOW = time.time()


async def start_device(tmp_path, **dtls_options) -> DeviceServer:
    store = CredentialStore.open(tmp_path / "state", onboarding_window_s=600)
    options = DeviceOptions(host="127.0.0.1", port=0, dtls=DtlsServerOptions(**dtls_options))
    server = DeviceServer(store, options)
    await server.start()
    return server


def creds_for(server: DeviceServer, name: str) -> Credentials:
    record = server.store.mint_client(name, now=time.time())
    return Credentials(
        server.store.device.id,
        DeviceAddress("127.0.0.1", server.port),
        record.identity,
        record.key,
        name=name,
    )


def dtls(server: DeviceServer):
    return server.transport.dtls


def test_session_cap_evicts_least_recently_active_and_client_reconnects(tmp_path):
    async def scenario():
        server = await start_device(tmp_path, max_sessions=3)
        try:
            reconnects = []
            first = Client(
                creds_for(server, "first"), timeout_s=5, on_reconnect=lambda: reconnects.append(1)
            )
            others = [Client(creds_for(server, f"c{i}"), timeout_s=5) for i in range(4)]
            assert (await first.get("/device")).ok
            for c in others:
                assert (await c.get("/device")).ok
                assert dtls(server).session_count <= 3
            assert dtls(server).stats["evicted-cap"] >= 2
            assert (await first.get("/device")).ok  # evicted, reconnects transparently
            assert reconnects == [1]
            for c in [first, *others]:
                await c.close()
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_idle_sessions_are_evicted(tmp_path):
    async def scenario():
        server = await start_device(tmp_path, idle_timeout_s=1.0, handshake_timeout_s=2.0)
        try:
            async with Client(creds_for(server, "idle"), timeout_s=5) as client:
                assert (await client.get("/device")).ok
                assert dtls(server).session_count == 1
                await asyncio.sleep(2.5)
                assert dtls(server).session_count == 0
                assert dtls(server).stats["evicted-idle"] == 1
                assert (await client.get("/device")).ok
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_close_notify_from_the_client_frees_the_session(tmp_path):
    async def scenario():
        server = await start_device(tmp_path)
        try:
            client = Client(creds_for(server, "polite"), timeout_s=5)
            assert (await client.get("/device")).ok
            assert dtls(server).session_count == 1
            await client.close()  # sends close_notify
            await asyncio.sleep(0.2)
            assert dtls(server).session_count == 0
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_revocation_closes_live_sessions(tmp_path):
    async def scenario():
        server = await start_device(tmp_path)
        try:
            creds = creds_for(server, "victim")
            async with Client(creds, timeout_s=3) as client:
                assert (await client.get("/device")).ok
                record = server.store.find_client("victim")
                server.store.revoke(record.id, force=True)
                await asyncio.sleep(0)  # closed right after the change, by the store's event
                assert dtls(server).session_count == 0
                with pytest.raises(HandshakeFailed, match="not known there"):
                    await client.get("/device")
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_wrong_key_fails_fast_with_an_alert_and_is_reported(tmp_path):
    async def scenario():
        server = await start_device(tmp_path)
        failures = []
        dtls(server).handshake_failed = lambda host, reason: failures.append((host, reason))
        try:
            good = creds_for(server, "someone")
            wrong = Credentials(good.device_id, good.address, good.identity, b"x" * 16)
            started = time.monotonic()
            async with Client(wrong, timeout_s=8) as client:
                with pytest.raises(HandshakeFailed, match="did not accept the key"):
                    await client.get("/device")
            assert time.monotonic() - started < 2  # not a timeout
            assert failures == [("127.0.0.1", "wrong key")]
            assert dtls(server).session_count == 0
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_spoofed_client_hellos_create_no_state(tmp_path):
    """ClientHellos without a valid cookie (spoofed sources) cost no memory."""

    async def scenario():
        server = await start_device(tmp_path)
        try:
            hello = _client_hello()
            sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
            try:
                for s in sockets:
                    s.sendto(hello, ("127.0.0.1", server.port))
                await asyncio.sleep(0.5)
            finally:
                for s in sockets:
                    s.close()
            assert dtls(server).session_count == 0
            assert len(dtls(server)._by_session_key) == 0
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_stalled_handshakes_are_abandoned(tmp_path):
    """A client that answers the cookie and then goes silent is forgotten."""

    async def scenario():
        server = await start_device(tmp_path, handshake_timeout_s=1.0)
        try:
            await _stall_after_cookie(server.port)
            assert dtls(server).session_count == 1
            await asyncio.sleep(2.5)
            assert dtls(server).session_count == 0
            assert dtls(server).stats["handshake-timeout"] == 1
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_lost_final_flight_is_sent_again(tmp_path):
    """If the server's ChangeCipherSpec/Finished is lost, the client's retransmission recovers."""

    async def scenario():
        server = await start_device(tmp_path)
        proxy = await _LossyProxy.start(server.port)
        try:
            creds = creds_for(server, "unlucky")
            creds.address = DeviceAddress("127.0.0.1", proxy.port)
            async with Client(creds, timeout_s=10) as client:
                assert (await client.get("/device")).ok
            assert proxy.dropped == 1
            assert dtls(server).stats["final-flight-resent"] >= 1
        finally:
            proxy.close()
            await server.stop()

    asyncio.run(scenario())


def test_an_established_session_is_never_renegotiated(tmp_path):
    """A ClientHello inside a session never reaches tinydtls: no handshake, no answer."""
    from aiocoap import Code, Message
    from reliability.dtls12 import CT_HANDSHAKE, Dtls12PskClient, HelloOptions

    async def scenario():
        server = await start_device(tmp_path)
        try:
            creds = creds_for(server, "renegotiator")

            def renegotiate() -> tuple[list, Message]:
                bare = HelloOptions(extended_master_secret=False, renegotiation_info=False)
                with Dtls12PskClient(
                    "127.0.0.1", server.port, creds.identity.encode(), creds.key, hello=bare
                ) as c:
                    c.handshake()
                    get = Message(code=Code.GET, uri_path=("device",))
                    get.mtype, get.mid, get.token = 0, 1, b"r"
                    assert Message.decode(c.request(get.encode())).code == Code.CONTENT
                    c.send_protected(CT_HANDSHAKE, c.renegotiation_hello())
                    answer = c.receive(1.0)
                    get.mid = 2
                    return answer, Message.decode(c.request(get.encode()))

            answer, after = await asyncio.to_thread(renegotiate)
            assert answer == [] and after.code == Code.CONTENT
            assert dtls(server).stats["handshakes"] == 1  # no second "connected" event
            assert dtls(server).stats["dropped-renegotiation"] == 1
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_runt_datagrams_on_an_established_session_are_dropped_quietly(tmp_path, caplog):
    """Empty and truncated datagrams from a session's own address: no traceback, served on."""
    from aiocoap import Code, Message
    from reliability.dtls12 import Dtls12PskClient

    async def scenario():
        server = await start_device(tmp_path)
        try:
            creds = creds_for(server, "runt")

            def send_runts() -> Message:
                with Dtls12PskClient(
                    "127.0.0.1", server.port, creds.identity.encode(), creds.key
                ) as c:
                    c.handshake()
                    for runt in (b"", b"\x17", b"\x15\xfe\xfd", b"\x16" * 12, b"\x17" * 14):
                        c.send_datagram(runt)
                    get = Message(code=Code.GET, uri_path=("device",))
                    get.mtype, get.mid, get.token = 0, 1, b"r"
                    return Message.decode(c.request(get.encode()))

            assert (await asyncio.to_thread(send_runts)).code == Code.CONTENT
        finally:
            await server.stop()

    with caplog.at_level("ERROR", logger="coapdev.dtls"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.exc_info], caplog.text


# --- helpers -------------------------------------------------------------------------


def _client_hello() -> bytes:
    """A minimal DTLS 1.2 ClientHello without cookie offering TLS_PSK_WITH_AES_128_CCM_8."""
    body = bytes([0xFE, 0xFD]) + bytes(32)  # version, random
    body += b"\x00"  # session id
    body += b"\x00"  # cookie
    body += b"\x00\x02\xc0\xa8"  # cipher suites
    body += b"\x01\x00"  # compression methods: null
    handshake = bytes([1]) + len(body).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00"
    handshake += len(body).to_bytes(3, "big") + body
    record = bytes([22, 0xFE, 0xFD, 0, 0]) + (0).to_bytes(6, "big")
    return record + len(handshake).to_bytes(2, "big") + handshake


async def _stall_after_cookie(port: int) -> None:
    """Handshake with tinydtls as a client until the server created its state, then vanish."""
    from DTLSSocket import dtls as tinydtls

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    outbox = []

    def write(_addr, data):
        outbox.append(data)
        return len(data)

    ctx = tinydtls.DTLS(
        read=lambda a, d: len(d),
        write=write,
        event=lambda lv, c: 0,
        pskId=b"someone",
        pskStore={b"someone": b"k" * 16},
    )
    conn = ctx.connect("::1", 20000)
    try:
        for _ in range(2):  # ClientHello, then ClientHello with the cookie
            for data in outbox:
                sock.send(data)
            outbox.clear()
            reply = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 2048)
            ctx.handleMessage(tinydtls.Session("::1", 20000), reply)
    finally:
        del conn
        sock.close()


class _LossyProxy(asyncio.DatagramProtocol):
    """Between one client and the server; drops the server's first ChangeCipherSpec datagram."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.client_addr = None
        self.dropped = 0
        self.upstream = None

    @classmethod
    async def start(cls, server_port: int) -> _LossyProxy:
        loop = asyncio.get_running_loop()
        self = cls(server_port)
        self.front, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.port = self.front.get_extra_info("sockname")[1]
        outer = self

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if outer.dropped == 0 and data[:1] == b"\x14":  # ChangeCipherSpec first
                    outer.dropped += 1
                    return
                outer.front.sendto(data, outer.client_addr)

        self.upstream, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.server)
        return self

    def datagram_received(self, data, addr):
        self.client_addr = addr
        self.upstream.sendto(data)

    def close(self) -> None:
        self.front.close()
        if self.upstream is not None:
            self.upstream.close()
