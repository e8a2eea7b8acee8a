"""docs/gateway.md's key tables agree with the settings in gateway/config/schema.py:
every key documented, no key the code lacks, and every default as the code has it."""

from __future__ import annotations

import re
import tomllib
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    METHODS,
    DtlsConfig,
    GatewayConfig,
    LimitsConfig,
    MethodConfig,
    ObserveConfig,
    OnboardingConfig,
    ResourceConfig,
)
from gateway.config.settings import Key, keys_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"

#: Where each table starts in the document, and the dataclass it documents.
TABLES: dict[str, type] = {
    "### `[device]`": GatewayConfig,
    "### `[onboarding]`": OnboardingConfig,
    "### `[limits]`": LimitsConfig,
    "### `[dtls]`": DtlsConfig,
    "### `[[resource]]`": ResourceConfig,
    "A method table:": MethodConfig,
    "`observe` (exactly one of):": ObserveConfig,
}
#: Keys whose documented default is prose, not a value.
PROSE_DEFAULTS = {
    (GatewayConfig, "state_dir"),
    (GatewayConfig, "name"),
    (ResourceConfig, "path"),
    (MethodConfig, "run"),
    (MethodConfig, "timeout_s"),
}


def documented() -> dict[type, dict[str, str | None]]:
    """Each section's documented keys and their default cells (None: no such column)."""
    tables: dict[type, dict[str, str | None]] = {}
    section: type | None = None
    in_table = False
    for line in DOC.read_text().splitlines():
        start = next((t for t in TABLES if line.startswith(t)), None)
        if start is not None:
            section, in_table = TABLES[start], False
            tables[section] = {}
        elif section is not None and line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            for name in re.findall(r"`([a-z_]+)(?: = [^`]*)?`", cells[0]):
                tables[section][name] = cells[1] if len(cells) == 3 else None
        elif in_table:
            section, in_table = None, False  # the table ended
    return tables


DOCUMENTED = documented()


def _code_value(key: Key) -> Any:
    value = key.default
    if isinstance(value, frozenset):
        return sorted(str(v) for v in value)
    if isinstance(value, Enum):
        return value.value
    return value


def test_every_section_table_is_found():
    assert set(DOCUMENTED) == set(TABLES.values())


@pytest.mark.parametrize("cls", list(TABLES.values()), ids=lambda c: c.__name__)
def test_the_documented_keys_are_the_code_keys(cls):
    code = {k.name for k in keys_of(cls)}
    if cls is ResourceConfig:
        code |= set(METHODS)
    assert set(DOCUMENTED[cls]) == code


@pytest.mark.parametrize("cls", list(TABLES.values()), ids=lambda c: c.__name__)
def test_documented_defaults_are_the_code_defaults(cls):
    for key in keys_of(cls):
        cell = DOCUMENTED[cls].get(key.name)
        if cell is None or (cls, key.name) in PROSE_DEFAULTS:
            continue
        if cell == "none":
            assert key.default in (None, ""), key.name
            continue
        literal = re.match(r"`([^`]*)`", cell)
        assert literal, f"{cls.__name__}.{key.name}: default {cell!r} is not a value"
        documented_value = tomllib.loads(f"v = {literal.group(1)}")["v"]
        if isinstance(documented_value, list):
            documented_value = sorted(documented_value)
        assert documented_value == _code_value(key), key.name


@pytest.mark.parametrize("cls", list(TABLES.values()), ids=lambda c: c.__name__)
def test_every_setting_has_help_and_the_bounds_its_type_needs(cls):
    for key in keys_of(cls):
        rule = key.rule
        assert rule.doc and "\n" not in rule.doc, key.name
        if rule.read:
            continue
        if key.hint is int:
            assert rule.low is not None and rule.high is not None, key.name
        if key.hint in (float, float | None):
            assert rule.low is not None, key.name
