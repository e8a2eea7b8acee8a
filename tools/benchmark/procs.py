"""Processes the benchmark starts, and what /proc says about them.

Every process runs in its own session (process group) and is registered, so
:func:`stop_all` can end each group on any exit: normal, error, Ctrl-C or
SIGTERM.  Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from reliability.common import rss_kib

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_running: list[Proc] = []


class StartError(Exception):
    """A server did not start (its log's tail is in the message)."""


class Proc:
    """A server process on loopback, its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.started_at = time.time()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                cwd=self.cwd,
            )
        finally:
            log.close()
        _running.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_for_udp_port(self, port: int, timeout_s: float = 30.0) -> None:
        """Wait until ``port`` is bound (read from /proc: a probe bind could steal it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(f"{self.name} {self.how_it_ended()}\n{self.log_tail()}")
            if udp_port_bound(port):
                return
            time.sleep(0.02)
        raise StartError(f"{self.name} did not bind UDP port {port} in {timeout_s:.0f} s")

    def how_it_ended(self) -> str:
        if self.popen is None or self.popen.returncode is None:
            return "is running"
        code = self.popen.returncode
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        # the gateway prints a QR code; keep the lines that say something
        qr_blocks = set("\u2580\u2584\u2588")
        kept = [line for line in text.splitlines() if line.strip() and not qr_blocks & set(line)]
        return "\n".join("    | " + line for line in kept[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL if it lingers; the whole group either way."""
        if self.popen is None:
            return
        pgid = self.popen.pid
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # whatever is left of the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        if self in _running:
            _running.remove(self)

    # --- /proc ---

    def rss_kib(self) -> int:
        return rss_kib(self.pid) if self.alive() else 0

    def cpu_s(self) -> float:
        return cpu_s(self.pid)


def stop_all() -> None:
    for proc in list(reversed(_running)):
        with contextlib.suppress(Exception):
            proc.stop(timeout_s=5)


def cpu_s(pid: int) -> float:
    """CPU seconds of a process: user + system, plus those of its reaped children
    (the gateway's scripts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # fields[11:15] are utime, stime, cutime, cstime (stat fields 14 to 17)
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def system_busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def udp_port_bound(port: int) -> bool:
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 1 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def free_udp_port(host: str = "127.0.0.1", *, pair: bool = False) -> int:
    """A free UDP port (with ``pair``, one whose successor is free too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
            if not pair:
                return port
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                try:
                    s2.bind((host, port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP port found on loopback")
