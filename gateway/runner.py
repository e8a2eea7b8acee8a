"""Running local scripts for requests, safely.

- argv comes from the config only; a request reaches a script through its
  stdin (the payload, verbatim) and environment variables.  No shell runs.
- a script is done when its process exits, not when its pipes close (a
  child that inherited stdout must not hold the answer hostage); what it
  printed is collected for a short grace period after the exit;
- nothing of a script outlives its answer: its process group is killed, and
  so is every descendant that left the group (``setsid``, a double fork).
  Descendants are found by a tag in their environment, which every child
  inherits, and by parent links; a descendant that both detaches and
  replaces its whole environment is beyond reach (such helpers belong in a
  systemd unit of their own);
- the gateway's ends of a script's pipes are always closed, whatever holds
  the other ends, so no descriptor leaks; a script inherits no descriptor
  but its stdin, stdout and stderr;
- stdout is read up to a limit; stderr is kept only in part, for the log;
- exit status 0 is success, 65 (EX_DATAERR) means "the client's input was
  wrong" and becomes 4.00 with the script's output as the reason; anything
  else becomes 5.00 with a short diagnostic.

:class:`LineProcess` runs a long-lived command the same way and hands each
line it prints to a callback: the watchers of observed resources and the
pairing button command use it, through :func:`supervise_lines`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("coapdev.gateway.runner")

#: Exit status a script uses to reject its input (sysexits.h EX_DATAERR).
EXIT_BAD_INPUT = 65
#: How much of a script's stderr is kept for the log.
STDERR_KEEP_BYTES = 4096
#: After the script exits, how long its output may take to arrive; what is in
#: the pipe at the exit is read within one turn of the event loop, so this
#: only bounds how long a descendant that keeps stdout open may delay the answer.
EXIT_GRACE_S = 0.1
#: How long to wait for the pipes to be torn down once everything is killed.
CLOSE_WAIT_S = 2.0
#: The environment variable that tags every process started for a script.
TAG_VARIABLE = "COAPDEV_RUN"
#: The second walk over /proc after trees were killed (see _SecondSweep), and how many
#: tags it holds at most (its memory bound).
RESWEEP_S = 0.25
MAX_RESWEEP_TAGS = 4096


class ScriptFailure(Exception):
    """A script did not produce a usable answer; ``kind`` says how."""

    def __init__(self, kind: str, message: str, output: bytes = b"") -> None:
        super().__init__(message)
        self.kind = kind  # "timeout", "too-large", "exit", "bad-input", "start"
        self.output = output


@dataclass
class ScriptResult:
    stdout: bytes
    stderr: bytes
    returncode: int


# --- finding and killing a script's processes -----------------------------------------


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


# --- the process protocol -------------------------------------------------------------


class _Protocol(asyncio.SubprocessProtocol):
    """Collects a process's output; knows when it exited, apart from its pipes."""

    def __init__(
        self,
        max_stdout_bytes: int,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.max_stdout_bytes = max_stdout_bytes
        self.on_stdout = on_stdout
        self.on_stderr = on_stderr
        self.too_large = asyncio.Event()
        self.exited = asyncio.Event()
        self.outputs_closed = asyncio.Event()
        self.finished = asyncio.Event()
        self._open_outputs = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            if self.on_stdout is not None:
                self.on_stdout(data)
                return
            if len(self.stdout) + len(data) > self.max_stdout_bytes:
                self.stdout.extend(data[: self.max_stdout_bytes + 1 - len(self.stdout)])
                self.too_large.set()
                return
            self.stdout.extend(data)
        elif fd == 2:
            if self.on_stderr is not None:
                self.on_stderr(data)
                return
            room = STDERR_KEEP_BYTES - len(self.stderr)
            if room > 0:
                self.stderr.extend(data[:room])

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_outputs.discard(fd)
        if not self._open_outputs:
            self.outputs_closed.set()

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished.set()


@dataclass
class _Started:
    transport: asyncio.SubprocessTransport
    protocol: _Protocol
    tag: str

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    async def close(self) -> None:
        """Kill whatever is left of the process's tree and close every pipe end we hold.

        Both happen before the first ``await``, so a cancelled caller (a
        request given up, the gateway stopping) still leaves nothing behind.
        """
        kill_tree(self.pid, self.tag)  # one walk over /proc: about 0.6 ms per 100 processes
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None and stdin.get_write_buffer_size():  # type: ignore[attr-defined]
            stdin.abort()  # its buffer may never drain: a holder that does not read
        self.transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.protocol.finished.wait()


async def _start(
    argv: Sequence[str],
    protocol: _Protocol,
    *,
    env: Mapping[str, str],
    cwd: str | None,
    stdin: bool,
    stderr: bool,
) -> _Started:
    loop = asyncio.get_running_loop()
    tag = new_tag()
    try:
        transport, _ = await loop.subprocess_exec(
            lambda: protocol,
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL,
            env=tagged_environment(env, tag),
            cwd=cwd,
            start_new_session=True,  # its own process group, killed as a whole
            close_fds=True,
        )
    except OSError as exc:
        raise ScriptFailure("start", f"cannot start {_name(argv)}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an environment value with a NUL byte
        raise ScriptFailure("start", f"cannot start {_name(argv)}: {exc}") from None
    if not stderr:
        protocol.pipe_connection_lost(2, None)
    return _Started(transport, protocol, tag)


# --- one script, one answer -----------------------------------------------------------


async def run_script(
    argv: Sequence[str],
    *,
    stdin: bytes,
    env: Mapping[str, str],
    timeout_s: float,
    max_output_bytes: int,
    cwd: str | None = None,
) -> ScriptResult:
    """Run one script to completion within the limits, or raise ScriptFailure."""
    protocol = _Protocol(max_output_bytes)
    started = await _start(argv, protocol, env=env, cwd=cwd, stdin=True, stderr=True)
    pipe = started.transport.get_pipe_transport(0)
    if pipe is not None:
        with contextlib.suppress(Exception):
            if stdin:
                pipe.write(stdin)  # type: ignore[attr-defined]
            pipe.write_eof()  # type: ignore[attr-defined]
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await _first(protocol.exited, protocol.too_large)
                if not protocol.too_large.is_set():
                    # Output may still be in the pipe; stragglers that keep it
                    # open past the grace period are killed with the tree.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(EXIT_GRACE_S):
                            await _first(protocol.outputs_closed, protocol.too_large)
        except TimeoutError:
            timed_out = True
    finally:
        await started.close()
    if timed_out:
        raise ScriptFailure("timeout", f"{_name(argv)} did not finish within {timeout_s:g} s")
    if protocol.too_large.is_set():
        raise ScriptFailure(
            "too-large", f"{_name(argv)} printed more than {max_output_bytes} bytes"
        )
    stdout, stderr = bytes(protocol.stdout), bytes(protocol.stderr)
    code = started.transport.get_returncode()
    code = -1 if code is None else code
    if code == EXIT_BAD_INPUT:
        raise ScriptFailure("bad-input", _short(stdout) or "input rejected", output=stdout)
    if code != 0:
        reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if stderr:
            log.warning(
                "%s %s; stderr: %s", _name(argv), reason, stderr.decode("utf-8", "replace").strip()
            )
        raise ScriptFailure("exit", f"{_name(argv)} {reason}")
    return ScriptResult(stdout, stderr, code)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


# --- long-lived commands that print lines ---------------------------------------------


class LineProcess:
    """A long-running command whose every output line goes to ``on_line``.

    Lines are split at ``\\n`` (a trailing ``\\r`` is dropped); a line longer
    than ``max_line_bytes`` ends the process (it is restarted by
    :func:`supervise_lines`), so a runaway command cannot fill memory.
    """

    def __init__(
        self,
        argv: Sequence[str],
        on_line: Callable[[bytes], None],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        max_line_bytes: int,
        stdin: bool = False,
        on_running: Callable[[LineProcess], None] | None = None,
        on_stderr_line: Callable[[bytes], None] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.on_line = on_line
        self.env = env
        self.cwd = cwd
        self.max_line_bytes = max_line_bytes
        #: Whether the command reads from the gateway (:meth:`write`); else /dev/null.
        self.stdin = stdin
        self.on_running = on_running
        #: Gets each line the command writes on stderr (cut at STDERR_KEEP_BYTES); else discarded.
        self.on_stderr_line = on_stderr_line
        self._stderr_partial = bytearray()
        self.overlong = False
        self._partial = bytearray()
        self._started: _Started | None = None

    @property
    def running(self) -> bool:
        started = self._started
        return started is not None and not started.protocol.exited.is_set()

    def write(self, data: bytes) -> bool:
        """Send ``data`` to the command's stdin; False if it is not running (or has none)."""
        if not self.running:
            return False
        assert self._started is not None
        pipe = self._started.transport.get_pipe_transport(0)
        if pipe is None or pipe.is_closing():
            return False
        pipe.write(data)  # type: ignore[attr-defined]
        return True

    def pending_input_bytes(self) -> int:
        """Bytes written to the command's stdin that it has not read yet (beyond the pipe)."""
        if self._started is None:
            return 0
        pipe = self._started.transport.get_pipe_transport(0)
        return 0 if pipe is None else pipe.get_write_buffer_size()  # type: ignore[attr-defined]

    def kill(self) -> None:
        """End the command and its whole tree now (:meth:`run` then returns)."""
        if self._started is not None:
            kill_tree(self._started.pid, self._started.tag)

    def _data(self, data: bytes) -> None:
        if self.overlong:
            return
        self._partial.extend(data)
        while (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[:end]).rstrip(b"\r")
            del self._partial[: end + 1]
            if len(line) > self.max_line_bytes:
                break
            self.on_line(line)
        else:
            if len(self._partial) <= self.max_line_bytes:
                return
        self.overlong = True
        self._partial.clear()
        self.kill()

    def _stderr(self, data: bytes) -> None:
        assert self.on_stderr_line is not None
        self._stderr_partial.extend(data)
        while (end := self._stderr_partial.find(b"\n")) >= 0 or (
            len(self._stderr_partial) > STDERR_KEEP_BYTES
        ):
            cut = end if end >= 0 else STDERR_KEEP_BYTES
            line = bytes(self._stderr_partial[:cut]).rstrip(b"\r")
            del self._stderr_partial[: cut + 1 if end >= 0 else cut]
            self.on_stderr_line(line[:STDERR_KEEP_BYTES])

    async def run(self) -> int | None:
        """Run until the command exits (or is cancelled); its exit status."""
        with_stderr = self.on_stderr_line is not None
        protocol = _Protocol(
            0, on_stdout=self._data, on_stderr=self._stderr if with_stderr else None
        )
        self._started = await _start(
            self.argv, protocol, env=self.env, cwd=self.cwd, stdin=self.stdin, stderr=with_stderr
        )
        try:
            if self.on_running is not None:
                self.on_running(self)
            await protocol.exited.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXIT_GRACE_S):
                    await protocol.outputs_closed.wait()
        finally:
            started, self._started = self._started, None
            await started.close()
        return started.transport.get_returncode()


async def supervise_lines(
    argv: Sequence[str],
    on_line: Callable[[bytes], None],
    *,
    what: str,
    env: Mapping[str, str],
    cwd: str | None,
    max_line_bytes: int,
    backoff_s: tuple[float, float] = (0.5, 30.0),
    stdin: bool = False,
    on_start: Callable[[LineProcess], None] | None = None,
    on_exit: Callable[[str, float], None] | None = None,
    on_stderr_line: Callable[[bytes], None] | None = None,
) -> None:
    """Keep ``argv`` running (restarted with back-off) until cancelled.

    The back-off starts at ``backoff_s[0]``, doubles up to ``backoff_s[1]``
    and starts over once the command ran for 30 s.  ``on_start`` gets each
    process once it runs (to :meth:`LineProcess.write` to it, with
    ``stdin``); ``on_exit`` is told why it ended and how long until the
    next start.
    """
    first, most = backoff_s
    delay_s = first
    while True:
        started = time.monotonic()
        process = LineProcess(
            argv,
            on_line,
            env=env,
            cwd=cwd,
            max_line_bytes=max_line_bytes,
            stdin=stdin,
            on_running=on_start,
            on_stderr_line=on_stderr_line,
        )
        try:
            code = await process.run()
        except ScriptFailure as failure:
            why = f"cannot start: {failure}"
            log.error("cannot start %s: %s", what, failure)
        else:
            why = (
                f"printed a line over {max_line_bytes} bytes"
                if process.overlong
                else _exit_reason(code)
            )
            log.warning("%s exited (%s); restarting in %.1f s", what, why, delay_s)
        if time.monotonic() - started > 30:
            delay_s = first
        if on_exit is not None:
            on_exit(why, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, most)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "status unknown"
    return f"killed by signal {-code}" if code < 0 else f"status {code}"


def base_environment(data_dir: Path) -> dict[str, str]:
    """What every process the gateway starts inherits: little of the gateway's own."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": os.environ.get("HOME", "/"),
        "COAPDEV_DATA_DIR": str(data_dir),
    }


def prepare_data_dir(state_dir: Path) -> Path:
    """Where scripts run and keep their own files: never the directory of the keys."""
    path = Path(state_dir) / "data"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _name(argv: Sequence[str]) -> str:
    """A script's name for messages: its basename (a path would tell more than needed)."""
    program = argv[0]
    if os.path.basename(program).startswith("python") and len(argv) > 1:
        program = argv[1]
    return os.path.basename(program)


def _short(data: bytes, limit: int = 200) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:limit]
