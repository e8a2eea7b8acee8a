"""Persistent handlers (``handler = [argv]``): real gateway processes, real DTLS, real
handler processes speaking the line protocol of docs/gateway.md."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from support import process_gone, wait_for

from coapdev.client import Client, onboard
from coapdev.const import ContentFormat
from coapdev.errors import NotAuthorized, RequestFailed

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parent / "scripts"
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "handlers"
PY = sys.executable

CONFIG = f"""
[device]
advertise = false

[limits]
max_sessions_per_identity = 64

[[resource]]
path = "/raw"
handler = ["{PY}", "{SCRIPTS}/handler_raw.py"]
timeout_s = 2
max_output_bytes = 4096
get = {{}}
put = {{ roles = ["admin"] }}

[[resource]]
path = "/kv"
handler = ["{PY}", "{SCRIPTS}/handler_kv.py"]
get = {{}}
put = {{}}

[[resource]]
path = "/counter"
handler = ["{EXAMPLES}/counter.sh"]
get = {{}}
put = {{}}
post = {{}}

[[resource]]
path = "/kv-example"
handler = ["{PY}", "{EXAMPLES}/kv.py"]
output = "octets"
get = {{}}
put = {{}}
delete = {{}}

[[resource]]
path = "/deaf"
handler = ["{PY}", "{SCRIPTS}/handler_raw.py", "starts-deaf.txt"]
timeout_s = 0.5
max_input_bytes = 262144
get = {{}}
put = {{}}

[[resource]]
path = "/bounded"
handler = ["{PY}", "{SCRIPTS}/handler_raw.py"]
timeout_s = 5
max_pending = 2
get = {{}}
"""


@pytest.fixture
def handled(gateway_factory, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    return gateway_factory("handled", config=config)


@pytest.fixture
def admin_and_user(handled, run):
    async def both():
        key = handled.factory_key()
        return await onboard(handled.uri, key, "alice"), await onboard(handled.uri, key, "bob")

    return run(both())


def starts(gw, name: str = "starts.txt") -> list[str]:
    path = gw.data_dir / name
    return path.read_text().splitlines() if path.exists() else []


async def code_of(dev: Client, path: str) -> str:
    try:
        return (await dev.get(path)).code
    except RequestFailed as exc:
        return exc.code


async def until_served(dev: Client, path: str, tries: int = 80) -> str:
    """GET until answered 2.05 (a handler being restarted answers 5.03 meanwhile)."""
    code = ""
    for _ in range(tries):
        code = await code_of(dev, path)
        if code != "5.03":
            return code
        await asyncio.sleep(0.1)
    return code


async def raw_get(dev: Client, path: str, query: list[str] = ()):
    """A GET returning aiocoap's message (its options, e.g. Max-Age)."""
    from aiocoap import GET, Message

    transport = await dev._ensure_transport()
    msg = Message(code=GET, uri=f"{dev.credentials.address.uri_base}{path}")
    msg.opt.uri_query = list(query)
    return await asyncio.wait_for(transport.context.request(msg).response, 20)


def test_a_handler_that_writes_garbage_never_crashes_the_gateway(handled, admin_and_user, run):
    """The attacker: garbage, over-long lines, unknown ids, bad codes and payloads."""

    async def scenario() -> dict[str, str]:
        async with Client(admin_and_user[0], timeout_s=20) as dev:
            seen = {}
            for what in ("garbage", "long", "badcode", "badpayload", "unknown"):
                seen[what] = await code_of(dev, f"/raw?{what}")
                # and the handler answers again afterwards (restarted if it had to be)
                seen[what + " then"] = await until_served(dev, "/raw")
            return seen

    seen = run(scenario(), timeout_s=120)
    assert seen == {
        "garbage": "5.02",
        "garbage then": "2.05",
        "long": "5.02",
        "long then": "2.05",
        "badcode": "5.02",
        "badcode then": "2.05",
        "badpayload": "5.02",
        "badpayload then": "2.05",
        "unknown": "5.04",  # its own answer never came
        "unknown then": "2.05",
    }
    log = handled.log()
    assert handled.proc.poll() is None
    assert "Traceback" not in log
    assert "handler of /raw wrote a line that is not a JSON object" in log
    assert "handler of /raw exited (printed a line over" in log
    assert "handler of /raw answered with an invalid code" in log
    assert "handler of /raw answered with a payload that is not base64" in log
    assert "handler of /raw answered request" in log and "not pending" in log
    assert "\x1b" not in log  # what it printed is escaped in the log


