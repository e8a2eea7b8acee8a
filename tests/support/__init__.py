"""Helpers for tests that start real gateway processes and run the real CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def udp_port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only members are zombies still "exists"; look for live ones.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            return True
    return False


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie left for init to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@dataclass
class Gateway:
    """A real ``coapdev-gateway`` process on loopback; stop() is always called by its fixture."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    config: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    #: Where the gateway's log goes (default: beside the state directory).
    log_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_udp_port(self.host)

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

    def start(self, ready_timeout_s: float = 15.0) -> Gateway:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_dir = self.log_dir or self.state_dir.parent
        self.log_path = log_dir / f"gateway-{self.port}-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")
        argv = self.argv("--host", self.host, "--port", str(self.port), *self.extra_args)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=REPO,
        )
        log.close()
        try:
            wait_for(self._ready, ready_timeout_s, what=f"gateway on {self.address} to be ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"gateway did not start:\n{self.log()}") from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        return "serving coaps://" in self.log()

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

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        pgid = proc.pid
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        return proc.returncode

    def restart(self) -> Gateway:
        self.stop()
        return self.start()


@contextlib.contextmanager
def running_gateway(state_dir: Path, **kwargs) -> Iterator[Gateway]:
    gw = Gateway(state_dir=state_dir, **kwargs)
    try:
        yield gw.start()
    finally:
        gw.stop()


def run_cli(
    config_dir: Path,
    *args: str,
    timeout_s: float = 60,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real ``coapdev`` CLI in a subprocess."""
    full_env = dict(os.environ, COAPDEV_CONFIG_DIR=str(config_dir), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "coapdev", *args],
        capture_output=True,
        timeout=timeout_s,
        env=full_env,
        cwd=REPO,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


async def send_with_options(
    client,
    method: str,
    path: str,
    payload: bytes = b"",
    *,
    observe: bool = False,
    content_format: int | None = None,
    accept: int | None = None,
    timeout_s: float = 5.0,
):
    """One request with options the client library never sets (Observe on a PUT),
    on the client's own DTLS session; returns aiocoap's response message."""
    import asyncio

    transport = await client._ensure_transport()
    message = client._message(method, path, payload, content_format, accept, observe)
    pending = transport.context.request(message)
    try:
        return await asyncio.wait_for(pending.response, timeout_s)
    finally:
        if pending.observation is not None and not pending.observation.cancelled:
            pending.observation.cancel()
