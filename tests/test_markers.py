"""The test marks are kept honest: an unmarked test is a unit test and stays in its process."""

from __future__ import annotations

import socket
import subprocess

import pytest


def test_an_unmarked_test_cannot_open_an_ip_socket_or_start_a_process():
    with pytest.raises(AssertionError, match="opens an IP socket: mark it integration"):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(AssertionError, match="opens an IP socket"):
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with pytest.raises(AssertionError, match="starts a process: mark it integration"):
        subprocess.run(["true"], check=False)
    left, right = socket.socketpair()  # what every asyncio event loop makes: allowed
    left.close()
    right.close()


@pytest.mark.integration
def test_an_integration_test_may():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
    assert subprocess.run(["true"], check=False).returncode == 0
