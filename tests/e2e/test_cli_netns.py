"""Discovery and moved devices across real interfaces (issue 12, 5b).

Each test builds its own network namespaces joined by veth pairs (names
prefixed ``cli``), runs a real gateway in one and the real CLI in another,
and removes everything afterwards.  mDNS runs on the veth links only, never
on the machine's own network.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path

import pytest
from support import wait_for
from support.netns import Lab, lab

pytestmark = pytest.mark.e2e

PY = sys.executable


def start_gateway(net: Lab, role: str, tmp_path: Path, host: str, name: str) -> Path:
    """A gateway in namespace ``role`` on ``host`` port 5684, advertising ``name``."""
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[device]\nname = "{name}"\ndemo_light = true\n')
    state = tmp_path / f"state-{name}"
    log = tmp_path / f"{name}.log"
    net.start(
        role,
        PY,
        "-m",
        "gateway",
        "--config",
        str(config),
        "--state-dir",
        str(state),
        "--host",
        host,
        log=log,
    )
    wait_for(lambda: "advertising" in log.read_text(), 30, what=f"{name} advertising")
    return state


def key_of(net: Lab, role: str, state: Path) -> str:
    import subprocess

    out = subprocess.run(
        net.argv(role, PY, "-m", "gateway", "--state-dir", str(state), "key"),
        capture_output=True,
        text=True,
        check=True,
        env=net.env(),
    )
    return out.stdout.strip()


def device_id(state: Path) -> str:
    return json.loads((state / "credentials.json").read_text())["device"]["id"]


def stored(config_dir: Path) -> dict:
    return json.loads((config_dir / "devices.json").read_text())["devices"]


def ok(net: Lab, role: str, config_dir: Path, *args: str):
    out = net.cli(role, config_dir, *args)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out


def one_line(out) -> str:
    err = out.stderr.decode()
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_a_gateway_bound_to_one_address_announces_only_there(tmp_path):
    with lab() as net:
        net.namespace("gw")
        net.namespace("lan")
        net.namespace("other")
        gw_lan, lan = net.link("gw", "lan")
        gw_other, other = net.link("gw", "other")
        net.address("gw", gw_lan, "10.231.0.1/24")
        net.address("lan", lan, "10.231.0.2/24")
        net.address("gw", gw_other, "10.232.0.1/24")
        net.address("other", other, "10.232.0.2/24")
        name = f"bound-{secrets.token_hex(2)}"
        state = start_gateway(net, "gw", tmp_path, "10.231.0.1", name)
        dev = device_id(state)
        seen_lan = ok(net, "lan", tmp_path / "c1", "discover", "--seconds", "4").stdout
        assert dev.encode() in seen_lan and b"10.231.0.1" in seen_lan
        seen_other = net.cli("other", tmp_path / "c2", "discover", "--seconds", "4")
        assert dev.encode() not in seen_other.stdout, seen_other


def test_a_device_whose_address_changed_is_found_again_by_id(tmp_path):
    with lab() as net:
        net.namespace("gw")
        net.namespace("cl")
        gw_end, cl_end = net.link("gw", "cl")
        net.address("gw", gw_end, "10.231.0.1/24")
        net.address("cl", cl_end, "10.231.0.2/24")
        name = f"mover-{secrets.token_hex(2)}"
        state = start_gateway(net, "gw", tmp_path, "::", name)
        config = tmp_path / "client"
        ok(net, "cl", config, "onboard", name, "--key", key_of(net, "gw", state))
        dev = device_id(state)
        assert stored(config)[dev]["address"] == "10.231.0.1:5684"
        # DHCP hands the device another address while it runs
        net.address("gw", gw_end, "10.231.0.1/24", add=False)
        net.address("gw", gw_end, "10.231.0.3/24")
        time.sleep(4)  # the gateway notices within ADDRESS_CHECK_S and announces again
        out = ok(net, "cl", config, "--timeout", "10", "get", f"{name}/device")
        assert json.loads(out.stdout)["id"] == dev
        assert "moved to coaps://10.231.0.3:5684" in one_line(out)
        assert stored(config)[dev]["address"] == "10.231.0.3:5684"


def test_a_device_that_moved_from_ipv4_to_ipv6_is_found(tmp_path):
    with lab() as net:
        net.namespace("gw")
        net.namespace("cl")
        gw_end, cl_end = net.link("gw", "cl")
        net.address("gw", gw_end, "10.231.0.1/24")
        net.address("gw", gw_end, "fd00:231::1/64")
        net.address("cl", cl_end, "10.231.0.2/24")
        net.address("cl", cl_end, "fd00:231::2/64")
        name = f"v6-{secrets.token_hex(2)}"
        state = start_gateway(net, "gw", tmp_path, "::", name)
        config = tmp_path / "client"
        ok(net, "cl", config, "onboard", name, "--key", key_of(net, "gw", state))
        dev = device_id(state)
        assert stored(config)[dev]["address"] == "10.231.0.1:5684"
        net.address("gw", gw_end, "10.231.0.1/24", add=False)  # IPv4 gone, IPv6 stays
        time.sleep(4)
        out = ok(net, "cl", config, "--timeout", "10", "get", f"{dev}/device")
        assert json.loads(out.stdout)["id"] == dev
        assert "moved to coaps://[fd00:231::1]:5684" in one_line(out)


def test_an_unreachable_stored_address_is_one_line_then_rediscovery(tmp_path):
    with lab() as net:
        net.namespace("gw")
        net.namespace("cl")
        gw_end, cl_end = net.link("gw", "cl")
        net.address("gw", gw_end, "10.231.0.1/24")
        net.address("cl", cl_end, "10.231.0.2/24")
        name = f"lost-{secrets.token_hex(2)}"
        state = start_gateway(net, "gw", tmp_path, "::", name)
        config = tmp_path / "client"
        ok(net, "cl", config, "onboard", "10.231.0.1", "--key", key_of(net, "gw", state))
        dev = device_id(state)
        doc = json.loads((config / "devices.json").read_text())
        doc["devices"][dev]["address"] = "10.99.0.1:5684"  # no route to it from here
        doc["devices"][dev]["aliases"] = []
        (config / "devices.json").write_text(json.dumps(doc))
        out = ok(net, "cl", config, "--timeout", "8", "get", "/light")
        assert "moved to coaps://10.231.0.1:5684" in one_line(out)
        # and with the device gone for good: one line, exit status 5
        net.close_processes()
        doc["devices"][dev]["address"] = "10.99.0.1:5684"
        (config / "devices.json").write_text(json.dumps(doc))
        gone = net.cli("cl", config, "--timeout", "4", "get", "/light")
        assert gone.returncode == 5, gone
        assert "10.99.0.1" in one_line(gone)
