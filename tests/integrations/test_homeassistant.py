"""The Home Assistant integration's own suite, run with .venv-ha (Python 3.13).

Home Assistant needs Python 3.13 and its own pinned dependencies, so its tests
(integrations/homeassistant/tests) cannot share this suite's interpreter.  They
run here, one subprocess per test module, so that ``tools/test`` stays one
command with one summary and ``-m "not e2e"`` still leaves them out (they start
real gateways).  Run them alone with
``.venv-ha/bin/python -m pytest integrations/homeassistant/tests``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

REPO = Path(__file__).resolve().parents[2]
HA_DIR = REPO / "integrations" / "homeassistant"
HA_PYTHON = REPO / ".venv-ha" / "bin" / "python"
MODULES = sorted(p.name for p in (HA_DIR / "tests").glob("test_*.py"))


def test_every_home_assistant_module_is_run_here():
    assert {"test_config_flow.py", "test_entities.py"} <= set(MODULES)


def _run_module(module: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        [str(HA_PYTHON), "-X", "faulthandler", "-m", "pytest", "-q", f"tests/{module}"],
        cwd=HA_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("module", MODULES)
def test_home_assistant_module(module: str) -> None:
    assert HA_PYTHON.exists(), ".venv-ha is missing: run tools/setup --test"
    result = _run_module(module)
    summary = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert result.returncode == 0, (
        f"Home Assistant tests in {module} failed ({summary[0]}):\n"
        f"{result.stdout[-20000:]}\n{result.stderr[:4000]}\n...\n{result.stderr[-4000:]}"
    )
    assert " passed" in summary[0] and "skipped" not in summary[0], summary[0]
