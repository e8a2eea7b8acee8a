"""The gateway bridging CoAP to real scripts: real gateway processes, real DTLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import process_gone, process_group_alive, run_cli, wait_for

from coapdev.client import Client, onboard
from coapdev.const import ContentFormat
from coapdev.errors import NotAuthorized, RequestFailed

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parent / "scripts"
PY = sys.executable


def write_config(tmp_path: Path, body: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(body.replace("{tests}", str(SCRIPTS)).replace("{py}", PY))
    return path


BASE = """
[[resource]]
path = "/record"
output = "json"
timeout_s = 20
put = { run = ["{py}", "{tests}/record_stdin.py"] }
post = { run = ["{py}", "{tests}/record_stdin.py"] }

[[resource]]
path = "/env"
output = "json"
get = { run = ["{py}", "{tests}/env.py"] }
put = { run = ["{py}", "{tests}/env.py"], roles = ["admin"] }

[[resource]]
path = "/hello"
get = { run = ["echo", "hello from a script"] }

[[resource]]
path = "/sleepy"
timeout_s = 1
get = { run = ["{tests}/sleep_forever.sh"] }

[[resource]]
path = "/fail"
get = { run = ["{tests}/fail.sh"] }

[[resource]]
path = "/reject"
put = { run = ["{tests}/reject.sh"] }

[[resource]]
path = "/big"
max_output_bytes = 10000
get = { run = ["{py}", "{tests}/big_output.py"] }

[[resource]]
path = "/value"
get = { run = ["{tests}/read_value.sh"] }
observe = { interval_s = 0.2 }

