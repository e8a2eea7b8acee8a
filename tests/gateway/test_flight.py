"""Single flight (gateway/flight.py): equal concurrent calls share one, whatever happens
to the caller making it."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gateway.flight import SingleFlight


class Calls:
    """A call that waits until released and counts how often it was made."""

    def __init__(self, outcome: object = "answer") -> None:
        self.made = 0
        self.outcome = outcome
        self.release = asyncio.Event()

    async def __call__(self) -> object:
        self.made += 1
        await self.release.wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def test_concurrent_equal_calls_are_made_once_and_all_get_the_answer():
    async def scenario():
        flight: SingleFlight[object] = SingleFlight()
        call = Calls()
        callers = [asyncio.ensure_future(flight.run("k", call)) for _ in range(5)]
        other = asyncio.ensure_future(flight.run("other", call))
        await asyncio.sleep(0.01)
        call.release.set()
        return await asyncio.gather(*callers, other), call.made, len(flight)

    answers, made, left = asyncio.run(scenario())
    assert answers == ["answer"] * 6
    assert made == 2  # one per key
    assert left == 0


def test_an_exception_reaches_every_caller_and_is_never_left_unretrieved():
    async def scenario() -> tuple[list[str], int]:
        flight: SingleFlight[object] = SingleFlight()
        call = Calls(ValueError("refused"))
        alone = asyncio.ensure_future(flight.run("alone", call))
        callers = [asyncio.ensure_future(flight.run("k", call)) for _ in range(3)]
        await asyncio.sleep(0.01)
        call.release.set()
        outcomes = await asyncio.gather(alone, *callers, return_exceptions=True)
        return [str(o) for o in outcomes], call.made

    loop_errors: list[str] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, ctx: loop_errors.append(ctx["message"]))
    try:
        outcomes, made = loop.run_until_complete(scenario())
        gc.collect()  # a future whose exception nobody retrieved complains when collected
    finally:
        loop.close()
    assert outcomes == ["refused"] * 4
    assert made == 2
    assert loop_errors == []


def test_a_cancelled_caller_hands_the_call_to_one_who_waited():
    async def scenario():
        flight: SingleFlight[object] = SingleFlight()
        call = Calls()
        first = asyncio.ensure_future(flight.run("k", call))
        await asyncio.sleep(0.01)
        joined = [asyncio.ensure_future(flight.run("k", call)) for _ in range(3)]
        await asyncio.sleep(0.01)
        first.cancel()  # its call is cancelled with it
        await asyncio.sleep(0.01)
        call.release.set()
        answers = await asyncio.gather(*joined)
        with pytest.raises(asyncio.CancelledError):
            await first
        return answers, call.made, len(flight)

    answers, made, left = asyncio.run(scenario())
    assert answers == ["answer"] * 3
    assert made == 2  # the first call, given up, and the one a joined caller made
    assert left == 0


def test_a_joined_caller_that_is_cancelled_leaves_the_call_to_the_others():
    async def scenario():
        flight: SingleFlight[object] = SingleFlight()
        call = Calls()
        first = asyncio.ensure_future(flight.run("k", call))
        await asyncio.sleep(0.01)
        joined = asyncio.ensure_future(flight.run("k", call))
        await asyncio.sleep(0.01)
        joined.cancel()
        call.release.set()
        return await first, joined.cancelled(), call.made

    assert asyncio.run(scenario()) == ("answer", True, 1)
