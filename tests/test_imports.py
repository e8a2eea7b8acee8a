"""Every module imports alone: no import cycle hides behind the order tests import in.

A cycle between two modules works as long as some third module imports
them in the right order first; the first user who imports the other one
alone gets an ImportError (or a half-initialised module).  Each module
under ``coapdev/`` and ``gateway/`` is imported in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coapdev", "gateway")
#: Seconds one import may take (a loaded machine, DTLSSocket and aiocoap).
IMPORT_TIMEOUT_S = 60


def modules() -> list[str]:
    """Every module of the packages, by dotted name; ``__main__`` runs the program, so not."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__" or "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def import_alone(module: str) -> str | None:
    """None if ``module`` imports in a fresh interpreter, else why not (its last line)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        )
    except subprocess.TimeoutExpired:
        return f"{module}: no import within {IMPORT_TIMEOUT_S} s"
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return f"{module}: {lines[-1] if lines else f'exit status {done.returncode}'}"


def test_every_module_imports_alone() -> None:
    names = modules()
    assert "coapdev.server.site" in names and "gateway.app" in names
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        failures = [failure for failure in pool.map(import_alone, names) if failure]
    assert not failures, "modules that cannot be imported alone:\n" + "\n".join(failures)
