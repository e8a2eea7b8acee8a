"""The gateway's configuration: one TOML file, validated on load.

Every error names the file, the key (``resource[2].put.run``) and what was
expected, and unknown keys are errors (with a suggestion), so a typo never
silently changes behaviour.  See docs/gateway.md for every key.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from coapdev.const import DEFAULT_COAPS_PORT, ResourceKind, Role
from coapdev.errors import ConfigError
from coapdev.server import budget

METHODS = ("get", "put", "post", "delete")
#: Longest unit, device class and value key of a typed resource, in characters.
MAX_TYPED_ATTRIBUTE_CHARS = 32
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
#: Keys that are easy to reach for but are spelled otherwise here.
_KEY_HINTS = {"name": "the display name is 'title'"}
DEFAULT_CONFIG_NAME = "<built-in default config>"


class OutputFormat(StrEnum):
    """What a script prints, and so the content format of the response."""

    TEXT = "text"  # text/plain (0)
    JSON = "json"  # application/json (50); CBOR (60) when the client Accepts it
    CBOR = "cbor"  # application/cbor (60)
    OCTETS = "octets"  # application/octet-stream (42)


class InputMode(StrEnum):
    """How a request payload reaches a script's stdin."""

    RAW = "raw"  # verbatim
    JSON = "json"  # CBOR and JSON payloads as JSON text; anything else verbatim


#: Requests a persistent handler may hold unanswered, by default (``max_pending``).
DEFAULT_MAX_PENDING = 64


@dataclass(frozen=True)
class MethodConfig:
    #: The script to run; empty when the resource's handler answers the method.
    argv: tuple[str, ...]
    roles: frozenset[Role]
    timeout_s: float


@dataclass(frozen=True)
class ObserveConfig:
    interval_s: float | None = None
    watch: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ResourceConfig:
    path: tuple[str, ...]
    methods: tuple[tuple[str, MethodConfig], ...]
    output: OutputFormat = OutputFormat.TEXT
    input: InputMode = InputMode.RAW
    timeout_s: float = 10.0
    max_output_bytes: int = 64 * 1024
    max_input_bytes: int = 1024 * 1024
    concurrency: int = 1
    observe: ObserveConfig | None = None
    title: str = ""
    #: The output is the same whoever asks (it does not read COAPDEV_CLIENT_*):
    #: observed and cached output is then shared between clients whose query
    #: and payload are the same.  Default: each client has its own.
    shared: bool = False
    #: What the resource is to home-automation clients (docs/protocol.md, 4.6).
    kind: ResourceKind | None = None
    unit: str = ""
    device_class: str = ""
    value_key: str = ""
    #: A long-running process that answers every method over its stdin and
    #: stdout (docs/gateway.md, "Persistent handlers"), instead of a script per request.
    handler: tuple[str, ...] | None = None
    #: Requests the handler may hold unanswered; beyond, 5.03 with Max-Age.
    max_pending: int = DEFAULT_MAX_PENDING
    #: A GET answer is kept and served this long (with Max-Age and an ETag).
    max_age_s: float | None = None

    @property
    def method_map(self) -> dict[str, MethodConfig]:
        return dict(self.methods)

    @property
    def path_text(self) -> str:
        return "/" + "/".join(self.path)


@dataclass(frozen=True)
class OnboardingConfig:
    #: Onboarding stays open this long after first start and after `pair`.
    window_s: float = 15 * 60.0
    always_open: bool = False
    #: A command run for as long as the gateway runs; each line it prints
    #: opens onboarding for window_s (a pairing button).
    button: tuple[str, ...] | None = None
    max_clients: int = 1000
    #: Clients unused this many days are removed; 0 keeps them forever.
    expire_after_days: float = 90.0
    #: Failed handshakes or onboarding attempts allowed per source address
    #: in a burst, and refilled per minute; beyond it the source is ignored.
    attempts_burst: int = 10
    attempts_per_minute: float = 6.0


