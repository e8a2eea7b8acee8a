"""Every number and name that appears on the wire, in one place.

Other modules import these; none of them spells a path, CBOR key or content
format itself, so the protocol document (docs/protocol.md) can be checked
against this file alone.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final

#: Version of the wire protocol described in docs/protocol.md.
PROTOCOL_VERSION: Final = 1

#: IANA default port for coaps:// (CoAP over DTLS).
DEFAULT_COAPS_PORT: Final = 5684

#: Identity under which a client presents the factory key.  It is the one
#: Tradfri gateways use, so Tradfri client code onboards unchanged.
FACTORY_IDENTITY: Final = "Client_identity"

#: Limits of coapdev's build of tinydtls (tools/dtlssocket/0004; docs/security.md):
#: it refuses longer keys and identities.  Stock DTLSSocket 0.2.3 took 16 and 32.
MAX_PSK_BYTES: Final = 32
MAX_IDENTITY_BYTES: Final = 64

#: Longest client name accepted at onboarding or rename, in characters.
MAX_CLIENT_NAME_CHARS: Final = 64

DEVICE_MODEL: Final = "coapdev-gateway"


class ContentFormat(IntEnum):
    """CoAP Content-Format numbers used by coapdev (RFC 7252 registry)."""

    TEXT = 0
    LINK_FORMAT = 40
    OCTET_STREAM = 42
    JSON = 50
    CBOR = 60


class Role(StrEnum):
    """Roles of minted clients. The first client onboarded becomes admin."""

    ADMIN = "admin"
    USER = "user"


class KeyFormat(StrEnum):
    """How a minted key is handed to the client at native onboarding.

    ``bytes``: 32 random bytes (256 bits), a CBOR byte string.
    ``text``: 16 characters of a 64-symbol alphabet (96 bits); the PSK is
    their ASCII.  For tools that take a PSK only as a command-line string,
    such as libcoap's ``coap-client -k``, and the size Tradfri clients use.
    """

    BYTES = "bytes"
    TEXT = "text"


# --- Resource paths (tuples of Uri-Path segments) ---------------------------

PATH_ONBOARD: Final = ("onboard",)
PATH_DEVICE: Final = ("device",)
PATH_CLIENTS: Final = ("clients",)
PATH_REKEY: Final = ("rekey",)
PATH_WELL_KNOWN_CORE: Final = (".well-known", "core")
#: Built-in demo light (served when the gateway config enables the demo).
PATH_DEMO_LIGHT: Final = ("light",)
#: Tradfri gateway onboarding: POST /15011/9063.
PATH_TRADFRI_ONBOARD: Final = ("15011", "9063")
#: What Tradfri client code asks right after onboarding (coapdev/server/tradfri.py):
#: gateway information, the device list and the group list.
PATH_TRADFRI_GATEWAY_INFO: Final = ("15011", "15012")
PATH_TRADFRI_DEVICES: Final = ("15001",)
PATH_TRADFRI_GROUPS: Final = ("15004",)


def uri_path(path: tuple[str, ...]) -> str:
    """A path as a client writes it: ``PATH_DEVICE`` is ``"/device"``."""
    return "/" + "/".join(path)


# --- CBOR map keys (text keys, so payloads read well in diagnostic notation) --


class Key(StrEnum):
    """Keys of the CBOR (and JSON) maps exchanged with the device."""

    # onboarding request / response
    NAME = "name"
    KEY_FORMAT = "key-format"
    IDENTITY = "identity"
    PSK = "key"
    ROLE = "role"
    DEVICE_ID = "device"
    #: The client's id in the onboarding answer and /clients entries; /device
    #: uses the same wire key for the device's id (there was an alias ``ID``
    #: for that, which was this same member under a second name).
    CLIENT_ID = "id"
    # /device (its id is under CLIENT_ID's wire key "id", see above)
    MODEL = "model"
    FIRMWARE = "firmware"
    PROTOCOL = "protocol"
    UPTIME_S = "uptime"
    # /clients entries
    CREATED = "created"
    LAST_SEEN = "last-seen"
    ORIGIN = "origin"
    SELF = "self"
    # /light
    ON = "on"
    # error responses carry a human-readable diagnostic payload (text/plain)


# Tradfri wire keys (JSON object keys, as strings).
TRADFRI_IDENTITY: Final = "9090"
TRADFRI_PSK: Final = "9091"
TRADFRI_FIRMWARE: Final = "9029"


class TradfriGatewayKey(StrEnum):
    """Keys of a Tradfri gateway's information object (GET /15011/15012), as
    Tradfri client code (pytradfri's GatewayInfo) reads them."""

    NAME = "9001"
    NTP_SERVER = "9023"
    FIRMWARE = TRADFRI_FIRMWARE
    OTA_UPDATE_STATE = "9054"
    UPDATE_PROGRESS = "9055"
    CURRENT_TIME = "9059"
    CURRENT_TIME_ISO8601 = "9060"
    COMMISSIONING_MODE = "9061"
    OTA_TYPE = "9066"
    FIRST_SETUP = "9069"
    TIME_SOURCE = "9071"
    GATEWAY_ID = "9081"
    HOMEKIT_ID = "9083"
    CERTIFICATE_PROVISIONED = "9092"
    ALEXA_PAIR_STATUS = "9093"
    GOOGLE_HOME_PAIR_STATUS = "9105"


# --- Discovery and QR ---------------------------------------------------------------

MDNS_SERVICE_TYPE: Final = "_coaps._udp.local."
#: TXT record keys advertised over mDNS.
TXT_DEVICE_ID: Final = "id"
TXT_MODEL: Final = "md"
TXT_PROTOCOL: Final = "pv"
TXT_ONBOARDING: Final = "ob"

#: QR payloads are ``COAPDEV:1:<device id>:<factory key>[:<port>]``.
QR_PREFIX: Final = "COAPDEV"
QR_VERSION: Final = 1


# --- Typed resources (docs/protocol.md, 4.6) ----------------------------------------


class ResourceKind(StrEnum):
    """What a resource is to a home-automation client, published as ``rt="coapdev.<kind>"``.

    The names are Home Assistant's platform names, so a client maps them
    one to one; any other client reads them as plain resource types.
    """

    SWITCH = "switch"
    LIGHT = "light"
    SENSOR = "sensor"
    BINARY_SENSOR = "binary_sensor"
    BUTTON = "button"


#: Resource types of typed resources are this prefix and the kind.
RT_KIND_PREFIX: Final = "coapdev."
#: CoRE interface descriptions (``if=``): actuators take commands, sensors report.
IF_ACTUATOR: Final = "core.a"
IF_SENSOR: Final = "core.s"
#: Extension link attributes of typed resources in /.well-known/core.
LINK_UNIT: Final = "unit"
LINK_DEVICE_CLASS: Final = "device_class"
LINK_VALUE_KEY: Final = "value_key"
#: What a client PUTs (as text/plain) to switch a switch or a light.
SWITCH_ON: Final = "on"
SWITCH_OFF: Final = "off"
#: Map member holding a sensor's value when the resource names no ``value_key``
#: (switches, lights and binary sensors use ``Key.ON``).
SENSOR_VALUE_KEY: Final = "value"
