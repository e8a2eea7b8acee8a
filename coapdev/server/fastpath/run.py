"""Running a handler's coroutine without a task when it never waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiocoap import error as coap_error

from ..aiocoap_compat import take_yielded_future


def run_to_completion(
    coro: Any, done: Callable[[Any, BaseException | None], None], *, in_task: bool = False
) -> None:
    """Run a coroutine; synchronously if it never waits, else as a task.

    Handlers of fast-path resources usually finish without waiting, so no
    task is created for them; one that does wait is carried on by a task
    that resumes it exactly where it stopped.  ``in_task`` starts a task at
    once, for handlers that always wait and need to run inside one
    (``asyncio.timeout`` does: script resources).
    """
    if in_task:
        _finish_in(asyncio.ensure_future(coro), done)
        return
    try:
        waiting_on = coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return
    except BaseException as exc:
        done(None, exc)
        return

    async def resume(waiting_on: Any) -> Any:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                take_yielded_future(waiting_on)
                # The coroutine sees the outcome (result or exception) when resumed below.
                with contextlib.suppress(BaseException):
                    await waiting_on
            try:
                waiting_on = coro.send(None)
            except StopIteration as stop:
                return stop.value

    _finish_in(asyncio.ensure_future(resume(waiting_on)), done)


def _finish_in(task: asyncio.Future, done: Callable[[Any, BaseException | None], None]) -> None:
    def finished(t: asyncio.Future) -> None:
        if t.cancelled():
            done(None, coap_error.LibraryShutdown("cancelled"))
        else:
            done(t.result() if t.exception() is None else None, t.exception())

    task.add_done_callback(finished)
