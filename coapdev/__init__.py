"""coapdev: secure local devices over CoAP + DTLS-PSK, onboarded with a factory key."""

__version__ = "0.1.0"
