"""One script, one answer: run it within its limits and turn its exit into an outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from .process import (
    EXIT_GRACE_S,
    OutputProtocol,
    ScriptFailure,
    ScriptResult,
    script_name,
    short_text,
    start_tagged,
)

log = logging.getLogger("coapdev.gateway.runner")

#: Exit status a script uses to reject its input (sysexits.h EX_DATAERR).
EXIT_BAD_INPUT = 65


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
    protocol = OutputProtocol(max_output_bytes)
    # Without input the script reads /dev/null: the same end of file, one pipe less.
    started = await start_tagged(argv, protocol, env=env, cwd=cwd, stdin=bool(stdin), stderr=True)
    if stdin:
        started.write(stdin)
        started.write_eof()
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
        raise ScriptFailure("timeout", f"{script_name(argv)} did not finish within {timeout_s:g} s")
    if protocol.too_large.is_set():
        raise ScriptFailure(
            "too-large", f"{script_name(argv)} printed more than {max_output_bytes} bytes"
        )
    stdout, stderr = bytes(protocol.stdout), bytes(protocol.stderr)
    code = -1 if started.returncode is None else started.returncode
    if code == EXIT_BAD_INPUT:
        raise ScriptFailure("bad-input", short_text(stdout) or "input rejected", output=stdout)
    if code != 0:
        reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if stderr:
            log.warning(
                "%s %s; stderr: %s",
                script_name(argv),
                reason,
                stderr.decode("utf-8", "replace").strip(),
            )
        raise ScriptFailure("exit", f"{script_name(argv)} {reason}")
    return ScriptResult(stdout, stderr, code)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
