"""The table, the ratios, the targets with pass/miss, the JSON file and the plots."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = (
    ("coapdev", "coapdev"),
    ("aiocoap", "aiocoap stock"),
    ("libcoap", "libcoap"),
    ("pyecho", "Py UDP echo"),
    ("cecho", "C UDP echo"),
)
LABEL_WIDTH = 38
CELL_WIDTH = 20
#: "Flat" per-request cost: 10 000 stored clients cost at most this much more than 10.
FLAT_RATIO = 1.15


# --- extracting numbers ------------------------------------------------------------------


def stats(values: Iterable[float | None]) -> dict[str, float] | None:
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    return {
        "median": statistics.median(kept),
        "min": min(kept),
        "max": max(kept),
        "n": len(kept),
    }


def median(values: Iterable[float | None]) -> float | None:
    s = stats(values)
    return None if s is None else s["median"]


def dig(data: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def runs(results: dict, server: str, *path: str) -> list[dict]:
    found = dig(results, "servers", server, *path)
    if isinstance(found, dict):
        return [found]
    return found if isinstance(found, list) else []


def field(items: list[dict], *path: str) -> list[float | None]:
    """One number from each run; runs after which the server was found dead are left out."""
    return [dig(item, *path) for item in items if not item.get("server_crashed")]


def crashed(items: list[dict]) -> int:
    return sum(1 for item in items if item.get("server_crashed"))


# --- formatting --------------------------------------------------------------------------


def num(value: float | None, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "rate":
        return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}"
    if kind == "mib":
        return f"{value / 1024:.1f}"
    if kind == "int":
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(s: dict[str, float] | None, kind: str = "") -> str:
    if s is None:
        return "-"
    text = num(s["median"], kind)
    if s["n"] > 1 and num(s["min"], kind) != num(s["max"], kind):
        low, high = num(s["min"], kind), num(s["max"], kind)
        if kind == "rate" and s["min"] >= 10_000:
            low, high = low[:-1], high  # 17.1-17.9k
        text += f" ({low}-{high})"
    return text


def pair(a: float | None, b: float | None, kind: str = "") -> str:
    if a is None and b is None:
        return "-"
    return f"{num(a, kind)} / {num(b, kind)}"


# --- the rows ----------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    cell: Callable[[dict, str], str]


def get_rate(level: int, what: str = "get") -> Callable[[dict, str], str]:
    return lambda r, s: spread(stats(field(runs(r, s, what, str(level)), "rate")), "rate")


def get_latency(level: int, what: str = "get") -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        return latency_pair(runs(r, s, what, str(level)))

    return cell


def timeouts_256(r: dict, s: str) -> str:
    items = runs(r, s, "get", "256")
    if not items:
        return "-"
    p99 = median(field(items, "latency_ms", "p99"))
    return f"{num(p99)} / {sum(i.get('timeouts', 0) for i in items)}"


def script_cell(level: int) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        items = runs(r, s, "script", str(level))
        if not items:
            return "-"
        rate = num(median(field(items, "rate")), "rate")
        return f"{rate}, {num(median(field(items, 'latency_ms', 'p99')))}"

    return cell


def floor_cell(r: dict, s: str) -> str:
    """The bare asyncio spawn loop (not a server: shown under coapdev, which it floors)."""
    if s != "coapdev":
        return "-"
    levels = r.get("spawn_floor") or {}
    values = [median(field(levels.get(str(n)) or [], "rate")) for n in sorted(map(int, levels))]
    return " / ".join(num(v, "rate") for v in values) if values else "-"


def handler_cell(r: dict, s: str) -> str:
    items = runs(r, s, "handler", "32")
    if not items:
        return "-"
    rate = num(median(field(items, "rate")), "rate")
    return f"{rate}, {num(median(field(items, 'latency_ms', 'p99')))}"


def handshake_rate(variant: str) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        items = runs(r, s, variant)
        text = spread(stats(field(items, "rate")), "rate")
        bad = crashed(items)
        if not bad:
            return text
        return f"CRASH {bad}/{len(items)}" + ("" if text == "-" else f", {text}")

    return cell


def latency_pair(items: list[dict]) -> str:
    p50 = median(field(items, "latency_ms", "p50"))
    return pair(p50, median(field(items, "latency_ms", "p99")))


def handshake_latency(variant: str) -> Callable[[dict, str], str]:
    return lambda r, s: latency_pair(runs(r, s, variant))


def onboard_latency(server: str) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        if s != "coapdev":
            return "-"
        return latency_pair(runs(r, server, "onboard"))

    return cell


def cpu_per(what: str, *path: str) -> Callable[[dict, str], str]:
    return lambda r, s: spread(stats(field(runs(r, s, what, *path), "server_cpu_us_per_op")))


def share(who: str) -> Callable[[dict, str], str]:
    key = "cpu_share" if who == "generator" else "server_cpu_share"

    def cell(r: dict, s: str) -> str:
        value = median(field(runs(r, s, "get", "32"), key))
        return "-" if value is None else f"{value:.0%}"

    return cell


def rss(*path: str, server: str | None = None) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        if server is not None and s != "coapdev":
            return "-"
        return num(dig(r, "servers", server or s, *path), "mib")

    return cell


def rss_pair(variant: str) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        a = dig(r, "servers", s, f"rss_after_{variant}_kib")
        b = dig(r, "servers", s, f"rss_after_{variant}_dropped_kib")
        return pair(a, b, "mib")

    return cell


def stored_cost(n: int) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        if s != "coapdev":
            return "-"
        items = runs(r, f"coapdev-{n}", "get", "32")
        cost = num(median(field(items, "server_cpu_us_per_op")))
        return f"{cost} us, {num(median(field(items, 'rate')), 'rate')}/s"

    return cell


def sustained(what: str) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        run = dig(r, "servers", s, "sustained")
        if not run:
            return "-"
        if what == "rate":
            return num(run.get("rate"), "rate")
        if what == "latency":
            return pair(dig(run, "latency_ms", "p99"), run.get("max_gap_ms"))
        return pair(run.get("rss_at_ready_kib"), run.get("rss_at_done_kib"), "mib")

    return cell


def long_run(server: str) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        run = dig(r, "servers", server, "sustained") if s == "coapdev" else None
        return pair(dig(run, "latency_ms", "p99"), dig(run, "max_gap_ms")) if run else "-"

    return cell


def hold_cell(server: str) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        if s != "coapdev":
            return "-"
        run = dig(r, "servers", server, "hold")
        if not run:
            return "-"
        served = run["sessions"] - run["sessions_unserved"]
        return f"{num(run.get('rss_max_kib'), 'mib')} ({served} served)"

    return cell


def seconds(path: tuple[str, ...], top: bool = False) -> Callable[[dict, str], str]:
    def cell(r: dict, s: str) -> str:
        if s != "coapdev":
            return "-"
        values = dig(r, *path) if top else dig(r, "servers", s, *path)
        return spread(stats(values or []))

    return cell


def sustained_text(results: dict) -> str:
    seconds = results["settings"]["sustained_s"]
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def rows(results: dict) -> list[Row]:
    hold_n = results["settings"]["hold_sessions"]
    stored = results["settings"]["stored_clients"]
    return [
        Row("GET/s, 1 client", get_rate(1)),
        Row("GET/s, 8 clients", get_rate(8)),
        Row("GET/s, 32 clients", get_rate(32)),
        Row("  p50 / p99 ms, 32 clients", get_latency(32)),
        Row("GET/s, 256 clients", get_rate(256)),
        Row("  p99 ms / timeouts, 256 clients", timeouts_256),
        Row("script GET/s, p99 ms, 1 client", script_cell(1)),
        Row("script GET/s, p99 ms, 8 clients", script_cell(8)),
        Row("  floor: asyncio spawns/s, 1 / 8", floor_cell),
        Row("handler GET/s, p99 ms, 32 clients", handler_cell),
        Row("handshakes/s, close_notify at end", handshake_rate("handshake")),
        Row("  p50 / p99 ms", handshake_latency("handshake")),
        Row("handshakes/s, sessions just dropped", handshake_rate("handshake_dropped")),
        Row("  p50 / p99 ms", handshake_latency("handshake_dropped")),
        Row("handshake+onboarding p50 / p99 ms", onboard_latency("coapdev")),
        Row("server CPU us / GET, 32 clients", cpu_per("get", "32")),
        Row("server CPU us / handshake (dropped)", cpu_per("handshake_dropped")),
        Row("server CPU, 32 clients (of 1 core)", share("server")),
        Row("generator CPU, 32 clients", share("generator")),
        Row("RSS MiB idle", rss("rss_idle_kib")),
        Row("RSS MiB after GET runs", rss("rss_after_get_kib")),
        Row("RSS MiB after handshakes (c_n/drop)", rss_pair("handshake")),
        Row("RSS MiB after the script runs", rss("rss_after_script_kib")),
        Row("RSS MiB after the handler runs (last)", rss("rss_after_handler_kib")),
        Row(f"RSS MiB, {hold_n} live sessions", hold_cell("coapdev")),
        Row(f"sustained {sustained_text(results)}: GET/s", sustained("rate")),
        Row("  p99 ms / longest pause ms", sustained("latency")),
        Row("  RSS MiB start / end", sustained("rss")),
        Row("CPU/GET, GET/s at 32, 10 stored", stored_cost(10)),
        Row(f"CPU/GET, GET/s at 32, {stored} stored", stored_cost(stored)),
        Row(f"RSS MiB idle, {stored} stored", rss("rss_idle_kib", server=f"coapdev-{stored}")),
        Row(f"  + {hold_n} live sessions", hold_cell(f"coapdev-{stored}")),
        Row("  2 min at 32: p99 / longest pause ms", long_run(f"coapdev-{stored}")),
        Row("  handshake+onboarding p50 / p99 ms", onboard_latency(f"coapdev-{stored}")),
        Row("cold start s (start -> 1st answer)", seconds(("cold_start_s",))),
        Row("coapdev --help s", seconds(("help_s",), top=True)),
    ]


def table(results: dict) -> str:
    header = "".ljust(LABEL_WIDTH) + "".join(title.ljust(CELL_WIDTH) for _, title in COLUMNS)
    lines = [header.rstrip(), "-" * (LABEL_WIDTH + CELL_WIDTH * len(COLUMNS))]
    for row in rows(results):
        cells = [row.cell(results, key) for key, _ in COLUMNS]
        lines.append(
            (row.label.ljust(LABEL_WIDTH) + "".join(c.ljust(CELL_WIDTH) for c in cells)).rstrip()
        )
    return "\n".join(lines)


# --- ratios and targets ------------------------------------------------------------------


def key_numbers(r: dict) -> dict[str, float | None]:
    def rate(server: str, level: int = 32) -> float | None:
        return median(field(runs(r, server, "get", str(level)), "rate"))

    stored = r["settings"]["stored_clients"]
    big_hold = dig(r, "servers", f"coapdev-{stored}", "hold") or {}
    hold = dig(r, "servers", "coapdev", "hold") or {}
    sustained_run = dig(r, "servers", "coapdev", "sustained") or {}
    timeouts_256 = [i.get("timeouts", 0) for i in runs(r, "coapdev", "get", "256")]
    return {
        "get32": rate("coapdev"),
        "aiocoap32": rate("aiocoap"),
        "libcoap32": rate("libcoap"),
        "pyecho32": rate("pyecho"),
        "cecho32": rate("cecho"),
        "gen_share_cecho": median(field(runs(r, "cecho", "get", "32"), "cpu_share")),
        "gen_share_libcoap": median(field(runs(r, "libcoap", "get", "32"), "cpu_share")),
        "p99_32": median(field(runs(r, "coapdev", "get", "32"), "latency_ms", "p99")),
        "handshakes": median(field(runs(r, "coapdev", "handshake"), "rate")),
        "handshake_crashes": crashed(runs(r, "coapdev", "handshake")),
        "handshake_runs": len(runs(r, "coapdev", "handshake")),
        "handshakes_dropped": median(field(runs(r, "coapdev", "handshake_dropped"), "rate")),
        "handshake_dropped_crashes": crashed(runs(r, "coapdev", "handshake_dropped")),
        "handshakes_libcoap": median(field(runs(r, "libcoap", "handshake"), "rate")),
        "handshakes_aiocoap": median(field(runs(r, "aiocoap", "handshake"), "rate")),
        "handshakes_dropped_libcoap": median(
            field(runs(r, "libcoap", "handshake_dropped"), "rate")
        ),
        "handshakes_dropped_aiocoap": median(
            field(runs(r, "aiocoap", "handshake_dropped"), "rate")
        ),
        "onboard_p50": median(field(runs(r, "coapdev", "onboard"), "latency_ms", "p50")),
        "onboard_p99": median(field(runs(r, "coapdev", "onboard"), "latency_ms", "p99")),
        "max_gap": sustained_run.get("max_gap_ms"),
        "sustained_p99": dig(sustained_run, "latency_ms", "p99"),
        "timeouts_256": sum(timeouts_256) if timeouts_256 else None,
        "errors_256": sum(
            i.get("failed", 0) + i.get("errors", 0) for i in runs(r, "coapdev", "get", "256")
        )
        if timeouts_256
        else None,
        "held": (hold.get("sessions", 0) - hold.get("sessions_unserved", 0)) if hold else None,
        "rss_sustained": sustained_run.get("rss_at_done_kib"),
        "rss_big": big_hold.get("rss_max_kib"),
        "rss_idle": dig(r, "servers", "coapdev", "rss_idle_kib"),
        "cost10": median(field(runs(r, "coapdev-10", "get", "32"), "server_cpu_us_per_op")),
        "cost_big": median(
            field(runs(r, f"coapdev-{stored}", "get", "32"), "server_cpu_us_per_op")
        ),
        "cpu32": median(field(runs(r, "coapdev", "get", "32"), "server_cpu_us_per_op")),
        "cold_start": median(dig(r, "servers", "coapdev", "cold_start_s") or []),
        "script8": median(field(runs(r, "coapdev", "script", "8"), "rate")),
        "floor8": median(field(dig(r, "spawn_floor", "8") or [], "rate")),
        "handler32": median(field(runs(r, "coapdev", "handler", "32"), "rate")),
        "rss_after_script": dig(r, "servers", "coapdev", "rss_after_script_kib"),
        "help": median(r.get("help_s") or []),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def ratios(r: dict) -> list[str]:
    k = key_numbers(r)

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    stored = r["settings"]["stored_clients"]
    lines = [
        "Ratios (medians; GET/s at 32 clients; handshakes/s with close_notify at the end,",
        "        for coapdev its runs that did not crash, / with sessions just dropped):",
        f"  coapdev / aiocoap stock      GET/s {x(ratio(k['get32'], k['aiocoap32']))}"
        f"   handshakes/s {x(ratio(k['handshakes'], k['handshakes_aiocoap']))}"
        f" / {x(ratio(k['handshakes_dropped'], k['handshakes_dropped_aiocoap']))} dropped",
        f"  coapdev / libcoap            GET/s {x(ratio(k['get32'], k['libcoap32']))}"
        f"   handshakes/s {x(ratio(k['handshakes'], k['handshakes_libcoap']))}"
        f" / {x(ratio(k['handshakes_dropped'], k['handshakes_dropped_libcoap']))} dropped",
        f"  coapdev / Python UDP echo    GET/s {x(ratio(k['get32'], k['pyecho32']))}",
        f"  CPU us per GET, {stored} / 10 stored clients: {x(ratio(k['cost_big'], k['cost10']))}",
    ]
    gen = k["gen_share_cecho"]
    lines.append(
        f"Generator ceiling: {num(k['cecho32'], 'rate')} plain-UDP requests/s at 32 clients "
        "against its own C echo"
        + (f" (generator at {gen:.0%} of one core)" if gen is not None else "")
        + "; its CPU share in every other run (one core = 100 %):"
    )
    for key, title in COLUMNS[:4]:
        shares = field(runs(r, key, "get", "32"), "cpu_share")
        hs = [
            median(field(runs(r, key, variant), "cpu_share"))
            for variant in ("handshake", "handshake_dropped")
        ]
        share_get = median(shares)
        share_hs = max((v for v in hs if v is not None), default=None)
        if share_get is None:
            continue
        text = f"  {title}: {share_get:.0%} at 32 clients"
        if share_hs is not None:
            text += f", {share_hs:.0%} in the handshake runs"
        worst = max(v for v in (share_get, share_hs) if v is not None)
        verdict = (
            "not the bottleneck"
            if worst < 0.8
            else "near its limit: this server's figure is a lower bound"
        )
        lines.append(f"{text} -> {verdict}")
    return lines


@dataclass
class Target:
    text: str
    value: float | None
    goal: float
    higher_is_better: bool
    shown: str
    note: str = ""

    def status(self) -> str:
        if self.value is None:
            return "MISS"
        ok = self.value >= self.goal if self.higher_is_better else self.value <= self.goal
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        if self.value is None:
            return f"  MISS  {self.text}: {self.note or 'not measured'}"
        gap = ""
        if self.status() == "MISS" and self.goal:
            off = (self.value - self.goal) / self.goal
            gap = f" ({off:+.0%} against the target)"
        return f"  {self.status()}  {self.text}: {self.shown}{gap}"


def targets(r: dict) -> list[Target]:
    k = key_numbers(r)
    stored = r["settings"]["stored_clients"]
    hold_n = r["settings"]["hold_sessions"]
    length = sustained_text(r)
    mib = 1024

    def t(text: str, value: float | None, goal: float, higher: bool, shown: str) -> Target:
        return Target(text, value, goal, higher, shown)

    aio = ratio(k["get32"], k["aiocoap32"])
    echo = ratio(k["get32"], k["pyecho32"])
    cost = ratio(k["cost_big"], k["cost10"])
    served_256 = None
    if k["timeouts_256"] is not None:
        served_256 = float(k["timeouts_256"] + (k["errors_256"] or 0))
    return [
        t(">= 16 000 DTLS GET/s at 32 clients", k["get32"], 16_000, True, num(k["get32"], "int")),
        t(">= 3x stock aiocoap (GET/s at 32 clients)", aio, 3, True, f"{aio or 0:.2f}x"),
        t(">= 50 % of the Python UDP echo floor", echo, 0.5, True, f"{(echo or 0):.0%}"),
        handshake_target(k),
        t(
            "handshake + onboarding p50 <= 2 ms",
            k["onboard_p50"],
            2,
            False,
            f"{num(k['onboard_p50'])} ms (p99 {num(k['onboard_p99'])} ms)",
        ),
        t("p99 <= 5 ms at 32 clients", k["p99_32"], 5, False, f"{num(k['p99_32'])} ms"),
        t(
            f"no pause over 50 ms in the {length} sustained run",
            k["max_gap"],
            50,
            False,
            f"longest {num(k['max_gap'])} ms",
        ),
        t(
            "256 clients served with 0 timeouts",
            served_256,
            0,
            False,
            f"{k['timeouts_256']} timeouts, {k['errors_256']} failed",
        ),
        t(
            f">= 1000 concurrent live sessions (all served; {hold_n} held)",
            k["held"],
            1000,
            True,
            f"{k['held']} served",
        ),
        t(
            f"RSS <= 64 MB after {length} of sustained load",
            None if k["rss_sustained"] is None else k["rss_sustained"] / mib,
            64,
            False,
            f"{num(k['rss_sustained'], 'mib')} MiB",
        ),
        t(
            f"RSS <= 64 MB with {hold_n} sessions + {stored} stored clients",
            None if k["rss_big"] is None else k["rss_big"] / mib,
            64,
            False,
            f"{num(k['rss_big'], 'mib')} MiB",
        ),
        t(
            "idle RSS <= 40 MB",
            None if k["rss_idle"] is None else k["rss_idle"] / mib,
            40,
            False,
            f"{num(k['rss_idle'], 'mib')} MiB",
        ),
        t(
            f"per-request cost flat, 10 -> {stored} stored clients (ratio <= {FLAT_RATIO})",
            cost,
            FLAT_RATIO,
            False,
            f"ratio {cost or 0:.2f} ({num(k['cost10'])} -> {num(k['cost_big'])} us)",
        ),
        t(
            "cold start <= 0.5 s",
            k["cold_start"],
            0.5,
            False,
            f"{num(k['cold_start'])} s",
        ),
        t("coapdev --help <= 0.3 s", k["help"], 0.3, False, f"{num(k['help'])} s"),
        *script_targets(k),
        *request_targets(k),
    ]


def request_targets(k: dict) -> list[Target]:
    """Requests past a Python echo (issue 15, section 3): against the same run's echo,
    and the server's own CPU per GET; p99 <= 5 ms at 32 clients is a line above."""
    echo = ratio(k["get32"], k["pyecho32"])
    return [
        Target(
            ">= 1.0x the Python UDP echo (GET/s at 32 clients, same run)",
            echo,
            1.0,
            True,
            f"{echo or 0:.2f}x ({num(k['get32'], 'int')} against {num(k['pyecho32'], 'int')}/s)",
        ),
        Target(
            "server CPU per GET <= 30 us at 32 clients",
            k["cpu32"],
            30,
            False,
            f"{num(k['cpu32'])} us",
        ),
    ]


