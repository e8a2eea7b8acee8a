"""Processes on loopback in their own process group: any server, and the gateway.

Every process runs in its own session, so stopping it ends the whole group (the
gateway's scripts included).  Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_udp_port, udp_port_bound
from .procfs import cpu_s, open_fds, resident_fds, rss_kib
from .waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

#: A line the gateway logs once it serves (at the default log level), and the line
#: ``coapdev-gateway`` prints after that at any level.
READY_MARKS = ("serving coaps://", "Factory key")


class StartError(Exception):
    """A process did not start (its log's tail is in the message)."""


def start_in_group(
    argv: list[str], log_path: Path, *, env: dict[str, str] | None, cwd: Path | None
) -> subprocess.Popen:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )


def stop_group(popen: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """SIGTERM to the group, SIGKILL to whatever of it lingers; the exit status."""
    pgid = popen.pid
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=5)
    return popen.returncode


def how_it_ended(popen: subprocess.Popen | None) -> str:
    if popen is None or popen.returncode is None:
        return "is running"
    code = popen.returncode
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class GroupProcess:
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

    def start(self) -> GroupProcess:
        self.started_at = time.time()
        self.popen = start_in_group(self.argv, self.log_path, env=self.env, cwd=self.cwd)
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
        return how_it_ended(self.popen)

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
        if self.popen is not None:
            stop_group(self.popen, timeout_s)

    def rss_kib(self) -> int:
        return rss_kib(self.pid) if self.alive() else 0

    def cpu_s(self) -> float:
        return cpu_s(self.pid)


@dataclass
class GatewayProcess:
    """A real ``coapdev-gateway`` process on loopback, in its own process group.

    Whoever starts one stops it (tests through their fixture, tools in ``finally``).
    mDNS stays on loopback unless ``env`` says otherwise.
    """

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    config: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: ``--log-level`` for the gateway (None: its default).
    log_level: str | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    #: Where the gateway's log goes (default: beside the state directory).
    log_dir: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_udp_port(self.host)

    @classmethod
    def from_config_text(cls, config_text: str, **kwargs: object) -> GatewayProcess:
        """A gateway in a temporary directory (removed by :meth:`close`) with this config."""
        tmp = tempfile.TemporaryDirectory(prefix="coapdev-gateway-")
        workdir = Path(tmp.name)
        config = workdir / "gateway.toml"
        config.write_text(config_text)
        gw = cls(state_dir=workdir / "state", config=config, log_dir=workdir, **kwargs)  # type: ignore[arg-type]
        gw._tmp = tmp
        return gw

    @property
    def data_dir(self) -> Path:
        """Where the gateway's scripts run and keep their files (``COAPDEV_DATA_DIR``)."""
        return self.state_dir / "data"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def uri(self) -> str:
        return f"coaps://{self.address}"

    def argv(self, *command: str) -> list[str]:
        argv = [sys.executable, "-m", "gateway", "--state-dir", str(self.state_dir)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv + list(command)

    def start(self, ready_timeout_s: float = 20.0) -> GatewayProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_dir = self.log_dir or self.state_dir.parent
        self.log_path = log_dir / f"gateway-{self.port}-{time.monotonic_ns()}.log"
        argv = self.argv("--host", self.host, "--port", str(self.port), *self.extra_args)
        if self.log_level is not None:
            argv += ["--log-level", self.log_level]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        env.setdefault("COAPDEV_MDNS_INTERFACES", "127.0.0.1")
        self.proc = start_in_group(argv, self.log_path, env=env, cwd=REPO)
        try:
            wait_for(self._ready, ready_timeout_s, what=f"gateway on {self.address} to be ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"gateway did not start:\n{self.log()}") from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        text = self.log()
        return any(mark in text for mark in READY_MARKS)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def factory_key(self) -> str:
        out = subprocess.run(self.argv("key"), capture_output=True, text=True, check=True, cwd=REPO)
        return out.stdout.strip()

    def local(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``coapdev-gateway --state-dir ... COMMAND`` (local management)."""
        return subprocess.run(
            self.argv(*command),
            capture_output=True,
            text=True,
            check=check,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )

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

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole group; the gateway's exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the gateway first: it stops its scripts
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        return stop_group(proc, timeout_s)

    def restart(self) -> GatewayProcess:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop it and remove its temporary directory (if it made one)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
