"""What the reliability tools share: a gateway process on loopback, and measuring it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def resident_fds(pid: int, window_s: float = 1.0, samples: int = 20) -> int:
    """The fds a process holds throughout a short window: the fewest seen.

    A script run holds its pipes (and a pidfd) for a few milliseconds, so one
    sample taken while a script or an Observe tick runs counts fds that are
    about to close. A leak is an fd that never closes, so it is in every sample.
    """
    fewest = open_fds(pid)
    for _ in range(max(samples - 1, 0)):
        time.sleep(window_s / max(samples - 1, 1))
        fewest = min(fewest, open_fds(pid))
    return fewest


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class GatewayProcess:
    """A real ``coapdev-gateway`` on loopback with a config of the tool's choosing."""

    config_text: str
    host: str = "127.0.0.1"
    port: int = 0
    workdir: Path | None = None
    log_level: str = "warning"
    proc: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="coapdev-reliability-")
            self.workdir = Path(self._tmp.name)
        if not self.port:
            self.port = free_udp_port(self.host)

    @property
    def state_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "gateway.log"

    @property
    def uri(self) -> str:
        return f"coaps://{self.host}:{self.port}"

    def _argv(self, *command: str) -> list[str]:
        assert self.workdir is not None
        config = self.workdir / "gateway.toml"
        config.write_text(self.config_text)
        return [
            sys.executable,
            "-m",
            "gateway",
            "--state-dir",
            str(self.state_dir),
            "--config",
            str(config),
            *command,
        ]

    def start(self, timeout_s: float = 20.0) -> GatewayProcess:
        argv = self._argv("--host", self.host, "--port", str(self.port))
        argv += ["--log-level", self.log_level]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1", COAPDEV_MDNS_INTERFACES="127.0.0.1"),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            if "serving coaps://" in self.log() or self._port_bound():
                if "Factory key" in self.log():
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not start within {timeout_s} s:\n{self.log()}")

    def _port_bound(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((self.host, self.port))
            except OSError:
                return True
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def local(self, *command: str) -> str:
        out = subprocess.run(
            self._argv(*command),
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        return out.stdout.strip()

    def factory_key(self) -> str:
        return self.local("key")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid) if self.proc is not None else 0

    def open_fds(self) -> int:
        return open_fds(self.pid) if self.proc is not None else 0

    def resident_fds(self) -> int:
        return resident_fds(self.pid) if self.proc is not None else 0

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        return proc.returncode

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