def script_targets(k: dict) -> list[Target]:
    """Script resources at device speed: scripts against the spawn floor, the persistent
    handler against the built-in /light, and what the script runs leave in memory."""
    floor = ratio(k["script8"], k["floor8"])
    handler = ratio(k["handler32"], k["get32"])
    rss_growth = None
    if k["rss_after_script"] is not None and k["rss_idle"] is not None:
        rss_growth = (k["rss_after_script"] - k["rss_idle"]) / 1024
    return [
        Target(
            "script GET/s >= 90 % of a bare asyncio spawn loop (8 at once)",
            floor,
            0.9,
            True,
            f"{floor or 0:.0%} ({num(k['script8'], 'int')} against {num(k['floor8'], 'int')}/s)",
        ),
        Target(
            ">= 10 000 handler GET/s at 32 clients",
            k["handler32"],
            10_000,
            True,
            num(k["handler32"], "int"),
        ),
        Target(
            "handler GET/s >= 50 % of the built-in /light (32 clients, same run)",
            handler,
            0.5,
            True,
            f"{handler or 0:.0%} ({num(k['handler32'], 'int')} against {num(k['get32'], 'int')}/s)",
        ),
        Target(
            "RSS after the script runs <= idle + 8 MiB",
            rss_growth,
            8,
            False,
            f"+{num(rss_growth)} MiB ({num(k['rss_idle'], 'mib')} -> "
            f"{num(k['rss_after_script'], 'mib')} MiB)",
        ),
    ]


