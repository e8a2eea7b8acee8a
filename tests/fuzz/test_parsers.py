"""Fuzz every parser coapdev owns: hostile input gives the documented error, nothing else.

Each target is fed random bytes or text, structured values (hypothesis
strategies), and mutations of valid inputs.  A parser may accept an input or
refuse it with its documented exception; any other exception, a hang (every
example has a time budget through pytest's overall timeout) or a wrong
round trip fails the test and is counted as a crash in the run's summary
(``fuzz: N inputs tried over M parsers, 0 crashes``).
"""

from __future__ import annotations

import asyncio
import json
import math
import string
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fuzzing import feed

from coapdev import keys, onboarding, payload, qr, typed
from coapdev.client import parse_address
from coapdev.const import MAX_CLIENT_NAME_CHARS, ContentFormat
from coapdev.errors import (
    ClientError,
    CoapdevError,
    ConfigError,
    CorruptStateFile,
    InvalidKeyText,
    PayloadError,
    RequestRefused,
)
from coapdev.registry import DeviceRegistry
from coapdev.store import (
    CredentialStore,
    StoreLimits,
    parse_snapshot,
    parse_state,
    read_state,
    replay_journal,
)
from gateway.config import default_config_text, parse_config

# --- strategies ---------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
)


def nested(base: st.SearchStrategy, max_leaves: int = 20) -> st.SearchStrategy:
    return st.recursive(
        base,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


cbor_values = nested(scalars)
json_values = nested(json_scalars)
formats = st.sampled_from([None, 0, 40, 42, 50, 60, 61, 110, 65535])


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid input with a few random edits: flips, inserts, deletes, truncation, splices."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup", "byte"]))
        pos = draw(st.integers(0, max(len(data), 1) - 1)) if data else 0
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x9F, 0xBF, 0xDF, 0x1F]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup" and data:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


def _deep(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + closer * depth


# --- payload decoding (the device, the client and the CLI share it) ---------------


@given(st.binary(max_size=300) | mutated(cbor_values.map(cbor2.dumps)), formats)
def test_decode_any_bytes_any_format(data, fmt):
    feed("payload.decode", payload.decode, data, fmt, allowed=(PayloadError,))


@given(cbor_values)
def test_cbor_round_trip(value):
    ok, decoded = feed("payload.decode_cbor", payload.decode_cbor, cbor2.dumps(value), allowed=())
    assert ok and decoded == value


@given(st.integers(payload.MAX_NESTING + 1, 5000), st.sampled_from([b"\x81", b"\xa1\x00", b"\x9f"]))
def test_deep_cbor_is_refused_cheaply(depth, opener):
    data = opener * depth + b"\x00" + (b"\xff" * depth if opener == b"\x9f" else b"")
    ok, error = feed("payload.decode_cbor", payload.decode_cbor, data, allowed=(PayloadError,))
    assert not ok and "nested deeper" in str(error)


@given(
    st.text(max_size=200)
    | mutated(json_values.map(lambda v: json.dumps(v).encode())).map(
        lambda b: b.decode("utf-8", "replace")
    )
)
def test_decode_json_text(text):
    feed("payload.decode_json", payload.decode_json, text.encode(), allowed=(PayloadError,))


@given(
    st.integers(payload.MAX_NESTING + 2, 200_000),
    st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]),
)
def test_deep_json_is_refused(depth, brackets):
    data = _deep(depth, *brackets)
    ok, _ = feed("payload.decode_json", payload.decode_json, data, allowed=(PayloadError,))
    assert not ok


@given(
    st.text(max_size=120)
    | json_values.map(json.dumps)
    | st.sampled_from(["h'", "{1:", "<<", "'", '"\\u', "[_ ", "{_ 1:2", "0x", "h'0' h'", "1e9999"]),
    st.sampled_from(["auto", "json", "cbor", "text"]),
)
def test_cli_typed_payload(text, kind):
    ok, result = feed(
        "cli.parse_typed_payload", payload.parse_typed_payload, text, kind, allowed=(PayloadError,)
    )
    if ok:
        body, fmt = result
        assert isinstance(body, bytes) and fmt in (ContentFormat.TEXT, ContentFormat.JSON, 60)


