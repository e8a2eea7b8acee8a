"""``coapdev-gateway``'s own command line validates like its config file does (issue 12, 4).

Real processes: the gateway's CLI is run as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, Gateway, run_cli, wait_for

pytestmark = pytest.mark.e2e

PY = sys.executable


def gateway_cli(*args: str, cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        **kwargs,
    )


@pytest.mark.parametrize("port", ["99999", "-1", "0", "http", "65536"])
def test_bad_port_is_a_usage_error(tmp_path, port):
    out = gateway_cli("--state-dir", str(tmp_path / "s"), "--port", port, "key")
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and "--port" in out.stderr


@pytest.mark.parametrize("seconds", ["nan", "-5", "0", "inf", "1e12", "abc"])
def test_pair_seconds_is_validated_and_nothing_is_written(gateway, seconds):
    journal = gateway.state_dir / "credentials.journal"
    before = journal.read_bytes() if journal.exists() else b""
    out = gateway.local("pair", "--seconds", seconds, check=False)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and "--seconds" in out.stderr
    after = journal.read_bytes() if journal.exists() else b""
    assert after == before and b"NaN" not in after


def test_pair_prints_a_date_when_the_window_ends_another_day(gateway):
    out = gateway.local("pair", "--seconds", str(3 * 86400))
    ends = time.localtime(time.time() + 3 * 86400)
    assert time.strftime("until %Y-%m-%d", ends) in out.stdout


def test_options_may_follow_the_subcommand(gateway):
    for args in (
        ["key", "--state-dir", str(gateway.state_dir)],
        ["clients", "list", "--state-dir", str(gateway.state_dir)],
    ):
        out = gateway_cli(*args)
        assert out.returncode == 0, out.stderr


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_check_refuses_a_missing_script(tmp_path):
    config = write_config(
        tmp_path, '[[resource]]\npath = "/x"\nget = { run = ["{config_dir}/missing.sh"] }\n'
    )
    out = gateway_cli("--check", str(config))
    assert out.returncode == 1
    assert "missing.sh: no such file" in out.stderr and "/x" in out.stderr


def test_check_refuses_a_script_that_is_not_executable(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    config = write_config(
        tmp_path, '[[resource]]\npath = "/x"\nget = { run = ["{config_dir}/script.sh"] }\n'
    )
    out = gateway_cli("--check", str(config))
    assert out.returncode == 1 and "not executable" in out.stderr
    started = gateway_cli("--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert started.returncode == 1 and "not executable" in started.stderr


def test_check_refuses_a_program_not_on_path(tmp_path):
    config = write_config(
        tmp_path, '[[resource]]\npath = "/x"\nget = { run = ["no-such-program-here"] }\n'
    )
    out = gateway_cli("--check", str(config))
    assert out.returncode == 1 and "not found on PATH" in out.stderr


def test_a_relative_state_dir_works_for_the_demo_light(tmp_path, config_dir):
    from support import free_udp_port

    work = tmp_path / "work"
    work.mkdir()
    port = free_udp_port()
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "gateway",
            "--state-dir",
            "relative-state",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    log.close()
    try:
        wait_for(lambda: b"serving coaps://" in (tmp_path / "gateway.log").read_bytes(), 20)
        key = gateway_cli("key", "--state-dir", str(work / "relative-state")).stdout.strip()
        out = run_cli(config_dir, "onboard", f"127.0.0.1:{port}", "--key", key)
        assert out.returncode == 0, out.stderr
        put = run_cli(config_dir, "put", "/light", "on")
        assert put.returncode == 0, put.stderr
        assert json.loads(put.stdout) == {"on": True}
        assert not (work / "relative-state" / "relative-state").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_second_gateway_on_the_same_state_dir_refuses(gateway):
    second = Gateway(state_dir=gateway.state_dir)
    out = subprocess.run(
        second.argv("--host", second.host, "--port", str(second.port)),
        capture_output=True,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert out.returncode == 1, out
    assert f"in use by pid {gateway.proc.pid}" in out.stderr
    assert "Traceback" not in out.stderr
    # the first one serves on, and after it stops another may start
    gateway.stop()
    gateway.start()


def test_the_factory_key_stays_out_of_a_non_terminal_log(gateway):
    key = gateway.factory_key()
    log = gateway.log()
    assert key not in log and key.replace("-", "") not in log
    assert "COAPDEV:1:" not in log  # the QR payload holds the key too
    assert "coapdev-gateway key" in log


def test_the_factory_key_is_shown_on_a_terminal_while_onboarding_is_open(tmp_path):
    import pty

    from support import free_udp_port

    state = tmp_path / "tty-device"
    port = free_udp_port()

    def run_on_terminal(seconds: float) -> bytes:
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(REPO)
            os.execv(
                PY,
                [
                    PY,
                    "-m",
                    "gateway",
                    "--state-dir",
                    str(state),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
            )
        output = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and b"Onboarding is" not in output:
            try:
                output += os.read(fd, 4096)
            except OSError:
                break
        os.kill(pid, 15)
        os.waitpid(pid, 0)
        os.close(fd)
        return output

    shown = run_on_terminal(20)
    key = subprocess.run(
        [PY, "-m", "gateway", "--state-dir", str(state), "key"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout.strip()
    assert key[:4].encode() in shown and b"COAPDEV:1:" in shown
    subprocess.run(
        [PY, "-m", "gateway", "--state-dir", str(state), "pair", "--close"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    closed = run_on_terminal(20)
    assert b"COAPDEV:1:" not in closed and key[:4].encode() not in closed
