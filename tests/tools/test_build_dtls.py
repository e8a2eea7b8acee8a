"""tools/build-dtls: the patched wheel is cached, so a re-install never rebuilds."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO


@pytest.mark.integration
def test_a_second_run_uses_the_cached_wheel():
    """tools/setup built it already: another run (another venv, same ABI) builds nothing."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "build-dtls"),
            "--python",
            sys.executable,
            "--print-wheel",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "building" not in proc.stderr, proc.stderr
    wheel = proc.stdout.strip()
    assert wheel.endswith(".whl") and "+coapdev." in wheel