def other_load(results: dict) -> list[float]:
    """Share of a core other processes used during each measured run."""
    shares = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "other_cpu_share" in node:
                shares.append(node["other_cpu_share"])
            for key, value in node.items():
                if key != "series":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(results.get("servers", {}))
    return shares


def handshake_target(k: dict) -> Target:
    text = ">= 5 000 full handshakes/s (sessions ended with close_notify)"
    dropped = f"{num(k['handshakes_dropped'], 'int')}/s with sessions just dropped"
    if k["handshake_crashes"]:
        note = (
            f"the gateway crashed in {k['handshake_crashes']} of {k['handshake_runs']} runs "
            f"(see Errors); {dropped}"
        )
        return Target(text, None, 5000, True, "", note)
    return Target(text, k["handshakes"], 5000, True, f"{num(k['handshakes'], 'int')} ({dropped})")


def big_store_info(results: dict) -> list[str]:
    stored = results["settings"]["stored_clients"]
    run = dig(results, "servers", f"coapdev-{stored}", "sustained")
    onboard = median(field(runs(results, f"coapdev-{stored}", "onboard"), "latency_ms", "p50"))
    lines = []
    if run:
        gap = run.get("max_gap_ms")
        verdict = "PASS" if gap is not None and gap <= 50 else "MISS"
        lines.append(
            f"  INFO  with {stored} stored clients, 2 min at 32 clients: longest pause "
            f"{num(gap)} ms ({verdict} against the 50 ms pause target)"
        )
    if onboard is not None:
        lines.append(
            f"  INFO  handshake + onboarding p50 with {stored} stored clients: {num(onboard)} ms"
        )
    return lines


