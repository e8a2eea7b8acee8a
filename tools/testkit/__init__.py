"""What tests, the benchmark and the reliability tools share to run and watch processes.

One gateway process helper (:class:`GatewayProcess`), one process-group runner it is
built on (:class:`GroupProcess`, also what the benchmark uses for its peers), one
:func:`free_udp_port` that honours the address family, :func:`wait_for`, and what
``/proc`` says about a process.  Importable as ``testkit`` with ``tools/`` on the path
(the test suite's ``pythonpath`` and every ``tools/`` launcher put it there).
"""

from .gateway import GatewayProcess, GroupProcess, StartError
from .ports import free_udp_port, udp_port_bound, udp_port_in_use
from .procfs import (
    cpu_s,
    open_fds,
    process_gone,
    process_group_alive,
    resident_fds,
    rss_kib,
    system_busy_s,
)
from .waiting import wait_for

__all__ = [
    "GatewayProcess",
    "GroupProcess",
    "StartError",
    "cpu_s",
    "free_udp_port",
    "open_fds",
    "process_gone",
    "process_group_alive",
    "resident_fds",
    "rss_kib",
    "system_busy_s",
    "udp_port_bound",
    "udp_port_in_use",
    "wait_for",
]
