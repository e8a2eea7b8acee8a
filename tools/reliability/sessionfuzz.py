"""Fuzzers that speak from inside a session, and inside the handshake past the cookie.

``grammar``: well-framed but odd CoAP messages (see :mod:`.coapgrammar`)
inside authenticated DTLS sessions as an admin, a user and the factory
identity, to every resource; every answer is judged (no 5.xx from a
built-in, nothing but 4.xx off the onboarding paths for the factory
identity).

``handshake``: handshakes whose ClientHello (both of them, so the cookie
still checks out) or ClientKeyExchange is changed field by field (see
:mod:`.handshake`), with the factory key, a client's key, a wrong key and
unknown identities, from 250 loopback addresses.

Both run against a gateway of their own on loopback while a legitimate
client keeps working, and pass only if: no finding, the gateway never
exited, its log holds no traceback, its RSS grew at most ``--rss-bound-mib``,
the legitimate client had no error, and a brand-new client is onboarded and
served afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from . import coapgrammar as grammar
from . import handshake as hs
from .common import GatewayProcess
from .dtlsclient import RawDtlsClient

FUZZ_SOURCES = [f"127.0.1.{i}" for i in range(1, 251)]
#: How long to wait for the answer to one message: built-ins answer at once, scripts later.
BUILTIN_WAIT_S = 0.03
SCRIPT_WAIT_S = 0.5
#: Findings kept in full (input, answer) for the report.
MAX_FINDINGS_KEPT = 20


@dataclass
class Finding:
    kind: str
    identity: str
    path: str
    problem: str
    sent_hex: str
    answer: str
    #: What this session sent before it (oldest first), to reproduce the state.
    before_hex: list[str] = field(default_factory=list)

    def text(self) -> str:
        shown = [h if len(h) <= 120 else h[:120] + "..." for h in self.before_hex]
        before = f"; after {', '.join(shown)}" if shown else ""
        return (
            f"{self.problem}: {self.kind} as {self.identity} to {self.path}; "
            f"sent {self.sent_hex}; answer {self.answer}{before}"
        )


@dataclass
class Stats:
    inputs: collections.Counter = field(default_factory=collections.Counter)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    answers_by_class: collections.Counter = field(default_factory=collections.Counter)
    findings: int = 0
    findings_kept: list[Finding] = field(default_factory=list)
    rss_samples: list[int] = field(default_factory=list)
    rss_times: list[float] = field(default_factory=list)
    crashes: int = 0
    sessions_opened: int = 0

    def find(self, finding: Finding) -> None:
        self.findings += 1
        if len(self.findings_kept) < MAX_FINDINGS_KEPT:
            self.findings_kept.append(finding)


def _socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((random.choice(FUZZ_SOURCES), 0))
    return s


# --- the grammar fuzzer -----------------------------------------------------------------


class Session:
    """One authenticated DTLS session of a bare client, speaking raw CoAP.

    Answers are matched to the messages sent (by token, empty ones by
    message id) for as long as ``RECENT_CASES`` later messages, so an answer
    that comes after its wait is still judged.
    """

    RECENT_CASES = 64

    def __init__(
        self,
        gw: GatewayProcess,
        name: str,
        identity: bytes,
        key: bytes,
        on_answer: Any,
    ) -> None:
        self.name = name
        self.client = RawDtlsClient(gw.host, gw.port, identity, key, sock=_socket())
        self.ok = self.client.handshake(3.0)
        self.on_answer = on_answer
        self._by_token: collections.OrderedDict[bytes, grammar.Case] = collections.OrderedDict()
        self._by_mid: collections.OrderedDict[int, grammar.Case] = collections.OrderedDict()
        self.sent: collections.deque[bytes] = collections.deque(maxlen=self.RECENT_CASES)

    @property
    def alive(self) -> bool:
        c = self.client
        return self.ok and c.failed is None and not c.closed_by_peer

    def _reply_to_unsolicited(self, answer: grammar.Answer) -> None:
        """Acknowledge a CON the gateway sends; cancel any notification (RST)."""
        observed = any(n == grammar.OBSERVE for n, _ in answer.options)
        if answer.mtype == grammar.CON:
            kind = grammar.RST if observed else grammar.ACK
            self.client.send_plain(grammar.encode(kind, 0, answer.mid, b""))
        elif answer.mtype == grammar.NON and observed:
            self.client.send_plain(grammar.encode(grammar.RST, 0, answer.mid, b""))

    def _remember(self, case: grammar.Case) -> None:
        for table, key in ((self._by_token, case.token), (self._by_mid, case.mid)):
            table[key] = case  # type: ignore[index]
            table.move_to_end(key)  # type: ignore[arg-type]
            while len(table) > self.RECENT_CASES:
                table.popitem(last=False)

    def exchange(self, case: grammar.Case, wait_s: float) -> bool:
        """Send ``case`` and wait up to ``wait_s`` for its answer; whether one came."""
        c = self.client
        self._remember(case)
        self.sent.append(case.data)
        c.send_plain(case.data)
        deadline = time.monotonic() + wait_s
        answered = False
        while not answered and time.monotonic() < deadline:
            c.pump(0.005)
            arrived, c.received[:] = list(c.received), []
            for data in arrived:
                answer = grammar.decode(data)
                if answer is None:
                    continue
                if answer.code != 0:
                    owner = self._by_token.get(answer.token)
                else:
                    owner = self._by_mid.get(answer.mid)
                if owner is not None:
                    self.on_answer(owner, answer)
                    if owner is case and (answer.code != 0 or answer.mtype == grammar.RST):
                        answered = True
                    elif owner is case and case.mtype != grammar.CON:
                        answered = True
                self._reply_to_unsolicited(answer)
        return answered

    def close(self) -> None:
        self.client.close(notify=True)


class GrammarFuzzer:
    def __init__(self, gw: GatewayProcess, rng: random.Random, key: str) -> None:
        from coapdev.const import FACTORY_IDENTITY
        from coapdev.keys import factory_psk

        self.gw = gw
        self.rng = rng
        self.key = key
        self.factory = (FACTORY_IDENTITY.encode(), factory_psk(key))
        self.stats = Stats()
        self.creds: dict[str, Any] = {}
        self.sessions: dict[str, Session] = {}
        self.mid = rng.randrange(65536)
        #: Which identities speak (a user and the factory identity twice as often) and
        #: which kinds of message are sent (None: all), to narrow down a finding.
        self.identity_choices = ["admin", "user", "user", "factory", "factory"]
        self.kinds: list[str] | None = None

    def _onboard(self, name: str) -> Any:
        from coapdev.client import onboard

        return asyncio.run(onboard(self.gw.uri, self.key, f"fuzz-{name}", timeout_s=10))

    def setup(self) -> None:
        self.creds["admin"] = self._onboard("admin")
        self.gw.local("clients", "role", self.creds["admin"].client_id, "admin")
        self.creds["user"] = self._onboard("user")

    def targets(self) -> list[grammar.Target]:
        ids = [c.client_id for c in self.creds.values()]
        builtin = [
            (),
            ("device",),
            ("clients",),
            *[("clients", i) for i in ids],
            ("clients", "no-such-client"),
            ("rekey",),
            ("onboard",),
            ("15011", "9063"),
            (".well-known", "core"),
            ("light",),
            ("nothing", "here"),
        ]
        scripts = [("echo",), ("plain",)]  # not /legit: the legitimate client's own
        return [grammar.Target(p, True) for p in builtin] + [
            grammar.Target(p, False) for p in scripts
        ]

    def _session(self, name: str) -> Session | None:
        session = self.sessions.get(name)
        if session is not None and session.alive:
            return session
        if session is not None:
            session.close()
        if name == "factory":
            identity, key = self.factory
        else:
            creds = self.creds[name]
            identity, key = creds.identity.encode(), creds.key
        session = Session(self.gw, name, identity, key, self._judge)
        if not session.ok and name != "factory":
            # Fuzzed requests may revoke or rotate this client: onboard it anew.
            session.close()
            with contextlib.suppress(Exception):
                self.creds[name] = self._onboard(name)
            creds = self.creds[name]
            session = Session(self.gw, name, creds.identity.encode(), creds.key, self._judge)
        if not session.ok:
            session.close()
            self.stats.outcomes["session-failed"] += 1
            return None
        self.stats.sessions_opened += 1
        self.sessions[name] = session
        return session

    def step(self) -> None:
        name = self.rng.choice(self.identity_choices)
        session = self._session(name)
        if session is None:
            return
        self.mid = (self.mid + 1) & 0xFFFF
        kind = self.rng.choice(self.kinds) if self.kinds else None
        case = grammar.generate(self.rng, self.targets(), name, self.mid, kind)
        self.stats.inputs[case.kind] += 1
        wait = BUILTIN_WAIT_S if case.target.builtin else SCRIPT_WAIT_S
        if not session.exchange(case, wait):
            self.stats.outcomes["no answer within the wait"] += 1

    def _judge(self, case: grammar.Case, answer: grammar.Answer) -> None:
        self.stats.answers_by_class["empty" if answer.code == 0 else f"{answer.code >> 5}.xx"] += 1
        problem = grammar.judge(case, answer)
        if problem is not None:
            session = self.sessions.get(case.identity)
            before = [d.hex() for d in session.sent] if session is not None else []
            if before and before[-1] == case.data.hex():
                before.pop()
            self.stats.find(
                Finding(
                    case.kind,
                    case.identity,
                    "/" + "/".join(case.target.path),
                    problem,
                    case.data.hex(),
                    f"{answer.code_text} {answer.payload[:120]!r}",
                    before[-16:],
                )
            )

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


# --- the handshake fuzzer ---------------------------------------------------------------


class HandshakeFuzzer:
    def __init__(self, gw: GatewayProcess, rng: random.Random, key: str, user: Any) -> None:
        from coapdev.const import FACTORY_IDENTITY
        from coapdev.keys import factory_psk

        self.gw = gw
        self.rng = rng
        self.stats = Stats()
        self.keys = [
            ("factory", FACTORY_IDENTITY.encode(), factory_psk(key)),
            ("client", user.identity.encode(), user.key),
            ("wrong-key", user.identity.encode(), bytes(16)),
            ("unknown", b"nobody-" + str(rng.randrange(10**6)).encode(), b"k" * 16),
        ]
        self.identities = [FACTORY_IDENTITY.encode(), user.identity.encode()]

    def step(self) -> None:
        rng = self.rng
        who, identity, key = rng.choice(self.keys)
        if rng.random() < 0.6:
            plan = hs.hello_plan(rng)
            kind = f"hello:{plan.name}"

            def mutator(index: int, data: bytes) -> bytes | None:
                return plan.apply(data) if index in (0, 1) else data

        else:
            changed: list[str] = []

            def mutator(index: int, data: bytes) -> bytes | None:
                if index == 2:
                    what, mutated = hs.mutate_key_exchange(rng, data, self.identities)
                    changed.append(what if mutated != data else "unchanged")
                    return mutated
                return data

            kind = "key-exchange"
        client = RawDtlsClient(
            self.gw.host, self.gw.port, identity, key, mutate=mutator, sock=_socket()
        )
        client.keep_arrived = True
        try:
            connected = client.handshake(rng.choice([0.05, 0.1, 0.3]))
            said = hs.server_said(client.arrived)
            if kind == "key-exchange":
                kind = f"key-exchange:{changed[0] if changed else 'not-reached'}"
        finally:
            client.close(notify=connected)
        self.stats.inputs[kind] += 1
        self.stats.outcomes[f"{who}: {'connected' if connected else 'refused'}"] += 1
        # Without the right key no handshake may complete; nor with a changed
        # ClientKeyExchange: the Finished messages cover the transcript.
        if connected and (
            who in ("wrong-key", "unknown")
            or (kind.startswith("key-exchange:") and kind != "key-exchange:unchanged")
        ):
            self.stats.find(
                Finding(kind, who, "(handshake)", "a handshake completed", "", "connected")
            )
        if "server-hello" in said:
            self.stats.outcomes["past the cookie check"] += 1
        if "alert" in said:
            self.stats.outcomes["alert"] += 1
        if not said:
            self.stats.outcomes["silence"] += 1


# --- running either -----------------------------------------------------------------------


def run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from coapdev.client import Client, onboard

    from .fuzz import CONFIG, LegitClient

    rng = random.Random(args.seed)
    gw = GatewayProcess.from_config_text(CONFIG, log_level="warning").start()
    result: dict[str, Any] = {"mode": mode, "seed": args.seed}
    legit: LegitClient | None = None
    fuzzer: GrammarFuzzer | HandshakeFuzzer | None = None
    try:
        key = gw.factory_key()
        legit = LegitClient(asyncio.run(onboard(gw.uri, key, "legit-admin", timeout_s=10)))
        legit.start()
        time.sleep(1.0)
        if mode == "grammar":
            fuzzer = GrammarFuzzer(gw, rng, key)
            if args.kinds:
                fuzzer.kinds = args.kinds.split(",")
            if args.identities:
                fuzzer.identity_choices = args.identities.split(",")
            fuzzer.setup()
        else:
            user = asyncio.run(onboard(gw.uri, key, "fuzz-user", timeout_s=10))
            fuzzer = HandshakeFuzzer(gw, rng, key, user)
        rss_before = gw.rss_kib()
        started = time.monotonic()
        last_sample = 0.0
        steps = 0
        while steps < args.inputs and time.monotonic() - started < args.seconds:
            fuzzer.step()
            steps += 1
            now = time.monotonic()
            if now - last_sample >= 1.0:
                last_sample = now
                if not gw.alive:
                    fuzzer.stats.crashes += 1
                    break
                fuzzer.stats.rss_samples.append(gw.rss_kib())
                fuzzer.stats.rss_times.append(round(now - started, 1))
        elapsed = time.monotonic() - started
        if isinstance(fuzzer, GrammarFuzzer):
            fuzzer.close()
        if gw.alive:
            time.sleep(args.settle)
        alive = gw.alive
        if not alive and not fuzzer.stats.crashes:
            fuzzer.stats.crashes += 1
        rss_after = gw.rss_kib() if alive else 0
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
        log = gw.log()
        s = fuzzer.stats
        lstats = legit.stats
        result.update(
            {
                "seconds": round(elapsed, 1),
                "inputs": sum(s.inputs.values()),
                "inputs_by_kind": dict(s.inputs),
                "outcomes": dict(s.outcomes),
                "answers_by_class": dict(s.answers_by_class),
                "sessions_opened": s.sessions_opened,
                "findings": s.findings,
                "findings_kept": [f.text() for f in s.findings_kept],
                "crashes": s.crashes,
                "gateway_answers_after": answers,
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "rss_max_kib": max([*s.rss_samples, rss_after]),
                "rss_timeline_kib": list(zip(s.rss_times, s.rss_samples, strict=True))[::10],
                "rss_bound_kib": args.rss_bound_mib * 1024,
                "tracebacks_in_log": log.count("Traceback"),
                "legit_requests": lstats.requests,
                "legit_errors": len(lstats.errors),
                "legit_error_samples": lstats.errors[:5],
            }
        )
        if args.log_copy:
            from pathlib import Path

            Path(args.log_copy).write_text(log)
        result["traceback_signatures"] = traceback_signatures(log)
        if result["tracebacks_in_log"]:
            at = log.index("Traceback")
            result["first_traceback"] = log[max(0, at - 300) : at + 3000]
        result["passed"] = bool(
            s.crashes == 0
            and answers
            and s.findings == 0
            and result["tracebacks_in_log"] == 0
            and rss_after - rss_before <= args.rss_bound_mib * 1024
            and lstats.requests > 0
            and not lstats.errors
        )
        return result
    finally:
        if legit is not None:
            legit.stop()
        gw.close()


def traceback_signatures(log: str) -> dict[str, int]:
    """The exception line ending each traceback in a gateway log, and how often it came."""
    found: collections.Counter = collections.Counter()
    inside = False
    for line in log.split("\n"):
        body = line.strip()
        if body.startswith("Traceback (most recent call last)"):
            inside = True
        elif inside and line.startswith("  ") and not line.startswith("   ") and body:
            if not body.startswith(("During handling", "The above exception")):
                found[body[:200]] += 1
        elif inside and not line.startswith(" "):
            inside = False
    return dict(found)


def report(result: dict[str, Any]) -> str:
    mib = 1024
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result["inputs_by_kind"].items()))
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items()))
    lines = [
        f"{result['mode']} fuzz: {result['inputs']} inputs in {result['seconds']} s "
        f"(seed {result['seed']})",
        f"  inputs: {kinds}",
        f"  outcomes: {outcomes}",
    ]
    if result["answers_by_class"]:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(result["answers_by_class"].items()))
        lines.append(f"  answers: {classes}; sessions opened {result['sessions_opened']}")
    lines += [
        f"findings: {result['findings']}",
        *[f"  {text}" for text in result["findings_kept"]],
        f"gateway: crashes {result['crashes']}, tracebacks in its log "
        f"{result['tracebacks_in_log']}, still answers a new client: "
        f"{'yes' if result['gateway_answers_after'] else 'NO'}",
        f"  RSS before {result['rss_before_kib'] / mib:.1f} MiB, after "
        f"{result['rss_after_kib'] / mib:.1f} MiB, max {result['rss_max_kib'] / mib:.1f} MiB "
        f"(bound: +{result['rss_bound_kib'] / mib:.0f} MiB)",
        f"legitimate client: {result['legit_requests']} requests, {result['legit_errors']} errors",
    ]
    lines += [f"  error: {e}" for e in result["legit_error_samples"]]
    for signature, count in result["traceback_signatures"].items():
        lines.append(f"  traceback x{count}: {signature}")
    if "first_traceback" in result:
        lines.append("first traceback in the gateway log:\n" + result["first_traceback"])
    lines.append("RESULT: " + ("PASS" if result["passed"] else "FAIL"))
    return "\n".join(lines)
