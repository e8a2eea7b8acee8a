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

MARKER_PATCH = REPO / "tools" / "dtlssocket" / "0005-coapdev-build-marker.patch"


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
        (
            {
                "COAPDEV_PATCHLEVEL": 1,
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
