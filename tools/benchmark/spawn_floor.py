"""The floor for script-backed requests: a bare asyncio loop that spawns the same command
as the gateway's /script, ``concurrency`` at a time, for ``duration`` seconds.

    python spawn_floor.py CONCURRENCY DURATION_S ARGV...

Prints one JSON object: count, elapsed_s, rate (spawns per second).  Nothing but
``create_subprocess_exec`` and ``communicate``: what any Python server pays per run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def main(concurrency: int, duration_s: float, argv: list[str]) -> dict:
    count = 0
    deadline = time.monotonic() + duration_s

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
            )
            await proc.communicate()
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return {"count": count, "elapsed_s": elapsed, "rate": count / elapsed}


if __name__ == "__main__":
    result = asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]))
    print(json.dumps(result))
