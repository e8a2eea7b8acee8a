"""Config keys as data: each key is a dataclass field that carries its rules.

A field made with :func:`setting` holds its default, its bounds, its unit and
a one-line help in ``metadata``; the generic reader (``Reader.section``) and
the documentation check read them from there, so a key is written once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The metadata entry that holds a field's :class:`Setting`.
SETTING = "setting"


@dataclass(frozen=True)
class Setting:
    """What one config key accepts, and what it means."""

    doc: str
    #: Bounds of a number or an integer (an integer needs both).
    low: float | None = None
    high: float | None = None
    unit: str = ""
    #: The key in the TOML file when it is not the field's name.
    key: str = ""
    #: A string may be empty (or only blanks).
    empty: bool = False
    #: A string must be one of these.
    choices: tuple[str, ...] = ()
    #: The reader's method that checks and converts the value, when the
    #: field's type does not say (``Reader.attribute``, ``Reader.roles``, ...).
    read: str = ""


def setting(
    default: Any,
    doc: str,
    *,
    low: float | None = None,
    high: float | None = None,
    unit: str = "",
    key: str = "",
    empty: bool = False,
    choices: tuple[str, ...] = (),
    read: str = "",
) -> Any:
    """A dataclass field that is a config key (its default, bounds and help)."""
    rule = Setting(
        doc=doc,
        low=low,
        high=high,
        unit=unit,
        key=key,
        empty=empty,
        choices=choices,
        read=read,
    )
    if isinstance(default, list | dict | set):
        raise TypeError("mutable default: use a tuple or frozenset")
    return dataclasses.field(default=default, metadata={SETTING: rule})


@dataclass(frozen=True)
class Key:
    """One config key of a section: its name in the file, field, type and rule."""

    name: str
    field: dataclasses.Field[Any]
    hint: Any
    rule: Setting

    @property
    def default(self) -> Any:
        return self.field.default

    @property
    def high_or_inf(self) -> float:
        return math.inf if self.rule.high is None else self.rule.high


@functools.cache
def keys_of(cls: type) -> tuple[Key, ...]:
    """The config keys of a section's dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    return tuple(
        Key(f.metadata[SETTING].key or f.name, f, hints[f.name], f.metadata[SETTING])
        for f in dataclasses.fields(cls)
        if SETTING in f.metadata
    )


def key_names(cls: type) -> tuple[str, ...]:
    """The keys of a section, in the order the error messages list them."""
    return tuple(k.name for k in keys_of(cls))


def default_of(owner: Callable[..., Any], name: str) -> Any:
    """The default of ``owner``'s parameter ``name``: the library's value, so the
    gateway's default for the same bound is defined in one place (coapdev)."""
    default = inspect.signature(owner).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__name__}({name}) has no default")
    return default
