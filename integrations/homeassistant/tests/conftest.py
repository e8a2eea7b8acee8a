"""Home Assistant's test harness around real coapdev-gateway processes on loopback.

Sockets: Home Assistant's harness blocks them (pytest-socket); these tests
allow them to loopback only.  Multicast: HA's zeroconf is mocked, discovery
info is handed to the flow directly, and every gateway runs with
``advertise = false`` and mDNS restricted to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_socket

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))  # custom_components/
sys.path.insert(0, str(REPO / "tests"))  # the main suite's helpers (support.Gateway)
from support import Gateway  # noqa: E402

# Imported before Home Assistant mounts its testing config, whose own
# custom_components package would otherwise shadow this one.
import custom_components  # noqa: E402, F401

os.environ["COAPDEV_MDNS_INTERFACES"] = "127.0.0.1"

SCRIPTS = HERE / "scripts"
LOOPBACK = ["127.0.0.1", "127.0.0.2", "::1"]

#: A device with one resource of each kind (and one untyped).
DEVICE_CONFIG = """
[device]
advertise = false
demo_light = true

[[resource]]
path = "/relay"
title = "Relay"
kind = "switch"
device_class = "outlet"
get = { run = ["{scripts}/state.sh", "relay", "get", "off"] }
put = { run = ["{scripts}/state.sh", "relay", "set"] }
observe = { interval_s = 0.3 }

[[resource]]
path = "/temperature"
title = "Temperature"
output = "json"
kind = "sensor"
unit = "°C"
device_class = "temperature"
value_key = "celsius"
get = { run = ["{scripts}/state.sh", "temperature", "get", "{\\"celsius\\": null}"] }
observe = { interval_s = 0.3 }

[[resource]]
path = "/status"
kind = "sensor"
get = { run = ["{scripts}/state.sh", "status", "get", "idle"] }

[[resource]]
path = "/door"
title = "Door"
kind = "binary_sensor"
device_class = "door"
get = { run = ["{scripts}/state.sh", "door", "get", "0"] }
observe = { interval_s = 0.3 }

[[resource]]
path = "/doorbell"
title = "Doorbell"
kind = "button"
post = { run = ["{scripts}/state.sh", "presses", "press"] }

[[resource]]
path = "/plain"
get = { run = ["echo", "not typed"] }
"""


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Load custom_components/coapdev in every test."""


@pytest.fixture(autouse=True)
def loopback_sockets(socket_enabled: None) -> Iterator[None]:
    """Real sockets, but connections to loopback addresses only."""
    pytest_socket.socket_allow_hosts(LOOPBACK, allow_unix_socket=True)
    yield


@pytest.fixture(autouse=True)
def no_multicast(mock_async_zeroconf: Any) -> None:
    """Home Assistant's zeroconf never touches the network here."""


@pytest.fixture
def fast_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe and re-read every second, give up on a request after 3 s."""
    from custom_components.coapdev import const

    monkeypatch.setattr(const, "PING_INTERVAL_S", 1.0)
    monkeypatch.setattr(const, "POLL_INTERVAL_S", 1.0)
    monkeypatch.setattr(const, "REQUEST_TIMEOUT_S", 3.0)


@pytest.fixture
def gateway_factory(tmp_path: Path, loopback_sockets: None) -> Iterator[Callable[..., Gateway]]:
    """Start gateways on loopback with the test device config; all stopped at the end."""
    started: list[Gateway] = []

    def start(name: str = "device", *, config: str = DEVICE_CONFIG, **kwargs: Any) -> Gateway:
        path = tmp_path / f"{name}.toml"
        path.write_text(config.replace("{scripts}", str(SCRIPTS)))
        gw = Gateway(state_dir=tmp_path / name, config=path, **kwargs)
        started.append(gw)
        gw.start()
        gw.key = gw.factory_key()
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory()


async def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition"
) -> Any:
    """Wait (without blocking the event loop) until ``predicate()`` is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def device_id_of(gw: Gateway) -> str:
    """The device id, from the gateway's state directory."""
    import json

    return json.loads((gw.state_dir / "credentials.json").read_text())["device"]["id"]


async def device_command(gw: Gateway, *command: str) -> str:
    """Run ``coapdev-gateway COMMAND`` on the device's state, and wait until the
    running gateway has picked the change up (it looks every second)."""
    seen = gw.log().count("state changed on disk")
    out = gw.local(*command).stdout
    await wait_until(
        lambda: gw.log().count("state changed on disk") > seen,
        what=f"the gateway to notice `{' '.join(command)}`",
    )
    return out
