"""Checking TOML values against what a key accepts; every error names file and key.

:class:`Reader` has one accessor per kind of value (``integer``, ``argv``,
...) and :meth:`Reader.section`, which reads a whole table by the
:class:`~gateway.config.settings.Setting` of each field of a dataclass:
unknown keys, types and bounds are checked there, once for every section.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, TypeVar

from coapdev.const import Role
from coapdev.errors import ConfigError

from .settings import Key, key_names, keys_of

T = TypeVar("T")

#: Keys that are easy to reach for but are spelled otherwise here.
_KEY_HINTS = {"name": "the display name is 'title'"}


def scripts_dir() -> Path:
    return Path(str(importlib_resources.files("gateway").joinpath("bin")))


def join(key: str, name: str) -> str:
    """``section.key``, or ``key`` at the top of the file."""
    return f"{key}.{name}" if key else name


class Reader:
    """Reads one config file (``source``); ``config_dir`` fills ``{config_dir}``."""

    def __init__(self, source: Path | str, config_dir: Path | None) -> None:
        self.source = source
        self.placeholders = {
            "python": sys.executable,
            "scripts": str(scripts_dir()),
            "config_dir": str(config_dir) if config_dir is not None else str(scripts_dir()),
        }

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, key, problem)

    # --- sections, driven by the dataclass fields ---

    def section(
        self,
        cls: type[T],
        table: Mapping[str, Any],
        key: str,
        *,
        extra: tuple[str, ...] = (),
        given: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> T:
        """``cls`` from ``table``: every field with a setting read from its key.

        ``extra`` are further keys the caller reads itself; ``given`` are field
        values the caller computed (their keys are not read here); ``defaults``
        replace a field's default when its key is absent.
        """
        keys = keys_of(cls)
        self.known(table, key, key_names(cls) + extra)
        values = dict(given or {})
        for k in keys:
            if k.field.name in values:
                continue
            if k.name in table:
                values[k.field.name] = self.value(k, table[k.name], join(key, k.name))
            elif defaults and k.field.name in defaults:
                values[k.field.name] = defaults[k.field.name]
        return cls(**values)

    def value(self, k: Key, value: Any, key: str) -> Any:
        """One key's value, checked against its setting and converted to its field type."""
        rule = k.rule
        if rule.read:
            return getattr(self, rule.read)(value, key)
        hint = _without_none(k.hint)
        if hint is bool:
            return self.boolean(value, key)
        if hint is int and rule.low is not None and rule.high is not None:
            return self.integer(value, key, low=int(rule.low), high=int(rule.high))
        if hint is float and rule.low is not None:
            return self.number(value, key, low=rule.low, high=k.high_or_inf)
        if hint is str:
            return self.choice(self.string(value, key, empty=rule.empty), key, rule.choices)
        if isinstance(hint, type) and issubclass(hint, StrEnum):
            return self.enum(value, key, hint)
        if typing.get_origin(hint) is tuple:
            return self.argv(value, key)
        raise TypeError(f"{k.name}: no reader for {hint!r} (bounds missing?); give it a read=")

    # --- typed accessors ---

    def table(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {kind_of(value)}")
        return value

    def known(self, table: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                if name in _KEY_HINTS:
                    hint = f"; {_KEY_HINTS[name]}"
                raise self.error(
                    join(key, name), f"unknown key{hint} (allowed: {', '.join(allowed)})"
                )

    def string(self, value: Any, key: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {kind_of(value)}")
        if not empty and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def choice(self, value: str, key: str, choices: tuple[str, ...]) -> str:
        if choices and value not in choices:
            allowed = " or ".join(repr(c) for c in choices)
            raise self.error(key, f"expected {allowed}, got {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {kind_of(value)}")
        return value

    def number(self, value: Any, key: str, *, low: float, high: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {kind_of(value)}")
        if not low <= value <= high or value != value:
            bound = f"between {low:g} and {high:g}" if high != math.inf else f"at least {low:g}"
            raise self.error(key, f"expected a number {bound}, got {value}")
        return float(value)

    def integer(self, value: Any, key: str, *, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {kind_of(value)}")
        if not low <= value <= high:
            raise self.error(key, f"expected an integer between {low} and {high}, got {value}")
        return value

    def argv(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            raise self.error(
                key,
                'expected a list of arguments like ["/usr/bin/gpioset", "gpiochip0", "17=1"], '
                "not a string: no shell ever runs",
            )
        if not isinstance(value, list) or not value:
            raise self.error(key, f"expected a non-empty list of strings, got {kind_of(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {kind_of(item)}")
            if "\x00" in item:
                raise self.error(f"{key}[{i}]", "contains a NUL byte")
            out.append(self.expand(item, f"{key}[{i}]"))
        if not out[0]:
            raise self.error(f"{key}[0]", "the program must not be empty")
        return tuple(out)

    def expand(self, item: str, key: str) -> str:
        """Replace ``{python}``, ``{scripts}`` and ``{config_dir}``; other braces stay as written
        (awk and jq programs have plenty), but a near miss like ``{script}`` is an error."""
        for name in re.findall(r"\{([A-Za-z_]+)\}", item):
            if name not in self.placeholders:
                close = difflib.get_close_matches(name, list(self.placeholders), n=1, cutoff=0.75)
                if close:
                    raise self.error(
                        key, f"unknown placeholder {{{name}}}; did you mean {{{close[0]}}}?"
                    )
        for name, value in self.placeholders.items():
            item = item.replace("{" + name + "}", value)
        return item

    def roles(self, value: Any, key: str) -> frozenset[Role]:
        if not isinstance(value, list) or not value:
            raise self.error(key, 'expected a non-empty list of roles like ["admin", "user"]')
        roles = set()
        for i, item in enumerate(value):
            try:
                roles.add(Role(item))
            except ValueError:
                allowed = ", ".join(r.value for r in Role)
                raise self.error(
                    f"{key}[{i}]", f"unknown role {item!r} (roles: {allowed})"
                ) from None
        return frozenset(roles)

    def enum(self, value: Any, key: str, kind: type[StrEnum]) -> Any:
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            raise self.error(key, f"expected one of {allowed}, got {value!r}") from None

    def state_dir(self, value: Any, key: str) -> Path | None:
        """A directory; an empty (or false) value means the default one."""
        return Path(self.string(value, key)) if value else None


def _without_none(hint: Any) -> Any:
    """``X`` for ``X | None`` (optional keys are read as ``X`` when present)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def kind_of(value: Any) -> str:
    """A TOML value's kind, as the error messages name it."""
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
