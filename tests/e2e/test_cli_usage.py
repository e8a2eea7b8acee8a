"""The CLI behaves as a user expects, and does what coap-client and aiocoap-client do.

Issue 12, sections 3, 5, 5b and 6, and the CLI's side of issue 11 (escaped
device text, the factory key kept off the process table).  Every test runs
the real ``coapdev`` command against a real gateway on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, run_cli, wait_for

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parent / "scripts"
PY = sys.executable

CONFIG = f"""
[device]
advertise = false
demo_light = true

[[resource]]
path = "/record"
output = "text"
put = {{ run = ["{PY}", "{SCRIPTS}/record_request.py"] }}
post = {{ run = ["{PY}", "{SCRIPTS}/record_request.py"] }}
get = {{ run = ["{PY}", "{SCRIPTS}/record_request.py"] }}

[[resource]]
path = "/json-in"
output = "text"
input = "json"
get = {{ run = ["{PY}", "{SCRIPTS}/record_request.py"] }}
post = {{ run = ["{PY}", "{SCRIPTS}/record_request.py"] }}

[[resource]]
path = "/hello"
title = "Says hello"
get = {{ run = ["printf", "hello\\n"] }}

[[resource]]
path = "/hostile"
get = {{ run = ["{SCRIPTS}/hostile_text.sh"] }}
put = {{ run = ["{SCRIPTS}/hostile_reject.sh"] }}

