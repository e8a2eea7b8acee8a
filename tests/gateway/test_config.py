import subprocess
import sys
from pathlib import Path

import pytest

from coapdev.const import ResourceKind, Role
from coapdev.errors import ConfigError
from gateway.config import (
    InputMode,
    OutputFormat,
    load_config,
    load_default_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]


def parse(text: str):
    return parse_config(text.encode(), "test.toml", config_dir=Path("/etc/coapdev"))


def test_default_config_is_valid_and_bridges_scripts():
    cfg = load_default_config()
    paths = {r.path_text for r in cfg.resources}
    assert {"/light", "/temperature", "/uptime"} <= paths
    light = next(r for r in cfg.resources if r.path_text == "/light")
    assert light.method_map["GET"].argv[0] == sys.executable
    assert Path(light.method_map["GET"].argv[1]).is_file()


def test_full_resource():
    cfg = parse(
        """
        [device]
        host = "127.0.0.1"
        port = 5700
        [[resource]]
        path = "/relay/1"
        output = "json"
        input = "json"
        timeout_s = 2
        max_output_bytes = 100
        concurrency = 3
        get = { run = ["{config_dir}/relay", "get"], roles = ["user", "admin"] }
        put = { run = ["/usr/bin/gpioset", "gpiochip0", "17=1"], roles = ["admin"], timeout_s = 1 }
        observe = { interval_s = 0.5 }
        """
    )
    r = cfg.resources[0]
    assert r.path == ("relay", "1") and r.output is OutputFormat.JSON and r.input is InputMode.JSON
    assert r.method_map["GET"].argv == ("/etc/coapdev/relay", "get")
    assert r.method_map["GET"].timeout_s == 2 and r.method_map["PUT"].timeout_s == 1
    assert r.method_map["PUT"].roles == {Role.ADMIN}
    assert r.observe.interval_s == 0.5 and r.concurrency == 3


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ('[device]\nport = "x"', "device.port", "expected an integer"),
        ("[device]\nport = 70000", "device.port", "between 1 and 65535"),
        ("[device]\nprot = 1", "device.prot", "did you mean 'port'"),
        ("[[resource]]\nget = { run = ['a'] }", "resource[0].path", "missing"),
        ("[[resource]]\npath = 'x'\nget = { run = ['a'] }", "resource[0].path", "start with '/'"),
        (
            "[[resource]]\npath = '/a'\nget = { run = 'cat /x' }",
            "resource[0].get.run",
            "no shell ever runs",
        ),
        ("[[resource]]\npath = '/a'\nget = { run = [] }", "resource[0].get.run", "non-empty"),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['a', 3] }",
            "resource[0].get.run[1]",
            "expected a string",
        ),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['{script}/x'] }",
            "resource[0].get.run[0]",
            "did you mean {scripts}",
        ),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['a'], roles = ['root'] }",
            "resource[0].get.roles[0]",
            "unknown role 'root'",
        ),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['a'] }\ntimout_s = 3",
            "resource[0].timout_s",
            "did you mean 'timeout_s'",
        ),
        (
            "[[resource]]\npath = '/a'\noutput = 'xml'\nget = { run = ['a'] }",
            "resource[0].output",
            "expected one of",
        ),
        ("[[resource]]\npath = '/a'", "resource[0]", "no method"),
        (
            "[[resource]]\npath = '/a'\nput = { run = ['a'] }\nobserve = { interval_s = 1 }",
            "resource[0].observe.interval_s",
            "needs a get script",
        ),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['a'] }\nobserve = { interval_s = 1, "
            "watch = ['b'] }",
            "resource[0].observe",
            "exactly one",
        ),
        ("[[resource]]\npath = '/onboard'\nget = { run = ['a'] }", "resource[0].path", "reserved"),
        ("[[resource]]\npath = '/15004'\nget = { run = ['a'] }", "resource[0].path", "reserved"),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['a'] }\n[[resource]]\npath = '/a'\n"
            "get = { run = ['b'] }",
            "resource[1].path",
            "already used",
        ),
        (
            "[device]\ndemo_light = true\n[[resource]]\npath = '/light'\nget = { run = ['a'] }",
            "resource[0].path",
            "built-in demo light",
        ),
        ("[onboarding]\nwindow_s = -1", "onboarding.window_s", "at least 1"),
        ("[limits]\nmax_sessions = 0", "limits.max_sessions", "between 1"),
        (
            "[dtls]\nrequire_extended_master_secret = 'yes'",
            "dtls.require_extended_master_secret",
            "expected true or false",
        ),
        ("[dtls]\nrequire_renegotiation = true", "dtls.require_renegotiation", "did you mean"),
        ("dtls = 1", "dtls", "expected a table"),
        ("this is not toml", "", "invalid TOML"),
        ("[[resource]]\npath = '/a'\nhandler = 'a.py'\nget = {}", "resource[0].handler", "shell"),
        (
            "[[resource]]\npath = '/a'\nhandler = ['a']\nget = { run = ['b'] }",
            "resource[0].get.run",
            "handler answers it",
        ),
        ("[[resource]]\npath = '/a'\nget = {}", "resource[0].get.run", "or a handler"),
        ("[[resource]]\npath = '/a'\nhandler = ['a']", "resource[0]", "no method"),
        (
            "[[resource]]\npath = '/a'\nhandler = ['a']\nget = {}\nmax_pending = 0",
            "resource[0].max_pending",
            "between 1 and 4096",
        ),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['a'] }\nmax_pending = 8",
            "resource[0].max_pending",
            "needs handler",
        ),
        (
            "[[resource]]\npath = '/a'\nhandler = ['a']\nget = {}\nconcurrency = 2",
            "resource[0].concurrency",
            "max_pending",
        ),
        (
            "[[resource]]\npath = '/a'\nput = { run = ['a'] }\nmax_age_s = 5",
            "resource[0].max_age_s",
            "needs get",
        ),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['a'] }\nmax_age_s = '5'",
            "resource[0].max_age_s",
            "expected a number",
        ),
        (
            "[[resource]]\npath = '/a'\nhandler = ['a']\nget = {}\nmax_pendng = 3",
            "resource[0].max_pendng",
            "did you mean 'max_pending'",
        ),
    ],
)
def test_errors_name_file_key_and_expectation(text, key, problem):
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith("test.toml")
    assert info.value.key == key
    assert problem in message


