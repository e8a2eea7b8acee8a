"""Network namespaces joined by veth pairs, made and removed by the test that uses them.

Every name starts with ``cli`` (namespaces, links), with a random part, so
parallel runs never clash.  Traffic, mDNS included, stays inside.  Needs root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import REPO


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def require_netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")


@dataclass
class Lab:
    """Namespaces by role name; veth pairs between them."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def namespace(self, role: str) -> str:
        name = f"cli-{role}-{self.tag}"
        ip("netns", "add", name)
        self.namespaces[role] = name
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str, b: str) -> tuple[str, str]:
        """A veth pair from namespace ``a`` to ``b``; returns the two link names."""
        n = len(self.links)
        end_a, end_b = f"cli{self.tag}{n}a", f"cli{self.tag}{n}b"
        ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
        self.links.append(end_a)
        ip("link", "set", end_a, "netns", self.namespaces[a])
        ip("link", "set", end_b, "netns", self.namespaces[b])
        for role, end in ((a, end_a), (b, end_b)):
            ip("-n", self.namespaces[role], "link", "set", end, "up")
        return end_a, end_b

    def address(self, role: str, link: str, cidr: str, *, add: bool = True) -> None:
        extra = ["nodad"] if ":" in cidr and add else []
        ip("-n", self.namespaces[role], "addr", "add" if add else "del", cidr, "dev", link, *extra)

    def argv(self, role: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[role], *argv]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "COAPDEV_MDNS_INTERFACES"}
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **extra)
        return env

    def cli(self, role: str, config_dir: Path, *args: str, timeout_s: float = 60):
        """The real ``coapdev`` inside namespace ``role``."""
        return subprocess.run(
            self.argv(role, sys.executable, "-m", "coapdev", *args),
            capture_output=True,
            timeout=timeout_s,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            env=self.env(COAPDEV_CONFIG_DIR=str(config_dir)),
        )

    def start(self, role: str, *argv: str, log: Path) -> subprocess.Popen:
        out = open(log, "wb")
        proc = subprocess.Popen(
            self.argv(role, *argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=self.env(),
            start_new_session=True,
        )
        out.close()
        self.processes.append(proc)
        return proc

    def close_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)

    def close(self) -> None:
        self.close_processes()
        for name in self.namespaces.values():
            ip("netns", "del", name, check=False)  # its links go with it
        for end in self.links:
            ip("link", "del", end, check=False)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    require_netns()
    made = Lab()
    try:
        yield made
    finally:
        made.close()
