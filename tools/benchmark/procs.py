"""Processes the benchmark starts, and what /proc says about them.

Every process runs in its own session (process group) and is registered, so
:func:`stop_all` can end each group on any exit: normal, error, Ctrl-C or
SIGTERM.  Nothing is ever killed by name.  The process runner and the /proc
readers are testkit's (shared with the tests and the reliability tools).
"""

from __future__ import annotations

import contextlib

from testkit import GroupProcess, StartError, cpu_s, free_udp_port, system_busy_s, udp_port_bound

__all__ = [
    "Proc",
    "StartError",
    "cpu_s",
    "free_udp_port",
    "stop_all",
    "system_busy_s",
    "udp_port_bound",
]

_running: list[Proc] = []


class Proc(GroupProcess):
    """A server process the benchmark started: registered until it is stopped."""

    def start(self) -> Proc:
        super().start()
        _running.append(self)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        super().stop(timeout_s)
        if self in _running:
            _running.remove(self)


def stop_all() -> None:
    for proc in list(reversed(_running)):
        with contextlib.suppress(Exception):
            proc.stop(timeout_s=5)
