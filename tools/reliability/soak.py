"""Soak test: N clients doing requests and observations against a gateway, for minutes.

    tools/soak --quick                          # CI: 4 clients, 20 s
    tools/soak                                  # 20 clients, 10 minutes
    tools/soak --clients 50 --minutes 30 --out soak-results/

It starts its own gateway on loopback (a fresh state directory), onboards N
clients, and runs them in one process: each sends a request every
``--period`` seconds (GET /device, PUT and GET of the demo light, now and
then a script resource), and every other client also observes /light.
Every ``--window`` seconds it prints the window's request count, errors,
p50 and p99 latency, and the gateway's RSS and open file descriptors.

At the end: the error count (goal 0), p99 over time, RSS over time (flat:
growth after warm-up within ``--rss-bound-mib``), whether every observer
ended on the light's final state, and a PNG plot (``soak.png``) plus the raw
series (``soak.json``) in ``--out``.  Exit status 0 if errors are 0, the
observers agree and RSS stayed within the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import GatewayProcess, percentile

CONFIG = """
[device]
demo_light = true
advertise = false

[onboarding]
always_open = true
max_clients = 5000
attempts_burst = 10000
attempts_per_minute = 10000

[limits]
changes_burst = 1000000
changes_per_minute = 1000000
device_changes_per_s = 1000000

