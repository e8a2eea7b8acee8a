"""Long-lived commands that print lines: watchers, the pairing button, handlers.

:class:`LineProcess` runs one the way scripts run and hands each line it prints
to a callback; :func:`supervise_lines` keeps it running, with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from .process import (
    EXIT_GRACE_S,
    STDERR_KEEP_BYTES,
    OutputProtocol,
    ScriptFailure,
    Started,
    start_tagged,
)
from .tree import kill_tree

log = logging.getLogger("coapdev.gateway.runner")


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
        self._started: Started | None = None

    @property
    def running(self) -> bool:
        started = self._started
        return started is not None and not started.protocol.exited.is_set()

    def write(self, data: bytes) -> bool:
        """Send ``data`` to the command's stdin; False if it is not running (or has none)."""
        if not self.running:
            return False
        assert self._started is not None
        return self._started.write(data)

    def pending_input_bytes(self) -> int:
        """Bytes written to the command's stdin that it has not read yet (beyond the pipe)."""
        return 0 if self._started is None else self._started.pending_input_bytes()

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
        protocol = OutputProtocol(
            0, on_stdout=self._data, on_stderr=self._stderr if with_stderr else None
        )
        self._started = await start_tagged(
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
        return started.returncode


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