@dataclass(frozen=True)
class LimitsConfig:
    max_sessions: int = 5000
    idle_timeout_s: float = 3600.0
    handshake_timeout_s: float = 20.0
    max_handshakes: int = 256
    max_observations_per_session: int = budget.MAX_OBSERVATIONS_PER_SESSION
    max_uploads_per_resource: int = 32
    max_sessions_per_host: int = budget.MAX_SESSIONS_PER_HOST
    max_sessions_per_identity: int = budget.MAX_SESSIONS_PER_IDENTITY
    max_exchanges_per_session: int = budget.MAX_EXCHANGES_PER_SESSION
    max_exchanges: int = budget.MAX_EXCHANGES
    max_observations_per_client: int = budget.MAX_OBSERVATIONS_PER_CLIENT
    max_observations_per_host: int = budget.MAX_OBSERVATIONS_PER_HOST
    max_observations: int = budget.MAX_OBSERVATIONS
    #: Log lines one call site (the request log: one client) may write at once,
    #: and per minute after that; the rest are counted and summarised.
    log_burst: int = 20
    log_lines_per_minute: float = 20.0
    #: State changes (onboarding, rekey, rename, role, revoke) one client, and
    #: one host, may ask for at once, and per minute after that (4.29 beyond).
    changes_burst: int = 20
    changes_per_minute: float = 10.0
    #: State changes all clients together may ask for per second (5.03 beyond):
    #: the bound on the journal writes (fsyncs) clients can cause.
    device_changes_per_s: float = 10.0
    #: The audit log's two files together, at most.
    audit_max_bytes: int = 4 * 2**20
    #: The audit log pauses while the state directory has less than this free,
    #: which keeps that room for credential changes.
    audit_reserve_bytes: int = 8 * 2**20
    #: Refusal lines per event and source host per minute (10 times that in all).
    audit_refusals_per_minute: float = 10.0


#: [limits] keys that are counts of things held at once (validated alike).
_COUNT_LIMITS = (
    "max_sessions_per_host",
    "max_sessions_per_identity",
    "max_exchanges_per_session",
    "max_exchanges",
    "max_observations_per_client",
    "max_observations_per_host",
    "max_observations",
)


