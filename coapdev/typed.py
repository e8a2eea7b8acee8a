"""Typed resources: what a resource is (a switch, a sensor, ...) to a home-automation client.

A device says it in ``/.well-known/core`` with link attributes
(docs/protocol.md, 4.6).  This module builds those attributes on the device
and reads them, and the states of such resources, on the client, without
any I/O, so that every client (the Home Assistant integration among them)
reads them the same way.  Nothing here raises on a strange state: what
cannot be read is ``None`` ("unknown"), never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .const import (
    IF_ACTUATOR,
    IF_SENSOR,
    LINK_DEVICE_CLASS,
    LINK_UNIT,
    LINK_VALUE_KEY,
    RT_KIND_PREFIX,
    SENSOR_VALUE_KEY,
    Key,
    ResourceKind,
)
from .errors import PayloadError

#: The interface description (``if=``) of each kind.
KIND_INTERFACE: Mapping[ResourceKind, str] = {
    ResourceKind.SWITCH: IF_ACTUATOR,
    ResourceKind.LIGHT: IF_ACTUATOR,
    ResourceKind.BUTTON: IF_ACTUATOR,
    ResourceKind.SENSOR: IF_SENSOR,
    ResourceKind.BINARY_SENSOR: IF_SENSOR,
}
#: Kinds whose state is on/off.
ON_OFF_KINDS = frozenset({ResourceKind.SWITCH, ResourceKind.LIGHT, ResourceKind.BINARY_SENSOR})
#: Kinds that have a state at all (a button has none: it is only pressed).
STATEFUL_KINDS = ON_OFF_KINDS | {ResourceKind.SENSOR}

#: A client reads at most this many typed resources of one device; the rest are
#: ignored (each becomes an entity and an observation on the client).
MAX_TYPED_RESOURCES = 256
#: Longest title, unit, device class or value key a client keeps, in characters.
MAX_ATTRIBUTE_CHARS = 100
#: Longest text state a client keeps, in characters (Home Assistant's limit).
MAX_TEXT_STATE_CHARS = 255


# --- device side ----------------------------------------------------------------------


def add_link_attributes(
    links: dict[str, Any],
    kind: ResourceKind,
    *,
    unit: str = "",
    device_class: str = "",
    value_key: str = "",
) -> dict[str, Any]:
    """Add a typed resource's attributes to a resource's link description.

    ``rt`` keeps the resource's own type and gains ``coapdev.<kind>`` (RFC 6690
    allows several, space separated), so older clients see what they saw before.
    """
    types = str(links.get("rt", "")).split()
    kind_type = RT_KIND_PREFIX + kind.value
    if kind_type not in types:
        types.append(kind_type)
    links["rt"] = " ".join(types)
    links["if"] = KIND_INTERFACE[kind]
    for name, value in ((LINK_UNIT, unit), (LINK_DEVICE_CLASS, device_class)):
        if value:
            links[name] = value
    if value_key:
        links[LINK_VALUE_KEY] = value_key
    return links


# --- client side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypedResource:
    """One typed resource as a device lists it."""

    path: str
    kind: ResourceKind
    title: str = ""
    unit: str = ""
    device_class: str = ""
    value_key: str = ""
    observable: bool = False

    @property
    def has_state(self) -> bool:
        return self.kind in STATEFUL_KINDS


def parse_typed_resources(link_format: str) -> list[TypedResource]:
    """The typed resources in a ``/.well-known/core`` listing, in its order.

    Links without a ``coapdev.<kind>`` resource type are not typed and are
    left out, as are duplicates of a path and everything past
    :data:`MAX_TYPED_RESOURCES`.  Raises PayloadError if the text is not
    link-format at all.
    """
    from aiocoap.util.linkformat import parse

    try:
        links = parse(link_format).links
    except Exception as exc:  # the vendored parser raises several types
        raise PayloadError(f"malformed link-format: {exc}") from None
    found: list[TypedResource] = []
    seen: set[str] = set()
    for link in links:
        attributes: dict[str, str | None] = {}
        for name, value in link.attr_pairs:
            attributes.setdefault(str(name), value)
        kind = _kind(attributes.get("rt"))
        path = str(link.href)
        if kind is None or not path.startswith("/") or path in seen:
            continue
        seen.add(path)
        found.append(
            TypedResource(
                path=path,
                kind=kind,
                title=_text(attributes.get("title")),
                unit=_text(attributes.get(LINK_UNIT)),
                device_class=_text(attributes.get(LINK_DEVICE_CLASS)),
                value_key=_text(attributes.get(LINK_VALUE_KEY)),
                observable="obs" in attributes,
            )
        )
        if len(found) >= MAX_TYPED_RESOURCES:
            break
    return found


def _kind(resource_types: str | None) -> ResourceKind | None:
    for resource_type in (resource_types or "").split():
        if resource_type.startswith(RT_KIND_PREFIX):
            try:
                return ResourceKind(resource_type.removeprefix(RT_KIND_PREFIX))
            except ValueError:
                continue
    return None


def _text(value: str | None) -> str:
    if not value:
        return ""
    printable = "".join(c for c in str(value) if c.isprintable())
    return printable.strip()[:MAX_ATTRIBUTE_CHARS]


def switch_state(value: Any, value_key: str = "") -> bool | None:
    """On/off from a state: ``{"on": bool}`` (or the ``value_key`` member), a
    bool, 0/1, or the text on/off/true/false/1/0; None if it is none of these."""
    if isinstance(value, Mapping):
        value = value.get(value_key or Key.ON.value)
    if isinstance(value, bytes):
        value = _bytes_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("on", "true", "1"):
            return True
        if word in ("off", "false", "0"):
            return False
    return None


def sensor_value(value: Any, value_key: str = "") -> float | int | str | None:
    """A sensor's value from a state: a number, the ``value_key`` member of a map
    (``value`` if none is named), or text (a number in text is a number).

    Not-a-number and infinities are None; text is cut to :data:`MAX_TEXT_STATE_CHARS`.
    """
    if isinstance(value, Mapping):
        value = value.get(value_key or SENSOR_VALUE_KEY)
    if isinstance(value, bytes):
        value = _bytes_text(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return text[:MAX_TEXT_STATE_CHARS]
        return number if math.isfinite(number) else None
    return None


def _bytes_text(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None