@given(st.binary(max_size=200) | cbor_values.map(cbor2.dumps), formats, st.booleans())
def test_cli_pretty_printing(data, fmt, compact):
    feed(
        "cli.format_for_humans",
        lambda d, f: payload.format_for_humans(d, f, compact=compact),
        data,
        fmt,
        allowed=(PayloadError,),
    )


@given(st.text(max_size=80))
def test_cli_addresses(text):
    feed("client.parse_address", parse_address, text, allowed=(ClientError,))


# --- onboarding payloads ------------------------------------------------------------

onboard_bodies = (
    st.dictionaries(
        st.sampled_from(["name", "key-format", "identity", "9090", ""]) | st.text(max_size=8),
        cbor_values,
        max_size=4,
    )
    | cbor_values
)


@given(onboard_bodies, st.sampled_from([None, 50, 60, 0, 42]))
def test_onboard_request(body, fmt):
    try:
        data = payload.encode(body, fmt if fmt in (50, 60) else 60)
    except (PayloadError, TypeError, ValueError):
        data = cbor2.dumps(body)
    ok, parsed = feed(
        "onboarding.parse_onboard_request",
        onboarding.parse_onboard_request,
        data,
        fmt,
        allowed=(RequestRefused,),
    )
    if ok:
        assert 0 < len(parsed.name) <= MAX_CLIENT_NAME_CHARS and parsed.name.isprintable()


@given(st.binary(max_size=600) | mutated(st.just(b'{"name": "laptop"}')), formats)
def test_onboard_request_bytes(data, fmt):
    feed(
        "onboarding.parse_onboard_request",
        onboarding.parse_onboard_request,
        data,
        fmt,
        allowed=(RequestRefused,),
    )


@given(
    st.binary(max_size=600)
    | json_values.map(lambda v: json.dumps({"9090": v}).encode())
    | mutated(st.just(b'{"9090": "my-phone"}'))
)
def test_tradfri_onboard_request(data):
    ok, identity = feed(
        "onboarding.parse_tradfri_request",
        onboarding.parse_tradfri_request,
        data,
        allowed=(RequestRefused,),
    )
    if ok:
        assert identity.isascii() and identity.isprintable() and len(identity.encode()) <= 32


# --- admin and device resources, in process -----------------------------------------


class _Remote:
    """Stands in for a DTLS peer: the credential the handshake authenticated."""

    def __init__(self, credential: object) -> None:
        self.authenticated_claims = (credential,)
        self.hostinfo = "127.0.0.1:1"


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    from coapdev.server.resources import ServerState, build_site

    directory = tmp_path_factory.mktemp("fuzz-device")
    store = CredentialStore.open(
        directory, onboarding_window_s=3600, limits=StoreLimits(max_clients=40)
    )
    admin = store.mint_client("admin", now=1.0)
    user = store.mint_client("user", now=1.0)
    state = ServerState(store=store)
    site = build_site(state, demo_light=directory / "light.json")
    return store, site, admin, user


