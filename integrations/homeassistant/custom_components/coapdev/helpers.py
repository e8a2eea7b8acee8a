"""Small helpers shared by the platforms."""

from __future__ import annotations

import logging
from enum import StrEnum

from coapdev.typed import TypedResource

_LOGGER = logging.getLogger(__name__)


def device_class[C: StrEnum](classes: type[C], resource: TypedResource) -> C | None:
    """The resource's device class if Home Assistant knows it for this platform."""
    if not resource.device_class:
        return None
    try:
        return classes(resource.device_class)
    except ValueError:
        _LOGGER.info(
            "%s: device class %r is not one Home Assistant knows here; ignored",
            resource.path,
            resource.device_class,
        )
        return None