[[resource]]
path = "/big"
get = {{ run = ["{PY}", "-c", "print('z' * 3000)"] }}
"""


def ok(config_dir: Path, *args: str, **kwargs) -> str:
    out = run_cli(config_dir, *args, **kwargs)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout.decode()


def one_line_error(out) -> str:
    err = out.stderr.decode()
    assert "Traceback" not in err, err
    assert err.count("\n") == 1, err
    assert err.startswith("coapdev: "), err
    return err


@pytest.fixture
def device(gateway_factory, tmp_path, config_dir):
    """A gateway with script resources and the demo light; this client its admin."""
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    gw = gateway_factory("scripted", config=config)
    ok(config_dir, "onboard", gw.uri, "--key", gw.factory_key(), "--name", "laptop")
    return gw


def last_request(gw) -> dict:
    seen = json.loads((gw.data_dir / "request.json").read_text())
    seen["stdin"] = bytes.fromhex(seen["stdin"])
    return seen


# --- 3. arguments and payloads ------------------------------------------------------


def test_option_order_does_not_matter(device, config_dir):
    assert json.loads(ok(config_dir, "put", "/light", "--type", "json", '{"on": true}')) == {
        "on": True
    }
    raw = run_cli(config_dir, "put", "/light", "--raw", "off")
    assert raw.returncode == 0, raw.stderr
    import cbor2

    assert cbor2.loads(raw.stdout) == {"on": False}
    assert json.loads(ok(config_dir, "--timeout", "5", "get", "/light", "--accept", "json")) == {
        "on": False
    }


def test_words_and_numbers_are_text_structures_are_cbor(device, config_dir):
    for typed in ("1", "true", "on", "hello world"):
        ok(config_dir, "put", "/record", typed)
        seen = last_request(device)
        assert (seen["stdin"], seen["content_format"]) == (typed.encode(), "0"), typed
    ok(config_dir, "put", "/record", '{"on": true}')
    import cbor2

    seen = last_request(device)
    assert seen["content_format"] == "60" and cbor2.loads(seen["stdin"]) == {"on": True}
    ok(config_dir, "put", "/record", "-t", "cbor", "1")
    assert last_request(device)["stdin"] == b"\x01"
    ok(config_dir, "put", "/record", "-t", "text", '{"not": "parsed"}')
    assert last_request(device)["stdin"] == b'{"not": "parsed"}'


def test_payload_from_stdin_and_from_a_file(device, config_dir, tmp_path):
    ok(config_dir, "put", "/record", input=b"on\n")
    assert (last_request(device)["stdin"], last_request(device)["content_format"]) == (
        b"on\n",
        "0",
    )
    ok(config_dir, "put", "/record", "--file", "-", input=b"\x00\xffbinary")
    seen = last_request(device)
    assert seen["stdin"] == b"\x00\xffbinary" and seen["content_format"] == "42"
    f = tmp_path / "payload.json"
    f.write_text('{"a": 1}')
    ok(config_dir, "put", "/record", "--file", str(f), "--content-format", "json")
    seen = last_request(device)
    assert seen["stdin"] == b'{"a": 1}' and seen["content_format"] == "50"


def test_an_empty_payload_is_never_sent_silently(device, config_dir):
    (device.data_dir / "request.json").unlink(missing_ok=True)
    out = run_cli(config_dir, "put", "/record")
    assert out.returncode == 2
    assert "--empty" in one_line_error(out)
    assert not (device.data_dir / "request.json").exists()
    ok(config_dir, "put", "/record", "--empty")
    assert last_request(device)["stdin"] == b""


@pytest.mark.parametrize(
    "args",
    [
        ("put", "/record", "x", "--content-format", "70000"),
        ("put", "/record", "x", "--content-format", "-1"),
        ("put", "/record", "x", "--content-format", "nonsense"),
        ("get", "/light", "--accept", "99999"),
        ("observe", "/light", "--count", "0"),
        ("observe", "/light", "--count", "-2"),
        ("observe", "/light", "--exec"),
        ("observe", "/light", "--", "stray"),
        ("get",),
        ("get", "/light", "--block-size", "100"),
        ("get", "/light", "--option", "70000=1"),
        ("discover", "--seconds", "0"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(config_dir, args):
    out = run_cli(config_dir, *args)
    assert out.returncode == 2, out
    assert b"Traceback" not in out.stderr


def test_content_format_by_name_or_number_with_any_source(device, config_dir):
    ok(config_dir, "put", "/record", "--content-format", "cbor", '{"a": 1}')
    import cbor2

    seen = last_request(device)
    assert seen["content_format"] == "60" and cbor2.loads(seen["stdin"]) == {"a": 1}
    ok(config_dir, "put", "/record", "--content-format", "1234", "opaque words")
    seen = last_request(device)
    assert (seen["stdin"], seen["content_format"]) == (b"opaque words", "1234")
    ok(config_dir, "put", "/record", "--content-format", "text", input=b"piped")
    assert last_request(device)["content_format"] == "0"


def test_observe_exec_arguments_are_explicit(device, config_dir, tmp_path):
    log = tmp_path / "hook.log"
    env = {"HOOK_LOG": str(log)}
    hook = [PY, str(SCRIPTS / "hook.py")]
    ok(
        config_dir,
        "observe",
        "/light",
        "--exec",
        hook[0],
        "--count",
        "1",
        "--",
        hook[1],
        "a",
        env=env,
    )
    ok(
        config_dir,
        "observe",
        "/light",
        "--exec",
        hook[0],
        "--exec-arg",
        hook[1],
        "--exec-arg=--count",  # an argument that looks like an option needs the = form
        "--count",
        "1",
        env=env,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["argv"] for c in calls] == [["a"], ["--count"]]
    assert all(c["event"] == "value" and c["code"] == "2.05" for c in calls)


def test_every_positional_has_help_and_exit_codes_are_documented(config_dir):
    top = ok(config_dir, "--help")
    assert "exit status" in top and "2 usage error" in top
    for command in ("get", "put", "observe", "onboard", "ls", "forget", "rekey"):
        text = ok(config_dir, command, "--help")
        assert "exit status" in text, command
    from coapdev.cli import build_parser

    def walk(parser):
        for action in parser._actions:
            if action.option_strings:
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from walk(sub)
            else:
                yield parser.prog, action

    missing = [(prog, a.dest) for prog, a in walk(build_parser()) if not a.help]
    assert missing == []


def test_one_device_convention_for_clients_commands(device, config_dir, tmp_path):
    phone = tmp_path / "phone"
    ok(phone, "onboard", device.uri, "--key", device.factory_key(), "--name", "phone")
    (dev,) = json.loads((config_dir / "devices.json").read_text())["devices"]
    assert "phone" in ok(config_dir, "clients", "list", dev)
    assert "phone" in ok(config_dir, "clients", "list", "-d", dev)
    ok(config_dir, "clients", "rename", "phone", "tablet", "-d", dev)
    ok(config_dir, "clients", "role", "-d", dev, "tablet", "user")
    ok(config_dir, "clients", "revoke", "tablet", "--device", dev)
    assert "tablet" not in ok(config_dir, "clients", "list")


def test_gateway_options_may_follow_the_subcommand(device):
    out = subprocess.run(
        [PY, "-m", "gateway", "key", "--state-dir", str(device.state_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == device.factory_key()


# --- 5. feedback a person can act on ------------------------------------------------


def test_observe_says_when_the_device_stops_and_comes_back(device, config_dir, tmp_path):
    log = tmp_path / "events.log"
    env = dict(os.environ, COAPDEV_CONFIG_DIR=str(config_dir), HOOK_LOG=str(log))
    observer = subprocess.Popen(
        [
            PY,
            "-m",
            "coapdev",
            "--timeout",
            "2",
            "observe",
            "/light",
            "--keepalive",
            "1",
            "--exec",
            PY,
            "--",
            str(SCRIPTS / "hook.py"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        wait_for(lambda: log.exists() and log.read_text(), 15, what="first value")
        device.stop()
        wait_for(lambda: '"lost"' in log.read_text(), 20, what="the hook hears of the loss")
        device.start()
        wait_for(lambda: '"restored"' in log.read_text(), 30, what="the hook hears it is back")
    finally:
        observer.send_signal(signal.SIGINT)
        _, stderr = observer.communicate(timeout=15)
    err = stderr.decode()
    assert "stopped answering" in err and "answers again" in err, err
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events[0] == "value" and "lost" in events and events[-1] in ("restored", "value")
    assert "Traceback" not in err


def test_not_found_has_a_reason_and_a_suggestion(device, config_dir):
    out = run_cli(config_dir, "get", "/lihgt")
    assert out.returncode == 1
    err = one_line_error(out)
    assert "4.04 Not Found" in err and "did you mean /light?" in err
    assert "no reason given" not in err


def test_ls_lists_what_this_client_may_use(device, config_dir, tmp_path):
    listing = ok(config_dir, "ls")
    rows = {line.split()[0]: line for line in listing.splitlines()}
    assert "observable" in rows["/light"] and "GET" in rows["/light"] and "PUT" in rows["/light"]
    assert "Says hello" in rows["/hello"] and "observable" not in rows["/hello"]
    assert "/clients" in rows  # an admin's view
    phone = tmp_path / "phone"
    ok(phone, "onboard", device.uri, "--key", device.factory_key(), "--name", "phone")
    assert "/clients" not in ok(phone, "ls")  # a user's view


def test_text_output_has_one_trailing_newline(device, config_dir):
    out = run_cli(config_dir, "get", "/hello")
    assert out.returncode == 0 and out.stdout == b"hello\n"


def test_empty_answers_print_nothing(device, config_dir):
    out = run_cli(config_dir, "post", "/record")
    assert out.returncode == 0 and out.stdout == b"" and out.stderr == b""


def test_observe_raw_separates_values(device, config_dir):
    out = run_cli(config_dir, "observe", "/hello", "--raw", "--count", "1")
    assert out.stdout == b"hello\n"
    light = run_cli(config_dir, "observe", "/light", "--raw", "--count", "1", "--accept", "json")
    assert light.stdout.endswith(b"\n") and json.loads(light.stdout) == {"on": False}


def test_device_text_is_escaped_unless_raw(device, config_dir):
    out = run_cli(config_dir, "get", "/hostile")
    assert b"\x1b" not in out.stdout and b"\x07" not in out.stdout
    assert b"\\x1b[2J" in out.stdout
    assert run_cli(config_dir, "get", "/hostile", "--raw").stdout.count(b"\x1b") == 2
    refused = run_cli(config_dir, "put", "/hostile", "x")
    assert refused.returncode == 1
    err = one_line_error(refused)
    assert "\x1b" not in err and "\r" not in err and "\\x1b[31m" in err


# --- 5b. protocol -------------------------------------------------------------------


def test_an_empty_payload_with_a_content_format_is_empty(device, config_dir):
    # some client libraries put Content-Format on every request, GET included
    ok(config_dir, "get", "/json-in", "--option", "content-format=50")
    assert last_request(device)["stdin"] == b""
    ok(config_dir, "post", "/json-in", "--content-format", "json", "--empty")
    assert last_request(device)["stdin"] == b""
    ok(config_dir, "post", "/json-in", "--content-format", "cbor", "--empty")
    assert last_request(device)["stdin"] == b""


# --- 6. what coap-client and aiocoap-client users look for --------------------------


def test_verbose_shows_the_handshake_and_messages(device, config_dir):
    out = run_cli(config_dir, "-v", "get", "/light")
    err = out.stderr.decode()
    assert out.returncode == 0, err
    for step in ("ClientHello", "HelloVerifyRequest", "ServerHelloDone", "handshake", "complete"):
        assert step in err, step
    assert "CON GET" in err and "2.05 Content" in err
    quiet = run_cli(config_dir, "-q", "get", "/light")
    assert quiet.stderr == b""


def test_non_requests(device, config_dir):
    out = run_cli(config_dir, "-v", "get", "/light", "--non")
    assert out.returncode == 0, out.stderr
    assert "NON GET" in out.stderr.decode()


def test_fetch_patch_ipatch_are_sent(device, config_dir):
    for method in ("fetch", "patch", "ipatch"):
        out = run_cli(config_dir, "-v", method, "/light", '{"on": true}')
        err = out.stderr.decode()
        assert f" {method.upper() if method != 'ipatch' else 'iPATCH'} " in err, err
        assert out.returncode == 1 and "4.05" in err.splitlines()[-1]


def test_arbitrary_options(device, config_dir):
    ok(config_dir, "get", "/record", "--option", "uri-query=a=1", "--option", "15=b")
    assert last_request(device)["query"] == "a=1&b"
    out = run_cli(config_dir, "-v", "get", "/light", "--option", "2048=0x0102")
    assert out.returncode == 0 and "2048: 0102" in out.stderr.decode()


def test_block_size(device, config_dir):
    out = run_cli(config_dir, "-v", "get", "/big", "--block-size", "64")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"z" * 3000 + b"\n"
    blocks = [line for line in out.stderr.decode().splitlines() if line.startswith("* <-")]
    assert len(blocks) >= 3000 // 64, len(blocks)


def test_block_size_for_uploads(device, config_dir):
    payload = bytes(range(256)) * 2
    out = run_cli(
        config_dir, "-v", "put", "/record", "--file", "-", "--block-size", "16", input=payload
    )
    assert out.returncode == 0, out.stderr
    assert last_request(device)["stdin"] == payload
    sent = [line for line in out.stderr.decode().splitlines() if "-> CON PUT" in line]
    assert len(sent) == len(payload) // 16, len(sent)


def test_accept_by_name_or_number(device, config_dir):
    assert json.loads(ok(config_dir, "get", "/light", "--accept", "json", "--raw")) == {"on": False}
    assert json.loads(ok(config_dir, "get", "/light", "--accept", "50", "--raw")) == {"on": False}


@pytest.mark.skipif(shutil.which("coap-client-openssl") is None, reason="needs libcoap3-bin")
@pytest.mark.parametrize("text_key", [True, False])
def test_credentials_for_libcoap(gateway, tmp_path, text_key):
    cfg = tmp_path / ("text" if text_key else "bytes")
    args = ["onboard", gateway.uri, "--key", gateway.factory_key()]
    for _ in range(20):  # a binary key may hold a zero byte, which no argv can carry
        out = run_cli(cfg, *args, *(["--text-key"] if text_key else []), "--replace")
        assert out.returncode == 0, out.stderr
        exported = run_cli(cfg, "credentials", "export", "--format", "libcoap")
        if exported.returncode == 0:
            break
        assert b"zero byte" in exported.stderr
    assert exported.returncode == 0, exported.stderr
    command = f"coap-client-openssl -B 5 {exported.stdout.decode().strip()} {gateway.uri}/device"
    got = subprocess.run(["bash", "-c", command], capture_output=True, timeout=30)
    assert got.returncode == 0, got
    import cbor2

    (device_id,) = json.loads((cfg / "devices.json").read_text())["devices"]
    assert cbor2.loads(got.stdout)["id"] == device_id


def test_credentials_for_aiocoap(device, config_dir, tmp_path):
    out = run_cli(config_dir, "credentials", "export", "--format", "aiocoap")
    assert out.returncode == 0, out.stderr
    creds = tmp_path / "aiocoap.json"
    creds.write_bytes(out.stdout)
    client = Path(PY).parent / "aiocoap-client"
    got = subprocess.run(
        [
            str(client),
            "--credentials",
            str(creds),
            "--accept",
            "application/json",
            f"{device.uri}/light",
        ],
        capture_output=True,
        timeout=60,
    )
    assert got.returncode == 0, got
    assert json.loads(got.stdout) == {"on": False}


# --- issue 11: the factory key off the process table --------------------------------


def test_key_from_stdin_and_from_the_environment(gateway_factory, tmp_path):
    gw = gateway_factory()
    key = gw.factory_key()
    ok(tmp_path / "a", "onboard", gw.uri, "--key", "-", input=f"{key}\n".encode())
    ok(tmp_path / "b", "onboard", gw.uri, env={"COAPDEV_FACTORY_KEY": key})
    missing = run_cli(tmp_path / "c", "onboard", gw.uri)
    assert missing.returncode == 2 and b"COAPDEV_FACTORY_KEY" in missing.stderr


def test_key_from_a_prompt(gateway_factory, tmp_path):
    import pty

    gw = gateway_factory()
    key = gw.factory_key()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal
        os.environ["COAPDEV_CONFIG_DIR"] = str(tmp_path / "tty")
        os.chdir(REPO)
        os.execv(PY, [PY, "-m", "coapdev", "onboard", gw.uri])
    output = b""
    deadline = time.monotonic() + 30
    answered = False
    status = None
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            chunk = b""
        if chunk:
            output += chunk
        if not answered and b"Factory key" in output:
            os.write(fd, f"{key}\n".encode())
            answered = True
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if not chunk:
            time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    os.close(fd)
    assert answered, output
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, output
    assert key.encode() not in output  # not echoed