# --- issue 15: the reconnect storm and the cost that grows with the work ----------------

#: The storm target: every client answered again within this, none failed, all restored.
STORM_TARGET_MS = 2000
STORM_TARGET_CLIENTS = 1000
#: RSS per live session (KiB).
SESSION_KIB_TARGET = 8
#: The scenarios the tables and targets above belong to (before issue 15).
CLASSIC = frozenset(
    ("ceiling", "echo", "spawn", "libcoap", "aiocoap", "coapdev", "stored", "handshakes", "help")
)


def scenarios(results: dict) -> set[str]:
    return set(results.get("scenarios") or CLASSIC)


def storm_runs(results: dict, server: str, n: int) -> list[dict]:
    return [r for r in dig(results, "storm", server, str(n)) or [] if r.get("go")]


def storm_numbers(results: dict, server: str, n: int) -> dict[str, Any] | None:
    """Medians over the runs; failures and restored observations: the worst run."""
    items = storm_runs(results, server, n)
    if not items:
        return None
    every = [i["all_answered_ms"] if i["all_answered_ms"] >= 0 else None for i in items]
    return {
        "runs": len(items),
        "all_answered_ms": None if None in every else median(every),
        "p99_ms": median(i["reconnect_ms"]["p99"] for i in items if i["answered"]),
        "unanswered": max(i["unanswered"] for i in items),
        "retransmitting": max(i["clients_retransmitting"] for i in items),
        "restored": min(i["notified"] for i in items),
        "before": min(i["setup"]["notified"] for i in items),
        "rss_before_kib": median(i["rss_before_kib"] for i in items),
        "rss_peak_kib": max(i["rss_peak_kib"] for i in items),
        "server_cpu_s": median(i.get("server_cpu_s") for i in items),
    }


