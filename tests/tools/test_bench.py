"""tools/bench --quick: every server starts, nothing fails, the table and the targets print."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from support import REPO

pytestmark = pytest.mark.e2e


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """tools/bench with ``args``, from the repository, no stdin, within 4 minutes."""
    return subprocess.run(
        [str(REPO / "tools" / "bench"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def test_quick_bench_runs_clean_and_prints_the_table_and_targets(tmp_path):
    if shutil.which("gcc") is None or shutil.which("coap-server-openssl") is None:
        pytest.skip("needs gcc, libssl-dev and libcoap3-bin (tools/setup --test)")
    numbers = tmp_path / "bench.json"
    plots = tmp_path / "plots"
    proc = bench("--quick", "--json", str(numbers), "--plot", str(plots))
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:]
    # one table, every server a column, the key rows present
    columns = ("coapdev", "aiocoap stock", "libcoap", "Py UDP echo", "C UDP echo")
    headers = [line.split() for line in out.splitlines() if "aiocoap stock" in line]
    assert headers and " ".join(headers[0]) == " ".join(columns), headers
    for row in (
        "GET/s, 32 clients",
        "GET/s, 256 clients",
        "handshakes/s",
        "handshake+onboarding p50 / p99 ms",
        "RSS MiB idle",
        "RSS MiB, 1000 live sessions",
        "cold start s",
        "coapdev --help s",
    ):
        assert row in out, row
    assert "Ratios" in out and "Generator ceiling:" in out
    # every target is printed with its verdict
    assert "Targets (coapdev" in out
    verdicts = [line for line in out.splitlines() if line.startswith(("  PASS  ", "  MISS  "))]
    assert len(verdicts) == 21, "\n".join(verdicts)
    for target in (
        ">= 16 000 DTLS GET/s at 32 clients",
        ">= 5 000 full handshakes/s",
        "handshake + onboarding p50 <= 2 ms",
        "256 clients served with 0 timeouts",
        "idle RSS <= 40 MB",
        "cold start <= 0.5 s",
        "coapdev --help <= 0.3 s",
        ">= 1.0x the Python UDP echo",
        "server CPU per GET <= 30 us at 32 clients",
    ):
        assert any(target in line for line in verdicts), target
    assert "Errors: 0 (none)" in out
    # the numbers and the plots
    result = json.loads(numbers.read_text())
    assert result["mode"] == "quick" and result["errors"] == []
    assert result["summary"]["key_numbers"]["get32"] > 0
    for name in ("bench-concurrency.png", "bench-sustained.png"):
        assert (plots / name).read_bytes().startswith(b"\x89PNG")


def test_quick_storm_and_scaling_run_alone_and_print_their_lines_and_targets(tmp_path):
    """``--only storm,scaling``: the reconnect storm (coapdev beside libcoap) and the
    cost-per-step lines, their targets, the JSON block and the plot; nothing else runs."""
    if shutil.which("gcc") is None or shutil.which("coap-server-openssl") is None:
        pytest.skip("needs gcc, libssl-dev and libcoap3-bin (tools/setup --test)")
    numbers = tmp_path / "bench.json"
    plots = tmp_path / "plots"
    proc = bench("--quick", "--only", "storm,scaling", "--json", str(numbers), "--plot", str(plots))
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:]
    assert "aiocoap stock" not in out  # the other scenarios did not run
    assert "Reconnect storm" in out and "Cost that grows with the work" in out
    for server in ("coapdev ", "libcoap "):
        assert any(line.startswith(f"  {server}") for line in out.splitlines()), server
    verdicts = [line for line in out.splitlines() if line.startswith(("  PASS  ", "  MISS  "))]
    assert len(verdicts) == 3, "\n".join(verdicts)
    for target in ("1000 clients all answered again", "per-request CPU flat", "per live session"):
        assert any(target in line for line in verdicts), target
    assert "Errors: 0 (none)" in out
    # Sessions are held on the 10-client gateway after its GET runs, as on the other levels.
    steps = [line for line in out.splitlines() if "(10 stored)" in line]
    gets = [i for i, line in enumerate(steps) if "GET /light" in line]
    holds = [i for i, line in enumerate(steps) if "live sessions:" in line]
    assert gets and holds and max(gets) < min(holds), "\n".join(steps)
    result = json.loads(numbers.read_text())
    assert result["scenarios"] == ["scaling", "storm"]
    assert result["servers"]["coapdev-10"]["rss_before_hold_kib"] > 0
    storm = result["summary"]["storm"]["coapdev"]["1000"]
    assert storm["before"] == 1000  # every observation registered and notified before
    assert set(result["scaling"]["clients"]) == {"1", "8", "32", "256", "1000"}
    assert (plots / "bench-scaling.png").read_bytes().startswith(b"\x89PNG")


def test_stored_levels_take_turns_run_by_run(tmp_path):
    """The GET runs of the stored-client levels alternate between their gateways (all
    started first; the order reversed every round), so load drifting on the machine
    falls on every level alike and their ratio compares runs made side by side."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc and libssl-dev (tools/setup --test)")
    numbers = tmp_path / "bench.json"
    proc = bench("--quick", "--only", "stored", "--runs", "2", "--json", str(numbers))
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:]
    runs = [
        line.split("] ", 1)[1].split(":", 1)[0]
        for line in out.splitlines()
        if "stored) GET /light, 32 clients, run" in line
    ]
    assert runs == [
        "coapdev (10 stored) GET /light, 32 clients, run 1",
        "coapdev (10000 stored) GET /light, 32 clients, run 1",
        "coapdev (10000 stored) GET /light, 32 clients, run 2",
        "coapdev (10 stored) GET /light, 32 clients, run 2",
    ], "\n".join(runs)
    result = json.loads(numbers.read_text())
    for n in (10, 10000):
        assert len(result["servers"][f"coapdev-{n}"]["get"]["32"]) == 2, n
    assert result["servers"]["coapdev-10000"]["onboard"]  # its later steps still ran
    assert "Errors: 0 (none)" in out
