import os
import stat

import pytest

from coapdev.client import Credentials, DeviceAddress
from coapdev.errors import CorruptStateFile, UnknownDevice
from coapdev.registry import DeviceRegistry


def creds(dev, host="127.0.0.1", port=5684):
    return Credentials(dev, DeviceAddress(host, port), f"id-{dev}", os.urandom(16), name="me")


def test_save_load_mode_and_resolve(tmp_path):
    reg = DeviceRegistry(tmp_path / "cfg")
    a, b = creds("AAAA", port=5700), creds("BBBB", port=5701)
    reg.save(a)
    reg.save(b)
    assert stat.S_IMODE(os.stat(reg.path).st_mode) == 0o600
    loaded = reg.load()
    assert loaded["AAAA"].key == a.key and loaded["BBBB"].identity == "id-BBBB"
    assert reg.resolve("aaaa").device_id == "AAAA"
    assert reg.resolve("127.0.0.1:5701").device_id == "BBBB"
    with pytest.raises(UnknownDevice, match="AAAA, BBBB"):
        reg.resolve("CCCC")
    reg.forget("AAAA")
    assert set(reg.load()) == {"BBBB"}


def test_keys_never_in_repr():
    c = creds("AAAA")
    assert c.key.hex() not in repr(c) and "key" not in repr(c)


def test_corrupt_file_is_named(tmp_path):
    reg = DeviceRegistry(tmp_path)
    reg.path.write_text("{")
    with pytest.raises(CorruptStateFile, match=r"devices\.json"):
        reg.load()


def test_found_by_name_and_by_any_address_it_is_known_at(tmp_path):
    reg = DeviceRegistry(tmp_path / "cfg")
    a = creds("AAAA", port=5700)
    a.device_name = "Kitchen-Pi"
    a.aliases = ["localhost:5700", "[fd00::1]:5700"]
    reg.save(a)
    reg.save(creds("BBBB", port=5701))
    for ref in ("kitchen-pi", "kitchen-pi.local", "localhost:5700", "[fd00::1]:5700", "AAAA"):
        assert reg.resolve(ref).device_id == "AAAA", ref
    assert reg.find("127.0.0.1:5799") is None
    with pytest.raises(UnknownDevice, match="Kitchen-Pi"):
        reg.resolve("nowhere")


def test_names_from_the_device_are_escaped_in_errors(tmp_path):
    reg = DeviceRegistry(tmp_path / "cfg")
    a = creds("AAAA")
    a.device_name = "evil\x1b[2J"
    reg.save(a)
    with pytest.raises(UnknownDevice) as info:
        reg.resolve("x\x1by")
    assert "\x1b" not in str(info.value)


def test_recent_handshake_failures_are_remembered_for_a_while(tmp_path):
    from coapdev.registry import HANDSHAKE_FAILURE_MEMORY_S, MAX_REMEMBERED_FAILURES

    reg = DeviceRegistry(tmp_path / "cfg")
    address = DeviceAddress("127.0.0.1", 5700)
    assert not reg.recent_handshake_failure(address)
    reg.note_handshake_failure(address, now=1000.0)
    assert reg.recent_handshake_failure(address, now=1000.0 + HANDSHAKE_FAILURE_MEMORY_S - 1)
    assert not reg.recent_handshake_failure(address, now=1000.0 + HANDSHAKE_FAILURE_MEMORY_S + 1)
    for port in range(MAX_REMEMBERED_FAILURES + 10):  # bounded
        reg.note_handshake_failure(DeviceAddress("127.0.0.1", 6000 + port), now=2000.0 + port)
    import json

    assert len(json.loads((tmp_path / "cfg" / "handshake-failures.json").read_text())) == (
        MAX_REMEMBERED_FAILURES
    )


def test_unwritable_directory_is_refused_before_anything_else(tmp_path):
    from coapdev.errors import ClientError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ClientError, match="cannot save credentials"):
        DeviceRegistry(blocker / "cfg").check_writable()
