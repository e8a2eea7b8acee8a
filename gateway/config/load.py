"""Loading a config file: TOML in, a checked :class:`GatewayConfig` out."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, TypeVar

from coapdev.const import PATH_DEMO_LIGHT
from coapdev.errors import ConfigError

from .resource import ResourceReader
from .schema import (
    SECTIONS,
    DtlsConfig,
    GatewayConfig,
    LimitsConfig,
    OnboardingConfig,
    ResourceConfig,
)

T = TypeVar("T")

DEFAULT_CONFIG_NAME = "<built-in default config>"


def load_config(path: Path | str) -> GatewayConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    return parse_config(raw, path, config_dir=path.resolve().parent)


def default_config_text() -> bytes:
    return importlib_resources.files("gateway").joinpath("default.toml").read_bytes()


def load_default_config() -> GatewayConfig:
    return parse_config(default_config_text(), DEFAULT_CONFIG_NAME, config_dir=None)


def parse_config(raw: bytes, source: Path | str, *, config_dir: Path | None) -> GatewayConfig:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return GatewayReader(source, config_dir).gateway(doc)


class GatewayReader(ResourceReader):
    """The whole file: ``[device]`` and the other sections, then the resources."""

    def gateway(self, doc: Mapping[str, Any]) -> GatewayConfig:
        self.known(doc, "", tuple(SECTIONS))
        device = self.table(doc.get("device", {}), "device")
        config = self.section(GatewayConfig, device, "device", given={"source": str(self.source)})
        return dataclasses.replace(
            config,
            resources=self.resources(doc.get("resource", []), config.demo_light),
            onboarding=self.part(OnboardingConfig, doc, "onboarding"),
            limits=self.part(LimitsConfig, doc, "limits"),
            dtls=self.part(DtlsConfig, doc, "dtls"),
        )

    def part(self, cls: type[T], doc: Mapping[str, Any], name: str) -> T:
        """One optional table of the file, read by its dataclass's settings."""
        return self.section(cls, self.table(doc.get(name, {}), name), name)

    def resources(self, value: Any, demo_light: bool) -> tuple[ResourceConfig, ...]:
        """Every ``[[resource]]``; paths are unique and leave the demo light its own."""
        if not isinstance(value, list):
            raise self.error("resource", "expected [[resource]] tables")
        resources = tuple(self.resource(r, f"resource[{i}]") for i, r in enumerate(value))
        seen: dict[tuple[str, ...], int] = {}
        for i, res in enumerate(resources):
            if res.path in seen:
                raise self.error(
                    f"resource[{i}].path",
                    f"{res.path_text} is already used by resource[{seen[res.path]}]",
                )
            seen[res.path] = i
        if demo_light and PATH_DEMO_LIGHT in seen:
            raise self.error(
                f"resource[{seen[PATH_DEMO_LIGHT]}].path",
                "/light is taken by the built-in demo light (device.demo_light = true)",
            )
        return resources
