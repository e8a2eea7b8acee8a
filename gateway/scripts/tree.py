"""Finding and killing every process a script started, wherever it went.

Descendants are found by a tag in their environment, which every child
inherits, and by parent links; a descendant that both detaches and replaces
its whole environment is beyond reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Collection, Mapping

log = logging.getLogger("coapdev.gateway.runner")

#: The environment variable that tags every process started for a script.
TAG_VARIABLE = "COAPDEV_RUN"
#: The second walk over /proc after trees were killed (see _SecondSweep), and how many
#: tags it holds at most (its memory bound).
RESWEEP_S = 0.25
MAX_RESWEEP_TAGS = 4096


#: /proc counts a process's start time in clock ticks since boot.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _boot_ticks() -> int:
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS)


#: The kernel's last allocated pid (in this pid namespace).
LAST_PID_FILE = "/proc/sys/kernel/ns_last_pid"
#: A walk looks only at pids allocated after its oldest run started when that run is
#: younger than this: the pid counter cannot have gone all the way round since (that
#: takes ``pid_max`` forks; 32 768 at the least, 3 277 a second for 10 s). Older runs,
#: or a counter that wrapped below the run's pid, get the full walk.
NEW_PIDS_ONLY_FOR_S = 10.0
#: When at most this many pids were handed out since a walk's floor, the walk opens
#: those pids' entries one by one instead of listing all of /proc (a listing costs
#: in proportion to every process on the machine; a probe of a free pid, one failed open).
PROBE_MAX_PIDS = 512


class _LastPid:
    """Reads the kernel's last allocated pid through one descriptor kept open: a read
    at offset 0 costs a tenth of opening the file each time, and each script run
    reads it twice."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def __call__(self) -> int | None:
        for _ in range(2):  # a failed read reopens the file once
            try:
                if self.fd is None:
                    self.fd = os.open(LAST_PID_FILE, os.O_RDONLY)
                return int(os.pread(self.fd, 32, 0))
            except OSError:
                if self.fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self.fd)
                    self.fd = None
            except ValueError:
                return None
        return None


_last_pid = _LastPid()


class _Leaders:
    """The processes the gateway started for its runs and has not reaped yet, by pid,
    with their run's tag.

    Such a process is the gateway's own child, forked for its run: it descends from
    no script and carries its own run's tag, so a walk for other tags need not read
    it (three reads each, at every run's end, for every run in flight).  Until the
    gateway reaps it, its pid cannot be handed to another process.
    """

    def __init__(self) -> None:
        self._tags: dict[int, tuple[subprocess.Popen[bytes], str]] = {}

    def add(self, popen: subprocess.Popen[bytes], tag: str) -> None:
        self._tags[popen.pid] = (popen, tag)

    def discard(self, popen: subprocess.Popen[bytes]) -> None:
        if self._tags.get(popen.pid, (None, ""))[0] is popen:
            del self._tags[popen.pid]

    def others(self, tags: Collection[str]) -> set[int]:
        """Pids of unreaped leaders of runs whose tag is not among ``tags`` (forgetting
        any reaped meanwhile by someone else)."""
        found = set()
        for pid, (popen, tag) in list(self._tags.items()):
            if popen.returncode is not None:
                del self._tags[pid]
            elif tag not in tags:
                found.add(pid)
        return found


leaders = _Leaders()


def new_tag() -> str:
    """A run's tag: a tick before it started (as /proc counts start times), the last pid
    handed out before it (when the kernel says), and a random part.

    Every process of the run starts after the run did and gets a later pid
    (until the counter wraps), so a walk for this tag reads the stat only of
    later pids and the environment only of processes at least that young.
    """
    last = _last_pid()
    floor = f"{last:x}." if last is not None else ""
    return f"{_boot_ticks() - 1:x}.{floor}{secrets.token_hex(8)}"


def _tag_bounds(tag: str) -> tuple[int, int | None]:
    """(the tick a tag's run started at, the pid floor) — (0, None), look at everything,
    for a tag without them."""
    parts = tag.split(".")
    try:
        if len(parts) == 3:
            return int(parts[0], 16), int(parts[1], 16)
        if len(parts) == 2:
            return int(parts[0], 16), None
    except ValueError:
        pass
    return 0, None


def _born_since(tag: str) -> int:
    """The tick a tag's run started at, or 0 (look at every process) for a tag without one."""
    return _tag_bounds(tag)[0]


