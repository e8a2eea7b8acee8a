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


#: The marks that say a test touches the real world; a test with none is a unit test.
REAL_WORLD_MARKS = ("e2e", "integration", "interop")


class UnitTestLeftTheProcess(AssertionError):
    """A test marked as none of REAL_WORLD_MARKS opened a network socket or a process."""


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Keep the marks honest: ``-m "not e2e and not integration"`` runs unit tests only, so
    a test without a mark may not open an IP socket or start a child process (UNIX
    socket pairs stay allowed: every asyncio event loop makes one)."""
    if any(request.node.get_closest_marker(mark) for mark in REAL_WORLD_MARKS):
        yield
        return
    import socket
    import subprocess

    name = request.node.nodeid
    real_socket, real_popen = socket.socket, subprocess.Popen

    class GuardedSocket(real_socket):  # type: ignore[misc, valid-type]
        def __init__(self, family: int = -1, *args: object, **kwargs: object) -> None:
            if family in (socket.AF_INET, socket.AF_INET6, -1):
                raise UnitTestLeftTheProcess(
                    f"{name} opens an IP socket: mark it integration (or e2e)"
                )
            super().__init__(family, *args, **kwargs)  # type: ignore[arg-type]

    class GuardedPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise UnitTestLeftTheProcess(f"{name} starts a process: mark it integration (or e2e)")

    monkeypatch.setattr(socket, "socket", GuardedSocket)
    monkeypatch.setattr(subprocess, "Popen", GuardedPopen)
    yield


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
