"""Test handler written with coapdev.handler: a key-value store in memory.

GET ?key=K returns the value (4.04 if unset); PUT ?key=K stores the payload;
GET ?sleep=S waits S seconds first (asyncio: others are served meanwhile).
"""

import asyncio

from coapdev import handler

app = handler.Router()
values: dict[str, bytes] = {}


@app.route("GET")
async def read(request: handler.Request) -> handler.Response:
    delay = request.arg("sleep")
    if delay:
        await asyncio.sleep(float(delay))
    key = request.arg("key", "")
    if key not in values:
        return handler.Response(f"no value for {key!r}", code="4.04", content_format=0)
    return handler.Response(values[key], content_format=42)


@app.route("PUT")
def write(request: handler.Request) -> handler.Response:
    values[request.arg("key", "")] = request.payload
    return handler.Response(code="2.04")


app.serve()
