"""Closing a client DTLS connection leaves the DTLSSocket connection in no caller's frame.

Resetting the peer writes a close_notify; when the peer is gone that write
fails inside asyncio (ECONNREFUSED), and the error's traceback reaches, frame
by frame, the ``shutdown`` that reset the peer.  A DTLSSocket connection held by
a local variable there lives as long as that error, in whatever reference cycle
keeps it: freed by the cyclic garbage collector rather than when the reset is
done.  (That is how the Home Assistant tests met the DTLSSocket crash that
tools/dtlssocket/0005-connection-dealloc-after-gc-clear.patch fixes.)
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import coapdev
from coapdev.client.transport import _CountingConnection

#: The library's own frames (the test's frame holds the connection, of course).
COAPDEV = coapdev.__path__[0]


class FakeDtlsSocket:
    """Records the frames that called resetPeer, as a failed write's traceback would."""

    def __init__(self) -> None:
        self.frames: list[FrameType] = []

    def resetPeer(self, connection: Any) -> None:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(COAPDEV):
            self.frames.append(frame)
            frame = frame.f_back


class FakeTransport:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_shutdown_hands_the_connection_to_the_reset_without_keeping_it() -> None:
    connection = object.__new__(_CountingConnection)
    dtls_connection = object()  # stands for DTLSSocket's Connection
    dtls_socket, transport = FakeDtlsSocket(), FakeTransport()
    connection.__dict__.update(
        _connection=dtls_connection, _dtls_socket=dtls_socket, _transport=transport
    )
    connection._remove_from_pool = lambda: None

    connection.shutdown()

    assert connection._connection is None
    assert transport.closed
    assert dtls_socket.frames, "resetPeer was not called"
    holders = [
        frame.f_code.co_name
        for frame in dtls_socket.frames
        if any(value is dtls_connection for value in frame.f_locals.values())
    ]
    assert holders == []
