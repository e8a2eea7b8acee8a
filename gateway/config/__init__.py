"""The gateway's configuration: one TOML file, validated on load.

Every error names the file, the key (``resource[2].put.run``) and what was
expected, and unknown keys are errors (with a suggestion), so a typo never
silently changes behaviour.  See docs/gateway.md for every key.

Configuration as data: each section is a dataclass in :mod:`.schema` whose
fields carry their default, bounds and help (:mod:`.settings`); one generic
reader (:mod:`.reader`) checks every section by them, :mod:`.resource` adds
the rules that tie a resource's keys together, :mod:`.load` reads the file.
"""

from __future__ import annotations

from .load import (
    DEFAULT_CONFIG_NAME,
    default_config_text,
    load_config,
    load_default_config,
    parse_config,
)
from .reader import scripts_dir
from .schema import (
    DEFAULT_MAX_PENDING,
    MAX_TYPED_ATTRIBUTE_CHARS,
    METHODS,
    SECTIONS,
    DtlsConfig,
    GatewayConfig,
    InputMode,
    LimitsConfig,
    MethodConfig,
    ObserveConfig,
    OnboardingConfig,
    OutputFormat,
    ResourceConfig,
)
from .settings import Setting, setting

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_MAX_PENDING",
    "MAX_TYPED_ATTRIBUTE_CHARS",
    "METHODS",
    "SECTIONS",
    "DtlsConfig",
    "GatewayConfig",
    "InputMode",
    "LimitsConfig",
    "MethodConfig",
    "ObserveConfig",
    "OnboardingConfig",
    "OutputFormat",
    "ResourceConfig",
    "Setting",
    "default_config_text",
    "load_config",
    "load_default_config",
    "parse_config",
    "scripts_dir",
    "setting",
]
