"""Reading ``[[resource]]`` tables: the keys by their settings, then the rules
that tie keys together (a handler or scripts, a kind and the methods it needs)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from coapdev.const import (
    PATH_CLIENTS,
    PATH_DEVICE,
    PATH_ONBOARD,
    PATH_REKEY,
    PATH_TRADFRI_DEVICES,
    PATH_TRADFRI_GROUPS,
    PATH_TRADFRI_ONBOARD,
    PATH_WELL_KNOWN_CORE,
    ResourceKind,
)

from .reader import Reader
from .schema import (
    MAX_TYPED_ATTRIBUTE_CHARS,
    METHODS,
    MethodConfig,
    ObserveConfig,
    OutputFormat,
    ResourceConfig,
)
from .settings import key_names

#: Kinds that may carry each typed attribute.
_KINDS_WITH = {
    "unit": frozenset({ResourceKind.SENSOR}),
    "device_class": frozenset(
        {ResourceKind.SWITCH, ResourceKind.SENSOR, ResourceKind.BINARY_SENSOR, ResourceKind.BUTTON}
    ),
    "value_key": frozenset(
        {ResourceKind.SWITCH, ResourceKind.LIGHT, ResourceKind.SENSOR, ResourceKind.BINARY_SENSOR}
    ),
}
#: First path segments (or two) served by built-in resources.
_RESERVED = {
    PATH_ONBOARD,
    PATH_DEVICE,
    PATH_CLIENTS,
    PATH_REKEY,
    PATH_WELL_KNOWN_CORE[:1],
    PATH_TRADFRI_ONBOARD[:1],  # Tradfri: onboarding and gateway information
    PATH_TRADFRI_DEVICES,
    PATH_TRADFRI_GROUPS,
}


class ResourceReader(Reader):
    """A :class:`Reader` that also knows the resource tables."""

    def resource(self, value: Any, key: str) -> ResourceConfig:
        t = self.table(value, key)
        self.known(t, key, key_names(ResourceConfig) + METHODS)
        if "path" not in t:
            raise self.error(f"{key}.path", 'missing: every resource needs a path like "/light"')
        path = self.path(t["path"], f"{key}.path")
        handled = "handler" in t
        if handled:
            self.argv(t["handler"], f"{key}.handler")
        if not handled and "max_pending" in t:
            raise self.error(f"{key}.max_pending", "bounds a handler's requests: needs handler")
        if handled and "concurrency" in t:
            raise self.error(
                f"{key}.concurrency",
                "a handler takes up to max_pending requests at once; concurrency is for run",
            )
        res = self.section(ResourceConfig, t, key, extra=METHODS, given={"path": path})
        methods = tuple(
            (method.upper(), self.method(t[method], f"{key}.{method}", res.timeout_s, handled))
            for method in METHODS
            if method in t
        )
        self.check_methods(res, dict(methods), t, key)
        return dataclasses.replace(res, methods=methods)

    def check_methods(
        self,
        res: ResourceConfig,
        methods: Mapping[str, MethodConfig],
        t: Mapping[str, Any],
        key: str,
    ) -> None:
        """What the resource's other keys need of its methods."""
        if "max_age_s" in t and "GET" not in methods:
            raise self.error(f"{key}.max_age_s", "caches GET answers: needs get")
        observe = res.observe
        if not methods and observe is None:
            raise self.error(key, "defines no method (get, put, post, delete) and no observe")
        if observe is not None and observe.interval_s is not None and "GET" not in methods:
            raise self.error(f"{key}.observe.interval_s", "needs a get script to poll")
        self.typed(t, key, res.kind, res.output)
        if res.kind is not None:
            self.kind_methods(res.kind, methods, observe, key)

    def typed(
        self, t: Mapping[str, Any], key: str, kind: ResourceKind | None, output: OutputFormat
    ) -> None:
        """The typed attributes must fit the resource's kind (and output)."""
        for name, kinds in _KINDS_WITH.items():
            if name not in t or kind in kinds:
                continue
            allowed = ", ".join(sorted(k.value for k in kinds))
            if len(kinds) == 1:
                problem = f'needs kind = "{allowed}"'
            elif kind is None:
                problem = f"needs a kind ({allowed}) to mean anything"
            else:
                problem = f"does not apply to a {kind.value} (only to {allowed})"
            raise self.error(f"{key}.{name}", problem)
        if "value_key" in t and output not in (OutputFormat.JSON, OutputFormat.CBOR):
            raise self.error(
                f"{key}.value_key", 'names a map member: needs output = "json" or "cbor"'
            )

    def kind_methods(
        self,
        kind: ResourceKind,
        methods: Mapping[str, MethodConfig],
        observe: ObserveConfig | None,
        key: str,
    ) -> None:
        """A kind promises clients what they can do; the scripts must be there for it."""
        readable = "GET" in methods or (observe is not None and observe.watch is not None)
        if kind is ResourceKind.BUTTON:
            if "POST" not in methods:
                raise self.error(f"{key}.kind", "a button needs a post script (pressing it)")
            return
        if kind in (ResourceKind.SWITCH, ResourceKind.LIGHT) and "PUT" not in methods:
            raise self.error(f"{key}.kind", f"a {kind.value} needs a put script (on/off)")
        if not readable:
            raise self.error(
                f"{key}.kind", f"a {kind.value} needs a get script or observe.watch (its state)"
            )

    # --- values of resource keys (named by their settings' ``read``) ---

    def resource_kind(self, value: Any, key: str) -> ResourceKind:
        kind: ResourceKind = self.enum(self.string(value, key), key, ResourceKind)
        return kind

    def attribute(self, value: Any, key: str) -> str:
        """A unit or value key: short printable text that travels in a link attribute."""
        text = self.string(value, key)
        if len(text) > MAX_TYPED_ATTRIBUTE_CHARS:
            raise self.error(key, f"at most {MAX_TYPED_ATTRIBUTE_CHARS} characters")
        if '"' in text or "\\" in text:
            raise self.error(key, "must not contain a quote or backslash")
        if not text.isprintable():
            raise self.error(key, "only printable characters")
        return text

    def device_class(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        if not re.fullmatch(rf"[a-z0-9_]{{1,{MAX_TYPED_ATTRIBUTE_CHARS}}}", text):
            raise self.error(
                key,
                f"expected lower-case letters, digits and _ (at most "
                f'{MAX_TYPED_ATTRIBUTE_CHARS}), like "temperature", got {text!r}',
            )
        return text

    def path(self, value: Any, key: str) -> tuple[str, ...]:
        text = self.string(value, key)
        if not text.startswith("/"):
            raise self.error(key, f"must start with '/', got {text!r}")
        segments = tuple(text.strip("/").split("/"))
        if not segments or any(not s for s in segments):
            raise self.error(key, f"{text!r} has an empty segment")
        if segments[:1] in _RESERVED or segments[:2] in _RESERVED:
            raise self.error(key, f"{text!r} is reserved for a built-in resource")
        return segments

    def method(
        self, value: Any, key: str, default_timeout_s: float, handled: bool = False
    ) -> MethodConfig:
        t = self.table(value, key)
        self.known(t, key, key_names(MethodConfig))
        if handled and "run" in t:
            raise self.error(f"{key}.run", "the resource's handler answers it: remove run")
        if not handled and "run" not in t:
            raise self.error(
                f"{key}.run",
                "missing: the command to run, as a list of arguments (or a handler for the "
                "resource)",
            )
        return self.section(MethodConfig, t, key, defaults={"timeout_s": default_timeout_s})

    def observe(self, value: Any, key: str) -> ObserveConfig:
        t = self.table(value, key)
        self.known(t, key, key_names(ObserveConfig))
        if ("interval_s" in t) == ("watch" in t):
            raise self.error(key, "set exactly one of interval_s (poll the get script) or watch")
        return self.section(ObserveConfig, t, key)