def test_a_handler_serves_get_and_put_with_who_asked(handled, admin_and_user, run):
    admin, user = admin_and_user

    async def scenario():
        async with Client(admin) as dev:
            assert (await dev.put("/raw", b"on", content_format=ContentFormat.TEXT)).code == "2.04"
            got = await dev.get("/raw")
            assert got.payload == b"on for alice (admin) at /raw"
            assert got.content_format == ContentFormat.TEXT
            assert (await dev.put("/kv?key=a", b"\x00\xff binary")).code == "2.04"
            got = await dev.get("/kv?key=a")
            assert got.payload == b"\x00\xff binary"
            assert got.content_format == ContentFormat.OCTET_STREAM
            with pytest.raises(RequestFailed, match=r"4\.04"):
                await dev.get("/kv?key=missing")
        async with Client(user) as dev:
            assert (await dev.get("/raw?stderr")).payload == b"on for bob (user) at /raw"
            with pytest.raises(NotAuthorized):  # the roles decide before the handler sees it
                await dev.put("/raw", b"off", content_format=ContentFormat.TEXT)

    run(scenario())
    wait_for(lambda: "handler of /raw: debug: a line on stderr" in handled.log(), 5, what="stderr")
    # one process per resource for all those requests, run in the data directory
    lines = starts(handled)
    assert len(lines) == 2, lines  # /raw and /bounded
    assert all(line.split()[1] == str(handled.data_dir.resolve()) for line in lines)


def test_the_documented_example_handlers_work(handled, admin_and_user, run):
    async def scenario() -> list[tuple[str, bytes]]:
        seen = []
        async with Client(admin_and_user[0]) as dev:
            for method, path, payload in (
                ("GET", "/counter", b""),
                ("POST", "/counter", b""),
                ("PUT", "/counter", b"41"),
                ("POST", "/counter", b""),
                ("PUT", "/counter", b"x; rm -rf /"),
                ("PUT", "/kv-example?key=a", "hé".encode()),
                ("GET", "/kv-example?key=a", b""),
                ("DELETE", "/kv-example?key=a", b""),
                ("GET", "/kv-example?key=a", b""),
            ):
                r = await dev.request(
                    method, path, payload, content_format=ContentFormat.TEXT, check=False
                )
                seen.append((r.code, r.payload))
        return seen

    assert run(scenario()) == [
        ("2.05", b"0"),
        ("2.01", b"1"),
        ("2.04", b"41"),
        ("2.01", b"42"),
        ("4.00", b"send a whole number"),
        ("2.04", b""),
        ("2.05", "hé".encode()),
        ("2.02", b""),
        ("4.04", b"no value for 'a'"),
    ]


def test_requests_are_in_flight_at_once(handled, admin_and_user, run):
    async def scenario() -> float:
        clients = [Client(admin_and_user[0], timeout_s=20) for _ in range(16)]
        try:
            for dev in clients:
                await code_of(dev, "/kv?key=x")  # sessions up first
            started = time.monotonic()
            codes = await asyncio.gather(*(code_of(dev, "/kv?key=x&sleep=1") for dev in clients))
            assert codes == ["4.04"] * 16
            return time.monotonic() - started
        finally:
            for dev in clients:
                await dev.close()

    elapsed = run(scenario(), timeout_s=120)
    assert elapsed < 8, f"16 requests of 1 s each took {elapsed:.1f} s: not concurrent"