REQUESTS = [
    ("PUT", ("clients", "{id}")),
    ("GET", ("clients", "{id}")),
    ("PUT", ("clients", "{other}")),
    ("GET", ("clients",)),
    ("POST", ("onboard",)),
    ("POST", ("15011", "9063")),
    ("PUT", ("light",)),
    ("POST", ("light",)),
    ("GET", ("device",)),
    ("POST", ("rekey",)),
    ("DELETE", ("clients", "no-such-client")),
]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(REQUESTS),
    st.sampled_from(["admin", "user", "factory"]),
    st.one_of(
        cbor_values.map(cbor2.dumps),
        st.dictionaries(
            st.sampled_from(["name", "role", "on", "key-format"]), cbor_values, max_size=3
        ).map(cbor2.dumps),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=100),
    ),
    st.sampled_from([None, 0, 42, 50, 60, 110]),
    st.sampled_from([None, 0, 50, 60, 40, 42]),
    st.lists(st.text(max_size=10), max_size=2),
)
def test_admin_and_device_payloads(device, request_, who, body, fmt, accept, extra_path):
    """Every resource answers hostile payloads with 2.xx or 4.xx, never 5.xx or an exception."""
    from aiocoap import Code, Message
    from aiocoap.message import Direction

    store, site, admin, user = device
    method, template = request_
    identity = {"admin": admin.identity, "user": user.identity}.get(
        who, store.device.factory_identity
    )
    if store.principal_for(identity) is None:  # rotated away by an earlier /rekey
        identity = store.find_client(who).identity
    path = tuple(seg.format(id=admin.id, other=user.id) for seg in template) + tuple(
        extra_path if template[0] == "clients" and len(template) == 1 else ()
    )
    request = Message(code=getattr(Code, method), payload=body, uri_path=path)
    if fmt is not None:
        request.opt.content_format = fmt
    if accept is not None:
        request.opt.accept = accept
    request.remote = _Remote(store.current_credential(identity))

    async def render():
        resource = site._resources.get(path) or site._resources.get(path[:1])
        if resource is None:
            return None
        req = request.copy(uri_path=path[1:] if path[:1] == ("clients",) and len(path) > 1 else ())
        req.remote = request.remote
        req.direction = Direction.INCOMING
        return await resource.render(req)

    def call():
        return asyncio.run(render())

    ok, response = feed(f"resource {method} /{template[0]}", call, allowed=(RequestRefused,))
    if ok and response is not None:
        code = int(response.code)
        assert code >> 5 in (2, 4), (method, path, response, response.payload[:200])
    # Whatever happened, the state on disk still loads.
    read_state(store.directory)  # snapshot and journal
    # Keep the fixture's admin and user usable for the next example.
    for name, role in (("admin", "admin"), ("user", "user")):
        try:
            record = store.find_client(name)
        except CoapdevError:
            continue
        if record.role.value != role:
            from coapdev.const import Role

            store.set_role(record.id, Role(role))


# --- QR payloads and factory keys ---------------------------------------------------


@st.composite
def qr_texts(draw):
    device_id = draw(st.text(alphabet=keys.ALPHABET, min_size=4, max_size=20))
    key = keys.mint_factory_key()
    port = draw(st.none() | st.integers(1, 65535))
    return qr.QRPayload(device_id, key, port).text()


@given(
    st.text(max_size=80)
    | mutated(qr_texts().map(str.encode)).map(lambda b: b.decode("utf-8", "replace"))
    | st.text(alphabet="COAPDEV:1" + keys.ALPHABET + "-" + string.whitespace, max_size=60)
)
def test_qr_text(text):
    feed("qr.parse_qr_text", qr.parse_qr_text, text, allowed=(CoapdevError,))


@given(qr_texts(), st.sampled_from([str, str.lower, lambda t: f"  {t}\n"]))
def test_qr_round_trip(text, transform):
    ok, parsed = feed("qr.parse_qr_text", qr.parse_qr_text, transform(text), allowed=())
    assert ok and parsed.text() == text


@given(st.text(max_size=40) | st.text(alphabet=keys.ALPHABET + "oilOIL -\t", max_size=24))
def test_factory_key_text(text):
    feed("keys.canonical_factory_key", keys.canonical_factory_key, text, allowed=(InvalidKeyText,))


@given(st.integers(0, 2**75 - 1), st.booleans())
def test_factory_key_round_trip(seed, lower):
    data = "".join(keys.ALPHABET[(seed >> (5 * i)) & 31] for i in range(15))
    key = data + keys.luhn_check_char(data)
    shown = keys.format_factory_key(key)
    ok, canonical = feed(
        "keys.canonical_factory_key",
        keys.canonical_factory_key,
        shown.lower() if lower else shown,
        allowed=(),
    )
    assert ok and canonical == key


# --- the gateway's config file ------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(value)


toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["/light", "::", "coapdev", "aiocoap", "{python}", "json", "admin"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
KEYS = {
    "device": ["host", "port", "state_dir", "name", "demo_light", "advertise", "transport"],
    "onboarding": [
        "window_s",
        "always_open",
        "button",
        "max_clients",
        "expire_after_days",
        "attempts_burst",
        "attempts_per_minute",
    ],
    "limits": ["max_sessions", "idle_timeout_s", "handshake_timeout_s", "max_observers"],
}
RESOURCE_KEYS = [
    "path",
    "title",
    "output",
    "input",
    "timeout_s",
    "max_output_bytes",
    "max_input_bytes",
    "concurrency",
    "observe",
    "get",
    "put",
    "post",
    "delete",
]


@st.composite
def config_documents(draw) -> str:
    lines = []
    for section, names in KEYS.items():
        table = draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=6), toml_values))
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    for _ in range(draw(st.integers(0, 3))):
        table = draw(
            st.dictionaries(
                st.sampled_from(RESOURCE_KEYS),
                toml_values
                | st.fixed_dictionaries({"run": st.lists(st.text(max_size=8), max_size=3)})
                | st.fixed_dictionaries({"interval_s": toml_scalars}),
                max_size=6,
            )
        )
        lines.append("[[resource]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@given(config_documents())
def test_config_documents(text):
    ok, error = feed(
        "gateway.parse_config",
        lambda raw: parse_config(raw, "fuzz.toml", config_dir=None),
        text.encode(),
        allowed=(ConfigError,),
    )
    if not ok:
        assert str(error).startswith("fuzz.toml")


@given(st.binary(max_size=400) | mutated(st.just(default_config_text())))
def test_config_bytes(raw):
    ok, error = feed(
        "gateway.parse_config",
        lambda data: parse_config(data, "fuzz.toml", config_dir=None),
        raw,
        allowed=(ConfigError,),
    )
    if not ok:
        assert str(error).startswith("fuzz.toml")


# --- the state files: the device's credentials and the client's known devices ------


@pytest.fixture(scope="module")
def state_file(tmp_path_factory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("fuzz-state")
    store = CredentialStore.open(directory, onboarding_window_s=60)
    store.mint_client("laptop", now=2.0)
    record = store.mint_client("phone", now=3.0, text_key=True)
    store.begin_rekey(record.id, now=4.0)
    store.compact()  # everything into the snapshot
    return store.path, store.path.read_bytes()


@pytest.fixture(scope="module")
def journal_file(tmp_path_factory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("fuzz-journal")
    store = CredentialStore.open(directory, onboarding_window_s=60)
    laptop = store.mint_client("laptop", now=2.0)
    phone = store.mint_client("phone", now=3.0, text_key=True)
    store.rename(laptop.id, "work laptop")
    store.confirm_rekey(store.begin_rekey(phone.id, now=4.0).identity)
    store.touch(store.client(laptop.id), 100.0)
    store.flush()
    store.open_onboarding(None, now=5.0)
    store.revoke(laptop.id, force=True)
    return store.path, store.journal_path.read_bytes()


def _replace_somewhere(doc: Any, path: list[int], value: Any) -> Any:
    """Replace the value at a pseudo-random position in a JSON document."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    if isinstance(doc, dict):
        key = sorted(doc)[path[0] % len(doc)]
        return {**doc, key: _replace_somewhere(doc[key], path[1:], value)}
    index = path[0] % len(doc)
    return [*doc[:index], _replace_somewhere(doc[index], path[1:], value), *doc[index + 1 :]]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=5),
    json_values | st.sampled_from(["", "x" * 40, -1, 1e308, "always", "ZZZZ"]),
)
def test_state_file_values(state_file, where, value):
    path, raw = state_file
    doc = _replace_somewhere(json.loads(raw), where, value)
    data = json.dumps(doc).encode()
    ok, error = feed("store.parse_state", parse_state, data, path, allowed=(CorruptStateFile,))
    if not ok:
        assert str(path) in str(error)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_journal_bytes(journal_file, data):
    snapshot, raw = journal_file
    path = snapshot.with_name("credentials.journal")
    blob = data.draw(mutated(st.just(raw)) | st.binary(max_size=200))

    def replay(blob: bytes):
        content = parse_snapshot(snapshot.read_bytes(), snapshot)
        return replay_journal(content, blob.split(b"\n"), path)

    ok, error = feed("store.replay_journal", replay, blob, allowed=(CorruptStateFile,))
    if not ok:
        assert str(path) in str(error)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_state_file_bytes(state_file, data):
    path, raw = state_file
    blob = data.draw(mutated(st.just(raw)) | st.binary(max_size=200))
    ok, error = feed("store.parse_state", parse_state, blob, path, allowed=(CorruptStateFile,))
    if not ok:
        assert str(path) in str(error)
    if blob == raw[: len(blob)] and len(blob) < len(raw.rstrip()):
        assert not ok  # every truncation of the file's content is detected


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(0, 20), min_size=1, max_size=4),
    json_values | st.sampled_from(["", "[::1]:0", "zz", "coap://x", "bytes", "text"]),
)
def test_known_devices_file(tmp_path_factory, where, value):
    directory = tmp_path_factory.mktemp("fuzz-registry", numbered=True)
    good = {
        "schema": 1,
        "devices": {
            "K3V9X0Q2MA": {
                "address": "127.0.0.1:5684",
                "identity": "abc",
                "key": "00" * 16,
                "key-format": "bytes",
                "client-id": "abc",
                "name": "me",
                "role": "admin",
                "onboarded": 1.0,
            }
        },
    }
    (directory / "devices.json").write_text(json.dumps(_replace_somewhere(good, where, value)))
    registry = DeviceRegistry(directory)
    ok, error = feed("registry.load", registry.load, allowed=(CorruptStateFile,))
    if not ok:
        assert str(directory / "devices.json") in str(error)


# --- what the server parses before aiocoap sees a datagram (read-only use) ----------


def _coap_messages() -> st.SearchStrategy[bytes]:
    from aiocoap import Code, Message

    @st.composite
    def build(draw):
        msg = Message(
            code=draw(st.sampled_from([Code.GET, Code.PUT, Code.POST, Code.DELETE, Code.FETCH])),
            payload=draw(st.binary(max_size=40)),
            uri_path=draw(st.lists(st.text(max_size=6), max_size=3)),
        )
        msg.mid = draw(st.integers(0, 65535))
        msg.token = draw(st.binary(max_size=8))
        msg.mtype = draw(st.sampled_from([0, 1]))
        if draw(st.booleans()):
            msg.opt.content_format = draw(st.integers(0, 65535))
        if draw(st.booleans()):
            msg.opt.observe = 0
        return msg.encode()

    return build()


@given(st.binary(max_size=200) | mutated(_coap_messages()))
def test_fast_path_request_parser(data):
    from coapdev.server.fastpath import parse_request

    feed("server.fastpath.parse_request", parse_request, data, None, allowed=())


@given(st.binary(max_size=200))
def test_dtls_record_sniffers(data):
    from coapdev.server import dtls

    for name in (
        "_is_client_hello",
        "_has_epoch1_handshake",
        "_has_change_cipher_spec",
        "_is_finished_retransmit",
    ):
        feed(f"server.dtls.{name}", getattr(dtls, name), data, allowed=())


# --- typed resources (what a client reads from /.well-known/core and states) --------

link_attribute_values = (
    st.none()
    | st.text(max_size=30)
    | st.sampled_from(
        ["coapdev.switch", "coapdev.script coapdev.sensor", "coapdev.button", "core.s", "°C"]
    )
)


@st.composite
def link_listings(draw: st.DrawFn) -> str:
    from aiocoap.util.linkformat import Link, LinkFormat

    names = st.sampled_from(["rt", "if", "title", "unit", "device_class", "value_key", "obs"])
    links = [
        Link(draw(st.text(max_size=12)), **draw(st.dictionaries(names, link_attribute_values)))
        for _ in range(draw(st.integers(0, 6)))
    ]
    return str(LinkFormat(links))


@given(
    st.text(max_size=200)
    | link_listings()
    | mutated(link_listings().map(str.encode)).map(lambda b: b.decode("utf-8", "replace"))
)
def test_typed_resource_listing(text):
    ok, parsed = feed(
        "typed.parse_typed_resources", typed.parse_typed_resources, text, allowed=(PayloadError,)
    )
    if ok:
        assert len({r.path for r in parsed}) == len(parsed)


@given(cbor_values, st.text(max_size=8))
def test_typed_resource_states(value, value_key):
    feed("typed.switch_state", typed.switch_state, value, value_key, allowed=())
    _, number = feed("typed.sensor_value", typed.sensor_value, value, value_key, allowed=())
    assert not (isinstance(number, float) and not math.isfinite(number))