[[resource]]
path = "/watched"
observe = { watch = ["{tests}/watch_lines.sh"] }
"""


@pytest.fixture
def scripted(gateway_factory, tmp_path):
    config = write_config(tmp_path, BASE)
    return gateway_factory("scripted", config=config)


@pytest.fixture
def admin_and_user(scripted, run):
    async def both():
        key = scripted.factory_key()
        return await onboard(scripted.uri, key, "alice"), await onboard(scripted.uri, key, "bob")

    return run(both())


def test_get_returns_script_output(scripted, admin_and_user, run):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            r = await dev.get("/hello")
            assert r.code == "2.05" and r.payload == b"hello from a script\n"
            assert r.content_format == ContentFormat.TEXT

    run(scenario())


@pytest.mark.parametrize(
    "payload",
    [
        b"; rm -rf /",
        b"$(touch {marker})",
        b"`touch {marker}`",
        b"a\x00b\x00\xff\xfe raw bytes",
        b"--help",
        bytes(range(256)) * 4096,  # 1 MiB, blockwise
    ],
    ids=["semicolon", "command-substitution", "backticks", "nul-bytes", "option-like", "1MiB"],
)
def test_hostile_payloads_arrive_verbatim_and_run_nothing(
    scripted, admin_and_user, run, tmp_path, payload
):
    marker = tmp_path / "pwned"
    payload = payload.replace(b"{marker}", str(marker).encode())

    async def scenario():
        async with Client(admin_and_user[1], timeout_s=60) as dev:
            r = await dev.put("/record", payload, content_format=ContentFormat.OCTET_STREAM)
            assert r.code == "2.04"
            return r.value

    answer = run(scenario(), timeout_s=120)
    assert answer == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    assert (scripted.state_dir / "data" / "received.bin").read_bytes() == payload
    assert not marker.exists()


def test_post_answers_created_with_output(scripted, admin_and_user, run):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            r = await dev.post("/record", b"x", content_format=ContentFormat.TEXT)
            assert r.code == "2.01" and r.value["length"] == 1

    run(scenario())


def test_request_reaches_script_environment_never_its_command_line(scripted, admin_and_user, run):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            from aiocoap import GET, Message

            env = (await dev.get("/env")).value
            assert env["COAPDEV_METHOD"] == "GET" and env["COAPDEV_PATH"] == "/env"
            assert env["COAPDEV_CLIENT_NAME"] == "alice" and env["COAPDEV_CLIENT_ROLE"] == "admin"
            # a query with shell metacharacters arrives percent-encoded in the environment
            transport = dev._transport
            msg = Message(code=GET, uri=f"{dev.credentials.address.uri_base}/env")
            msg.opt.uri_query = ["x=$(id);rm -rf /", "y"]
            raw = await transport.context.request(msg).response
            env = json.loads(raw.payload)
            assert env["COAPDEV_QUERY"] == "x=%24%28id%29%3Brm%20-rf%20%2F&y"

    run(scenario())


def test_sleeping_script_gets_504_within_timeout_and_leaves_no_process(
    scripted, admin_and_user, run
):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            started = time.monotonic()
            with pytest.raises(RequestFailed) as info:
                await dev.get("/sleepy")
            assert info.value.code == "5.04"
            assert time.monotonic() - started < 5

    run(scenario())
    pgid = int((scripted.state_dir / "data" / "sleeper.pid").read_text())
    child = int((scripted.state_dir / "data" / "sleeper-child.pid").read_text())
    wait_for(lambda: not process_group_alive(pgid), 5, what="script's process group to be gone")
    assert process_gone(child)


def test_failing_script_gives_500_with_short_diagnostic(scripted, admin_and_user, run):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            with pytest.raises(RequestFailed) as info:
                await dev.get("/fail")
            return info.value

    failure = run(scenario())
    assert failure.code == "5.00"
    assert "fail.sh exited with status 3" in str(failure)
    assert "secret-stderr-detail" not in str(failure)
    assert "secret-stderr-detail" in scripted.log()  # logged on the device


def test_script_can_reject_input_with_400(scripted, admin_and_user, run):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            with pytest.raises(RequestFailed) as info:
                await dev.put("/reject", b"abc", content_format=ContentFormat.TEXT)
            return info.value

    failure = run(scenario())
    assert failure.code == "4.00" and "payload must be a number" in str(failure)


def test_oversize_output_gives_500(scripted, admin_and_user, run):
    async def scenario():
        async with Client(admin_and_user[0]) as dev:
            with pytest.raises(RequestFailed) as info:
                await dev.get("/big")
            return info.value

    failure = run(scenario())
    assert failure.code == "5.00" and "more than 10000 bytes" in str(failure)


def test_roles_are_enforced_per_method(scripted, admin_and_user, run):
    admin, user = admin_and_user

    async def scenario():
        async with Client(user) as dev:
            assert (await dev.get("/env")).ok
            with pytest.raises(NotAuthorized, match=r"4\.03.*needs role admin"):
                await dev.put("/env", b"x", content_format=ContentFormat.TEXT)
            with pytest.raises(RequestFailed, match=r"4\.05"):
                await dev.delete("/env")
        async with Client(admin) as dev:
            assert (await dev.put("/env", b"x", content_format=ContentFormat.TEXT)).ok

    run(scenario())


def test_observe_interval_notifies_on_change_only(scripted, admin_and_user, run):
    value = scripted.state_dir / "data" / "value.txt"
    value.write_text("one\n")
    runs = scripted.state_dir / "data" / "runs.log"

    async def scenario():
        seen = []
        async with Client(admin_and_user[0]) as dev:

            async def watch():
                async for r in dev.observe("/value"):
                    seen.append(r.payload.decode().strip())

            task = asyncio.create_task(watch())
            await asyncio.sleep(1.5)  # ~7 polls of an unchanged value
            value.write_text("two\n")
            await asyncio.sleep(1.0)
            value.write_text("three\n")
            await asyncio.sleep(1.0)
            task.cancel()
        return seen

    seen = run(scenario())
    assert seen == ["one", "two", "three"]
    polls = runs.read_text().count("run")
    assert polls >= 10  # the script really was polled while observed
    time.sleep(1.0)  # nobody observes now: polling stops
    assert runs.read_text().count("run") <= polls + 1


def test_observe_watch_notifies_each_line_and_stops_when_unobserved(scripted, admin_and_user, run):
    async def scenario():
        seen = []
        async with Client(admin_and_user[0]) as dev:
            async for r in dev.observe("/watched"):
                seen.append(r.payload.decode())
                if len(seen) == 5:
                    break
        return seen

    seen = run(scenario())
    numbers = [int(s.split("-")[1]) for s in seen]
    assert numbers == list(range(numbers[0], numbers[0] + 5))
    pids = [int(p) for p in (scripted.state_dir / "data" / "watcher.pids").read_text().split()]
    wait_for(
        lambda: not any(process_group_alive(p) for p in pids),
        10,
        what="watcher to stop once unobserved",
    )


def test_sighup_with_broken_config_keeps_serving_the_old_one(gateway_factory, tmp_path, run):
    config = write_config(tmp_path, BASE)
    gw = gateway_factory("reload", config=config)
    creds = run(onboard(gw.uri, gw.factory_key(), "me"))

    async def get(path):
        async with Client(creds) as dev:
            return await dev.get(path)

    config.write_text(config.read_text() + "\n[[resource]]\npath = 'broken'\n")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "config reload rejected" in gw.log(), 10, what="reload to be rejected")
    assert "resource[9].path" in gw.log()
    assert run(get("/hello")).payload == b"hello from a script\n"

    config.write_text(
        BASE.replace("{tests}", str(SCRIPTS))
        .replace("{py}", PY)
        .replace("hello from a script", "hello again")
        + '\n[[resource]]\npath = "/new"\nget = { run = ["echo", "new"] }\n'
    )
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in gw.log(), 10, what="reload to succeed")
    assert run(get("/hello")).payload == b"hello again\n"
    assert run(get("/new")).payload == b"new\n"
    # the client onboarded before both reloads is still known, on the same key
    assert run(get("/env")).value["COAPDEV_CLIENT_NAME"] == "me"


def test_sigterm_kills_running_scripts_and_exits_cleanly(scripted, admin_and_user, run):
    async def start_sleeper():
        dev = Client(admin_and_user[0], timeout_s=5)
        task = asyncio.create_task(dev.get("/sleepy"))
        await asyncio.sleep(0.5)
        return dev, task

    async def scenario():
        dev, task = await start_sleeper()
        pidfile = scripted.state_dir / "data" / "sleeper.pid"
        await asyncio.to_thread(wait_for, pidfile.exists, 5)
        pgid = int(pidfile.read_text())
        scripted.signal(signal.SIGTERM)
        code = await asyncio.to_thread(scripted.proc.wait, 10)
        task.cancel()
        await dev.close()
        return code, pgid

    code, pgid = run(scenario())
    assert code == 0
    assert not process_group_alive(pgid)


def test_cli_observe_exec_runs_command_per_notification(
    scripted, admin_and_user, config_dir, tmp_path
):
    value = scripted.state_dir / "data" / "value.txt"
    value.write_text("first\n")
    key = scripted.factory_key()
    assert run_cli(config_dir, "onboard", scripted.uri, "--key", key).returncode == 0
    out_dir = tmp_path / "exec-out"
    out_dir.mkdir()
    handler = tmp_path / "handler.py"
    handler.write_text(
        "import os, sys, time\n"
        f"path = os.path.join({str(out_dir)!r}, str(time.monotonic_ns()))\n"
        "open(path, 'wb').write(sys.stdin.buffer.read() + b'|' + "
        "os.environ['COAPDEV_PATH'].encode())\n"
    )
    env = dict(os.environ, COAPDEV_CONFIG_DIR=str(config_dir))
    proc = subprocess.Popen(
        [*(PY, "-m", "coapdev", "observe", "/value", "--count", "3"), "--exec", PY, "--", handler],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: len(list(out_dir.iterdir())) >= 1, 15, what="first notification")
        value.write_text("second; $(touch pwned)\n")
        wait_for(lambda: len(list(out_dir.iterdir())) >= 2, 15, what="second notification")
        value.write_text("third\n")
        proc.wait(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    got = [p.read_bytes() for p in sorted(out_dir.iterdir(), key=lambda p: int(p.name))]
    assert got == [b"first\n|/value", b"second; $(touch pwned)\n|/value", b"third\n|/value"]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_default_config_demo_light_and_system_resources(gateway, run):
    async def scenario():
        creds = await onboard(gateway.uri, gateway.factory_key(), "demo")
        async with Client(creds) as dev:
            assert (await dev.put("/light", {"on": True})).value == {"on": True}
            assert (await dev.get("/light")).value == {"on": True}
            assert (await dev.post("/light")).value == {"on": False}
            assert (await dev.put("/light", "toggle")).value == {"on": True}
            cbor = await dev.get("/light", accept=ContentFormat.CBOR)
            assert cbor.content_format == ContentFormat.CBOR and cbor.value == {"on": True}
            uptime = (await dev.get("/uptime")).value
            assert uptime["seconds"] > 0 and len(uptime["load"]) == 3
            assert "celsius" in (await dev.get("/temperature")).value
            with pytest.raises(RequestFailed, match=r"4\.00"):
                await dev.put("/light", "dim")

    run(scenario())
    assert json.loads((gateway.state_dir / "data" / "light-state.json").read_text()) == {"on": True}


def test_a_change_made_by_put_is_notified_once(gateway, run):
    """A PUT triggers a poll while the interval poll may run too: observers hear once."""

    async def scenario():
        creds = await onboard(gateway.uri, gateway.factory_key(), "observer")
        seen = []
        async with Client(creds) as dev, Client(creds) as writer:
            await writer.put("/light", "off")

            async def watch():
                async for r in dev.observe("/light"):
                    seen.append(r.value["on"])

            task = asyncio.create_task(watch())
            await asyncio.sleep(1.0)
            for word in ("toggle", "on", "on", "off", "off", "toggle"):
                await writer.put("/light", word)
                await asyncio.sleep(0.7)  # interval polls (1 s) overlap the PUTs' refreshes
            await asyncio.sleep(1.5)
            task.cancel()
        return seen

    assert run(scenario()) == [False, True, False, True]
