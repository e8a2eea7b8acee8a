"""Helpers for tests that start real gateway processes and run the real CLI.

The process helpers themselves live in ``tools/testkit`` (shared with the benchmark
and the reliability tools); this module re-exports them under the names tests use.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# pytest puts tools/ on the path (setup.cfg); the Home Assistant harness imports this
# module with only tests/ on it.
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))

from testkit import (  # noqa: E402
    GatewayProcess,
    free_udp_port,
    process_gone,
    process_group_alive,
    udp_port_in_use,
    wait_for,
)

#: A real ``coapdev-gateway`` process on loopback; stop() is always called by its fixture.
Gateway = GatewayProcess

__all__ = [
    "REPO",
    "Gateway",
    "free_udp_port",
    "process_gone",
    "process_group_alive",
    "run_cli",
    "running_gateway",
    "send_with_options",
    "udp_port_in_use",
    "wait_for",
]


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