[[resource]]
path = "/hello"
get = { run = ["echo", "hello"] }
concurrency = 4
"""


@dataclass
class Window:
    t: float
    requests: int = 0
    errors: int = 0
    notifications: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class Soak:
    windows: list[Window] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    total_requests: int = 0
    total_errors: int = 0
    total_notifications: int = 0
    reconnects: int = 0

    @property
    def current(self) -> Window:
        return self.windows[-1]


async def client_loop(
    creds: Any, soak: Soak, period_s: float, observe: bool, stop: asyncio.Event, seed: int
) -> tuple[bool | None, Any]:
    from coapdev.client import Client

    rng = random.Random(seed)
    last_seen: list[Any] = [None]

    def reconnected() -> None:
        soak.reconnects += 1

    async with Client(creds, timeout_s=5, on_reconnect=reconnected) as client:
        watcher = None
        if observe:

            async def watch() -> None:
                async for response in client.observe("/light"):
                    last_seen[0] = response.value["on"]
                    soak.current.notifications += 1
                    soak.total_notifications += 1

            watcher = asyncio.create_task(watch())
        await asyncio.sleep(rng.random() * period_s)
        while not stop.is_set():
            kind = rng.random()
            started = time.perf_counter()
            try:
                if kind < 0.4:
                    await client.get("/device")
                elif kind < 0.7:
                    await client.put("/light", {"on": rng.random() < 0.5})
                elif kind < 0.95:
                    await client.get("/light")
                else:
                    await client.get("/hello")
                window = soak.current
                window.latencies_ms.append((time.perf_counter() - started) * 1000)
                window.requests += 1
                soak.total_requests += 1
            except Exception as exc:
                soak.current.errors += 1
                soak.total_errors += 1
                if len(soak.error_samples) < 20:
                    soak.error_samples.append(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s * (0.5 + rng.random()))
        final = None
        if watcher is not None:
            await asyncio.sleep(1.0)  # the last change's notification is on its way
            if watcher.done():
                exc = watcher.exception()
                soak.error_samples.append(f"observation ended: {exc!r}")
                soak.total_errors += 1
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            final = last_seen[0]
        return final, client.credentials.name


async def run_soak(args: argparse.Namespace, gw: GatewayProcess) -> tuple[Soak, dict[str, Any]]:
    from coapdev.client import Client, onboard

    key = gw.factory_key()
    creds = [await onboard(gw.uri, key, f"soak-{i}", timeout_s=10) for i in range(args.clients)]
    soak = Soak(windows=[Window(0.0)])
    stop = asyncio.Event()
    started = time.monotonic()
    tasks = [
        asyncio.create_task(client_loop(c, soak, args.period, i % 2 == 0, stop, seed=args.seed + i))
        for i, c in enumerate(creds)
    ]

    def sample(t: float) -> dict[str, Any]:
        window = soak.current
        lat = window.latencies_ms
        return {
            "t": round(t, 1),
            "requests": window.requests,
            "errors": window.errors,
            "notifications": window.notifications,
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "rss_kib": gw.rss_kib(),
            "fds": gw.open_fds(),
            "alive": gw.alive,
        }

    print(
        f"soak: {args.clients} clients ({(args.clients + 1) // 2} observing), "
        f"one request each per ~{args.period:g} s, {args.seconds:g} s, gateway pid {gw.pid}",
        flush=True,
    )
    print("     t  requests  errors  notes  p50 ms  p99 ms  RSS MiB  fds", flush=True)
    while time.monotonic() - started < args.seconds:
        await asyncio.sleep(min(args.window, args.seconds - (time.monotonic() - started)))
        t = time.monotonic() - started
        s = sample(t)
        soak.samples.append(s)
        soak.windows.append(Window(t))
        print(
            f"{s['t']:6.0f}  {s['requests']:8d}  {s['errors']:6d}  {s['notifications']:5d}  "
            f"{s['p50_ms']:6.1f}  {s['p99_ms']:6.1f}  {s['rss_kib'] / 1024:7.1f}  {s['fds']:3d}",
            flush=True,
        )
        if not gw.alive:
            break
    stop.set()
    finals = await asyncio.gather(*tasks, return_exceptions=True)
    checks: dict[str, Any] = {}
    async with Client(creds[0], timeout_s=10) as c:
        light = (await c.get("/light")).value["on"]
    disagree = []
    for final in finals:
        if isinstance(final, BaseException):
            soak.total_errors += 1
            soak.error_samples.append(f"client task failed: {final!r}")
            continue
        value, name = final
        if value is not None and value != light:
            disagree.append(name)
    checks["observers_disagreeing"] = disagree
    return soak, checks


def plot(soak: Soak, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in soak.samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [s["p99_ms"] for s in soak.samples], label="p99")
    axes[0].plot(t, [s["p50_ms"] for s in soak.samples], label="p50")
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend(loc="upper right")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(t, [s["rss_kib"] / 1024 for s in soak.samples], color="tab:red")
    axes[1].set_ylabel("gateway RSS (MiB)")
    axes[1].set_ylim(bottom=0)
    axes[2].plot(t, [s["requests"] for s in soak.samples], label="requests")
    axes[2].plot(t, [s["errors"] for s in soak.samples], label="errors", color="tab:red")
    axes[2].set_ylabel("per window")
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="upper right")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI mode: 4 clients, 20 s, 2 s windows")
    p.add_argument("--clients", type=int, help="clients (default 20; quick 4)")
    p.add_argument("--minutes", type=float, help="duration (default 10)")
    p.add_argument("--seconds", type=float, help="duration in seconds (overrides --minutes)")
    p.add_argument("--period", type=float, default=0.1, help="seconds between a client's requests")
    p.add_argument("--window", type=float, help="seconds per sample (default 10; quick 2)")
    p.add_argument("--rss-bound-mib", type=float, default=8.0, help="allowed growth after warm-up")
    p.add_argument("--out", type=Path, default=Path("soak-results"), help="where to write")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    args.clients = args.clients or (4 if args.quick else 20)
    if args.seconds is None:
        args.seconds = 20.0 if args.quick else (args.minutes or 10.0) * 60
    args.window = args.window or (2.0 if args.quick else 10.0)
    args.out.mkdir(parents=True, exist_ok=True)

    gw = GatewayProcess.from_config_text(CONFIG, log_level="warning").start()
    try:
        soak, checks = asyncio.run(run_soak(args, gw))
        tracebacks = gw.log().count("Traceback")
        alive = gw.alive
    finally:
        gw.close()

    samples = soak.samples
    # Warm-up: aiocoap keeps each exchange for its 247 s lifetime, so memory
    # rises for the first ~4 minutes; after that it must stay flat.  Skip a
    # fifth of the run or 250 s, whichever is longer, but never half of it.
    warm_up_s = min(max(args.seconds / 5, 250.0), args.seconds / 2)
    warm = [s for s in samples if s["t"] >= warm_up_s] or samples
    rss = [s["rss_kib"] for s in warm]
    growth_mib = (rss[-1] - rss[0]) / 1024 if rss else 0.0
    spread_mib = (max(rss) - min(rss)) / 1024 if rss else 0.0
    p99s = [s["p99_ms"] for s in samples]
    out_png = args.out / "soak.png"
    plot(
        soak,
        out_png,
        f"coapdev soak: {args.clients} clients, {args.seconds / 60:.1f} min, "
        f"{soak.total_requests} requests, {soak.total_errors} errors",
    )
    result = {
        "clients": args.clients,
        "seconds": args.seconds,
        "requests": soak.total_requests,
        "errors": soak.total_errors,
        "error_samples": soak.error_samples,
        "notifications": soak.total_notifications,
        "reconnects": soak.reconnects,
        "observers_disagreeing": checks["observers_disagreeing"],
        "gateway_alive": alive,
        "tracebacks_in_gateway_log": tracebacks,
        "warm_up_s": warm_up_s,
        "rss_growth_after_warmup_mib": round(growth_mib, 2),
        "rss_spread_after_warmup_mib": round(spread_mib, 2),
        "p99_ms_max": max(p99s) if p99s else None,
        "samples": samples,
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    passed = (
        soak.total_errors == 0
        and alive
        and not checks["observers_disagreeing"]
        and growth_mib <= args.rss_bound_mib
    )
    print(
        f"\nerrors: {soak.total_errors} (goal 0) in {soak.total_requests} requests; "
        f"{soak.total_notifications} notifications; {soak.reconnects} reconnects",
    )
    for sample in soak.error_samples[:5]:
        print(f"  error: {sample}")
    print("p99 over time (ms): " + " ".join(f"{v:.1f}" for v in p99s))
    print("RSS over time (MiB): " + " ".join(f"{s['rss_kib'] / 1024:.1f}" for s in samples))
    print(
        f"RSS after warm-up ({warm_up_s:.0f} s): growth {growth_mib:+.2f} MiB, "
        f"spread {spread_mib:.2f} MiB "
        f"(bound +{args.rss_bound_mib:g} MiB); observers on the final state: "
        f"{'all' if not checks['observers_disagreeing'] else checks['observers_disagreeing']}; "
        f"gateway log tracebacks: {tracebacks}"
    )
    print(f"plot: {out_png}   series: {args.out / 'soak.json'}")
    print("RESULT: " + ("PASS" if passed else "FAIL"), flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
