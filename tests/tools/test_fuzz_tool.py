"""tools/fuzz in its quick mode: hostile datagrams at a live gateway, a client kept served."""

from __future__ import annotations

import json
import subprocess

import pytest
from support import REPO

pytestmark = pytest.mark.e2e


def test_quick_live_fuzz_keeps_the_gateway_up_and_the_client_served(tmp_path):
    out_json = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [str(REPO / "tools" / "fuzz"), "--quick", "--seed", "20261122", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert "RESULT: PASS" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0
    result = json.loads(out_json.read_text())
    assert result["crashes"] == 0
    assert result["gateway_answers_after"]
    assert result["datagrams_sent"] > 1000
    assert result["legit_errors"] == 0 and result["legit_notifications_missed"] == 0
    assert result["legit_notifications"] > 20
    assert result["rss_after_kib"] - result["rss_before_kib"] <= result["rss_bound_kib"]
    assert "datagrams sent" in proc.stdout and "crashes 0" in proc.stdout
