"""Cancelling a request (an application's timeout, Home Assistant unloading an
entry) must not break the other requests on the same session.

aiocoap sets an error on a request's response future without checking that
it is still pending; if the client cancelled that future and an error for the
session arrives before aiocoap has seen the cancellation (the same turn of the
event loop), the error raises InvalidStateError half way through telling the
session's requests, and the others are never told.  The client therefore
never cancels aiocoap's futures.

This test lives with the Home Assistant tests because it needs Python 3.12's
``asyncio.wait_for`` (which cancels the awaited future itself, at once), and
Home Assistant runs on 3.13.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from coapdev.client import Client, onboard


async def test_a_cancelled_request_leaves_the_others_told_of_a_dropped_session(
    gateway_factory, caplog
) -> None:
    gw = gateway_factory(config="[device]\ndemo_light = true\nadvertise = false\n")
    caplog.set_level(logging.INFO, logger="coapdev.client")

    creds = await onboard(gw.address, gw.key, "canceller")
    async with Client(creds, timeout_s=30) as client:
        await client.get("/device")
        gw.signal(signal.SIGSTOP)  # the device hears nothing, answers nothing
        try:
            abandoned = asyncio.create_task(client.get("/device"))
            waiting = asyncio.create_task(client.get("/light"))
            await asyncio.sleep(0.3)  # both sent, both waiting
            abandoned.cancel()
            await asyncio.sleep(0)  # the cancellation reaches the request...
            client.drop_session()  # ... and the session ends in the same turn
            await asyncio.sleep(1.0)
            told = [r for r in caplog.records if "session lost" in r.getMessage()]
            assert told, "the waiting request was not told that its session ended"
        finally:
            gw.signal(signal.SIGCONT)
        assert (await asyncio.wait_for(waiting, 30)).value == {"on": False}
        assert abandoned.cancelled()
