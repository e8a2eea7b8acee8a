"""The stock aiocoap DTLS server (``tinydtls_server``) serving one tiny resource.

Run as ``python stock_aiocoap_server.py HOST PORT IDENTITY KEY``: it listens
for coaps:// on PORT (aiocoap is given PORT - 1: it adds one for DTLS) and
answers GET /light with the same 5 bytes coapdev's demo light sends (CBOR
``{"on": false}``).  Only the DTLS transport is started.  Stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiocoap
from aiocoap import resource
from aiocoap.credentials import CredentialsMap

PAYLOAD = bytes.fromhex("a1626f6ef4")  # CBOR {"on": false}


class Light(resource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=PAYLOAD, content_format=60)


async def main(host: str, port: int, identity: str, key: str) -> None:
    site = resource.Site()
    site.add_resource(("light",), Light())
    credentials = CredentialsMap()
    credentials.load_from_dict(
        {":bench": {"dtls": {"client-identity": {"ascii": identity}, "psk": {"ascii": key}}}}
    )
    context = await aiocoap.Context.create_server_context(
        site,
        bind=(host, port - 1),
        transports=["tinydtls_server"],
        server_credentials=credentials,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        await context.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
