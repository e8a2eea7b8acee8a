"""The wire-key enum has no member that is silently another member under a second name."""

from coapdev.const import Key


def test_key_has_no_aliases() -> None:
    aliases = {name: member.name for name, member in Key.__members__.items() if member.name != name}
    assert aliases == {}
