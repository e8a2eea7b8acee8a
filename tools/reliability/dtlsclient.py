"""A bare DTLS-PSK client on DTLSSocket: send any plaintext (or any datagram) in a session.

The fuzzer needs what a CoAP library would never send: malformed CoAP inside
a real, authenticated session, and handshake flights with a byte changed.
Blocking sockets, no asyncio: one object per session.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from DTLSSocket import dtls

from coapdev.dtls_numbers import TINYDTLS_EVENT_CONNECTED, AlertLevel

_EVENT_CONNECTED = TINYDTLS_EVENT_CONNECTED
_LEVEL_FATAL = AlertLevel.FATAL
_SENTINEL = ("::1", 1234)

#: ``mutate(index, datagram)``: the datagram to send instead of the index-th one.
Mutator = Callable[[int, bytes], bytes | None]


class RawDtlsClient:
    def __init__(
        self,
        host: str,
        port: int,
        identity: bytes,
        key: bytes,
        *,
        mutate: Mutator | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.server = (host, port)
        self.sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.2)
        self.mutate = mutate
        self.sent = 0
        self.received: list[bytes] = []
        #: Every datagram that arrived, as it arrived (records still encrypted).
        self.arrived: list[bytes] = []
        self.keep_arrived = False
        self.connected = False
        self.failed: int | None = None
        self.closed_by_peer = False
        self._dtls = dtls.DTLS(
            read=self._read,
            write=self._write,
            event=self._event,
            pskId=identity,
            pskStore={identity: key},
        )
        self._session = None

    # --- callbacks from tinydtls ---

    def _read(self, _addr: object, data: bytes) -> int:
        self.received.append(bytes(data))
        return len(data)

    def _write(self, _addr: object, data: bytes) -> int:
        out: bytes | None = bytes(data)
        if self.mutate is not None:
            out = self.mutate(self.sent, out)
        self.sent += 1
        if out is not None:
            with contextlib.suppress(OSError):
                self.sock.sendto(out, self.server)
        return len(data)

    def _event(self, level: int, code: int) -> int:
        if level == AlertLevel.EVENT and code == _EVENT_CONNECTED:
            self.connected = True
        elif level == _LEVEL_FATAL:
            self.failed = code
        elif level == 1 and code == 0:
            self.closed_by_peer = True
        return 0

    # --- use ---

    def handshake(self, timeout_s: float = 3.0) -> bool:
        self._session = self._dtls.connect(*_SENTINEL)
        deadline = time.monotonic() + timeout_s
        while not self.connected and self.failed is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.pump(min(0.1, remaining))
        return self.connected

    def pump(self, timeout_s: float = 0.05) -> int:
        """Feed what arrives within ``timeout_s`` to tinydtls; returns datagrams read."""
        self.sock.settimeout(max(timeout_s, 0.001))
        count = 0
        while True:
            try:
                data, _ = self.sock.recvfrom(4096)
            except (TimeoutError, BlockingIOError):
                break
            except OSError:
                break
            count += 1
            if self.keep_arrived:
                self.arrived.append(data)
            with contextlib.suppress(Exception):
                self._dtls.handleMessage(self._session, data)
            self.sock.settimeout(0.001)
        with contextlib.suppress(Exception):
            self._dtls.checkRetransmit()
        return count

    def send_plain(self, data: bytes) -> None:
        if self._session is not None and self.connected:
            with contextlib.suppress(Exception):
                self._dtls.write(self._session, data)

    def send_raw(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, self.server)

    def close(self, notify: bool = True) -> None:
        if self._session is not None and notify:
            with contextlib.suppress(Exception):
                self._dtls.resetPeer(self._session)
        self._session = None
        with contextlib.suppress(Exception):
            self.sock.close()
