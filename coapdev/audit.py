"""Audit log: one JSON object per line in the state directory.

Each event is one ``write`` on a file opened with O_APPEND, so lines from the
gateway and from local ``coapdev-gateway clients ...`` commands never
interleave, and a ``kill -9`` loses nothing already written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .store import AUDIT_FILE

#: Refusals (wrong key, closed onboarding...) can come in floods; at most this
#: many per source address and event are recorded per minute.
REFUSALS_PER_MINUTE = 10


class AuditLog:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / AUDIT_FILE
        self._refusal_counts: dict[tuple[str, str], tuple[int, int]] = {}

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        self.record(event, **details)

    def record(self, event: str, **details: Any) -> None:
        entry = {"time": round(time.time(), 3), "event": event, **details}
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def refusal(self, event: str, source: str, **details: Any) -> None:
        """Record a refusal, at most REFUSALS_PER_MINUTE per (event, source) and minute."""
        minute = int(time.monotonic() // 60)
        key = (event, source)
        seen_minute, count = self._refusal_counts.get(key, (minute, 0))
        if seen_minute != minute:
            count = 0
        count += 1
        if len(self._refusal_counts) > 10_000:
            self._refusal_counts.clear()
        self._refusal_counts[key] = (minute, count)
        if count <= REFUSALS_PER_MINUTE:
            self.record(event, source=source, **details)
        elif count == REFUSALS_PER_MINUTE + 1:
            self.record(event, source=source, suppressed="further refusals this minute", **details)


def read_audit(directory: Path) -> list[dict[str, Any]]:
    path = Path(directory) / AUDIT_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
