"""Running local scripts for requests, safely.

- argv comes from the config only; a request reaches a script through its
  stdin (the payload, verbatim) and environment variables.  No shell runs.
- every script gets its own process group; on timeout or oversize output
  the whole group is killed, so nothing of it is left behind;
- stdout is read up to a limit; stderr is kept only in part, for the log;
- exit status 0 is success, 65 (EX_DATAERR) means "the client's input was
  wrong" and becomes 4.00 with the script's output as the reason; anything
  else becomes 5.00 with a short diagnostic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("coapdev.gateway.runner")

#: Exit status a script uses to reject its input (sysexits.h EX_DATAERR).
EXIT_BAD_INPUT = 65
#: How much of a script's stderr is kept for the log.
STDERR_KEEP_BYTES = 4096
#: After the script exits, how long stragglers holding its stdout may linger.
EXIT_GRACE_S = 0.5


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


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


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
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # its own process group, killed as a whole
        )
    except OSError as exc:
        raise ScriptFailure("start", f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an environment value with a NUL byte
        raise ScriptFailure("start", f"cannot start {argv[0]}: {exc}") from None

    stdout = bytearray()
    stderr = bytearray()
    too_large = asyncio.Event()

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            if stdin:
                proc.stdin.write(stdin)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the script did not read all of its input: its choice
        finally:
            with contextlib.suppress(Exception):
                proc.stdin.close()

    async def read_stdout() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            stdout.extend(chunk)
            if len(stdout) > max_output_bytes:
                too_large.set()
                _kill_group(proc.pid)
                return

    async def read_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            room = STDERR_KEEP_BYTES - len(stderr)
            if room > 0:
                stderr.extend(chunk[:room])

    tasks = [asyncio.ensure_future(t) for t in (feed(), read_stdout(), read_stderr())]
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
                if not too_large.is_set():
                    # Output may still be in the pipe; stragglers that keep it
                    # open past the grace period are killed with the group.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(EXIT_GRACE_S):
                            await asyncio.gather(tasks[1], tasks[2])
        except TimeoutError:
            _kill_group(proc.pid)
            raise ScriptFailure(
                "timeout", f"{_name(argv)} did not finish within {timeout_s:g} s"
            ) from None
    finally:
        _kill_group(proc.pid)  # whatever of the group is left
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(ProcessLookupError):
            if proc.returncode is None:
                proc.kill()
        await proc.wait()

    if too_large.is_set():
        raise ScriptFailure(
            "too-large", f"{_name(argv)} printed more than {max_output_bytes} bytes"
        )
    code = proc.returncode if proc.returncode is not None else -1
    if code == EXIT_BAD_INPUT:
        raise ScriptFailure(
            "bad-input", _short(bytes(stdout)) or "input rejected", output=bytes(stdout)
        )
    if code != 0:
        reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if stderr:
            log.warning(
                "%s %s; stderr: %s", _name(argv), reason, stderr.decode("utf-8", "replace").strip()
            )
        raise ScriptFailure("exit", f"{_name(argv)} {reason}")
    return ScriptResult(bytes(stdout), bytes(stderr), code)


def _name(argv: Sequence[str]) -> str:
    """A script's name for messages: its basename (a path would tell more than needed)."""
    program = argv[0]
    if os.path.basename(program).startswith("python") and len(argv) > 1:
        program = argv[1]
    return os.path.basename(program)


def _short(data: bytes, limit: int = 200) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:limit]