def storm_lines(results: dict) -> list[str]:
    out = dig(results, "storm") or {}
    if not out:
        return []
    head = (
        "Reconnect storm (server restarted; every client reconnects at once, resends its last "
        "GET and registers its observation again; then one change):"
    )
    lines = [head]
    cols = (
        "server   clients  all answered ms  p99 ms  failed  retransmitted  restored  "
        "RSS MiB before / peak  CPU s"
    )
    lines.append("  " + cols)
    for server in ("coapdev", "libcoap"):
        for n in sorted(int(k) for k in out.get(server, {})):
            k = storm_numbers(results, server, n)
            if k is None:
                lines.append(f"  {server:<8} {n:>7}  (no run)")
                continue
            every = num(k["all_answered_ms"]) if k["all_answered_ms"] is not None else "never"
            lines.append(
                f"  {server:<8} {n:>7}  {every:>15}  {num(k['p99_ms']):>6}  "
                f"{k['unanswered']:>6}  {k['retransmitting']:>13}  "
                f"{k['restored']:>4}/{n:<4}  "
                f"{pair(k['rss_before_kib'], k['rss_peak_kib'], 'mib'):>21}  "
                f"{num(k['server_cpu_s']):>5}"
            )
    lines.append(
        "  (failed: not answered within the bound; retransmitted: clients that sent a handshake "
        "flight or request again; restored: a notification after the change; worst run)"
    )
    return lines