def _pid_range(tags: Collection[str], since: int) -> tuple[int, int] | None:
    """(the pid every process of these runs is above, the last pid handed out), or None
    if that cannot be known."""
    floors = [_tag_bounds(tag)[1] for tag in tags]
    if not floors or any(f is None for f in floors):
        return None
    floor = min(f for f in floors if f is not None)
    current = _last_pid()
    if current is None or current < floor:  # wrapped (or unknown): every pid may be new
        return None
    if _boot_ticks() - since > NEW_PIDS_ONLY_FOR_S * CLOCK_TICKS:
        return None
    return floor, current


def _candidates(proc: int, pids: tuple[int, int] | None) -> list[str]:
    """The /proc entries a walk reads: the pids in range, or every process when it is
    not known or too wide (a pid handed out after the range was read is the second
    sweep's, as a process forked during a listing is)."""
    if pids is None or pids[1] - pids[0] > PROBE_MAX_PIDS:
        return os.listdir(proc)
    floor, current = pids
    return [str(pid) for pid in range(floor + 1, current + 1)]


def _read_proc(proc: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=proc)
    except OSError:  # gone, or another user's process
        return None
    try:
        chunks = [os.read(fd, 1 << 16)]
        while len(chunks[-1]) == 1 << 16:  # an environment can be longer than one read
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def process_tree(*tags: str) -> set[int]:
    """Every live process that carries one of ``tags`` or descends from one that does.

    One pass over /proc: tagged processes are found wherever they were
    reparented to; children are followed from each of them, for
    descendants that replaced their environment but still have their
    parent.  (Not from a pid that exited: its number may be reused.)
    Only pids handed out after the oldest run started are looked at (while
    that is certain, see NEW_PIDS_ONLY_FOR_S; one by one when they are few,
    PROBE_MAX_PIDS), a process's stat once, its environment only when it
    started after that run, and not at all the leaders of other runs in flight
    (:class:`_Leaders`): a walk costs a read or two per process the runs
    could have made.
    """
    markers = [f"\0{TAG_VARIABLE}={tag}\0".encode() for tag in tags]
    other_runs = leaders.others(tags)
    since = min((_born_since(tag) for tag in tags), default=0)
    pids = _pid_range(tags, since) if since else None
    floor = pids[0] if pids is not None else None
    me = os.getpid()
    uid = os.getuid()
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    try:
        proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return found
    try:
        for name in _candidates(proc, pids):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == me or (floor is not None and pid <= floor) or pid in other_runs:
                continue
            stat = _read_proc(proc, f"{name}/stat")
            try:
                fields = stat.rsplit(b")", 1)[1].split() if stat else []
                parent, started = int(fields[1]), int(fields[19])
            except (IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(pid)
            if started < since:
                continue
            try:
                if os.stat(name, dir_fd=proc).st_uid != uid:
                    continue
            except OSError:
                continue
            environ = _read_proc(proc, f"{name}/environ")
            if environ is not None and any(m in b"\0" + environ for m in markers):
                found.add(pid)
    finally:
        os.close(proc)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_all(pids: Collection[int]) -> None:
    for member in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)


class _SecondSweep:
    """One more walk over /proc a moment after trees were killed, for every tag at once.

    A process caught in the middle of ``execve`` shows an empty environment
    for a few microseconds, so one walk can miss it (seen: 1 in 1 200
    detaching scripts under load); a second walk a moment later finds it
    tagged.  Tags wait here and are swept together, at most once per
    ``RESWEEP_S``, so the cost does not grow with the request rate.
    """

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.scheduled_on: asyncio.AbstractEventLoop | None = None

    def add(self, tag: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the first walk is all there is
        self.pending.add(tag)
        if len(self.pending) > MAX_RESWEEP_TAGS:
            self.pending.pop()
        if self.scheduled_on is not loop:  # none yet, or on a loop that has ended since
            self.scheduled_on = loop
            loop.call_later(RESWEEP_S, self.sweep, loop)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.scheduled_on is not loop:
            return  # superseded by a sweep scheduled on a newer loop
        tags, self.pending, self.scheduled_on = self.pending, set(), None
        if tags:
            _kill_all(process_tree(*tags))


_second_sweep = _SecondSweep()


def kill_tree(pid: int, tag: str) -> None:
    """SIGKILL the process group of ``pid`` and every process of its tree (and again soon)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _kill_all(process_tree(tag))
    _second_sweep.add(tag)


def tagged_environment(env: Mapping[str, str], tag: str) -> dict[str, str]:
    return {**env, TAG_VARIABLE: tag}
