"""What every part of the CLI shares: exit statuses, limits, help texts, the console, clients."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_HANDSHAKE = 3
EXIT_NOT_AUTHORIZED = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

#: Environment variable the factory key may come from (``coapdev onboard``).
ENV_FACTORY_KEY = "COAPDEV_FACTORY_KEY"
#: Longest factory key text read from stdin or a prompt (a key is 16 characters).
MAX_KEY_INPUT_CHARS = 256
#: Longest payload read from stdin or a file: well above any device's input
#: limit (coapdev-gateway's resources take 64 KiB at most), far below memory.
MAX_PAYLOAD_BYTES = 1 << 20
#: How long ``onboard`` looks for a device named by mDNS name or id.
LOCATE_TIMEOUT_S = 3.0

URI_HELP = (
    "coaps://HOST[:PORT]/PATH, HOST[:PORT]/PATH, DEVICE/PATH (DEVICE: id or name), "
    "or /PATH when only one device is known; ?QUERY may follow the path"
)
DEVICE_HELP = "a known device: its id, its name, or an address it is known at"
PAYLOAD_RULE = (
    "PAYLOAD typing (-t auto, the default): text that starts like structured "
    "data ({, [, \", h', b64', <<) is JSON or CBOR diagnostic notation and is "
    "sent as CBOR; anything else (on, 1, true, hello) is sent as UTF-8 text. "
    "-t text|json|cbor forces one. With --content-format alone, cbor/json/text "
    "choose the same way and any other format sends the text as it is. "
    "Without PAYLOAD the payload is read from stdin when it is piped; "
    "--file FILE (- for stdin) sends a file byte for byte (octet-stream unless "
    "-t or --content-format says otherwise). An empty payload is refused "
    "unless --empty (POST may be empty)."
)
EXIT_HELP = (
    "exit status: 0 done, 1 error, 2 usage error, 3 handshake failed, "
    "4 not authorized (4.01/4.03), 5 no answer"
)


class UsageError(Exception):
    """The command line asks for something impossible (exit status 2)."""


class Console:
    """What the CLI says besides its output: notes (not with -q) and traces (-v)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quiet = bool(args.quiet)
        self.verbose = bool(args.verbose) and not self.quiet

    def note(self, text: str) -> None:
        if not self.quiet:
            from ..client import escape_text

            print(f"coapdev: {escape_text(text)}", file=sys.stderr, flush=True)

    def trace(self, text: str) -> None:
        if self.verbose:
            from ..client import escape_text

            print(f"* {escape_text(text)}", file=sys.stderr, flush=True)

    @property
    def tracer(self) -> Callable[[str], None] | None:
        return self.trace if self.verbose else None


def explained(registry: Any, address: Any) -> contextlib.AbstractContextManager[None]:
    """Remember refused handshakes; explain silence that follows one (rate limiting)."""
    return registry.remembering_handshakes(address)


def make_client(
    args: argparse.Namespace, registry: Any, console: Console, creds: Any, **kwargs: Any
) -> Any:
    """A Client for a known device that rediscovers it by id, saving where it moved."""

    def moved(new: Any) -> None:
        console.note(f"device {new.device_id} moved to {new.address}")

    return registry.client(
        creds,
        on_moved=moved,
        timeout_s=args.timeout,
        trace=console.tracer,
        block_size=getattr(args, "block_size", None),
        **kwargs,
    )