@dataclass(frozen=True)
class DtlsConfig:
    """Which TLS extensions a client's ClientHello must offer (docs/security.md).

    Off by default: Tradfri-class client stacks offer neither, and with PSK
    only and no renegotiation the attacks these extensions stop do not apply.
    Whatever a client offers is used either way.
    """

    require_extended_master_secret: bool = False
    require_renegotiation_info: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    source: str
    host: str = "::"
    port: int = DEFAULT_COAPS_PORT
    state_dir: Path | None = None
    name: str = ""
    demo_light: bool = False
    advertise: bool = True
    transport: str = "coapdev"
    onboarding: OnboardingConfig = field(default_factory=OnboardingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    dtls: DtlsConfig = field(default_factory=DtlsConfig)
    resources: tuple[ResourceConfig, ...] = ()


# --- loading ------------------------------------------------------------------------


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


def scripts_dir() -> Path:
    return Path(str(importlib_resources.files("gateway").joinpath("bin")))


def parse_config(raw: bytes, source: Path | str, *, config_dir: Path | None) -> GatewayConfig:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return _Reader(source, config_dir).gateway(doc)


class _Reader:
    def __init__(self, source: Path | str, config_dir: Path | None) -> None:
        self.source = source
        self.placeholders = {
            "python": sys.executable,
            "scripts": str(scripts_dir()),
            "config_dir": str(config_dir) if config_dir is not None else str(scripts_dir()),
        }

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, key, problem)

    # --- typed accessors ---

    def table(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        return value

    def known(self, table: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                if name in _KEY_HINTS:
                    hint = f"; {_KEY_HINTS[name]}"
                where = f"{key}.{name}" if key else name
                raise self.error(where, f"unknown key{hint} (allowed: {', '.join(allowed)})")

    def string(self, value: Any, key: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_kind(value)}")
        if not empty and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def number(self, value: Any, key: str, *, low: float, high: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {_kind(value)}")
        if not low <= value <= high or value != value:
            bound = f"between {low:g} and {high:g}" if high != math.inf else f"at least {low:g}"
            raise self.error(key, f"expected a number {bound}, got {value}")
        return float(value)

    def integer(self, value: Any, key: str, *, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_kind(value)}")
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
            raise self.error(key, f"expected a non-empty list of strings, got {_kind(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
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

    # --- sections ---

    def gateway(self, doc: Mapping[str, Any]) -> GatewayConfig:
        self.known(doc, "", ("device", "onboarding", "limits", "dtls", "resource"))
        device = self.table(doc.get("device", {}), "device")
        self.known(
            device,
            "device",
            ("host", "port", "state_dir", "name", "demo_light", "advertise", "transport"),
        )
        host = self.string(device.get("host", "::"), "device.host")
        port = self.integer(
            device.get("port", DEFAULT_COAPS_PORT), "device.port", low=1, high=65535
        )
        state_dir = device.get("state_dir")
        transport = self.string(device.get("transport", "coapdev"), "device.transport")
        if transport not in ("coapdev", "aiocoap"):
            raise self.error(
                "device.transport", f"expected 'coapdev' or 'aiocoap', got {transport!r}"
            )
        resources_raw = doc.get("resource", [])
        if not isinstance(resources_raw, list):
            raise self.error("resource", "expected [[resource]] tables")
        resources = tuple(self.resource(r, f"resource[{i}]") for i, r in enumerate(resources_raw))
        seen: dict[tuple[str, ...], int] = {}
        for i, res in enumerate(resources):
            if res.path in seen:
                raise self.error(
                    f"resource[{i}].path",
                    f"{res.path_text} is already used by resource[{seen[res.path]}]",
                )
            seen[res.path] = i
        demo_light = self.boolean(device.get("demo_light", False), "device.demo_light")
        if demo_light and ("light",) in seen:
            raise self.error(
                f"resource[{seen[('light',)]}].path",
                "/light is taken by the built-in demo light (device.demo_light = true)",
            )
        return GatewayConfig(
            source=str(self.source),
            host=host,
            port=port,
            state_dir=Path(self.string(state_dir, "device.state_dir")) if state_dir else None,
            name=self.string(device.get("name", ""), "device.name", empty=True),
            demo_light=demo_light,
            advertise=self.boolean(device.get("advertise", True), "device.advertise"),
            transport=transport,
            onboarding=self.onboarding(doc.get("onboarding", {})),
            limits=self.limits(doc.get("limits", {})),
            dtls=self.dtls(doc.get("dtls", {})),
            resources=resources,
        )

    def onboarding(self, value: Any) -> OnboardingConfig:
        t = self.table(value, "onboarding")
        self.known(
            t,
            "onboarding",
            (
                "window_s",
                "always_open",
                "button",
                "max_clients",
                "expire_after_days",
                "attempts_burst",
                "attempts_per_minute",
            ),
        )
        d = OnboardingConfig()
        return OnboardingConfig(
            window_s=self.number(t.get("window_s", d.window_s), "onboarding.window_s", low=1),
            always_open=self.boolean(t.get("always_open", d.always_open), "onboarding.always_open"),
            button=self.argv(t["button"], "onboarding.button") if "button" in t else None,
            max_clients=self.integer(
                t.get("max_clients", d.max_clients), "onboarding.max_clients", low=1, high=1_000_000
            ),
            expire_after_days=self.number(
                t.get("expire_after_days", d.expire_after_days),
                "onboarding.expire_after_days",
                low=0,
            ),
            attempts_burst=self.integer(
                t.get("attempts_burst", d.attempts_burst),
                "onboarding.attempts_burst",
                low=1,
                high=100_000,
            ),
            attempts_per_minute=self.number(
                t.get("attempts_per_minute", d.attempts_per_minute),
                "onboarding.attempts_per_minute",
                low=0.01,
            ),
        )

    def limits(self, value: Any) -> LimitsConfig:
        t = self.table(value, "limits")
        self.known(
            t,
            "limits",
            (
                "max_sessions",
                "idle_timeout_s",
                "handshake_timeout_s",
                "max_handshakes",
                "max_observations_per_session",
                "max_uploads_per_resource",
                *_COUNT_LIMITS,
                "log_burst",
                "log_lines_per_minute",
                "changes_burst",
                "changes_per_minute",
                "device_changes_per_s",
                "audit_max_bytes",
                "audit_reserve_bytes",
                "audit_refusals_per_minute",
            ),
        )
        d = LimitsConfig()
        counts = {
            name: self.integer(
                t.get(name, getattr(d, name)), f"limits.{name}", low=1, high=1_000_000
            )
            for name in _COUNT_LIMITS
        }
        return LimitsConfig(
            **counts,
            max_sessions=self.integer(
                t.get("max_sessions", d.max_sessions), "limits.max_sessions", low=1, high=1_000_000
            ),
            idle_timeout_s=self.number(
                t.get("idle_timeout_s", d.idle_timeout_s), "limits.idle_timeout_s", low=1
            ),
            handshake_timeout_s=self.number(
                t.get("handshake_timeout_s", d.handshake_timeout_s),
                "limits.handshake_timeout_s",
                low=1,
            ),
            max_handshakes=self.integer(
                t.get("max_handshakes", d.max_handshakes),
                "limits.max_handshakes",
                low=1,
                high=1_000_000,
            ),
            max_observations_per_session=self.integer(
                t.get("max_observations_per_session", d.max_observations_per_session),
                "limits.max_observations_per_session",
                low=0,
                high=1_000_000,
            ),
            max_uploads_per_resource=self.integer(
                t.get("max_uploads_per_resource", d.max_uploads_per_resource),
                "limits.max_uploads_per_resource",
                low=1,
                high=1_000_000,
            ),
            log_burst=self.integer(
                t.get("log_burst", d.log_burst), "limits.log_burst", low=1, high=1_000_000
            ),
            log_lines_per_minute=self.number(
                t.get("log_lines_per_minute", d.log_lines_per_minute),
                "limits.log_lines_per_minute",
                low=0.01,
            ),
            changes_burst=self.integer(
                t.get("changes_burst", d.changes_burst),
                "limits.changes_burst",
                low=1,
                high=1_000_000,
            ),
            changes_per_minute=self.number(
                t.get("changes_per_minute", d.changes_per_minute),
                "limits.changes_per_minute",
                low=0.01,
            ),
            device_changes_per_s=self.number(
                t.get("device_changes_per_s", d.device_changes_per_s),
                "limits.device_changes_per_s",
                low=0.01,
            ),
            audit_max_bytes=self.integer(
                t.get("audit_max_bytes", d.audit_max_bytes),
                "limits.audit_max_bytes",
                low=4096,
                high=2**40,
            ),
            audit_reserve_bytes=self.integer(
                t.get("audit_reserve_bytes", d.audit_reserve_bytes),
                "limits.audit_reserve_bytes",
                low=0,
                high=2**40,
            ),
            audit_refusals_per_minute=self.number(
                t.get("audit_refusals_per_minute", d.audit_refusals_per_minute),
                "limits.audit_refusals_per_minute",
                low=1,
            ),
        )

    def dtls(self, value: Any) -> DtlsConfig:
        t = self.table(value, "dtls")
        self.known(t, "dtls", ("require_extended_master_secret", "require_renegotiation_info"))
        d = DtlsConfig()
        return DtlsConfig(
            require_extended_master_secret=self.boolean(
                t.get("require_extended_master_secret", d.require_extended_master_secret),
                "dtls.require_extended_master_secret",
            ),
            require_renegotiation_info=self.boolean(
                t.get("require_renegotiation_info", d.require_renegotiation_info),
                "dtls.require_renegotiation_info",
            ),
        )

    def resource(self, value: Any, key: str) -> ResourceConfig:
        t = self.table(value, key)
        self.known(
            t,
            key,
            (
                "path",
                "title",
                "output",
                "input",
                "timeout_s",
                "max_output_bytes",
                "max_input_bytes",
                "concurrency",
                "observe",
                "shared",
                "kind",
                "unit",
                "device_class",
                "value_key",
                "handler",
                "max_pending",
                "max_age_s",
                *METHODS,
            ),
        )
        if "path" not in t:
            raise self.error(f"{key}.path", 'missing: every resource needs a path like "/light"')
        path = self.path(t["path"], f"{key}.path")
        d = ResourceConfig(path=path, methods=())
        timeout_s = self.number(
            t.get("timeout_s", d.timeout_s), f"{key}.timeout_s", low=0.05, high=3600
        )
        handler = self.argv(t["handler"], f"{key}.handler") if "handler" in t else None
        if handler is None and "max_pending" in t:
            raise self.error(f"{key}.max_pending", "bounds a handler's requests: needs handler")
        if handler is not None and "concurrency" in t:
            raise self.error(
                f"{key}.concurrency",
                "a handler takes up to max_pending requests at once; concurrency is for run",
            )
        methods = []
        for method in METHODS:
            if method in t:
                methods.append(
                    (
                        method.upper(),
                        self.method(t[method], f"{key}.{method}", timeout_s, handler is not None),
                    )
                )
        if "max_age_s" in t and "GET" not in dict(methods):
            raise self.error(f"{key}.max_age_s", "caches GET answers: needs get")
        observe = self.observe(t["observe"], f"{key}.observe") if "observe" in t else None
        if not methods and observe is None:
            raise self.error(key, "defines no method (get, put, post, delete) and no observe")
        if observe is not None and observe.interval_s is not None and "GET" not in dict(methods):
            raise self.error(f"{key}.observe.interval_s", "needs a get script to poll")
        output = self.enum(t.get("output", d.output.value), f"{key}.output", OutputFormat)
        kind = self.typed(t, key, output)
        if kind is not None:
            self.kind_methods(kind, dict(methods), observe, key)
        return ResourceConfig(
            path=path,
            methods=tuple(methods),
            output=output,
            input=self.enum(t.get("input", d.input.value), f"{key}.input", InputMode),
            timeout_s=timeout_s,
            max_output_bytes=self.integer(
                t.get("max_output_bytes", d.max_output_bytes),
                f"{key}.max_output_bytes",
                low=1,
                high=64 * 2**20,
            ),
            max_input_bytes=self.integer(
                t.get("max_input_bytes", d.max_input_bytes),
                f"{key}.max_input_bytes",
                low=0,
                high=64 * 2**20,
            ),
            concurrency=self.integer(
                t.get("concurrency", d.concurrency), f"{key}.concurrency", low=1, high=1024
            ),
            observe=observe,
            title=self.string(t.get("title", ""), f"{key}.title", empty=True),
            shared=self.boolean(t.get("shared", d.shared), f"{key}.shared"),
            kind=kind,
            unit=self.attribute(t["unit"], f"{key}.unit") if "unit" in t else "",
            device_class=(
                self.device_class(t["device_class"], f"{key}.device_class")
                if "device_class" in t
                else ""
            ),
            value_key=self.attribute(t["value_key"], f"{key}.value_key")
            if "value_key" in t
            else "",
            handler=handler,
            max_pending=self.integer(
                t.get("max_pending", d.max_pending), f"{key}.max_pending", low=1, high=4096
            ),
            max_age_s=self.number(t["max_age_s"], f"{key}.max_age_s", low=1, high=86400)
            if "max_age_s" in t
            else None,
        )

    def typed(self, t: Mapping[str, Any], key: str, output: OutputFormat) -> ResourceKind | None:
        """The resource's kind, after checking that its typed attributes fit it."""
        kind = None
        if "kind" in t:
            kind = self.enum(self.string(t["kind"], f"{key}.kind"), f"{key}.kind", ResourceKind)
        for name, kinds in _KINDS_WITH.items():
            if name not in t:
                continue
            if kind in kinds:
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
        return kind

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
        reserved = {
            ("onboard",),
            ("device",),
            ("clients",),
            ("rekey",),
            (".well-known",),
            ("15011",),  # Tradfri: onboarding and gateway information
            ("15001",),  # Tradfri: devices
            ("15004",),  # Tradfri: groups
        }
        if segments[:1] in reserved or segments[:2] in reserved:
            raise self.error(key, f"{text!r} is reserved for a built-in resource")
        return segments

    def method(
        self, value: Any, key: str, default_timeout_s: float, handled: bool = False
    ) -> MethodConfig:
        t = self.table(value, key)
        self.known(t, key, ("run", "roles", "timeout_s"))
        if handled and "run" in t:
            raise self.error(f"{key}.run", "the resource's handler answers it: remove run")
        if not handled and "run" not in t:
            raise self.error(
                f"{key}.run",
                "missing: the command to run, as a list of arguments (or a handler for the "
                "resource)",
            )
        return MethodConfig(
            argv=self.argv(t["run"], f"{key}.run") if "run" in t else (),
            roles=self.roles(t.get("roles", ["admin", "user"]), f"{key}.roles"),
            timeout_s=self.number(
                t.get("timeout_s", default_timeout_s), f"{key}.timeout_s", low=0.05, high=3600
            ),
        )

    def observe(self, value: Any, key: str) -> ObserveConfig:
        t = self.table(value, key)
        self.known(t, key, ("interval_s", "watch"))
        if ("interval_s" in t) == ("watch" in t):
            raise self.error(key, "set exactly one of interval_s (poll the get script) or watch")
        if "interval_s" in t:
            return ObserveConfig(
                interval_s=self.number(t["interval_s"], f"{key}.interval_s", low=0.05, high=86400)
            )
        return ObserveConfig(watch=self.argv(t["watch"], f"{key}.watch"))


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
