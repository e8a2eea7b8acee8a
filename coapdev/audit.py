"""Audit log: one JSON object per line in the state directory, bounded.

Each event is one ``write`` on a file opened with O_APPEND, so lines from the
gateway and from local ``coapdev-gateway clients ...`` commands never
interleave, and a ``kill -9`` loses nothing already written.

Bounds (see docs/reliability.md):

- size: ``audit.jsonl`` is renamed to ``audit.jsonl.1`` (replacing the one
  before) when it would pass half of ``max_bytes``, so the two together
  never hold more than ``max_bytes``;
- refusals (wrong key, onboarding closed, the factory identity knocking at
  other doors...) come in floods: at most ``refusals_per_minute`` lines per
  event and source host (never host and port: every datagram may come from
  a fresh port), and ten times that over all hosts; the rest are counted
  and written as one ``suppressed`` line (``N similar events suppressed``),
  at most ``MAX_SUMMARIES`` of them per minute;
- every text field is cut at ``MAX_FIELD_CHARS``, since paths and names
  come from peers;
- a reserve: while the state directory's file system has less than
  ``reserve_free_bytes`` free, nothing is written, so the audit log never
  takes the room the credential store needs for a change;
- an audit failure never fails the request or change it records: it is
  counted (``dropped``) and logged.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ratelimit import TokenBuckets, host_of, source_key
from .store import AUDIT_FILE

log = logging.getLogger("coapdev.audit")

AUDIT_ROTATED = AUDIT_FILE + ".1"
#: Text fields (paths, names, reasons) are cut to this many characters.
MAX_FIELD_CHARS = 128
#: Sources whose refusal budgets are remembered; the least recent are forgotten.
MAX_TRACKED_SOURCES = 10_000
#: Hosts summarised one by one; refusals from further hosts are counted together
#: (``"source": "*"``), so summaries are bounded too.
MAX_SUMMARIES = 32


@dataclass(frozen=True)
class AuditLimits:
    #: Both files together (``audit.jsonl`` and ``audit.jsonl.1``).
    max_bytes: int = 4 * 2**20
    #: No line is written while the file system has less than this free.
    reserve_free_bytes: int = 8 * 2**20
    #: Refusal lines per event and source host per minute (and burst).
    refusals_per_minute: float = 10.0

    def refusals_total_per_minute(self, per_host: float | None = None) -> int:
        """Refusal lines per minute over all hosts together."""
        return int(10 * (self.refusals_per_minute if per_host is None else per_host))


def _free_bytes_of(directory: Path) -> Callable[[], int]:
    def free() -> int:
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize

    return free


class AuditLog:
    def __init__(
        self,
        directory: Path,
        limits: AuditLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / AUDIT_FILE
        self.rotated_path = self.directory / AUDIT_ROTATED
        self.clock = clock
        self.free_bytes = free_bytes or _free_bytes_of(self.directory)
        #: Lines not written: no room (the reserve), or a write failed.
        self.dropped = 0
        self._paused_for: str | None = None
        self._suppressed: dict[tuple[str, str], int] = {}
        self.configure(limits or AuditLimits())

    def configure(self, limits: AuditLimits) -> None:
        self.limits = limits
        per_host = limits.refusals_per_minute
        self._per_source = TokenBuckets(per_host, per_host, clock=self.clock)
        self._per_source.max_keys = MAX_TRACKED_SOURCES
        total = limits.refusals_total_per_minute()
        self._total = TokenBuckets(total, total, clock=self.clock)

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        """The store's audit hook."""
        self.record(event, **details)

    # --- writing ---------------------------------------------------------------------

    def record(self, event: str, **details: Any) -> bool:
        """Write one event; False if it was not written (never raises)."""
        entry = {"time": round(time.time(), 3), "event": event}
        entry.update({k: _bounded(v) for k, v in details.items()})
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        try:
            if self.free_bytes() < self.limits.reserve_free_bytes:
                self._pause("the file system has less than the reserve free")
                return False
            self._append(line)
        except OSError as exc:
            self._pause(f"cannot write {self.path}: {exc.strerror or exc}")
            return False
        if self._paused_for is not None:
            log.warning("audit log resumed; %d events were not recorded", self.dropped)
            self._paused_for = None
        return True

    def _pause(self, why: str) -> None:
        self.dropped += 1
        if self._paused_for != why:
            self._paused_for = why
            log.warning("audit log paused (%s); changes go on unrecorded", why)

    def _append(self, line: bytes) -> None:
        half = max(1, self.limits.max_bytes // 2)
        for _ in range(3):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                st = os.fstat(fd)
                if st.st_size and st.st_size + len(line) > half:
                    self._rotate(fd, st.st_ino)
                    continue  # write to the fresh file
                os.write(fd, line)
                return
            finally:
                os.close(fd)
        raise OSError(0, "the audit log keeps being rotated")

    def _rotate(self, fd: int, inode: int) -> None:
        """Rename the full file to ``.1``, unless another process did already."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            try:
                still_ours = os.stat(self.path).st_ino == inode
            except FileNotFoundError:
                still_ours = False
            if still_ours:
                os.replace(self.path, self.rotated_path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # --- refusals --------------------------------------------------------------------

    def refusal(self, event: str, source: str, **details: Any) -> None:
        """Record a refusal within its budget (per event and host, and in total)."""
        host = source_key(host_of(str(source)))
        key = (event, host)
        if self._per_source.tokens(key) < 1.0 or not self._total.take("*"):
            if key not in self._suppressed and len(self._suppressed) >= MAX_SUMMARIES:
                key = (event, "*")  # too many hosts to summarise one by one
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._per_source.take(key)
        count = self._suppressed.pop(key, 0)
        if count:
            self._summary(event, host, count)
        self.record(event, source=source, **details)

    def flush_suppressed(self) -> int:
        """Write the summary of every refusal not recorded yet; returns how many lines."""
        pending, self._suppressed = self._suppressed, {}
        for (event, host), count in pending.items():
            self._summary(event, host, count)
        return len(pending)

    def _summary(self, event: str, host: str, count: int) -> None:
        self.record(
            "suppressed",
            of=event,
            source=host,
            count=count,
            text=f"{count} similar events suppressed",
        )


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "..."
    return value


def read_audit(directory: Path) -> list[dict[str, Any]]:
    """Every event still kept, oldest first (the rotated file, then the current one)."""
    out = []
    for name in (AUDIT_ROTATED, AUDIT_FILE):
        path = Path(directory) / name
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
