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
