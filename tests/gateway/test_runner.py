"""The script runner on its own: real processes, no network."""

import asyncio
import os
import time
from pathlib import Path

import pytest
from support import process_gone, process_group_alive

from gateway.runner import ScriptFailure, run_script

SCRIPTS = Path(__file__).parent / "scripts"


def run(argv, stdin=b"", timeout_s=5.0, max_output_bytes=1 << 20, env=None):
    return asyncio.run(
        run_script(
            argv,
            stdin=stdin,
            env=env or dict(os.environ),
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
        )
    )


def test_stdin_verbatim_and_output(tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value, NULs included
    env = dict(os.environ, COAPDEV_STATE_DIR=str(tmp_path))
    result = run(["python3", str(SCRIPTS / "record_stdin.py")], stdin=payload, env=env)
    assert (tmp_path / "received.bin").read_bytes() == payload
    assert b'"length": 1048576' in result.stdout


def test_timeout_kills_the_whole_group(tmp_path):
    env = dict(os.environ, COAPDEV_STATE_DIR=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(ScriptFailure) as info:
        run([str(SCRIPTS / "sleep_forever.sh")], timeout_s=0.5, env=env)
    assert info.value.kind == "timeout"
    assert time.monotonic() - started < 3
    pgid = int((tmp_path / "sleeper.pid").read_text())
    child = int((tmp_path / "sleeper-child.pid").read_text())
    assert not process_group_alive(pgid)
    assert process_gone(child)


def test_nonzero_exit_gives_short_reason_without_stderr():
    with pytest.raises(ScriptFailure) as info:
        run([str(SCRIPTS / "fail.sh")])
    assert info.value.kind == "exit"
    assert str(info.value) == "fail.sh exited with status 3"


def test_exit_65_is_bad_input_with_script_output():
    with pytest.raises(ScriptFailure) as info:
        run([str(SCRIPTS / "reject.sh")])
    assert info.value.kind == "bad-input" and str(info.value) == "payload must be a number"


def test_output_over_limit_is_killed():
    started = time.monotonic()
    with pytest.raises(ScriptFailure) as info:
        run(["python3", str(SCRIPTS / "big_output.py")], max_output_bytes=100_000)
    assert info.value.kind == "too-large"
    assert time.monotonic() - started < 5


def test_missing_program():
    with pytest.raises(ScriptFailure) as info:
        run(["/nonexistent/program"])
    assert info.value.kind == "start" and "cannot start" in str(info.value)


def test_no_shell_interprets_arguments(tmp_path):
    marker = tmp_path / "pwned"
    result = run(["echo", f"$(touch {marker})", "; rm -rf /", "`id`"])
    assert result.stdout == f"$(touch {marker}) ; rm -rf / `id`\n".encode()
    assert not marker.exists()
