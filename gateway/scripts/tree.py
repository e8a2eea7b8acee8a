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


def new_tag() -> str:
    """A run's tag: a tick before it started (as /proc counts start times), and a random part.

    Every process of the run starts after the run did, so a walk for this tag
    reads the environment only of processes at least that young.
    """
    return f"{_boot_ticks() - 1:x}.{secrets.token_hex(8)}"


def _born_since(tag: str) -> int:
    """The tick a tag's run started at, or 0 (look at every process) for a tag without one."""
    head, dot, _ = tag.partition(".")
    try:
        return int(head, 16) if dot else 0
    except ValueError:
        return 0


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
    A process's stat is read once; its environment only when it started
    after the oldest of the runs (so the walk costs about one read per
    process, not three).
    """
    markers = [f"\0{TAG_VARIABLE}={tag}\0".encode() for tag in tags]
    since = min((_born_since(tag) for tag in tags), default=0)
    me = os.getpid()
    uid = os.getuid()
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    try:
        proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return found
    try:
        for name in os.listdir(proc):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
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
