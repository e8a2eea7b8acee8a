"""Constants of the coapdev integration: config entry keys and the timings it keeps."""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "coapdev"

# The form field where the user pastes the factory key or the label's QR text.
CONF_FACTORY_KEY: Final = "factory_key"

# What a config entry stores (the minted credentials; the factory key is never stored).
CONF_DEVICE_ID: Final = "device_id"
CONF_IDENTITY: Final = "identity"
CONF_PSK: Final = "psk"  # hex
CONF_KEY_FORMAT: Final = "key_format"
CONF_CLIENT_ID: Final = "client_id"
CONF_CLIENT_NAME: Final = "client_name"
CONF_ROLE: Final = "role"

#: The name Home Assistant onboards under (the device adds -2, -3 if it is taken).
CLIENT_NAME: Final = "Home Assistant"

#: A request, onboarding included, gives up after this long.
REQUEST_TIMEOUT_S: Final = 10.0
#: The device is asked whether it is still there this often (GET /device); a
#: failed probe marks every entity unavailable until the device answers again.
PING_INTERVAL_S: Final = 30.0
#: A typed resource that is not observable is re-read this often.
POLL_INTERVAL_S: Final = 30.0
