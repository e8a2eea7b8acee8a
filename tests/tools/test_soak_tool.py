"""tools/soak in its quick mode: errors 0, RSS flat, observers agree, a PNG plot."""

from __future__ import annotations

import json
import subprocess

import pytest
from support import REPO

pytestmark = pytest.mark.e2e


def test_quick_soak_has_no_errors_flat_rss_and_writes_a_plot(tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run(
        [str(REPO / "tools" / "soak"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert "RESULT: PASS" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0
    for line in ("errors: 0 (goal 0)", "p99 over time (ms):", "RSS over time (MiB):"):
        assert line in proc.stdout
    png = (out / "soak.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    result = json.loads((out / "soak.json").read_text())
    assert result["errors"] == 0 and result["requests"] > 300
    assert result["notifications"] > 0 and result["observers_disagreeing"] == []
    assert len(result["samples"]) >= 8
