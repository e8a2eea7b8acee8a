"""Live datagram fuzzer: hostile CoAP and DTLS datagrams at a running gateway, on loopback.

    tools/fuzz --quick              # CI: ~15 s, a few thousand inputs
    tools/fuzz                      # longer: 5 minutes or 300 000 datagrams
    tools/fuzz --seconds 60 --datagrams 50000 --seed 7 --json result.json
    tools/fuzz --mode grammar [--quick]     # odd CoAP inside sessions (see sessionfuzz.py)
    tools/fuzz --mode handshake [--quick]   # mutated ClientHello/ClientKeyExchange

It starts its own gateway (loopback only, a fresh state directory), onboards
a legitimate admin client that keeps working throughout (requests, and an
observation whose every change must arrive), and then sends, from many
source addresses in 127.0.1.0/24 and ports:

- random datagrams, and random records that look like DTLS;
- mutated ClientHellos, and whole handshakes with one flight mutated
  (identity, lengths, cookie, Finished), with known, unknown and wrong keys;
- inside real authenticated sessions: mutated CoAP requests (options, block
  transfers, observe, every built-in and script resource), as a user client
  and as the factory identity (onboarding payloads in CBOR and JSON);
- tampered ciphertext and replays of captured datagrams.

Bounded by count and time.  Afterwards the gateway must still answer a new
client, its RSS must not have grown beyond ``--rss-bound-mib``, the
legitimate client must have had no error and missed no notification, and
the gateway must never have exited (crashes = 0).  Exit status 0 if all
hold.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import GatewayProcess, percentile
from .dtlsclient import RawDtlsClient

CONFIG = """
[device]
demo_light = true
advertise = false

[onboarding]
always_open = true
max_clients = 300
attempts_burst = 50
attempts_per_minute = 600

[limits]
max_sessions = 2000
handshake_timeout_s = 4
# the fuzz user re-onboards itself after fuzzed requests revoked it, and the
# fresh client at the end must not be refused for what the fuzzer spent
changes_burst = 1000000
changes_per_minute = 1000000
device_changes_per_s = 1000000

[[resource]]
path = "/legit"
title = "written and observed by the legitimate client only"
put = { run = ["dd", "of=legit.txt", "status=none"], roles = ["admin"] }
get = { run = ["cat", "legit.txt"], roles = ["admin"] }
observe = { interval_s = 0.25 }

[[resource]]
path = "/echo"
output = "octets"
max_input_bytes = 8192
concurrency = 2
get = { run = ["echo", "hello"] }
put = { run = ["cat"] }
post = { run = ["cat"] }
observe = { interval_s = 1.0 }

