"""Typed resources in /.well-known/core: a real gateway lists what each resource is."""

from __future__ import annotations

import pytest

from coapdev.client import Client, onboard
from coapdev.const import ContentFormat, ResourceKind
from coapdev.typed import TypedResource, parse_typed_resources

pytestmark = pytest.mark.e2e

CONFIG = """
[device]
demo_light = true

[[resource]]
path = "/relay"
title = "Garden relay"
output = "json"
kind = "switch"
device_class = "outlet"
get = { run = ["echo", "{\\"on\\": false}"] }
put = { run = ["cat"] }
observe = { interval_s = 5 }

[[resource]]
path = "/cpu"
output = "json"
kind = "sensor"
unit = "°C"
device_class = "temperature"
value_key = "celsius"
get = { run = ["echo", "{\\"celsius\\": 41.5}"] }

[[resource]]
path = "/door"
kind = "binary_sensor"
device_class = "door"
get = { run = ["echo", "0"] }

[[resource]]
path = "/reboot"
kind = "button"
device_class = "restart"
post = { run = ["true"] }

[[resource]]
path = "/plain"
get = { run = ["echo", "not typed"] }
"""


def test_well_known_core_lists_kinds_units_and_classes(gateway_factory, tmp_path, run):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    gw = gateway_factory(config=config)

    async def listing() -> tuple[str, int | None]:
        creds = await onboard(gw.address, gw.factory_key(), "lister")
        async with Client(creds) as device:
            response = await device.get("/.well-known/core")
        return response.value, response.content_format

    text, content_format = run(listing())
    assert content_format == ContentFormat.LINK_FORMAT
    assert (
        '</relay>;ct="50";rt="coapdev.script coapdev.switch";obs;title="Garden relay";'
        'if="core.a";device_class="outlet";methods="GET PUT"'
    ) in text.split(",")
    assert 'unit="°C"' in text and 'device_class="temperature"' in text
    resources = {r.path: r for r in parse_typed_resources(text)}
    assert resources == {
        "/light": TypedResource("/light", ResourceKind.LIGHT, "Demo light", observable=True),
        "/relay": TypedResource(
            "/relay", ResourceKind.SWITCH, "Garden relay", device_class="outlet", observable=True
        ),
        "/cpu": TypedResource(
            "/cpu", ResourceKind.SENSOR, unit="°C", device_class="temperature", value_key="celsius"
        ),
        "/door": TypedResource("/door", ResourceKind.BINARY_SENSOR, device_class="door"),
        "/reboot": TypedResource("/reboot", ResourceKind.BUTTON, device_class="restart"),
    }
