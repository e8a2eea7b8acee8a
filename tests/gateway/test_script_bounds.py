"""Scripts, watchers and the pairing button cannot outlive their use or leak the gateway's
descriptors, and never run in the state directory: real gateway processes, real DTLS."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from support import process_gone, wait_for

from coapdev.client import Client, onboard

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parent / "scripts"

CONFIG = f"""
[device]
advertise = false

[onboarding]
button = ["{SCRIPTS}/button_detach.sh"]

[[resource]]
path = "/detach-keep"
concurrency = 4
timeout_s = 5
get = {{ run = ["{SCRIPTS}/detach.sh", "keep-stdout"] }}

[[resource]]
path = "/detach-setsid"
concurrency = 4
timeout_s = 5
get = {{ run = ["{SCRIPTS}/detach.sh", "setsid"] }}

[[resource]]
path = "/detach-daemon"
concurrency = 4
timeout_s = 5
get = {{ run = ["{SCRIPTS}/detach.sh", "daemon"] }}

[[resource]]
path = "/fds"
output = "json"
get = {{ run = ["{sys.executable}", "{SCRIPTS}/fds.py"] }}

[[resource]]
path = "/watched"
observe = {{ watch = ["{SCRIPTS}/watch_detach.sh"] }}
"""

#: Requests to scripts that detach a descendant; bounded, spread over three kinds.
REQUESTS = 1200
IN_FLIGHT = 6


def gateway_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture
def bounded(gateway_factory, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    return gateway_factory("bounded", config=config)


def test_thousands_of_requests_to_detaching_scripts_leak_no_descriptor_and_no_process(bounded, run):
    data = bounded.state_dir / "data"

    async def scenario() -> tuple[int, int, list[str]]:
        creds = await onboard(bounded.uri, bounded.factory_key(), "hammer")
        # One client per request in flight: a CoAP client has one request
        # outstanding per endpoint (NSTART = 1).
        clients = [Client(creds, timeout_s=20) for _ in range(IN_FLIGHT)]
        try:
            for path in ("/detach-keep", "/detach-setsid", "/detach-daemon"):
                await clients[0].get(path)  # warm up
            before = gateway_fds(bounded.proc.pid)
            queue = ["/detach-keep", "/detach-setsid", "/detach-daemon"] * (REQUESTS // 3)
            answers: list[str] = []

            async def worker(dev: Client) -> None:
                while queue:
                    response = await dev.get(queue.pop())
                    answers.append(response.code)

            await asyncio.gather(*(worker(dev) for dev in clients))
            return before, gateway_fds(bounded.proc.pid), answers
        finally:
            for dev in clients:
                await dev.close()

    before, after, answers = run(scenario(), timeout_s=600)
    assert answers == ["2.05"] * REQUESTS
    assert after <= before + 2, f"gateway descriptors {before} -> {after}"
    left = [pid for pid in pids(data / "descendant.pid") if not process_gone(pid)]
    wait_for(
        lambda: not [pid for pid in left if not process_gone(pid)],
        5,
        what=f"{len(left)} descendants of finished scripts to be gone",
    )


def test_scripts_run_in_their_data_directory_with_only_stdio_inherited(bounded, run):
    async def scenario() -> dict:
        creds = await onboard(bounded.uri, bounded.factory_key(), "curious")
        async with Client(creds) as dev:
            return (await dev.get("/fds")).value

    seen = run(scenario())
    state = str(bounded.state_dir.resolve())
    assert seen["cwd"] == str((bounded.state_dir / "data").resolve())
    for fd, target in seen["fds"].items():
        assert int(fd) <= 2 or target.startswith("/proc/"), (fd, target)
        assert not target.startswith(state + "/") or target.startswith(state + "/data"), target


def test_a_watcher_and_what_it_detached_stop_when_nobody_observes(bounded, run):
    data = bounded.state_dir / "data"

    async def scenario() -> list[bytes]:
        creds = await onboard(bounded.uri, bounded.factory_key(), "watcher")
        seen = []
        async with Client(creds) as dev:
            async for response in dev.observe("/watched"):
                seen.append(response.payload)
                if len(seen) == 3:
                    break
        return seen

    assert len(run(scenario())) == 3
    assert (data / "watcher.cwd").read_text().strip() == str(data.resolve())
    watchers = pids(data / "watcher.pids") + pids(data / "watch-descendant.pid")
    assert watchers
    wait_for(
        lambda: all(process_gone(pid) for pid in watchers),
        10,
        what="the watcher and its detached child to be gone once unobserved",
    )


def test_the_button_command_and_what_it_detached_stop_with_the_gateway(bounded):
    data = bounded.state_dir / "data"
    wait_for(lambda: "pairing button pressed" in bounded.log(), 10, what="the button press")
    assert (data / "button.cwd").read_text().strip() == str(data.resolve())
    detached = pids(data / "button-descendant.pid")
    assert detached and not process_gone(detached[0])
    assert bounded.stop() == 0
    wait_for(lambda: all(process_gone(p) for p in detached), 5, what="the button's child to go")
