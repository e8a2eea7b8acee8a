"""How fast clients can grow the audit log and the journal: the two floods of issue 11 §2.

    PYTHONPATH=tools .venv/bin/python -m reliability.auditgrowth [--seconds 20]

Starts a gateway on loopback (default limits, no mDNS) and runs, for a bounded
time each:

- **knock**: the factory identity with the onboarding window closed, a fresh
  DTLS session (a fresh source port) per round, each asking for a ~900-byte
  path and ``POST /onboard``;
- **rekey**: one user sending ``POST /rekey`` as fast as it is answered.

Prints JSON: requests sent, answers by code, and the bytes the audit log and
lines the journal grew by, per second.  docs/reliability.md §6 quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

from aiocoap import Code, Message

from coapdev.client import Client, Credentials, DeviceAddress, onboard
from coapdev.const import FACTORY_IDENTITY
from coapdev.keys import factory_psk

from .common import GatewayProcess

CONFIG = "[device]\nadvertise = false\n"


async def _raw(dev: Client, code: Code, path: tuple[str, ...], payload: bytes = b"") -> Message:
    msg = Message(code=code, uri=dev.credentials.address.uri_base + "/", payload=payload)
    msg.opt.uri_path = path
    if payload:
        msg.opt.content_format = 60
    return await dev._transport.context.request(msg).response


def _audit_bytes(gw: GatewayProcess) -> int:
    return sum(p.stat().st_size for p in gw.state_dir.glob("audit.jsonl*") if p.is_file())


def _journal_lines(gw: GatewayProcess) -> int:
    path = gw.state_dir / "credentials.journal"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


async def _knock(gw: GatewayProcess, key: str, seconds: float) -> collections.Counter:
    factory = Credentials("", DeviceAddress(gw.host, gw.port), FACTORY_IDENTITY, factory_psk(key))
    codes: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline and i < 100_000:
        i += 1
        async with Client(factory, timeout_s=3) as dev:
            for code, path, body in (
                (Code.GET, ("device", "x" * 900 + str(i)), b""),
                (Code.POST, ("onboard",), b"\xa1\x64name\x61x"),
            ):
                try:
                    codes[str((await _raw(dev, code, path, body)).code)] += 1
                except Exception as exc:  # a timeout counts, it does not end the run
                    codes[type(exc).__name__] += 1
    return codes


async def _rekeys(gw: GatewayProcess, key: str, seconds: float) -> collections.Counter:
    await onboard(gw.uri, key, "admin")
    user = await onboard(gw.uri, key, "user")
    codes: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    async with Client(user, timeout_s=3) as dev:
        for _ in range(1_000_000):
            if time.monotonic() >= deadline:
                break
            codes[str((await _raw(dev, Code.POST, ("rekey",))).code)] += 1
    return codes


def measure(seconds: float) -> dict[str, object]:
    results: dict[str, object] = {"seconds_each": seconds}
    for name, flood, closed in (("knock", _knock, True), ("rekey", _rekeys, False)):
        gw = GatewayProcess.from_config_text(CONFIG, log_level="warning").start()
        try:
            key = gw.factory_key()
            if closed:
                gw.local("pair", "--close")
                time.sleep(1.0)  # the gateway polls the state directory
            audit0, journal0 = _audit_bytes(gw), _journal_lines(gw)
            started = time.monotonic()
            codes = asyncio.run(flood(gw, key, seconds))
            took = time.monotonic() - started
            grown = _audit_bytes(gw) - audit0
            results[name] = {
                "answers": dict(codes),
                "requests_per_s": round(sum(codes.values()) / took, 1),
                "audit_bytes": grown,
                "audit_bytes_per_s": round(grown / took, 1),
                "journal_lines": _journal_lines(gw) - journal0,
            }
        finally:
            gw.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each flood (default 20)")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    print(json.dumps(measure(args.seconds), indent=2))


if __name__ == "__main__":
    main()