[[resource]]
path = "/plain"
title = "a script resource that is not observable"
get = { run = ["echo", "plain"] }
"""

FUZZ_SOURCES = [f"127.0.1.{i}" for i in range(1, 251)]


# --- mutation ------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, rounds: int | None = None) -> bytes:
    out = bytearray(data)
    for _ in range(rounds if rounds is not None else rng.randint(1, 6)):
        op = rng.randrange(8)
        pos = rng.randrange(len(out)) if out else 0
        if op == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x0D, 0x0E, 0x0F, 0xFE, 0x01])
        elif op == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and out:
            del out[pos : pos + rng.randint(1, 16)]
        elif op == 4:
            del out[pos:]
        elif op == 5 and out:
            out[pos:pos] = out[pos : pos + rng.randint(1, 64)] * rng.randint(1, 4)
        elif op == 6 and len(out) > 2:  # a 16-bit length field somewhere
            value = rng.choice([0, 1, 0xFF, 0x100, 0x3FFF, 0xFFFF, len(out)])
            out[pos : pos + 2] = value.to_bytes(2, "big")
        elif op == 7:
            out += rng.randbytes(rng.randint(1, 64))
    return bytes(out[:1500])


def dtls_like(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 3)):
        content_type = rng.choice([20, 21, 22, 23, 22, 22, rng.randrange(256)])
        version = rng.choice([b"\xfe\xfd", b"\xfe\xff", rng.randbytes(2)])
        epoch = rng.choice([0, 0, 1, rng.randrange(65536)])
        body = rng.randbytes(rng.randint(0, 200))
        if content_type == 22 and body:
            body = bytes([rng.choice([1, 2, 3, 11, 12, 14, 15, 16, 20, 255])]) + body[1:]
        length = rng.choice([len(body), len(body), rng.randrange(65536)])
        out += (
            bytes([content_type])
            + version
            + epoch.to_bytes(2, "big")
            + rng.randbytes(6)
            + length.to_bytes(2, "big")
            + body
        )
    return out


def coap_corpus(client_id: str) -> list[bytes]:
    """Valid requests to every resource; the fuzzer mutates them."""
    from aiocoap import Code, Message
    from aiocoap.optiontypes import BlockOption

    def msg(code, path, payload=b"", mtype=0, **opts):
        m = Message(code=code, uri_path=path, payload=payload)
        m.mtype = mtype
        m.mid = 0x1234
        m.token = b"\x01\x02\x03\x04"
        for name, value in opts.items():
            setattr(m.opt, name, value)
        return m.encode()

    cbor_true = b"\xa1\x62on\xf5"
    requests = [
        msg(Code.GET, ("device",)),
        msg(Code.GET, ("device",), mtype=1, accept=50),
        msg(Code.GET, ("light",), observe=0),
        msg(Code.GET, ("light",), observe=1),
        msg(Code.PUT, ("light",), cbor_true, content_format=60),
        msg(Code.PUT, ("light",), b"toggle", content_format=0),
        msg(Code.POST, ("light",)),
        msg(Code.GET, (".well-known", "core")),
        msg(Code.GET, ("clients",)),
        msg(Code.GET, ("clients", client_id)),
        msg(Code.PUT, ("clients", client_id), b"\xa1\x64name\x63fuz", content_format=60),
        msg(Code.PUT, ("clients", client_id), b'{"role": "admin"}', content_format=50),
        msg(Code.GET, ("legit",), observe=0),
        msg(Code.PUT, ("legit",), b"evil"),
        msg(Code.GET, ("echo",)),
        msg(Code.GET, ("echo",), observe=0),
        msg(Code.PUT, ("echo",), b"x" * 64, block1=BlockOption.BlockwiseTuple(0, True, 2)),
        msg(Code.PUT, ("echo",), b"y" * 64, block1=BlockOption.BlockwiseTuple(1, True, 2)),
        msg(Code.POST, ("echo",), b"z" * 1024, block1=BlockOption.BlockwiseTuple(0, True, 6)),
        msg(Code.GET, ("echo",), block2=BlockOption.BlockwiseTuple(3, False, 0)),
        msg(Code.FETCH, ("device",), b"\x00"),
        msg(Code.DELETE, ("nothing", "here")),
        msg(Code.GET, ("device",), uri_query=("a=b", "c")),
        msg(Code.GET, ("device",), size2=0, no_response=26),
        bytes([0x40, 0x00, 0x12, 0x34]),  # CoAP ping (empty CON)
        bytes([0x70, 0x00, 0x12, 0x34]),  # RST
        bytes([0x60, 0x00, 0x12, 0x34]),  # empty ACK
    ]
    return requests


def onboard_corpus() -> list[bytes]:
    return [
        b"\xa1\x64name\x66fuzzed",
        b"\xa2\x64name\x61x\x6akey-format\x64text",
        b'{"name": "fuzzed", "key-format": "text"}',
        b'{"9090": "fuzz-ident"}',
    ]


def onboard_request(payload: bytes, rng: random.Random) -> bytes:
    from aiocoap import Code, Message

    path = rng.choice([("onboard",), ("15011", "9063"), ("onboard",)])
    m = Message(code=Code.POST, uri_path=path, payload=payload)
    m.mtype = 0
    m.mid = rng.randrange(65536)
    m.token = rng.randbytes(rng.randint(0, 8))
    m.opt.content_format = rng.choice([60, 50, 0, None, 60, 50])
    return m.encode()


# --- the legitimate client ------------------------------------------------------------


@dataclass
class LegitStats:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    notifications_expected: int = 0
    notifications_missed: int = 0
    reconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    running: bool = True


class LegitClient(threading.Thread):
    """An admin client in its own thread: GET, PUT and an observation that must follow."""

    def __init__(self, creds: Any) -> None:
        super().__init__(daemon=True, name="legit client")
        self.creds = creds
        self.stats = LegitStats()
        self._stop_flag = threading.Event()

    def stop(self) -> None:
        self._stop_flag.set()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from coapdev.client import Client

        stats = self.stats
        seen: list[bytes] = []
        changed = asyncio.Event()

        def reconnected() -> None:
            stats.reconnects += 1

        async with Client(self.creds, timeout_s=5, keepalive_s=10, on_reconnect=reconnected) as c:

            async def watch() -> None:
                async for response in c.observe("/legit"):
                    seen.append(response.payload)
                    changed.set()

            await c.put("/legit", b"value-0")  # the state exists before it is observed
            watcher = asyncio.create_task(watch())
            i = 0
            try:
                while not self._stop_flag.is_set():
                    i += 1
                    value = f"value-{i}".encode()
                    try:
                        for request in (c.get("/device"), c.put("/legit", value)):
                            started = time.perf_counter()
                            await request
                            stats.latencies_ms.append((time.perf_counter() - started) * 1000)
                            stats.requests += 1
                    except Exception as exc:
                        stats.errors.append(f"{type(exc).__name__}: {exc}")
                        await asyncio.sleep(0.2)
                        continue
                    stats.notifications_expected += 1
                    deadline = time.monotonic() + 5
                    while value not in seen and time.monotonic() < deadline:
                        changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), 0.5)
                    if value not in seen:
                        stats.notifications_missed += 1
                    seen.clear()
                    await asyncio.sleep(0.05)
            finally:
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher
        stats.running = False


# --- the fuzzer ------------------------------------------------------------------------


@dataclass
class FuzzStats:
    datagrams: int = 0
    inputs: collections.Counter = field(default_factory=collections.Counter)
    seconds_by_kind: collections.Counter = field(default_factory=collections.Counter)
    handshakes_completed: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    crashes: int = 0


class Fuzzer:
    def __init__(self, gw: GatewayProcess, rng: random.Random, user: Any, factory_key: str) -> None:
        from coapdev.const import FACTORY_IDENTITY
        from coapdev.keys import factory_psk

        self.gw = gw
        self.rng = rng
        self.user = user
        self.factory = (FACTORY_IDENTITY.encode(), factory_psk(factory_key))
        self.stats = FuzzStats()
        self.sockets = [self._socket(rng.choice(FUZZ_SOURCES)) for _ in range(64)]
        self.captured: collections.deque[bytes] = collections.deque(maxlen=64)
        self.corpus = coap_corpus(user.client_id)
        self.session: RawDtlsClient | None = None
        self.factory_session: RawDtlsClient | None = None
        self.recent: collections.deque[tuple[str, str]] = collections.deque(maxlen=40)

    def _socket(self, source: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        s.setblocking(False)
        return s

    def _send(self, data: bytes, sock: socket.socket | None = None) -> None:
        sock = sock or self.rng.choice(self.sockets)
        self.recent.append(("raw", data.hex()))
        with contextlib.suppress(OSError):
            sock.sendto(data, (self.gw.host, self.gw.port))
        self.stats.datagrams += 1

    def _drain(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                while s.recv(4096):
                    pass

    def _client(self, identity: bytes, key: bytes, mutator=None) -> RawDtlsClient:
        sock = self._socket(self.rng.choice(FUZZ_SOURCES))
        client = RawDtlsClient(self.gw.host, self.gw.port, identity, key, mutate=mutator, sock=sock)
        return client

    # --- the generators ---

    def random_datagram(self) -> None:
        self._send(self.rng.randbytes(self.rng.choice([0, 1, 13, 25, 60, 200, 1400])))

    def dtls_record(self) -> None:
        self._send(dtls_like(self.rng))

    def mutated_capture(self) -> None:
        if self.captured:
            self._send(mutate(self.rng, self.rng.choice(self.captured)))
        else:
            self.dtls_record()

    def replay(self) -> None:
        if self.captured:
            self._send(self.rng.choice(self.captured))

    def mutated_handshake(self) -> None:
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            identity, key = self.user.identity.encode(), self.user.key
        elif choice == 1:
            identity, key = self.factory
        elif choice == 2:
            identity, key = self.user.identity.encode(), rng.randbytes(16)  # wrong key
        elif choice == 3:
            identity, key = rng.randbytes(rng.randint(1, 32)), rng.randbytes(16)
        else:
            identity, key = b"unknown-" + str(rng.randrange(10**6)).encode(), b"k" * 16
        target = rng.randrange(6)
        recent = self.recent

        def mutator(index: int, data: bytes) -> bytes | None:
            self.stats.datagrams += 1
            self.captured.append(data)
            if index == target:
                if rng.random() < 0.1:
                    return None  # a lost datagram
                data = mutate(rng, data)
            recent.append(("handshake", data.hex()))
            return data

        client = self._client(identity, key, mutator)
        try:
            if client.handshake(timeout_s=rng.choice([0.003, 0.01, 0.03])):
                self.stats.handshakes_completed += 1
                client.send_plain(rng.choice(self.corpus))
                client.pump(0.02)
        finally:
            client.close(notify=rng.random() < 0.7)

    def _session(self, factory: bool) -> RawDtlsClient | None:
        current = self.factory_session if factory else self.session
        if current is not None and (current.failed is not None or current.closed_by_peer):
            current.close(notify=False)
            current = None
        if current is None:
            user = (self.user.identity.encode(), self.user.key)
            identity, key = self.factory if factory else user
            current = self._client(identity, key, self._recording_mutator())
            if not current.handshake(2.0):
                current.close(notify=False)
                self._reonboard_if_revoked(factory)
                return None
            self.stats.handshakes_completed += 1
            if factory:
                self.factory_session = current
            else:
                self.session = current
        return current

    def _recording_mutator(self):
        def record(index: int, data: bytes) -> bytes:
            self.stats.datagrams += 1
            self.captured.append(data)
            return data

        return record

    def _reonboard_if_revoked(self, factory: bool) -> None:
        """The fuzzed requests may revoke or rotate the fuzz user itself: onboard anew."""
        if factory:
            return
        from coapdev.client import onboard

        with contextlib.suppress(Exception):
            self.user = asyncio.run(
                onboard(self.gw.uri, self.factory[1].decode(), "fuzz-user", timeout_s=5)
            )
            self.corpus = coap_corpus(self.user.client_id)

    def coap_in_session(self) -> None:
        session = self._session(factory=False)
        if session is None:
            return
        base = self.rng.choice(self.corpus)
        data = base if self.rng.random() < 0.1 else mutate(self.rng, base)
        self.recent.append(("coap", data.hex()))
        session.send_plain(data)
        session.pump(0.002)
        session.received.clear()

    def onboarding_in_session(self) -> None:
        session = self._session(factory=True)
        if session is None:
            return
        body = self.rng.choice(onboard_corpus())
        if self.rng.random() < 0.8:
            body = mutate(self.rng, body)
        data = onboard_request(body, self.rng)
        self.recent.append(("onboard", data.hex()))
        session.send_plain(data)
        session.pump(0.002)
        session.received.clear()

    def tampered_ciphertext(self) -> None:
        session = self._session(factory=False)
        if session is None or not self.captured:
            return
        # The last datagrams of the session are its encrypted records: flip bits in one.
        data = bytearray(self.captured[-1])
        if len(data) > 14:
            data[self.rng.randrange(13, len(data))] ^= 1 << self.rng.randrange(8)
        self._send(bytes(data), session.sock)

    def spoofed_session_record(self) -> None:
        """A record from the port of a real session, but not from its peer (or a CCS)."""
        session = self._session(factory=False)
        if session is None:
            return
        record = dtls_like(self.rng)
        if self.rng.random() < 0.3:
            record = bytes([20, 0xFE, 0xFD, 0, 1]) + self.rng.randbytes(6) + b"\x00\x01\x01"
        self._send(record, session.sock)

    GENERATORS = (
        ("random", 3),
        ("dtls_record", 3),
        ("mutated_capture", 2),
        ("replay", 1),
        ("mutated_handshake", 2),
        ("coap_in_session", 6),
        ("onboarding_in_session", 2),
        ("tampered_ciphertext", 1),
        ("spoofed_session_record", 1),
    )

    def step(self) -> None:
        names = [n for n, _ in self.GENERATORS]
        weights = [w for _, w in self.GENERATORS]
        name = self.rng.choices(names, weights)[0]
        method = {"random": self.random_datagram, "dtls_record": self.dtls_record}.get(name)
        started = time.perf_counter()
        (method or getattr(self, name))()
        self.stats.inputs[name] += 1
        self.stats.seconds_by_kind[name] += time.perf_counter() - started

    def close(self) -> None:
        for session in (self.session, self.factory_session):
            if session is not None:
                session.close()
        for s in self.sockets:
            s.close()


# --- running it ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from coapdev.client import Client, onboard

    rng = random.Random(args.seed)
    gw = GatewayProcess.from_config_text(CONFIG, log_level="warning").start()
    result: dict[str, Any] = {"seed": args.seed}
    legit: LegitClient | None = None
    fuzzer: Fuzzer | None = None
    try:
        key = gw.factory_key()
        admin = asyncio.run(onboard(gw.uri, key, "legit-admin", timeout_s=10))
        user = asyncio.run(onboard(gw.uri, key, "fuzz-user", timeout_s=10))
        legit = LegitClient(admin)
        legit.start()
        time.sleep(1.0)  # the legit client is up; the gateway has warmed up
        rss_before = gw.rss_kib()
        fds_before = gw.resident_fds()
        fuzzer = Fuzzer(gw, rng, user, key)
        started = time.monotonic()
        last_sample = 0.0
        crashed_log = ""
        while fuzzer.stats.datagrams < args.datagrams and time.monotonic() - started < args.seconds:
            fuzzer.step()
            if sum(fuzzer.stats.inputs.values()) % 64 == 0:
                fuzzer._drain()
            now = time.monotonic()
            if now - last_sample >= 1.0:
                last_sample = now
                if not gw.alive:
                    fuzzer.stats.crashes += 1
                    crashed_log = gw.log()[-4000:]
                    break
                fuzzer.stats.rss_samples.append((round(now - started, 1), gw.rss_kib()))
        elapsed = time.monotonic() - started
        if gw.alive:
            time.sleep(args.settle)  # half-open handshakes expire, queues drain
        alive = gw.alive
        if not alive and not fuzzer.stats.crashes:
            fuzzer.stats.crashes += 1
            crashed_log = gw.log()[-4000:]
        rss_after = gw.rss_kib() if alive else 0
        fds_after = gw.resident_fds() if alive else 0
        legit.stop()
        legit.join(timeout=20)
        answers = False
        if alive:

            async def fresh() -> bool:
                creds = await onboard(gw.uri, key, "after-the-fuzz", timeout_s=10)
                async with Client(creds, timeout_s=10) as c:
                    return (await c.get("/device")).ok

            try:
                answers = asyncio.run(fresh())
            except Exception as exc:
                result["fresh_client_error"] = str(exc)
        s = legit.stats
        rss_max = max([kib for _, kib in fuzzer.stats.rss_samples] + [rss_after])
        result.update(
            {
                "seconds": round(elapsed, 1),
                "datagrams_sent": fuzzer.stats.datagrams,
                "inputs": sum(fuzzer.stats.inputs.values()),
                "inputs_by_kind": dict(fuzzer.stats.inputs),
                "seconds_by_kind": {
                    k: round(v, 2) for k, v in fuzzer.stats.seconds_by_kind.items()
                },
                "handshakes_completed": fuzzer.stats.handshakes_completed,
                "crashes": fuzzer.stats.crashes,
                "gateway_answers_after": answers,
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "rss_max_kib": rss_max,
                "rss_bound_kib": args.rss_bound_mib * 1024,
                "fds_before": fds_before,
                "fds_after": fds_after,
                "legit_requests": s.requests,
                "legit_errors": len(s.errors),
                "legit_error_samples": s.errors[:5],
                "legit_notifications": s.notifications_expected,
                "legit_notifications_missed": s.notifications_missed,
                "legit_reconnects": s.reconnects,
                "legit_p99_ms": round(percentile(s.latencies_ms, 99), 1),
                "tracebacks_in_log": gw.log().count("Traceback"),
            }
        )
        if crashed_log:
            result["crash_log_tail"] = crashed_log
            result["last_inputs"] = list(fuzzer.recent)
        result["passed"] = bool(
            result["crashes"] == 0
            and answers
            and rss_after - rss_before <= args.rss_bound_mib * 1024
            and fds_after <= fds_before + 4
            and s.requests > 0
            and not s.errors
            and s.notifications_missed == 0
            and s.reconnects == 0
        )
        if args.log_copy:
            Path(args.log_copy).write_text(gw.log())
        return result
    finally:
        if legit is not None:
            legit.stop()
        if fuzzer is not None:
            fuzzer.close()
        gw.close()


def report(result: dict[str, Any]) -> str:
    mib = 1024
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result["inputs_by_kind"].items()))
    lines = [
        f"fuzz: {result['datagrams_sent']} datagrams sent, {result['inputs']} inputs "
        f"in {result['seconds']} s (seed {result['seed']})",
        f"  inputs: {kinds}",
        f"  handshakes completed by the fuzzer: {result['handshakes_completed']}",
        f"gateway: crashes {result['crashes']}, still answers a new client: "
        f"{'yes' if result['gateway_answers_after'] else 'NO'}",
        f"  RSS before {result['rss_before_kib'] / mib:.1f} MiB, after "
        f"{result['rss_after_kib'] / mib:.1f} MiB, max {result['rss_max_kib'] / mib:.1f} MiB "
        f"(bound: +{result['rss_bound_kib'] / mib:.0f} MiB); "
        f"fds {result['fds_before']} -> {result['fds_after']}; "
        f"tracebacks in its log: {result['tracebacks_in_log']}",
        f"legitimate client: {result['legit_requests']} requests, {result['legit_errors']} errors, "
        f"{result['legit_notifications'] - result['legit_notifications_missed']}/"
        f"{result['legit_notifications']} notifications, {result['legit_reconnects']} reconnects, "
        f"p99 {result['legit_p99_ms']} ms: "
        f"{'served throughout' if result['legit_errors'] == 0 else 'NOT served'}",
    ]
    for sample in result.get("legit_error_samples", []):
        lines.append(f"  error: {sample}")
    if "crash_log_tail" in result:
        lines.append("gateway log (tail):\n" + result["crash_log_tail"])
    lines.append("RESULT: " + ("PASS" if result["passed"] else "FAIL"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mode",
        choices=["datagrams", "grammar", "handshake"],
        default="datagrams",
        help="datagrams (the default): hostile datagrams from outside and inside sessions; "
        "grammar: odd but well-framed CoAP inside sessions as admin, user and factory "
        "identity, every answer judged; handshake: ClientHello and ClientKeyExchange "
        "changed field by field, past the cookie check",
    )
    p.add_argument("--quick", action="store_true", help="CI mode: 12 s or 20 000 datagrams")
    p.add_argument("--inputs", type=int, help="grammar/handshake: stop after this many")
    p.add_argument("--kinds", help="grammar: only these kinds of message (comma-separated)")
    p.add_argument(
        "--identities", help="grammar: only these speak (comma-separated: admin,user,factory)"
    )
    p.add_argument("--seconds", type=float, help="stop after this long (default 300)")
    p.add_argument("--datagrams", type=int, help="stop after this many (default 300 000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--rss-bound-mib", type=float, default=32.0, help="allowed RSS growth")
    p.add_argument("--settle", type=float, help="pause before final checks (default 5, quick 2)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--log-copy", metavar="FILE", help="keep a copy of the gateway's log")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 12.0 if args.quick else 300.0
    if args.datagrams is None:
        args.datagrams = 20_000 if args.quick else 300_000
    if args.seed is None:
        args.seed = random.randrange(2**31)
    if args.settle is None:
        args.settle = 2.0 if args.quick else 5.0
    if args.mode != "datagrams":
        from . import sessionfuzz

        if args.inputs is None:
            args.inputs = 5_000 if args.quick else 1_000_000
        result = sessionfuzz.run(args, args.mode)
        print(sessionfuzz.report(result), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return 0 if result["passed"] else 1
    result = run(args)
    print(report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
