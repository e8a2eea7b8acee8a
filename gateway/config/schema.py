"""Every section of the gateway's config, each key written once with its rules.

A field made with :func:`setting` is a key of its section (``[limits]``
``max_sessions``): its default, bounds and help live here, the reader
checks them and docs/gateway.md is tested against them.  Where the library
has the same bound (``coapdev.server.budget``, the limiters, the store and
the audit log), its default is the one used here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from coapdev.audit import AuditLimits
from coapdev.const import DEFAULT_COAPS_PORT, ResourceKind, Role
from coapdev.logsafe import RepeatLimiter
from coapdev.ratelimit import AttemptLimiter, ChangeLimiter
from coapdev.server import budget
from coapdev.store import StoreLimits

from .settings import default_of, setting

METHODS = ("get", "put", "post", "delete")
#: Longest unit, device class and value key of a typed resource, in characters.
MAX_TYPED_ATTRIBUTE_CHARS = 32
#: Requests a persistent handler may hold unanswered, by default (``max_pending``).
DEFAULT_MAX_PENDING = 64
#: Most things of one kind held at once that a count limit may allow.
_MAX_COUNT = 1_000_000
#: Largest script output and request payload a resource may allow.
_MAX_PAYLOAD_BYTES = 64 * 2**20


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


@dataclass(frozen=True)
class MethodConfig:
    """``[resource.get]`` and its siblings: one method a resource serves."""

    #: The script to run; empty when the resource's handler answers the method.
    argv: tuple[str, ...] = setting((), "the command, as a list of arguments", key="run")
    roles: frozenset[Role] = setting(
        frozenset({Role.ADMIN, Role.USER}), "roles allowed to use this method", read="roles"
    )
    #: Its default is the resource's ``timeout_s``.
    timeout_s: float = setting(10.0, "the script is killed after this long", low=0.05, high=3600)


@dataclass(frozen=True)
class ObserveConfig:
    """``[resource.observe]``: exactly one of the two."""

    interval_s: float | None = setting(
        None, "poll the get script this often while observed", low=0.05, high=86400, unit="s"
    )
    watch: tuple[str, ...] | None = setting(
        None, "a long-running command whose every line is the new state"
    )


@dataclass(frozen=True)
class ResourceConfig:
    """``[[resource]]``: a path served by scripts or a persistent handler."""

    path: tuple[str, ...] = setting((), 'e.g. "/relay"; built-in paths are reserved', read="path")
    methods: tuple[tuple[str, MethodConfig], ...] = ()
    title: str = setting("", "shown in /.well-known/core", empty=True)
    output: OutputFormat = setting(OutputFormat.TEXT, "what the scripts print")
    input: InputMode = setting(InputMode.RAW, "how the payload reaches a script's stdin")
    timeout_s: float = setting(
        10.0, "default timeout of this resource's scripts", low=0.05, high=3600, unit="s"
    )
    max_output_bytes: int = setting(
        64 * 1024, "a script printing more is killed", low=1, high=_MAX_PAYLOAD_BYTES, unit="B"
    )
    max_input_bytes: int = setting(
        1024 * 1024, "larger payloads get 4.13", low=0, high=_MAX_PAYLOAD_BYTES, unit="B"
    )
    concurrency: int = setting(1, "scripts of this resource running at once", low=1, high=1024)
    observe: ObserveConfig | None = setting(None, "makes the resource observable", read="observe")
    shared: bool = setting(
        False,
        "the output is the same whoever asks (it does not read COAPDEV_CLIENT_*), so observed "
        "and cached output is shared between clients with the same query and payload",
    )
    kind: ResourceKind | None = setting(
        None, "what the resource is to home-automation clients", read="resource_kind"
    )
    unit: str = setting("", "kind = sensor only: the unit of its value", read="attribute")
    device_class: str = setting("", "what is measured or switched", read="device_class")
    value_key: str = setting("", "the map member that holds the value", read="attribute")
    handler: tuple[str, ...] | None = setting(
        None, "a long-running command that answers every method over stdin and stdout"
    )
    max_pending: int = setting(
        DEFAULT_MAX_PENDING, "handler only: requests it holds unanswered", low=1, high=4096
    )
    max_age_s: float | None = setting(
        None, "a GET answer is kept and served this long", low=1, high=86400, unit="s"
    )

    @functools.cached_property
    def method_map(self) -> dict[str, MethodConfig]:
        """Method name to its table (looked up per request, so built once; read only)."""
        return dict(self.methods)

    @property
    def path_text(self) -> str:
        return "/" + "/".join(self.path)


@dataclass(frozen=True)
class OnboardingConfig:
    """``[onboarding]``: when new clients may join, how many, and how fast."""

    window_s: float = setting(
        15 * 60.0, "onboarding stays open this long after first start and `pair`", low=1, unit="s"
    )
    always_open: bool = setting(False, "keep onboarding open all the time")
    button: tuple[str, ...] | None = setting(
        None, "a command run as long as the gateway; each line it prints opens onboarding"
    )
    max_clients: int = setting(
        default_of(StoreLimits, "max_clients"), "most clients kept", low=1, high=_MAX_COUNT
    )
    expire_after_days: float = setting(
        90.0, "clients unused this long are removed; 0 keeps them", low=0, unit="days"
    )
    attempts_burst: int = setting(
        default_of(AttemptLimiter, "burst"),
        "failed handshakes and onboarding attempts a source may make in a burst",
        low=1,
        high=100_000,
    )
    attempts_per_minute: float = setting(
        default_of(AttemptLimiter, "per_minute"), "... and per minute after that", low=0.01
    )


def _count(default: int, doc: str, *, low: int = 1) -> int:
    """A [limits] key that counts things held at once."""
    result: int = setting(default, doc, low=low, high=_MAX_COUNT)
    return result


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: every bound on what clients can make the gateway hold or do."""

    max_sessions: int = _count(budget.MAX_SESSIONS, "concurrent DTLS sessions")
    idle_timeout_s: float = setting(
        budget.IDLE_TIMEOUT_S, "a session without traffic this long is closed", low=1, unit="s"
    )
    handshake_timeout_s: float = setting(
        budget.HANDSHAKE_TIMEOUT_S, "a handshake not finished in this time is abandoned", low=1
    )
    max_handshakes: int = _count(budget.MAX_HANDSHAKES, "handshakes in progress")
    max_observations_per_session: int = _count(
        budget.MAX_OBSERVATIONS_PER_SESSION, "observations one session may hold", low=0
    )
    max_uploads_per_resource: int = _count(
        budget.MAX_UPLOADS_PER_RESOURCE, "blockwise uploads in progress per resource"
    )
    max_sessions_per_host: int = _count(budget.MAX_SESSIONS_PER_HOST, "sessions per source host")
    max_sessions_per_identity: int = _count(
        budget.MAX_SESSIONS_PER_IDENTITY, "sessions per identity"
    )
    max_exchanges_per_session: int = _count(
        budget.MAX_EXCHANGES_PER_SESSION, "exchanges remembered per session"
    )
    max_exchanges: int = _count(budget.MAX_EXCHANGES, "exchanges remembered in all")
    max_observations_per_client: int = _count(
        budget.MAX_OBSERVATIONS_PER_CLIENT, "observations one client may hold"
    )
    max_observations_per_host: int = _count(
        budget.MAX_OBSERVATIONS_PER_HOST, "observations one source host may hold"
    )
    max_observations: int = _count(budget.MAX_OBSERVATIONS, "observations in all")
    log_burst: int = _count(
        default_of(RepeatLimiter, "burst"), "log lines one call site may write at once"
    )
    log_lines_per_minute: float = setting(
        default_of(RepeatLimiter, "per_minute"), "... and per minute after that", low=0.01
    )
    changes_burst: int = _count(
        default_of(ChangeLimiter, "burst"),
        "state changes one client, and one host, may ask for at once (4.29 beyond)",
    )
    changes_per_minute: float = setting(
        default_of(ChangeLimiter, "per_minute"), "... and per minute after that", low=0.01
    )
    device_changes_per_s: float = setting(
        default_of(ChangeLimiter, "total_per_s"),
        "state changes all clients together may ask for per second (5.03 beyond)",
        low=0.01,
    )
    audit_max_bytes: int = setting(
        default_of(AuditLimits, "max_bytes"),
        "the audit log's two files together, at most",
        low=4096,
        high=2**40,
        unit="B",
    )
    audit_reserve_bytes: int = setting(
        default_of(AuditLimits, "reserve_free_bytes"),
        "the audit log pauses while the state directory has less than this free",
        low=0,
        high=2**40,
        unit="B",
    )
    audit_refusals_per_minute: float = setting(
        default_of(AuditLimits, "refusals_per_minute"),
        "refusal lines per event and source host per minute",
        low=1,
    )


