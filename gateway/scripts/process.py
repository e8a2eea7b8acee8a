"""Starting a tagged process in its own session, and collecting what it prints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .tree import kill_tree, leaders, new_tag, tagged_environment

log = logging.getLogger("coapdev.gateway.runner")

#: How much of a script's stderr is kept for the log.
STDERR_KEEP_BYTES = 4096
#: How long to wait for the pipes to be torn down once everything is killed.
CLOSE_WAIT_S = 2.0
#: How much of a pipe one read takes.
READ_BYTES = 1 << 16
#: Where the kernel has no pidfds: how often a process is asked whether it exited.
EXIT_POLL_S = 0.05
#: After a process exits, how long its output may take to arrive; what is in
#: the pipe at the exit is read within one turn of the event loop, so this
#: only bounds how long a descendant that keeps stdout open may delay the answer.
EXIT_GRACE_S = 0.1


class _DevNull:
    """/dev/null opened once (close-on-exec) for every child's stdin or stderr that has
    no pipe: Popen would open and close it again for each run."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def __call__(self) -> int:
        if self.fd is None:
            self.fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return self.fd


_devnull = _DevNull()


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


# --- what the process prints ----------------------------------------------------------


class OutputProtocol:
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

    def pipe_connection_lost(self, fd: int) -> None:
        self._open_outputs.discard(fd)
        if not self._open_outputs:
            self.outputs_closed.set()

    def process_exited(self) -> None:
        self.exited.set()


# --- the process ---------------------------------------------------------------------


class _StdinProtocol(asyncio.Protocol):
    """The write end of a process's stdin (the process closing it is no error of ours)."""


class Started:
    """A running tagged process: our ends of its pipes read on the event loop, its exit
    learnt from a pidfd (or a poll every EXIT_POLL_S where the kernel has none).

    asyncio's own subprocess transport does the same with a transport, a
    protocol, futures and a task per pipe, and before Python 3.12 a thread per
    child to wait for it; a script run is mostly that bookkeeping, so the
    gateway keeps its own, small one (about twice the runs per second).
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        protocol: OutputProtocol,
        tag: str,
        outputs: dict[int, int],
    ) -> None:
        self.popen = popen
        self.protocol = protocol
        self.tag = tag
        self.stdin: asyncio.WriteTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._outputs = outputs  # our read end -> 1 (stdout) or 2 (stderr)
        self._pidfd: int | None = None
        leaders.add(popen, tag)
        for fd in outputs:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._readable, fd)
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: look every EXIT_POLL_S
            self._loop.call_later(EXIT_POLL_S, self._poll)
        else:
            self._loop.add_reader(self._pidfd, self._reap)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    # --- events from the loop ---

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.protocol.pipe_data_received(self._outputs[fd], data)
        else:
            self._close_output(fd)

    def _close_output(self, fd: int) -> None:
        which = self._outputs.pop(fd, None)
        if which is None:
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        self.protocol.pipe_connection_lost(which)

    def _reap(self) -> None:
        if self.popen.poll() is None:
            return  # (a spurious wake-up: the pidfd is readable only once it exited)
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        leaders.discard(self.popen)
        self.protocol.process_exited()

    def _poll(self) -> None:
        if self.popen.poll() is None:
            self._loop.call_later(EXIT_POLL_S, self._poll)
        else:
            leaders.discard(self.popen)
            self.protocol.process_exited()

    # --- stdin ---

    def write(self, data: bytes) -> bool:
        """Queue ``data`` for the process's stdin; False if it has none or it is closed."""
        if self.stdin is None or self.stdin.is_closing():
            return False
        self.stdin.write(data)
        return True

    def write_eof(self) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()  # after what is queued has been written

    def pending_input_bytes(self) -> int:
        """Bytes queued for stdin that the process has not taken yet (beyond the pipe)."""
        return 0 if self.stdin is None else self.stdin.get_write_buffer_size()

    # --- the end ---

    async def close(self) -> None:
        """Kill whatever is left of the process's tree and close every pipe end we hold.

        Both happen before the first ``await``, so a cancelled caller (a
        request given up, the gateway stopping) still leaves nothing behind;
        the wait that follows only reaps the killed process (which the pidfd
        does later if it takes longer than CLOSE_WAIT_S).
        """
        kill_tree(self.pid, self.tag)  # one walk over /proc: about 0.6 ms per 100 processes
        if self.stdin is not None:
            if self.stdin.get_write_buffer_size():
                self.stdin.abort()  # what is queued may never drain: a holder that does not read
            elif not self.stdin.is_closing():
                self.stdin.close()
        for fd in list(self._outputs):
            self._close_output(fd)
        if not self.protocol.exited.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await self.protocol.exited.wait()


async def start_tagged(
    argv: Sequence[str],
    protocol: OutputProtocol,
    *,
    env: Mapping[str, str],
    cwd: str | None,
    stdin: bool,
    stderr: bool,
) -> Started:
    """Start ``argv`` in a session of its own, tagged; stdin a pipe from us or /dev/null,
    stdout (and stderr, else /dev/null) pipes to ``protocol``."""
    tag = new_tag()
    ours: list[int] = []  # our ends, closed again if the start fails
    theirs: list[int] = []  # the child's ends, closed once it has them
    outputs: dict[int, int] = {}
    try:  # (os.pipe's ends are close-on-exec: the child gets only its 0, 1 and 2)
        out_r, out_w = os.pipe()
        ours.append(out_r)
        theirs.append(out_w)
        outputs[out_r] = 1
        err_w = _devnull()
        if stderr:
            err_r, err_w = os.pipe()
            ours.append(err_r)
            theirs.append(err_w)
            outputs[err_r] = 2
        in_r = _devnull()
        in_w = -1
        if stdin:
            in_r, in_w = os.pipe()
            ours.append(in_w)
            theirs.append(in_r)
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                env=tagged_environment(env, tag),
                cwd=cwd,
                start_new_session=True,  # its own process group, killed as a whole
                close_fds=True,
            )
        except OSError as exc:
            raise ScriptFailure(
                "start", f"cannot start {script_name(argv)}: {exc.strerror or exc}"
            ) from None
        except ValueError as exc:  # e.g. an environment value with a NUL byte
            raise ScriptFailure("start", f"cannot start {script_name(argv)}: {exc}") from None
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    if not stderr:
        protocol.pipe_connection_lost(2)
    started = Started(popen, protocol, tag, outputs)
    if stdin:
        os.set_blocking(in_w, False)
        stdin_file = None
        try:
            stdin_file = open(in_w, "wb", buffering=0)  # the transport closes it
            started.stdin, _ = await asyncio.get_running_loop().connect_write_pipe(
                _StdinProtocol, stdin_file
            )
        except BaseException:
            if stdin_file is None:
                os.close(in_w)
            else:
                stdin_file.close()
            await started.close()
            raise
    return started


def script_name(argv: Sequence[str]) -> str:
    """A script's name for messages: its basename (a path would tell more than needed)."""
    program = argv[0]
    if os.path.basename(program).startswith("python") and len(argv) > 1:
        program = argv[1]
    return os.path.basename(program)


def short_text(data: bytes, limit: int = 200) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:limit]
