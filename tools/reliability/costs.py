"""What sessions, observations and remembered exchanges cost the gateway, in RSS.

    PYTHONPATH=tools .venv/bin/python -m reliability.costs [--sessions 400]

Starts a gateway on loopback (demo config, no mDNS), mints one client per
session, opens the sessions from distinct loopback addresses, registers ten
observations on each, then floods requests that the fast path leaves to
aiocoap (Block2) in four rounds; prints JSON with the cost of each and RSS
after each round (a bounded memory stays flat).  docs/reliability.md's
worst-case table comes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import time

from aiocoap import Code, Message
from aiocoap.optiontypes import BlockOption

from coapdev.store import CredentialStore, StoreLimits

from .common import GatewayProcess
from .dtlsclient import RawDtlsClient

CONFIG = "[device]\ndemo_light = true\nadvertise = false\n[onboarding]\nmax_clients = 5000\n"


def pump_all(clients: list[RawDtlsClient], seconds: float) -> None:
    with selectors.DefaultSelector() as sel:
        for c in clients:
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, c)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(min(remaining, 0.1)):
                client: RawDtlsClient = key.data
                with contextlib.suppress(OSError):
                    while True:
                        client._dtls.handleMessage(client._session, client.sock.recv(4096))


def source(i: int) -> str:
    return f"127.0.{10 + i // 200}.{1 + i % 200}"


def measure(sessions: int) -> dict[str, object]:
    gw = GatewayProcess.from_config_text(CONFIG, log_level="warning")
    store = CredentialStore.open(
        gw.state_dir, onboarding_window_s=900, limits=StoreLimits(max_clients=sessions + 10)
    )
    records = [store.mint_client(f"c{i}", now=time.time()) for i in range(sessions)]
    gw.start()
    clients: list[RawDtlsClient] = []
    try:
        time.sleep(1.0)
        idle = gw.rss_kib()
        for i, record in enumerate(records):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source(i), 0))
            c = RawDtlsClient("127.0.0.1", gw.port, record.identity.encode(), record.key, sock=sock)
            if not c.handshake(3.0):
                raise RuntimeError(f"session {i}: handshake failed")
            clients.append(c)
        pump_all(clients, 1.0)
        with_sessions = gw.rss_kib()
        mid = 0
        for n, c in enumerate(clients):
            for _ in range(10):
                mid += 1
                m = Message(code=Code.GET, uri_path=("light",), observe=0)
                m.mtype, m.mid, m.token = 0, mid % 65536, mid.to_bytes(4, "big")
                c.send_plain(m.encode())
            if n % 20 == 0:
                pump_all(clients, 0.05)
        pump_all(clients, 2.0)
        observing = gw.rss_kib()
        accepted = sum(
            1 for c in clients for raw in c.received if Message.decode(raw).opt.observe is not None
        )
        rounds = []
        for _ in range(4):
            for _ in range(16):
                for c in clients:
                    mid += 1
                    m = Message(code=Code.GET, uri_path=("device",))
                    m.opt.block2 = BlockOption.BlockwiseTuple(0, False, 6)
                    m.mtype, m.mid, m.token = 0, mid % 65536, mid.to_bytes(4, "big")
                    c.send_plain(m.encode())
                pump_all(clients, 0.1)
            pump_all(clients, 1.0)
            rounds.append(gw.rss_kib() - observing)
        return {
            "sessions": sessions,
            "idle_kib": idle,
            "per_session_kib": round((with_sessions - idle) / sessions, 2),
            "observations": accepted,
            "per_observation_kib": round((observing - with_sessions) / max(accepted, 1), 2),
            "aiocoap_requests_per_round": 16 * sessions,
            "rss_after_each_round_kib": rounds,
        }
    finally:
        for c in clients:
            c.close()
        gw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=400)
    args = parser.parse_args()
    print(json.dumps(measure(args.sessions), indent=1))


if __name__ == "__main__":
    main()