def test_a_handler_that_dies_is_restarted_and_requests_meanwhile_get_a_clear_error(
    handled, admin_and_user, run
):
    async def scenario() -> tuple[str, str, list[str]]:
        async with Client(admin_and_user[0], timeout_s=20) as dev:
            assert (await dev.get("/raw")).ok
            try:
                await dev.get("/raw?die")
                died = "answered"
            except RequestFailed as exc:
                died = f"{exc.code} {exc}"
            try:
                await dev.get("/raw")
                meanwhile = "answered"
            except RequestFailed as exc:
                meanwhile = f"{exc.code} {exc}"
            later = []
            for _ in range(40):
                code = await code_of(dev, "/raw")
                later.append(code)
                if code == "2.05":
                    break
                await asyncio.sleep(0.25)
            return died, meanwhile, later

    died, meanwhile, later = run(scenario(), timeout_s=120)
    assert died.startswith("5.02") and "handler of /raw exited" in died, died
    assert meanwhile.startswith("5.03") and "restarting" in meanwhile, meanwhile
    assert later[-1] == "2.05"
    assert len(starts(handled)) == 3  # /raw twice, /bounded once
    assert "Traceback" not in handled.log()


def test_a_handler_that_hangs_gets_a_timeout_answer(handled, admin_and_user, run):
    async def scenario() -> tuple[str, float, str]:
        async with Client(admin_and_user[0], timeout_s=20) as dev:
            started = time.monotonic()
            code = await code_of(dev, "/raw?hang")
            elapsed = time.monotonic() - started
            return code, elapsed, (await dev.get("/raw")).code

    code, elapsed, after = run(scenario())
    assert code == "5.04" and elapsed < 6, (code, elapsed)
    assert after == "2.05"  # the same handler serves on


def test_a_handler_that_stops_reading_its_input_is_restarted_not_buffered_for(
    handled, admin_and_user, run
):
    """The attacker: a handler that takes no more input while requests keep coming.

    Each request that times out would leave its line in the gateway's buffer for the
    handler's stdin (nothing else bounds it: max_pending counts live requests), so the
    gateway restarts a handler once a request's line is still unread at its deadline.
    """

    async def scenario() -> list[str]:
        async with Client(admin_and_user[0], timeout_s=20) as dev:
            codes = [await code_of(dev, "/deaf?deaf")]  # read, then nothing more is
            try:  # a line far larger than a pipe holds: most of it stays queued
                codes.append((await dev.put("/deaf", b"x" * 200_000)).code)
            except RequestFailed as exc:
                codes.append(exc.code)
            codes.append(await until_served(dev, "/deaf"))
            return codes

    codes = run(scenario(), timeout_s=120)
    assert codes == ["5.04", "5.04", "2.05"], codes
    assert len(starts(handled, "starts-deaf.txt")) == 2  # restarted once
    log = handled.log()
    assert "handler of /deaf is not reading its input; restarting it" in log, log[-2000:]
    assert "Traceback" not in log


def test_pending_requests_are_bounded(handled, admin_and_user, run):
    async def scenario():
        clients = [Client(admin_and_user[0], timeout_s=20) for _ in range(3)]
        try:
            for dev in clients:
                await dev.get("/bounded")
            # distinct queries: equal GETs would share one request (single flight)
            slow = [
                asyncio.ensure_future(code_of(dev, f"/bounded?sleep=2&n={i}"))
                for i, dev in enumerate(clients[:2])
            ]
            await asyncio.sleep(0.5)
            refused = await raw_get(clients[2], "/bounded")
            return refused, await asyncio.gather(*slow)
        finally:
            for dev in clients:
                await dev.close()

    refused, slow = run(scenario(), timeout_s=60)
    assert str(refused.code).startswith("5.03"), refused.code
    assert refused.opt.max_age is not None and refused.opt.max_age >= 1
    assert b"busy" in refused.payload
    assert slow == ["2.05", "2.05"]


def test_handlers_are_killed_with_the_gateway(handled, admin_and_user, run):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            await dev.get("/raw")

    run(scenario())
    pids = [int(line.split()[0]) for line in starts(handled)]
    assert pids
    handled.stop()
    wait_for(lambda: all(process_gone(pid) for pid in pids), 10, what="handlers to be gone")
