"""Single flight: concurrent callers asking for the same thing share one call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _CallGivenUp(Exception):
    """The caller making a shared call was cancelled: one who waited makes it again."""


class SingleFlight(Generic[T]):
    """At most one call per key at a time; callers that come meanwhile share its outcome.

    The first caller makes the call in its own task (no task is created per
    call) and hands the outcome, result or exception, to those who joined.  If
    it is cancelled, so is its call, and one of those who waited makes it again.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        shared = self._flights.get(key)
        while shared is not None:
            try:
                return await asyncio.shield(shared)
            except _CallGivenUp:
                shared = self._flights.get(key)
        shared = asyncio.get_running_loop().create_future()
        self._flights[key] = shared
        try:
            result = await call()
        except asyncio.CancelledError:
            _fail(shared, _CallGivenUp())
            raise
        except Exception as exc:
            _fail(shared, exc)
            raise
        else:
            shared.set_result(result)
            return result
        finally:
            if self._flights.get(key) is shared:
                del self._flights[key]


def _fail(shared: asyncio.Future[T], exc: BaseException) -> None:
    shared.set_exception(exc)
    shared.exception()  # retrieved: those who joined re-raise it, if any did
