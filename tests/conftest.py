from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from support import Gateway

# mDNS in tests stays on loopback (gateways and CLIs started by tests inherit this).
os.environ["COAPDEV_MDNS_INTERFACES"] = "127.0.0.1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gateway_factory(tmp_path: Path):
    """Start gateways on loopback; every one is stopped when the test ends."""
    started: list[Gateway] = []

    def start(name: str = "device", *, start: bool = True, **kwargs) -> Gateway:
        gw = Gateway(state_dir=tmp_path / name, **kwargs)
        started.append(gw)
        return gw.start() if start else gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory) -> Gateway:
    return gateway_factory()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "client-config"
    d.mkdir()
    return d


@pytest.fixture
def run():
    """Run a coroutine to completion (tests stay synchronous and simple)."""

    def runner(coro, timeout_s: float = 60):
        return asyncio.run(asyncio.wait_for(coro, timeout_s))

    return runner
