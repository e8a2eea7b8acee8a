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
import re
import signal
import subprocess
import warnings
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


#: A line of pytest -q's progress: a character per test, then perhaps "[ 50%]".
_PROGRESS = re.compile(r"^([.FEsxX]+)(\s+\[\s*\d+%\])?$")


def _crashed_after_passing(result: subprocess.CompletedProcess[str]) -> bool:
    """Killed by SIGSEGV once every test it ran had passed (no summary line was printed).

    A known, rare native crash in the Home Assistant test process at hass
    teardown (docs/homeassistant.md, "Known issue"): seen about once in ten
    runs of test_config_flow.py, with the old and the split client alike.
    """
    if result.returncode != -signal.SIGSEGV:
        return False
    progress = [m.group(1) for m in map(_PROGRESS.match, result.stdout.splitlines()) if m]
    return bool(progress) and all(set(p) == {"."} for p in progress)


@pytest.mark.parametrize("module", MODULES)
def test_home_assistant_module(module: str) -> None:
    assert HA_PYTHON.exists(), ".venv-ha is missing: run tools/setup --test"
    result = _run_module(module)
    if _crashed_after_passing(result):
        # Run once more, and say so: a second crash, or any failure, fails the test.
        warnings.warn(
            f"Home Assistant tests in {module}: the process crashed (SIGSEGV) after its "
            f"tests passed; run again. Its stderr began:\n{result.stderr[:3000]}",
            stacklevel=1,
        )
        result = _run_module(module)
    summary = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert result.returncode == 0, (
        f"Home Assistant tests in {module} failed ({summary[0]}):\n"
        f"{result.stdout[-20000:]}\n{result.stderr[:4000]}\n...\n{result.stderr[-4000:]}"
    )
    assert " passed" in summary[0] and "skipped" not in summary[0], summary[0]
