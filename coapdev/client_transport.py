"""Old home of the client's DTLS plumbing, kept so existing imports keep working.

The code lives in :mod:`coapdev.client.transport`.
"""

from .client.transport import (
    ClientTransport,
    SessionDropped,
    SessionState,
    describe_dtls,
    describe_message,
)

__all__ = [
    "ClientTransport",
    "SessionDropped",
    "SessionState",
    "describe_dtls",
    "describe_message",
]
