"""What /proc says about a process: memory, fds, CPU, whether it is still there."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    """How many fds a process holds right now (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def resident_fds(pid: int, window_s: float = 1.0, samples: int = 20) -> int:
    """The fds a process holds throughout a short window: the fewest seen.

    A script run holds its pipes (and a pidfd) for a few milliseconds, so one
    sample taken while a script or an Observe tick runs counts fds that are
    about to close. A leak is an fd that never closes, so it is in every sample.
    """
    fewest = open_fds(pid)
    for _ in range(max(samples - 1, 0)):
        time.sleep(window_s / max(samples - 1, 1))
        fewest = min(fewest, open_fds(pid))
    return fewest


def cpu_s(pid: int) -> float:
    """CPU seconds of a process: user + system, plus those of its reaped children
    (the gateway's scripts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # fields[11:15] are utime, stime, cutime, cstime (stat fields 14 to 17)
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def system_busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie left for init to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def process_group_alive(pgid: int) -> bool:
    """Whether a process group has a member that is not a zombie."""
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