def scaling_lines(results: dict) -> list[str]:
    sc = results.get("scaling")
    if not sc:
        return []
    lines = ["Cost that grows with the work (coapdev; one line per step):"]
    for n, v in sc["clients"].items():
        lines.append(
            f"  {n:>6} clients          GET/s {num(v['get_per_s'], 'rate'):>7}   "
            f"p99 {num(v['p99_ms']):>5} ms   RSS {num(v['rss_kib'], 'mib')} MiB"
        )
    for n, v in sc["stored"].items():
        lines.append(
            f"  {n:>6} stored clients   GET/s {num(v['get_per_s'], 'rate'):>7}   "
            f"CPU {num(v['cpu_us_per_get'])} us/GET   RSS idle {num(v['rss_idle_kib'], 'mib')} MiB"
        )
    for n, v in sc["sessions"].items():
        per = num(v["kib_per_session"])
        lines.append(
            f"  {n:>6} live sessions    served {v['served']}   RSS {num(v['rss_kib'], 'mib')} MiB"
            f"   {per} KiB per live session (above RSS before)"
        )
    return lines


def new_targets(results: dict) -> list[Target]:
    ran = scenarios(results)
    found: list[Target] = []
    if "storm" in ran:
        n = STORM_TARGET_CLIENTS
        k = storm_numbers(results, "coapdev", n)
        text = (
            f"{n} clients all answered again within {STORM_TARGET_MS / 1000:g} s after a restart, "
            "0 failures, every observation restored"
        )
        if k is None:
            found.append(Target(text, None, STORM_TARGET_MS, False, ""))
        else:
            bad = k["unanswered"] or k["restored"] < n or k["all_answered_ms"] is None
            value = None if bad else k["all_answered_ms"]
            shown = (
                f"{num(k['all_answered_ms'])} ms, {k['unanswered']} failed, "
                f"{k['restored']}/{n} restored"
            )
            note = (
                f"{'never all' if k['all_answered_ms'] is None else num(k['all_answered_ms'])}"
                f" ms, {k['unanswered']} failed, {k['restored']}/{n} restored"
            )
            found.append(Target(text, value, STORM_TARGET_MS, False, shown, note))
    sc = results.get("scaling")
    if "scaling" in ran and sc:
        stored = sorted(int(n) for n in sc["stored"])
        lo, hi = sc["stored"][str(stored[0])], sc["stored"][str(stored[-1])]
        cost = ratio(hi["cpu_us_per_get"], lo["cpu_us_per_get"])
        found.append(
            Target(
                f"per-request CPU flat, {stored[0]} -> {stored[-1]} stored clients "
                f"(ratio <= {FLAT_RATIO})",
                cost,
                FLAT_RATIO,
                False,
                f"ratio {cost or 0:.2f} ({num(lo['cpu_us_per_get'])} -> "
                f"{num(hi['cpu_us_per_get'])} us)",
            )
        )
        most = max(int(n) for n in sc["sessions"])
        per = sc["sessions"][str(most)]["kib_per_session"]
        found.append(
            Target(
                f"RSS per live session <= {SESSION_KIB_TARGET} KiB ({most} held, above RSS before)",
                per,
                SESSION_KIB_TARGET,
                False,
                f"{num(per)} KiB",
            )
        )
    return found


