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


#: Known, reported to the lead (issue 11, section 5), fixed in the observation code
#: there: a declined observation (a script resource that is not observable, or past the
#: per-session cap) makes aiocoap log two chained tracebacks.  Remove once merged.
KNOWN_DECLINED_OBSERVATION = (
    "AttributeError: 'ServerObservation' object has no attribute '_cancellation_callback'",
    "TypeError: Logger._log() got an unexpected keyword argument 'exception'",
)


@pytest.mark.parametrize("mode", ["grammar", "handshake"])
def test_quick_session_fuzz_finds_nothing_and_keeps_the_gateway_serving(tmp_path, mode):
    out_json = tmp_path / "fuzz.json"
    argv = [str(REPO / "tools" / "fuzz"), "--mode", mode, "--quick", "--seed", "20261202"]
    proc = subprocess.run(
        [*argv, "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert out_json.exists(), proc.stdout + proc.stderr
    result = json.loads(out_json.read_text())
    assert result["crashes"] == 0 and result["gateway_answers_after"], proc.stdout
    assert result["findings"] == 0, "\n".join(result["findings_kept"])
    assert result["inputs"] > 150
    assert result["legit_errors"] == 0 and result["legit_requests"] > 50
    assert result["rss_after_kib"] - result["rss_before_kib"] <= result["rss_bound_kib"]
    unexpected = set(result["traceback_signatures"]) - set(KNOWN_DECLINED_OBSERVATION)
    assert not unexpected, proc.stdout
    if mode == "grammar":
        assert len(result["inputs_by_kind"]) == 13  # every kind of odd message was sent
        assert result["answers_by_class"].get("4.xx", 0) > 50
    else:
        assert result["outcomes"]["past the cookie check"] > 50
        assert any(kind.startswith("key-exchange:") for kind in result["inputs_by_kind"])