def test_a_handler_resource():
    cfg = parse(
        """
        [[resource]]
        path = "/kv"
        handler = ["{python}", "{config_dir}/kv.py"]
        max_pending = 16
        max_age_s = 5
        timeout_s = 2
        get = {}
        put = { roles = ["admin"], timeout_s = 1 }
        """
    )
    r = cfg.resources[0]
    assert r.handler == (sys.executable, "/etc/coapdev/kv.py")
    assert r.max_pending == 16 and r.max_age_s == 5
    assert r.method_map["GET"].argv == () and r.method_map["GET"].timeout_s == 2
    assert r.method_map["PUT"].roles == {Role.ADMIN} and r.method_map["PUT"].timeout_s == 1
    plain = parse("[[resource]]\npath = '/a'\nget = { run = ['a'] }").resources[0]
    assert plain.handler is None and plain.max_age_s is None and plain.max_pending == 64


@pytest.mark.integration  # runs coapdev-gateway --check
def test_check_names_a_missing_handler(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text("[[resource]]\npath = '/kv'\nhandler = ['/nonexistent/kv.py']\nget = {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--check", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "resource[0].handler[0]: /nonexistent/kv.py: no such file" in proc.stderr


def test_braces_other_than_placeholders_stay_literal():
    cfg = parse("[[resource]]\npath = '/a'\nget = { run = ['jq', '{a: .b}', '{python}'] }")
    assert cfg.resources[0].method_map["GET"].argv == ("jq", "{a: .b}", sys.executable)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.integration
def test_check_command_reports_file_and_key(tmp_path):
    bad = tmp_path / "gateway.toml"
    bad.write_text("[[resource]]\npath = '/a'\nget = { run = ['a'], timeout_s = 'soon' }\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--check", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"coapdev-gateway: {bad}: resource[0].get.timeout_s: expected a number, got a string"
    )
    good = tmp_path / "ok.toml"
    good.write_text("[[resource]]\npath = '/a'\nget = { run = ['true'] }\n")
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "--check", str(good)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0 and "OK (1 resources)" in ok.stdout


def test_example_configs_in_docs_are_valid():
    examples = sorted((REPO / "docs" / "examples").glob("*.toml"))
    assert examples, "docs/examples holds example configs"
    for path in examples:
        load_config(path)


# --- typed resources (kind, unit, device_class, value_key) ----------------------------

_SWITCH = (
    "[[resource]]\npath = '/a'\noutput = 'json'\nget = { run = ['g'] }\nput = { run = ['p'] }\n"
)


def test_typed_resources_parse():
    cfg = parse(
        _SWITCH
        + "kind = 'switch'\ndevice_class = 'outlet'\n"
        + "[[resource]]\npath = '/t'\ntitle = 'Temperature'\noutput = 'json'\n"
        + "get = { run = ['t'] }\nkind = 'sensor'\nunit = '°C'\ndevice_class = 'temperature'\n"
        + "value_key = 'celsius'\n"
        + "[[resource]]\npath = '/b'\nkind = 'button'\npost = { run = ['b'] }\n"
        + "[[resource]]\npath = '/w'\nkind = 'binary_sensor'\nobserve = { watch = ['w'] }\n"
    )
    switch, sensor, button, watched = cfg.resources
    assert switch.kind is ResourceKind.SWITCH and switch.device_class == "outlet"
    assert (sensor.kind, sensor.unit, sensor.device_class, sensor.value_key) == (
        ResourceKind.SENSOR,
        "°C",
        "temperature",
        "celsius",
    )
    assert button.kind is ResourceKind.BUTTON and watched.kind is ResourceKind.BINARY_SENSOR
    assert parse("[[resource]]\npath = '/u'\nget = { run = ['u'] }").resources[0].kind is None


def test_default_config_resources_are_typed():
    kinds = {r.path_text: r.kind for r in load_default_config().resources}
    assert kinds == {
        "/light": ResourceKind.LIGHT,
        "/temperature": ResourceKind.SENSOR,
        "/uptime": ResourceKind.SENSOR,
    }


@pytest.mark.parametrize(
    "text, key, problem",
    [
        (_SWITCH + "kind = 'dimmer'", "resource[0].kind", "expected one of 'switch'"),
        (_SWITCH + "kind = 3", "resource[0].kind", "expected a string"),
        (_SWITCH + "unit = 'W'", "resource[0].unit", 'needs kind = "sensor"'),
        (_SWITCH + "kind = 'switch'\nunit = 'W'", "resource[0].unit", 'needs kind = "sensor"'),
        (_SWITCH + "device_class = 'outlet'", "resource[0].device_class", "needs a kind"),
        (_SWITCH + "kind = 'light'\ndevice_class = 'x'", "resource[0].device_class", "light"),
        (
            _SWITCH + "kind = 'switch'\ndevice_class = 'Outlet!'",
            "resource[0].device_class",
            "lower-case letters, digits and _",
        ),
        (_SWITCH + "kind = 'sensor'\nunit = 'a\"b'", "resource[0].unit", "quote"),
        (_SWITCH + "kind = 'sensor'\nunit = ''", "resource[0].unit", "must not be empty"),
        (_SWITCH + "kind = 'sensor'\nunit = '" + "m" * 33 + "'", "resource[0].unit", "at most 32"),
        (_SWITCH + 'kind = "sensor"\nunit = "a\\tb"', "resource[0].unit", "printable"),
        (_SWITCH + "kind = 'sensor'\nunit = 'a\\b'", "resource[0].unit", "backslash"),
        (
            "[[resource]]\npath = '/a'\nget = { run = ['g'] }\nkind = 'sensor'\nvalue_key = 'v'",
            "resource[0].value_key",
            'output = "json" or "cbor"',
        ),
        (_SWITCH + "kind = 'button'", "resource[0].kind", "needs a post script"),
        (_SWITCH + "kind = 'button'\nvalue_key = 'on'", "resource[0].value_key", "button"),
        (
            "[[resource]]\npath = '/a'\nkind = 'switch'\nget = { run = ['g'] }",
            "resource[0].kind",
            "needs a put script",
        ),
        (
            "[[resource]]\npath = '/a'\nkind = 'light'\nput = { run = ['p'] }",
            "resource[0].kind",
            "needs a get script or observe.watch",
        ),
        (
            "[[resource]]\npath = '/a'\nkind = 'sensor'\npost = { run = ['p'] }",
            "resource[0].kind",
            "needs a get script or observe.watch",
        ),
        (_SWITCH + "name = 'Relay'", "resource[0].name", "the display name is 'title'"),
    ],
)
def test_typed_resource_errors_name_the_key(text, key, problem):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.key == key
    assert str(info.value).startswith("test.toml")
    assert problem in str(info.value)


def test_dtls_handshake_policy_defaults_to_accepting_and_can_require_both():
    assert parse("").dtls.require_extended_master_secret is False
    assert parse("").dtls.require_renegotiation_info is False
    strict = parse(
        "[dtls]\nrequire_extended_master_secret = true\nrequire_renegotiation_info = true"
    ).dtls
    assert strict.require_extended_master_secret and strict.require_renegotiation_info
