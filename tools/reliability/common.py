"""What the reliability tools share: a gateway process on loopback, and measuring it."""

from __future__ import annotations

from pathlib import Path

from testkit import GatewayProcess, free_udp_port, open_fds, resident_fds, rss_kib

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "REPO",
    "GatewayProcess",
    "free_udp_port",
    "open_fds",
    "percentile",
    "resident_fds",
    "rss_kib",
]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