def report(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    other = stats(other_load(results))
    busy = (
        f"other processes used {other['median']:.0%} of a core during the runs "
        f"(median; max {other['max']:.0%})"
        if other
        else "other load not measured"
    )
    classic = bool(scenarios(results) & CLASSIC)
    lines = [
        "",
        f"coapdev benchmark ({results['mode']} mode): {m.get('cores')} cores, {m.get('cpu')}, "
        f"Linux {m.get('kernel')}, Python {m.get('python')}, {m.get('openssl')}, "
        f"libcoap {m.get('libcoap')}, aiocoap {m.get('aiocoap')}, DTLSSocket {m.get('DTLSSocket')}",
        f"commit {m.get('commit')}; medians of {s['runs']} run(s) (min-max); GET runs "
        f"{s['duration_s']:g} s; all on 127.0.0.1; gateway at --log-level warning; {busy}",
        f"scenarios: {', '.join(results.get('scenarios') or sorted(CLASSIC))}",
        "",
    ]
    if classic:
        lines += [table(results), "", *ratios(results), ""]
    extra = [*storm_lines(results), ""] if results.get("storm") else []
    extra += [*scaling_lines(results), ""] if results.get("scaling") else []
    lines += extra
    lines.append("Targets (coapdev; misses are reported, never a failure):")
    if classic:
        lines += [
            *(target.line() for target in targets(results)),
            *big_store_info(results),
            "  INFO  ratio to libcoap (GET/s at 32 clients): "
            + (
                f"{ratio(key_numbers(results)['get32'], key_numbers(results)['libcoap32']):.2f}x"
                if key_numbers(results)["libcoap32"] and key_numbers(results)["get32"]
                else "-"
            ),
        ]
    lines += [target.line() for target in new_targets(results)]
    if results.get("notes"):
        lines += ["", "Notes:", *(f"  - {note}" for note in results["notes"])]
    lines.append("")
    errors = results.get("errors") or []
    lines.append(f"Errors: {len(errors)}" + ("" if errors else " (none)"))
    lines += [f"  - {e.splitlines()[0]}" for e in errors]
    lines.append(f"Finished in {results.get('elapsed_s', 0):.0f} s.")
    return "\n".join(lines)


def summary(results: dict) -> dict[str, Any]:
    return {
        "other_cpu_share": stats(other_load(results)),
        "key_numbers": key_numbers(results),
        "targets": [
            {"target": t.text, "status": t.status(), "value": t.value, "goal": t.goal}
            for t in [*targets(results), *new_targets(results)]
        ],
        "storm": {
            server: {n: storm_numbers(results, server, int(n)) for n in levels}
            for server, levels in (dig(results, "storm") or {}).items()
        },
    }


def write_json(results: dict, path: Path) -> None:
    data = dict(results, summary=summary(results))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


# --- plots -------------------------------------------------------------------------------


def plot(results: dict, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, title in COLUMNS:
        levels = dig(results, "servers", key, "get") or {}
        points = sorted((int(n), items) for n, items in levels.items() if items)
        if not points:
            continue
        xs = [n for n, _ in points]
        rate_stats = [stats(field(items, "rate")) for _, items in points]
        p99 = [median(field(items, "latency_ms", "p99")) for _, items in points]
        ys = [s["median"] if s else None for s in rate_stats]
        err = [
            [s["median"] - s["min"] if s else 0 for s in rate_stats],
            [s["max"] - s["median"] if s else 0 for s in rate_stats],
        ]
        ax_rate.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=title)
        ax_p99.plot(xs, p99, marker="o", label=title)
    ax_rate.axhline(16_000, color="grey", linestyle=":", linewidth=1, label="target 16 000/s")
    ax_p99.axhline(5, color="grey", linestyle=":", linewidth=1, label="target 5 ms")
    for ax, ylabel in ((ax_rate, "requests/s (median, min-max)"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_p99.set_yscale("log")
    fig.suptitle("GET over established sessions (Py/C echo: plain UDP)")
    fig.tight_layout()
    path = directory / "bench-concurrency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    if results.get("scaling"):
        written.append(plot_scaling(results["scaling"], directory, plt))

    run = dig(results, "servers", "coapdev", "sustained") or {}
    series = run.get("series") or []
    if series:
        fig, ax = plt.subplots(figsize=(10, 4.2))
        scale, unit = (60, "minutes") if series[-1][0] >= 120 else (1, "seconds")
        ts = [p[0] / scale for p in series]
        ax.plot(ts, [p[1] / 1024 for p in series], color="tab:blue", label="RSS (MiB)")
        ax.axhline(64, color="tab:blue", linestyle=":", linewidth=1, label="target 64 MiB")
        ax.set_ylim(0, max(70, max(p[1] / 1024 for p in series) * 1.1))
        ax.set_xlabel(f"{unit} of sustained load (32 clients)")
        ax.set_ylabel("gateway RSS (MiB)")
        ax.grid(True, alpha=0.3)
        cpu = ax.twinx()
        shares = [
            (b[2] - a[2]) / (b[0] - a[0]) * 100 if b[0] > a[0] else 0
            for a, b in itertools.pairwise(series)
        ]
        cpu.plot(ts[1:], shares, color="tab:orange", alpha=0.7, label="gateway CPU")
        if all(len(p) > 3 for p in series):
            rest = [
                ((b[3] - a[3]) - (b[2] - a[2])) / (b[0] - a[0]) * 100 if b[0] > a[0] else 0
                for a, b in itertools.pairwise(series)
            ]
            cpu.plot(
                ts[1:],
                rest,
                color="tab:grey",
                alpha=0.5,
                label="rest of the machine (generator + others)",
            )
        cpu.set_ylabel("CPU (% of one core)")
        cpu.set_ylim(0, 210)
        handles = ax.get_legend_handles_labels()
        more = cpu.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="lower right")
        fig.suptitle(
            f"coapdev under sustained load: {num(run.get('rate'), 'rate')} GET/s, "
            f"p99 {num(dig(run, 'latency_ms', 'p99'))} ms, "
            f"longest pause {num(run.get('max_gap_ms'))} ms"
        )
        fig.tight_layout()
        path = directory / "bench-sustained.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_scaling(sc: dict, directory: Path, plt: Any) -> Path:
    """Three panels: GET/s and RSS per doubling of clients, CPU per GET against stored
    clients, RSS against live sessions."""
    fig, (ax_c, ax_s, ax_h) = plt.subplots(1, 3, figsize=(15, 4.4))
    xs = [int(n) for n in sc["clients"]]
    ax_c.plot(xs, [v["get_per_s"] for v in sc["clients"].values()], marker="o", label="GET/s")
    ax_c.set_xscale("log", base=2)
    ax_c.set_xlabel("concurrent clients")
    ax_c.set_ylabel("GET/s")
    rss = ax_c.twinx()
    values = [v["rss_kib"] / 1024 if v["rss_kib"] else None for v in sc["clients"].values()]
    rss.plot(xs, values, marker="s", color="tab:green", label="RSS MiB")
    rss.set_ylabel("gateway RSS (MiB)")
    rss.set_ylim(0, max([v for v in values if v] + [10]) * 1.2)
    ax_c.set_ylim(bottom=0)
    ax_c.legend(loc="lower left", fontsize=8)
    rss.legend(loc="lower right", fontsize=8)
    xs = [int(n) for n in sc["stored"]]
    ax_s.plot(xs, [v["cpu_us_per_get"] for v in sc["stored"].values()], marker="o")
    first = next(iter(sc["stored"].values()))["cpu_us_per_get"]
    if first:
        ax_s.axhline(first * FLAT_RATIO, color="grey", linestyle=":", label="flat: 1.15x")
        ax_s.legend(fontsize=8)
    ax_s.set_xscale("log")
    ax_s.set_ylim(bottom=0)
    ax_s.set_xlabel("stored clients")
    ax_s.set_ylabel("server CPU us per GET (32 clients)")
    xs = [int(n) for n in sc["sessions"]]
    ax_h.bar(
        [str(n) for n in xs],
        [(v["rss_kib"] or 0) / 1024 for v in sc["sessions"].values()],
        color="tab:green",
    )
    for i, v in enumerate(sc["sessions"].values()):
        if v["kib_per_session"] is not None:
            ax_h.annotate(
                f"{v['kib_per_session']:.1f} KiB/session",
                (i, (v["rss_kib"] or 0) / 1024),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax_h.set_xlabel("live sessions held")
    ax_h.set_ylabel("gateway RSS (MiB, highest)")
    for ax in (ax_c, ax_s, ax_h):
        ax.grid(True, alpha=0.3)
    fig.suptitle("coapdev: cost that grows with the work")
    fig.tight_layout()
    path = directory / "bench-scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
