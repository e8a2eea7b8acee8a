"""``coapdev``: onboard to devices and use their resources from a terminal or a script.

Conventions, the same for every command:

- options may come before or after the command and its arguments, in any
  order (``coapdev put URI --type json on`` and ``coapdev --timeout 3 get URI``);
- a command that acts on one known device takes it as ``-d/--device DEVICE``
  (a device id, its name, or an address it is known at); commands whose only
  operand is the device also take it as a positional argument; it may be
  left out when only one device is known;
- every failure is one line on stderr, ``coapdev: WHAT: PROBLEM``, with the
  exit status below; device-supplied text is shown with control characters
  escaped (``--raw`` writes payloads byte for byte).

Exit status: 0 done, 1 error (also an error answer other than 4.01/4.03),
2 usage error, 3 handshake failed, 4 not authorized (4.01/4.03), 5 no answer,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .common import (
    EXIT_ERROR,
    EXIT_HANDSHAKE,
    EXIT_INTERRUPTED,
    EXIT_NOT_AUTHORIZED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Console,
    UsageError,
)
from .manage import (
    cmd_clients,
    cmd_credentials,
    cmd_devices,
    cmd_discover,
    cmd_forget,
    cmd_rekey,
)
from .onboarding import cmd_onboard
from .parser import build_parser, parse_args
from .requests import cmd_ls, cmd_observe, cmd_request

__all__ = [
    "EXIT_ERROR",
    "EXIT_HANDSHAKE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_AUTHORIZED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "parse_args",
]


# --- main and errors ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ..errors import CoapdevError, DeviceTimeout, HandshakeFailed, NotAuthorized

    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        return _fail(f"{exc} (see coapdev {args.command} --help)", EXIT_USAGE)
    except HandshakeFailed as exc:
        return _fail(exc, EXIT_HANDSHAKE)
    except NotAuthorized as exc:
        return _fail(exc, EXIT_NOT_AUTHORIZED)
    except DeviceTimeout as exc:
        return _fail(exc, EXIT_TIMEOUT)
    except CoapdevError as exc:
        return _fail(exc, EXIT_ERROR)
    except OSError as exc:
        return _fail((exc.strerror and f"{exc.filename or ''}: {exc.strerror}") or exc, EXIT_ERROR)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(problem: object, status: int) -> int:
    from ..client import escape_text

    message = escape_text(" ".join(str(problem).split())) or type(problem).__name__
    print(f"coapdev: {message.removeprefix(': ')}", file=sys.stderr, flush=True)
    return status


async def run(args: argparse.Namespace) -> int:
    from ..registry import DeviceRegistry, default_config_dir

    registry = DeviceRegistry(args.config_dir or default_config_dir())
    console = Console(args)
    command = args.command
    if command == "onboard":
        return await cmd_onboard(args, registry, console)
    if command in ("get", "put", "post", "delete", "fetch", "patch", "ipatch"):
        return await cmd_request(args, registry, console)
    if command == "observe":
        return await cmd_observe(args, registry, console)
    if command == "ls":
        return await cmd_ls(args, registry, console)
    if command == "devices":
        return cmd_devices(registry)
    if command == "forget":
        return await cmd_forget(args, registry, console)
    if command == "clients":
        return await cmd_clients(args, registry, console)
    if command == "rekey":
        return await cmd_rekey(args, registry, console)
    if command == "credentials":
        return cmd_credentials(args, registry)
    if command == "discover":
        return await cmd_discover(args)
    raise AssertionError(command)