@dataclass(frozen=True)
class DtlsConfig:
    """Which TLS extensions a client's ClientHello must offer (docs/security.md).

    Off by default: Tradfri-class client stacks offer neither, and with PSK
    only and no renegotiation the attacks these extensions stop do not apply.
    Whatever a client offers is used either way.
    """

    require_extended_master_secret: bool = setting(
        False, "refuse a ClientHello without extended_master_secret (RFC 7627)"
    )
    require_renegotiation_info: bool = setting(
        False, "refuse a ClientHello without renegotiation_info (RFC 5746)"
    )


@dataclass(frozen=True)
class GatewayConfig:
    """The whole file; the fields with a setting are the keys of ``[device]``."""

    source: str
    host: str = setting("::", "address to listen on")
    port: int = setting(DEFAULT_COAPS_PORT, "UDP port", low=1, high=65535)
    state_dir: Path | None = setting(None, "state directory", read="state_dir")
    name: str = setting("", "name advertised over mDNS", empty=True)
    demo_light: bool = setting(False, "also serve the built-in demo light at /light")
    advertise: bool = setting(True, "advertise the device over mDNS")
    transport: str = setting("coapdev", "DTLS server", choices=("coapdev", "aiocoap"))
    onboarding: OnboardingConfig = field(default_factory=OnboardingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    dtls: DtlsConfig = field(default_factory=DtlsConfig)
    resources: tuple[ResourceConfig, ...] = ()


#: The tables of a config file and the dataclass each is read into.
SECTIONS: dict[str, type] = {
    "device": GatewayConfig,
    "onboarding": OnboardingConfig,
    "limits": LimitsConfig,
    "dtls": DtlsConfig,
    "resource": ResourceConfig,
}
