"""The Raspberry Pi example and its systemd unit work together (issue 12, 5).

The example used ``sudo -n reboot``, which the unit's ``NoNewPrivileges=yes``
forbids.  Here: the unit passes ``systemd-analyze verify``; the example's
config passes ``--check`` with its programs present; no program it runs
needs a setuid helper; and under ``setpriv --no-new-privs`` (what the unit
does) a gateway on the example config serves ``POST /reboot`` by running
``systemctl reboot`` (a stand-in that records the call: nothing reboots).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, free_udp_port, run_cli, wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "docs" / "examples"
PY = sys.executable
SETUID_HELPERS = {"sudo", "su", "doas", "pkexec", "runuser"}


def stub_programs(directory: Path, calls: Path) -> Path:
    """Stand-ins for the Pi's programs: each records how it was called."""
    directory.mkdir()
    for name, body in {
        "gpioget": "echo 0",
        "gpioset": "true",
        "gpiomon": "exec sleep 3600",
        "systemctl": "true",
    }.items():
        program = directory / name
        program.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{body}\n')
        program.chmod(0o755)
    return directory


def example_config(tmp_path: Path, port: int) -> Path:
    """The example as installed in /etc/coapdev, on a test port and without mDNS."""
    etc = tmp_path / "etc-coapdev"
    etc.mkdir()
    shutil.copy(EXAMPLES / "pi-scripts" / "relay.sh", etc / "relay.sh")
    text = (EXAMPLES / "raspberry-pi.toml").read_text()
    text = text.replace("port = 5684", f'port = {port}\nhost = "127.0.0.1"\nadvertise = false')
    (etc / "gateway.toml").write_text(text)
    return etc / "gateway.toml"


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    unit = (EXAMPLES / "coapdev-gateway.service").read_text()
    assert "NoNewPrivileges=yes" in unit
    installed = tmp_path / "coapdev-gateway.service"
    # verify checks that ExecStart exists: point it at this checkout's gateway
    installed.write_text(
        unit.replace(
            "/opt/coapdev/.venv/bin/coapdev-gateway", str(Path(PY).parent / "coapdev-gateway")
        )
    )
    out = subprocess.run(
        ["systemd-analyze", "verify", str(installed)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_the_example_runs_no_setuid_helper_and_checks_out(tmp_path):
    calls = tmp_path / "calls.log"
    stubs = stub_programs(tmp_path / "bin", calls)
    config = example_config(tmp_path, free_udp_port())
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}")
    out = subprocess.run(
        [PY, "-m", "gateway", "--check", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    sys.path.insert(0, str(REPO))
    from gateway.config import load_config

    loaded = load_config(config)
    programs = {Path(m.argv[0]).name for r in loaded.resources for _, m in r.methods}
    assert programs & SETUID_HELPERS == set(), programs
    assert (EXAMPLES / "50-coapdev-reboot.rules").exists()


def test_reboot_works_without_new_privileges(tmp_path, config_dir):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    calls = tmp_path / "calls.log"
    stubs = stub_programs(tmp_path / "bin", calls)
    port = free_udp_port()
    config = example_config(tmp_path, port)
    state = tmp_path / "state"
    log = tmp_path / "gateway.log"
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "setpriv",
                "--no-new-privs",
                PY,
                "-m",
                "gateway",
                "--config",
                str(config),
                "--state-dir",
                str(state),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "serving coaps://" in log.read_text(), 20, what="gateway")
        key = subprocess.run(
            [PY, "-m", "gateway", "--state-dir", str(state), "key"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout.strip()
        assert run_cli(config_dir, "onboard", f"127.0.0.1:{port}", "--key", key).returncode == 0
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status  # as under the unit
        out = run_cli(config_dir, "post", "/reboot")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: calls.exists() and "systemctl reboot" in calls.read_text(), 10)
        assert run_cli(config_dir, "put", "/relay", "on").returncode == 0
        time.sleep(0.2)
        assert "gpioset gpiochip0 17=1" in calls.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
