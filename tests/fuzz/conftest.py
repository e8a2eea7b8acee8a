"""Hypothesis settings for the fuzz harness, and a count of the inputs tried.

Default (CI): derandomized, no example database, a few hundred examples per
target, so the suite is fast and never flaky.  ``--run-slow`` (or
``COAPDEV_FUZZ_EXAMPLES=N``) runs many more, randomized.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from support.fuzzing import CRASHES, TRIED

_COMMON = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=200, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=5_000, derandomize=False, **_COMMON)


def pytest_configure(config: pytest.Config) -> None:
    examples = os.environ.get("COAPDEV_FUZZ_EXAMPLES")
    if examples:
        settings.register_profile("env", max_examples=int(examples), derandomize=False, **_COMMON)
        settings.load_profile("env")
    elif config.getoption("--run-slow", default=False):
        settings.load_profile("long")
    else:
        settings.load_profile("ci")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not TRIED:
        return
    total = sum(TRIED.values())
    terminalreporter.write_line(
        f"fuzz: {total} inputs tried over {len(TRIED)} parsers, "
        f"{len(CRASHES)} crashes (profile {settings.get_current_profile_name()})"
    )
