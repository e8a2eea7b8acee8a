"""coapdev refuses any DTLSSocket but its own patched build (coapdev.dtls_build)."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import types

import pytest
from support import REPO

from coapdev import dtls_build
from coapdev.const import MAX_IDENTITY_BYTES, MAX_PSK_BYTES
from coapdev.errors import DtlsBuildError

MARKER_PATCH = REPO / "tools" / "dtlssocket" / "0006-coapdev-build-marker.patch"


def test_the_patched_build_is_the_one_loaded():
    dtls = dtls_build.patched_dtls()
    assert dtls.COAPDEV_PATCHLEVEL == dtls_build.REQUIRED_PATCHLEVEL
    assert dtls.PSK_MAX_KEY_LEN >= MAX_PSK_BYTES
    assert dtls.PSK_MAX_IDENTITY_LEN >= MAX_IDENTITY_BYTES
    version = importlib.metadata.version("DTLSSocket")
    assert version == f"0.2.3+coapdev.{dtls.COAPDEV_PATCHLEVEL}", (
        f"DTLSSocket {version} is installed: pip replaced coapdev's build (run tools/setup)"
    )


def test_the_marker_patch_sets_the_same_level_and_version():
    text = MARKER_PATCH.read_text()
    level = int(re.search(r"^\+COAPDEV_PATCHLEVEL = (\d+)$", text, re.M).group(1))
    assert level == dtls_build.REQUIRED_PATCHLEVEL
    assert f"+    version='0.2.3+coapdev.{level}'," in text


@pytest.mark.parametrize(
    "attributes, complaint",
    [
        ({}, "not coapdev's patched build"),
        ({"COAPDEV_PATCHLEVEL": 0}, "patch level 0"),
        # level 1 lacks 0005: a Connection freed by the garbage collector crashed
        ({"COAPDEV_PATCHLEVEL": 1}, "patch level 1"),
        (
            {
                "COAPDEV_PATCHLEVEL": dtls_build.REQUIRED_PATCHLEVEL,
                "PSK_MAX_KEY_LEN": MAX_PSK_BYTES - 1,
                "PSK_MAX_IDENTITY_LEN": MAX_IDENTITY_BYTES,
            },
            f"keys up to {MAX_PSK_BYTES - 1} bytes",
        ),
    ],
)
def test_other_builds_are_refused_with_the_fix(monkeypatch, attributes, complaint):
    fake = types.ModuleType("DTLSSocket.dtls")
    fake.__file__ = "/somewhere/dtls.so"
    for name, value in attributes.items():
        setattr(fake, name, value)
    package = types.ModuleType("DTLSSocket")
    package.dtls = fake
    monkeypatch.setitem(sys.modules, "DTLSSocket", package)
    monkeypatch.setitem(sys.modules, "DTLSSocket.dtls", fake)
    dtls_build.patched_dtls.cache_clear()
    try:
        with pytest.raises(DtlsBuildError, match=complaint) as caught:
            dtls_build.patched_dtls()
        assert "tools/setup" in str(caught.value)
    finally:
        dtls_build.patched_dtls.cache_clear()


_SERVER = r"""
import socket, sys
from DTLSSocket import dtls
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(0.2)
print(sock.getsockname()[1], flush=True)
peer = []
def write(addr, data):
    sock.sendto(data, peer[-1])
    return len(data)
ctx = dtls.DTLS(read=lambda a, d: len(d), write=write, event=lambda lv, c: 0,
                pskId=b"server", pskStore={b"client": b"k" * int(sys.argv[1])})
for _ in range(50):  # about 10 s at most
    try:
        data, addr = sock.recvfrom(4096)
    except TimeoutError:
        continue
    peer.append(addr)
    ctx.handleMessage(dtls.Session("::ffff:" + addr[0], addr[1]), data)
print("alive", flush=True)
"""


@pytest.mark.integration
@pytest.mark.parametrize("key_bytes", [33, 64, 200])
def test_dtlssocket_refuses_a_stored_key_longer_than_its_buffer(key_bytes):
    """The PSK callback checks the length it copies (stock 0.2.3 overran a 16-byte buffer:
    a 64-byte key crashed the server); here the handshake fails with an alert."""
    import subprocess

    from reliability.dtls12 import AlertReceived, Dtls12PskClient

    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(key_bytes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        with Dtls12PskClient("127.0.0.1", port, b"client", b"k" * key_bytes, timeout_s=3) as c:
            with pytest.raises(AlertReceived) as alert:
                c.handshake()
        assert alert.value.level == 2  # fatal (internal_error)
        assert server.poll() is None, f"the DTLS server died: exit status {server.returncode}"
    finally:
        server.kill()
        server.wait(timeout=10)
