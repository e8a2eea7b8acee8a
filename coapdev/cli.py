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
import contextlib
import functools
import math
import os
import shlex
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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


# --- argument parsing ---------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Positionals and options in any order, also in subcommands.

    argparse matches positionals greedily at their first chance, so
    ``put URI --type json on`` left ``on`` unrecognized; the intermixed
    parse (two passes: options, then positionals) has no such trap.
    """

    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        nested = any(
            a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions()
        )
        if nested or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def content_format_arg(text: str) -> int:
    from .errors import PayloadError
    from .payload import content_format_number

    try:
        return content_format_number(text)
    except PayloadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def block_size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value not in (16, 32, 64, 128, 256, 512, 1024):
        raise argparse.ArgumentTypeError(
            f"must be 16, 32, 64, 128, 256, 512 or 1024 bytes, got {text!r}"
        )
    return value


def option_arg(text: str) -> tuple[int, bytes]:
    from .errors import PayloadError
    from .payload import parse_option

    try:
        return parse_option(text)
    except PayloadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog="coapdev",
        description="Onboard to coapdev devices and use their resources over coaps://.",
        epilog=f"URI: {URI_HELP}. {EXIT_HELP}. Run 'coapdev COMMAND --help' for a command.",
    )
    p.add_argument("--version", action="version", version=f"coapdev {__version__}")
    _common_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    common = _Parser(add_help=False)
    _common_options(common, defaults=False)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # type: ignore[method-assign]

    ob = sub.add_parser(
        "onboard",
        help="onboard this client to a device with its factory key",
        description="Present the device's factory key and save the identity and key it mints. "
        f"The key comes from --key KEY, --key - (one line on stdin), ${ENV_FACTORY_KEY}, "
        "a QR code (--qr-text, --qr-image), or a prompt when run in a terminal. "
        "A device already onboarded here is refused (nothing is minted): "
        "forget it first, or --replace.",
        epilog=EXIT_HELP,
    )
    ob.add_argument(
        "device",
        nargs="?",
        help="coaps://HOST[:PORT], HOST[:PORT], or the device's mDNS name or id "
        "(may be left out with a QR code: its id is looked for)",
    )
    src = ob.add_mutually_exclusive_group()
    src.add_argument(
        "--key",
        help="the factory key from the device's label; - reads it from stdin "
        f"(a key on a command line is visible to other users: prefer -, ${ENV_FACTORY_KEY} "
        "or the prompt)",
    )
    src.add_argument("--qr-text", help="the text of the device's QR code, as a scanner shows it")
    src.add_argument("--qr-image", type=Path, help="a photo or scan of the device's QR label")
    ob.add_argument("--name", help="a name for this client on the device (default user@host)")
    ob.add_argument(
        "--text-key",
        action="store_true",
        help="ask for a printable key (for tools that take a PSK as text, like coap-client)",
    )
    ob.add_argument(
        "--replace",
        action="store_true",
        help="replace credentials already saved for this device: the new ones are saved "
        "first, then the old client is revoked on the device (an admin's role carries over)",
    )

    methods = {
        "get": ("send a GET request", False),
        "fetch": ("send a FETCH request (RFC 8132): GET with a payload", True),
        "delete": ("send a DELETE request", False),
        "put": ("send a PUT request", True),
        "post": ("send a POST request (may carry no payload)", True),
        "patch": ("send a PATCH request (RFC 8132)", True),
        "ipatch": ("send an iPATCH request (RFC 8132)", True),
    }
    for method, (text, has_payload) in methods.items():
        m = sub.add_parser(
            method,
            help=text,
            description=f"{text[0].upper()}{text[1:]}."
            + (f" {PAYLOAD_RULE}" if has_payload else ""),
            epilog=EXIT_HELP,
        )
        m.add_argument("uri", metavar="URI", help=URI_HELP)
        if has_payload:
            m.add_argument(
                "payload",
                metavar="PAYLOAD",
                nargs="?",
                help="the payload (see the typing rule above)",
            )
            m.add_argument(
                "-t",
                "--type",
                dest="payload_type",
                choices=["auto", "text", "json", "cbor"],
                help="how to read PAYLOAD (default auto)",
            )
            m.add_argument(
                "--file",
                metavar="FILE",
                help="send this file's bytes as the payload (- for stdin)",
            )
            m.add_argument("--empty", action="store_true", help="send an empty payload on purpose")
            m.add_argument(
                "--content-format",
                type=content_format_arg,
                metavar="FMT",
                help="Content-Format of the payload: a number (0-65535) or a name "
                "(text, json, cbor, octets, link-format, ...)",
            )
        _request_options(m)
        _output_options(m)

    obs = sub.add_parser(
        "observe",
        help="print a resource's state and every change",
        description="Print the state of a resource and every change, until --count values or "
        "Ctrl-C. It never gives up while access is allowed (--timeout bounds each "
        "attempt). While the device does not answer, say so on stderr, and again when it is "
        "back. With --exec, a local command runs for each value instead (no shell; the "
        "payload on stdin; COAPDEV_EVENT=value, lost (the device stopped answering, empty "
        "stdin) or restored (the first value after that), COAPDEV_DEVICE, COAPDEV_PATH, "
        "COAPDEV_CODE and COAPDEV_CONTENT_FORMAT in its environment). Arguments for the "
        "command: --exec-arg ARG (repeated; --exec-arg=-x for one starting with -), or "
        "everything after --: "
        "coapdev observe URI --exec hook.sh --count 2 -- ARG1 ARG2",
        epilog=EXIT_HELP,
    )
    obs.add_argument("uri", metavar="URI", help=URI_HELP)
    obs.add_argument("--count", type=positive_count, metavar="N", help="stop after N values")
    obs.add_argument("--exec", dest="exec_cmd", metavar="CMD", help="run CMD for each value")
    obs.add_argument(
        "--exec-arg",
        dest="exec_args",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for CMD (repeat for several)",
    )
    obs.add_argument(
        "--keepalive",
        type=positive_seconds,
        metavar="S",
        help="probe a silent observation every S seconds (default 3 x --timeout, at least 30)",
    )
    obs.add_argument("--accept", type=content_format_arg, metavar="FMT", help="ask for this format")
    obs.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        type=option_arg,
        metavar="NUMBER=VALUE",
        help="add a CoAP option (see get --help)",
    )
    obs.add_argument(
        "--raw",
        action="store_true",
        help="write each value's bytes as received, each followed by a newline unless it "
        "ends with one (use --exec to get values exactly)",
    )

    ls = sub.add_parser(
        "ls",
        help="list the resources this client may use on a device",
        description="List the resources of a device this client may use, from its "
        "/.well-known/core: path, methods, whether observable, formats, title.",
        epilog=EXIT_HELP,
    )
    _device_operand(ls)

    sub.add_parser("devices", help="list known devices", description="List the devices known here.")
    fg = sub.add_parser(
        "forget",
        help="delete a device's credentials from this machine",
        description="Delete a device's credentials from this machine. The device still "
        "lists this client unless --revoke revokes it there first.",
        epilog=EXIT_HELP,
    )
    _device_operand(fg)
    fg.add_argument("--revoke", action="store_true", help="first revoke this client on the device")

    cl = sub.add_parser(
        "clients",
        help="list, rename, change the role of or revoke a device's clients (admin)",
        description="Manage the clients of a device (listing and changes of others need "
        "the admin role; any client may rename or revoke itself).",
        epilog=EXIT_HELP,
    )
    csub = cl.add_subparsers(
        dest="clients_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    csub.add_parser = functools.partial(csub.add_parser, parents=[common])  # type: ignore[method-assign]
    cl_list = csub.add_parser("list", help="list clients", description="List a device's clients.")
    _device_operand(cl_list)
    cl_rev = csub.add_parser(
        "revoke",
        help="revoke a client",
        description="Revoke a client. Revoking this client itself also forgets its "
        "credentials here. The device refuses to revoke its last admin (4.09).",
    )
    cl_rev.add_argument("client", metavar="CLIENT", help="the client's id or name")
    _device_option(cl_rev)
    cl_ren = csub.add_parser("rename", help="rename a client", description="Rename a client.")
    cl_ren.add_argument("client", metavar="CLIENT", help="the client's id or name")
    cl_ren.add_argument("name", metavar="NAME", help="its new name")
    _device_option(cl_ren)
    cl_role = csub.add_parser(
        "role",
        help="make a client admin or user",
        description="Make a client admin or user. The device refuses to demote its last "
        "admin (4.09).",
    )
    cl_role.add_argument("client", metavar="CLIENT", help="the client's id or name")
    cl_role.add_argument("role", metavar="ROLE", choices=["admin", "user"], help="admin or user")
    _device_option(cl_role)

    rk = sub.add_parser(
        "rekey",
        help="rotate this client's key on a device",
        description="Rotate this client's identity and key on a device.",
        epilog=EXIT_HELP,
    )
    _device_operand(rk)

    cr = sub.add_parser(
        "credentials",
        help="show this client's credentials for other CoAP software",
        description="Print what another CoAP client needs to talk to a device as this "
        "client. The output holds the key: keep it private.",
    )
    crsub = cr.add_subparsers(
        dest="credentials_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    crsub.add_parser = functools.partial(crsub.add_parser, parents=[common])  # type: ignore[method-assign]
    ex = crsub.add_parser(
        "export",
        help="print credentials for libcoap's coap-client or aiocoap-client",
        description="libcoap: the -u IDENTITY -k KEY arguments of coap-client, quoted for a "
        "POSIX shell (a binary key as $'\\x..', which bash, zsh and ksh understand): "
        "eval coap-client-openssl $(coapdev credentials export --format libcoap) URI. "
        "aiocoap: a credentials file for aiocoap-client --credentials FILE.",
    )
    _device_operand(ex)
    ex.add_argument(
        "--format", required=True, choices=["libcoap", "aiocoap"], help="for which client"
    )

    ds = sub.add_parser(
        "discover",
        help="list coapdev devices on the local network (mDNS)",
        description="List coapdev devices that answer over mDNS.",
    )
    ds.add_argument(
        "--seconds",
        type=positive_seconds,
        default=3.0,
        metavar="S",
        help="how long to listen (default 3)",
    )
    return p


def _common_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted before and after the command (``coapdev --timeout 3 get ...``)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=default(10.0),
        metavar="S",
        help="give up after S seconds, everything included (default 10)",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=default(None),
        metavar="DIR",
        help="where known devices are kept (default: $COAPDEV_CONFIG_DIR or ~/.config/coapdev)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="show DTLS handshake steps and every CoAP message on stderr",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="print nothing on stderr but errors",
    )


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--device", dest="device_opt", metavar="DEVICE", help=DEVICE_HELP)


def _device_operand(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", metavar="DEVICE", nargs="?", help=DEVICE_HELP + " (same as -d)")
    _device_option(p)


def _request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accept",
        type=content_format_arg,
        metavar="FMT",
        help="ask for this Content-Format: a number or a name (json, cbor, text, ...)",
    )
    p.add_argument("--non", action="store_true", help="send a non-confirmable (NON) request")
    p.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        type=option_arg,
        metavar="NUMBER=VALUE",
        help="add a CoAP option by number or name (uri-query=a=1, 2048=0x0102): numbers "
        "for uint options, text for string options, text or 0xHEX for opaque ones; repeat "
        "for several",
    )
    p.add_argument(
        "--block-size",
        type=block_size_arg,
        metavar="BYTES",
        help="blockwise transfer size, 16 to 1024 (default 1024)",
    )


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--raw",
        action="store_true",
        help="write the payload's bytes as received (otherwise: pretty, control characters "
        "escaped)",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse, with ``observe ... --exec CMD -- ARGS`` handing ARGS to CMD untouched."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        head, tail = argv[:cut], argv[cut + 1 :]
        if "observe" in head:
            args = parser.parse_args(head)
            if args.command == "observe":
                if not args.exec_cmd:
                    parser.error("arguments after -- are for --exec CMD, which is missing")
                args.exec_args = [*args.exec_args, *tail]
                return args
    return parser.parse_args(argv)


# --- main and errors ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .errors import CoapdevError, DeviceTimeout, HandshakeFailed, NotAuthorized

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
    from .client import escape_text

    message = escape_text(" ".join(str(problem).split())) or type(problem).__name__
    print(f"coapdev: {message.removeprefix(': ')}", file=sys.stderr, flush=True)
    return status


class Console:
    """What the CLI says besides its output: notes (not with -q) and traces (-v)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quiet = bool(args.quiet)
        self.verbose = bool(args.verbose) and not self.quiet

    def note(self, text: str) -> None:
        if not self.quiet:
            from .client import escape_text

            print(f"coapdev: {escape_text(text)}", file=sys.stderr, flush=True)

    def trace(self, text: str) -> None:
        if self.verbose:
            from .client import escape_text

            print(f"* {escape_text(text)}", file=sys.stderr, flush=True)

    @property
    def tracer(self) -> Callable[[str], None] | None:
        return self.trace if self.verbose else None


async def run(args: argparse.Namespace) -> int:
    from .registry import DeviceRegistry, default_config_dir

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


@contextlib.contextmanager
def explained(registry: Any, address: Any) -> Iterator[None]:
    """Remember refused handshakes; explain silence that follows one (rate limiting)."""
    from .errors import DeviceTimeout, HandshakeFailed

    try:
        yield
    except HandshakeFailed:
        registry.note_handshake_failure(address)
        raise
    except DeviceTimeout as exc:
        if registry.recent_handshake_failure(address):
            raise type(exc)(
                f"{exc} — the device may be rate-limiting this address "
                "(a handshake from here failed recently)"
            ) from None
        raise


def make_client(
    args: argparse.Namespace, registry: Any, console: Console, creds: Any, **kwargs: Any
) -> Any:
    """A Client for a known device that rediscovers it by id, saving where it moved."""
    from .client import Client

    def moved(new: Any) -> None:
        console.note(f"device {new.device_id} moved to {new.address}")
        registry.save(new)

    return Client(
        creds,
        timeout_s=args.timeout,
        rediscover=True,
        on_moved=moved,
        trace=console.tracer,
        block_size=getattr(args, "block_size", None),
        **kwargs,
    )


# --- onboarding ---------------------------------------------------------------------


async def cmd_onboard(args: argparse.Namespace, registry: Any, console: Console) -> int:
    from .client import _onboard_at, locate
    from .keys import canonical_factory_key
    from .qr import parse_qr_text

    registry.check_writable()  # before anything is minted
    started = time.monotonic()
    qr = None
    if args.qr_text or args.qr_image:
        text = args.qr_text if args.qr_text else read_qr_image(args.qr_image)
        qr = parse_qr_text(text)
        key = qr.factory_key
    else:
        key = read_factory_key(args.key)
    key = canonical_factory_key(key)  # a typo fails here, before any packet
    located = await locate(
        args.device,
        device_id=qr.device_id if qr is not None else None,
        port=qr.port if qr is not None else None,
        timeout_s=min(LOCATE_TIMEOUT_S, args.timeout / 2),
    )
    known_id = located.device_id or (qr.device_id if qr is not None else "")
    old = _already_onboarded(registry, located, known_id)
    if old is not None and not args.replace:
        raise _onboarded_before(old, registry)
    remaining = max(args.timeout - (time.monotonic() - started), 0.5)
    with explained(registry, located.address):
        creds = await _onboard_at(
            located,
            key,
            args.name,
            text_key=args.text_key,
            timeout_s=remaining,
            trace=console.tracer,
        )
    if qr is not None and creds.device_id != qr.device_id:
        await _undo_mint(
            creds,
            args,
            f"the device at {located.address} is {creds.device_id}, not {qr.device_id} "
            "from the QR code",
        )
    if old is None:
        old = registry.find(creds.device_id)  # known under an address not recognised before
        if old is not None and not args.replace:
            await _undo_mint(creds, args, str(_onboarded_before(old, registry)))
    try:
        registry.save(creds)
    except Exception as exc:
        await _undo_mint(creds, args, str(exc))
    print(
        f"onboarded to device {creds.device_id} at {creds.address} as {creds.name!r} "
        f"(role {creds.role}); credentials saved in {registry.path}"
    )
    if old is not None:
        await _retire_replaced(old, creds, args, registry, console)
    return EXIT_OK


def read_factory_key(given: str | None) -> str:
    """The factory key from --key, --key - (stdin), the environment, or a prompt."""
    if given is not None and given != "-":
        return given
    if given == "-":
        line = sys.stdin.readline(MAX_KEY_INPUT_CHARS)
        if not line.strip():
            raise UsageError("--key -: no key on stdin")
        return line.strip()
    from_env = os.environ.get(ENV_FACTORY_KEY, "").strip()
    if from_env:
        return from_env
    if sys.stdin.isatty():
        import getpass

        typed = getpass.getpass("Factory key (from the device's label): ")
        if typed.strip():
            return typed.strip()[:MAX_KEY_INPUT_CHARS]
    raise UsageError(
        f"give the factory key: --key KEY, --key - (stdin), ${ENV_FACTORY_KEY}, "
        "--qr-text or --qr-image"
    )


def _already_onboarded(registry: Any, located: Any, device_id: str) -> Any:
    """Credentials saved here for the device about to be onboarded, if recognisable."""
    if device_id:
        found = registry.find(device_id)
        if found is not None:
            return found
    for address in [located.address, *located.addresses]:
        matches = registry.known_at(address)
        if matches:
            return matches[0]
    return None


def _onboarded_before(old: Any, registry: Any) -> Any:
    from .client import escape_text
    from .errors import ClientError

    if old.role == "admin":  # the device may refuse to revoke its last admin
        how = (
            "onboard with --replace (the admin role carries over), or drop these credentials "
            f"with 'coapdev forget {old.device_id}' (the device keeps listing the client)"
        )
    else:
        how = f"run 'coapdev forget {old.device_id} --revoke' first, or onboard with --replace"
    return ClientError(
        f"device {old.device_id} is already onboarded here as client {escape_text(old.name)!r} "
        f"({old.role or 'unknown role'}, id {old.client_id}), credentials in {registry.path}; "
        f"nothing was minted: {how}"
    )


async def _undo_mint(creds: Any, args: argparse.Namespace, problem: str) -> None:
    """The new client cannot be kept: revoke it on the device, or say how to. Always raises."""
    from .client import escape_text, revoke_self
    from .errors import ClientError

    try:
        await revoke_self(creds, timeout_s=args.timeout)
    except ClientError as exc:
        raise ClientError(
            f"{problem}; the device now holds client {escape_text(creds.name)!r} "
            f"(id {creds.client_id}) whose key was not saved, and revoking it failed "
            f"({exc}): revoke it with 'coapdev clients revoke {creds.client_id}' as an admin, "
            f"or 'coapdev-gateway clients revoke {creds.client_id} --force' on the device"
        ) from None
    raise ClientError(f"{problem}; the client just minted was revoked again on the device")


async def _retire_replaced(
    old: Any, new: Any, args: argparse.Namespace, registry: Any, console: Console
) -> None:
    """After --replace: carry an admin role over, then revoke the old client."""
    from dataclasses import replace

    from .client import Client, revoke_self
    from .errors import ClientError, HandshakeRejected

    if old.device_id != new.device_id or old.client_id == new.client_id:
        return  # another device now answers at the old one's address: leave that one alone
    try:
        if old.role == "admin" and new.role != "admin":
            async with Client(old, timeout_s=args.timeout) as client:
                await client.put(f"/clients/{new.client_id}", {"role": "admin"})
            new = replace(new, role="admin")
            registry.save(new)
        await revoke_self(old, timeout_s=args.timeout)
    except HandshakeRejected:
        print(f"replaced the old credentials (client {old.client_id} was no longer accepted)")
        return
    except ClientError as exc:
        console.note(
            f"new credentials saved, but the old client {old.client_id} could not be revoked "
            f"({exc}); revoke it with 'coapdev clients revoke {old.client_id}'"
        )
        return
    print(
        f"replaced client {old.name!r} ({old.client_id}): revoked on the device; "
        f"new role {new.role}"
    )


def read_qr_image(path: Path) -> str:
    from .errors import InvalidQRPayload

    try:
        import zxingcpp
        from PIL import Image
    except ImportError:
        raise InvalidQRPayload(
            "reading QR images needs zxing-cpp and pillow: pip install 'coapdev[images]'"
        ) from None
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError) as exc:
        raise InvalidQRPayload(f"{path}: not a readable image ({exc})") from None
    results = zxingcpp.read_barcodes(image)
    texts = [r.text for r in results if r.text]
    coapdev_texts = [t for t in texts if t.upper().startswith("COAPDEV:")]
    if coapdev_texts:
        return coapdev_texts[0]
    if texts:
        raise InvalidQRPayload(f"{path}: the code in this image is not a coapdev QR code")
    raise InvalidQRPayload(f"{path}: no QR code found in this image")


# --- requests -----------------------------------------------------------------------


def resolve_target(registry: Any, uri: str) -> tuple[Any, str]:
    """(credentials, path) for a URI as typed."""
    from .client import escape_text, parse_address
    from .errors import ClientError, UnknownDevice

    if uri.startswith("/"):
        return _only_device(registry), uri
    if "://" in uri:
        try:
            _, path = parse_address(uri)
        except ClientError:
            raise UnknownDevice(f"{escape_text(uri)}: not a URI or known device") from None
        authority = uri.split("://", 1)[1].split("/", 1)[0]
        return registry.resolve(authority), path
    head, _, rest = uri.partition("/")
    return registry.resolve(head), "/" + rest


def _only_device(registry: Any) -> Any:
    from .errors import UnknownDevice

    devices = registry.load()
    if len(devices) == 1:
        return next(iter(devices.values()))
    if not devices:
        raise UnknownDevice("no known devices; onboard one first (coapdev onboard)")
    raise UnknownDevice(
        f"several devices are known ({', '.join(sorted(devices))}); name one "
        "(DEVICE/PATH, or -d DEVICE)"
    )


def _device_creds(registry: Any, args: argparse.Namespace) -> Any:
    positional = getattr(args, "device", None)
    option = getattr(args, "device_opt", None)
    if positional and option and positional != option:
        raise UsageError(f"two devices given ({positional} and {option}); name one")
    ref = positional or option
    return registry.resolve(ref) if ref else _only_device(registry)


async def cmd_request(args: argparse.Namespace, registry: Any, console: Console) -> int:
    creds, path = resolve_target(registry, args.uri)
    body, fmt = read_payload(args) if hasattr(args, "payload") else (b"", None)
    method = args.command.upper()
    client = make_client(args, registry, console, creds)
    with explained(registry, creds.address):
        async with client:
            try:
                response = await client.request(
                    method,
                    path,
                    body,
                    content_format=fmt,
                    accept=args.accept,
                    options=args.options,
                    confirmable=not args.non,
                )
            except Exception as exc:
                raise await with_suggestion(client, exc, path) from None
    show(response, args.raw, console=console)
    return EXIT_OK


async def with_suggestion(client: Any, exc: Exception, path: str) -> Exception:
    """A 4.04 gains "did you mean" from the device's /.well-known/core."""
    import difflib

    from .errors import ClientError, RequestFailed

    if not isinstance(exc, RequestFailed) or exc.code != "4.04":
        return exc
    try:
        links = await client.resources()
    except ClientError:
        return exc
    wanted = path.split("?", 1)[0]
    close = difflib.get_close_matches(wanted, [link.path for link in links], n=3, cutoff=0.7)
    if not close:
        return exc
    from .client import escape_text

    hint = " or ".join(escape_text(c) for c in close)
    better = RequestFailed(exc.code, f"{exc} (did you mean {hint}?)")
    better.args = (f"{exc} (did you mean {hint}?)",)
    return better


def read_payload(args: argparse.Namespace) -> tuple[bytes, int | None]:
    """(bytes, content format) from PAYLOAD, --file, or piped stdin, typed by the one rule."""
    from .const import ContentFormat
    from .errors import PayloadError
    from .payload import parse_typed_payload

    sources = [s for s in (args.payload is not None, args.file is not None) if s]
    if len(sources) > 1:
        raise UsageError("give a PAYLOAD or --file, not both")
    kind = args.payload_type
    fmt = args.content_format
    if args.file is not None:
        data = _read_file(args.file)
        if kind is None and fmt is None:
            return _checked_empty(args, data), ContentFormat.OCTET_STREAM
        text: str | None = _as_text(data, args.file)
    elif args.payload is not None:
        text = args.payload
    elif _stdin_is_piped():
        text = _as_text(_read_stream(sys.stdin.buffer, "stdin"), "stdin")
    else:
        text = ""
    if text == "":
        return _checked_empty(args, b""), fmt
    if kind is None:
        kind = {
            ContentFormat.CBOR: "cbor",
            ContentFormat.JSON: "json",
            ContentFormat.TEXT: "text",
        }.get(fmt, "auto" if fmt is None else "verbatim")
    try:
        if kind == "verbatim":
            return text.encode(), fmt
        body, chosen = parse_typed_payload(text, kind)
    except PayloadError as exc:
        raise UsageError(f"PAYLOAD: {exc}") from None
    return body, chosen if fmt is None else fmt


def _checked_empty(args: argparse.Namespace, data: bytes) -> bytes:
    if not data and not args.empty and args.command != "post":
        raise UsageError(
            f"{args.command}: no payload (give PAYLOAD, --file, or pipe it in; --empty sends none)"
        )
    return data


def _stdin_is_piped() -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def _read_file(name: str) -> bytes:
    from .errors import ClientError

    if name == "-":
        return _read_stream(sys.stdin.buffer, "stdin")
    try:
        with open(name, "rb") as f:
            return _read_stream(f, name)
    except OSError as exc:
        raise ClientError(f"{name}: {exc.strerror}") from None


def _read_stream(stream: Any, name: str) -> bytes:
    from .errors import ClientError

    data = stream.read(MAX_PAYLOAD_BYTES + 1)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ClientError(f"{name}: payload larger than {MAX_PAYLOAD_BYTES} bytes")
    return data


def _as_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            f"{name}: not UTF-8 text; send binary data with --file (octet-stream)"
        ) from None


def show(response: Any, raw: bool, *, console: Console, compact: bool = False) -> None:
    from .client import code_name
    from .errors import PayloadError
    from .payload import format_for_humans

    if raw:
        sys.stdout.buffer.write(response.payload)
        sys.stdout.flush()
        return
    if not response.payload:
        if sys.stdout.isatty() and not console.quiet:
            print(f"{code_name(response.code)} (no payload)", flush=True)
        return
    try:
        text = format_for_humans(response.payload, response.content_format, compact=compact)
    except PayloadError:
        text = response.payload.hex(" ")
    text = _printable(text)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _printable(text: str) -> str:
    """Device text for a terminal: lines and tabs kept, other control characters escaped."""
    from .client import escape_text

    return "\n".join(
        "\t".join(escape_text(p) for p in line.split("\t")) for line in text.split("\n")
    )


async def cmd_observe(args: argparse.Namespace, registry: Any, console: Console) -> int:
    creds, path = resolve_target(registry, args.uri)
    seen = 0
    lost = False
    pending: list[tuple[str, Any]] = []

    def on_lost(observed: str, reason: str) -> None:
        nonlocal lost
        lost = True
        console.note(
            f"observe {observed}: device {creds.device_id} stopped answering ({reason}); "
            "still trying"
        )
        pending.append(("lost", None))

    def on_restored(observed: str) -> None:
        nonlocal lost
        if lost:
            console.note(f"observe {observed}: device {creds.device_id} answers again")
            pending.append(("restored", None))
        else:
            console.note(f"observation of {observed} re-registered on a new session")
        lost = False

    client = make_client(
        args,
        registry,
        console,
        creds,
        on_observe_restored=on_restored,
        on_observe_lost=on_lost,
        keepalive_s=args.keepalive,
    )
    argv = [args.exec_cmd, *args.exec_args] if args.exec_cmd else None
    with explained(registry, creds.address):
        async with client:
            stream = client.observe(path, accept=args.accept, options=args.options)
            async for event, response in _with_events(stream, pending):
                if argv is not None:
                    await run_for_notification(argv, response, creds, path, event)
                    if event == "lost":
                        continue
                elif event == "lost":
                    continue
                elif args.raw:
                    payload = response.payload
                    sys.stdout.buffer.write(payload if payload.endswith(b"\n") else payload + b"\n")
                    sys.stdout.flush()
                else:
                    show(response, False, console=console, compact=True)  # one line per value
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
    return EXIT_OK


async def _with_events(stream: Any, pending: list[tuple[str, Any]]) -> Any:
    """(event, response) pairs: "value", "restored" (first value after a loss) and "lost".

    A loss is reported while the stream is still waiting for the device, so
    a hook hears of it then, not only once the device is back.
    """
    restored_next = False
    iterator = stream.__aiter__()
    next_value = asyncio.ensure_future(iterator.__anext__())
    try:
        while True:
            while pending:
                event, _ = pending.pop(0)
                if event == "lost":
                    yield "lost", None
                else:
                    restored_next = True
            done, _ = await asyncio.wait({next_value}, timeout=0.2)
            if not done:
                continue
            try:
                response = next_value.result()
            except StopAsyncIteration:
                return
            while pending:  # a loss and its recovery may both precede this value
                event, _ = pending.pop(0)
                if event == "lost":
                    yield "lost", None
                else:
                    restored_next = True
            yield ("restored" if restored_next else "value"), response
            restored_next = False
            next_value = asyncio.ensure_future(iterator.__anext__())
    finally:
        next_value.cancel()
        with contextlib.suppress(BaseException):
            await next_value
        with contextlib.suppress(Exception):
            await iterator.aclose()


async def run_for_notification(
    argv: list[str], response: Any, creds: Any, path: str, event: str = "value"
) -> None:
    """Run a local command for one notification: no shell, payload on stdin."""
    from .errors import ClientError

    env = dict(os.environ)
    env.update(
        COAPDEV_EVENT=event,
        COAPDEV_DEVICE=creds.device_id,
        COAPDEV_PATH=path,
        COAPDEV_CODE="" if response is None else response.code,
        COAPDEV_CONTENT_FORMAT=""
        if response is None or response.content_format is None
        else str(int(response.content_format)),
    )
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, env=env)
    except OSError as exc:
        raise ClientError(f"--exec {argv[0]}: {exc.strerror or exc}") from None
    await proc.communicate(b"" if response is None else response.payload)
    if proc.returncode:
        print(f"coapdev: {argv[0]} exited with status {proc.returncode}", file=sys.stderr)


async def cmd_ls(args: argparse.Namespace, registry: Any, console: Console) -> int:
    from .client import escape_text
    from .payload import content_format_name

    creds = _device_creds(registry, args)
    with explained(registry, creds.address):
        async with make_client(args, registry, console, creds) as client:
            links = await client.resources()
    for link in sorted(links, key=lambda link: link.path):
        methods = ",".join(link.methods) or "-"
        formats = " ".join(
            content_format_name(int(c)) if c.isdigit() else c
            for c in link.attributes.get("ct", "").split()
        )
        columns = [
            f"{escape_text(link.path):24}",
            f"{methods:22}",
            f"{'observable' if link.observable else '':10}",
            f"{formats:12}",
            escape_text(link.attributes.get("title", "")),
        ]
        print(" ".join(columns).rstrip())
    return EXIT_OK


# --- device management --------------------------------------------------------------


def cmd_devices(registry: Any) -> int:
    from .client import escape_text

    devices = registry.load()
    if not devices:
        print("no known devices (coapdev onboard DEVICE --key KEY)", file=sys.stderr)
        return EXIT_OK
    for creds in devices.values():
        name = escape_text(creds.device_name) or "-"
        print(
            f"{creds.device_id:12} {name:24} {creds.address!s:32} "
            f"{escape_text(creds.name)} ({creds.role})"
        )
    return EXIT_OK


async def cmd_forget(args: argparse.Namespace, registry: Any, console: Console) -> int:
    from .client import escape_text, revoke_self

    creds = _device_creds(registry, args)
    if args.revoke:
        with explained(registry, creds.address):
            await revoke_self(creds, timeout_s=args.timeout, trace=console.tracer)
    registry.forget(creds.device_id)
    if args.revoke:
        print(
            f"revoked client {escape_text(creds.name)!r} on device {creds.device_id} and forgot it"
        )
    else:
        print(f"forgot device {creds.device_id}")
        console.note(
            f"device {creds.device_id} still lists client {escape_text(creds.name)!r} "
            f"(id {creds.client_id}); revoke it there if it is no longer used"
        )
    return EXIT_OK


async def cmd_clients(args: argparse.Namespace, registry: Any, console: Console) -> int:
    from urllib.parse import quote

    from .client import escape_text, revoke_self

    creds = _device_creds(registry, args)
    action = args.clients_command
    with explained(registry, creds.address):
        async with make_client(args, registry, console, creds) as client:
            if action == "list":
                for c in (await client.get("/clients")).value:
                    seen = c.get("last-seen")
                    when = (
                        time.strftime("%Y-%m-%d %H:%M", time.localtime(seen)) if seen else "never"
                    )
                    me = "  (this client)" if c.get("self") else ""
                    print(
                        f"{escape_text(str(c['id'])):14} {escape_text(str(c['role'])):6} "
                        f"{escape_text(str(c['name'])):24} last seen {when}{me}"
                    )
                return EXIT_OK
            target = (await client.get(f"/clients/{quote(args.client, safe='')}")).value
            target_id, target_name = str(target["id"]), escape_text(str(target["name"]))
            if action == "revoke" and target_id == creds.client_id:
                await client.close()
                await revoke_self(client.credentials, timeout_s=args.timeout, trace=console.tracer)
                registry.forget(creds.device_id)
                print(
                    f"revoked {target_name} ({target_id}), this client; forgot its credentials "
                    f"for device {creds.device_id}"
                )
            elif action == "revoke":
                await client.delete(f"/clients/{target_id}")
                print(f"revoked {target_name} ({target_id})")
            elif action == "rename":
                r = await client.put(f"/clients/{target_id}", {"name": args.name})
                print(f"renamed {target_id} to {escape_text(str(r.value['name']))!r}")
            elif action == "role":
                r = await client.put(f"/clients/{target_id}", {"role": args.role})
                print(f"{escape_text(str(r.value['name']))} is now {r.value['role']}")
    return EXIT_OK


async def cmd_rekey(args: argparse.Namespace, registry: Any, console: Console) -> int:
    from .client import rekey

    creds = _device_creds(registry, args)
    with explained(registry, creds.address):
        new = await rekey(creds, timeout_s=args.timeout, save=registry.save)
    print(f"new key in use on device {new.device_id}; identity {new.identity}")
    return EXIT_OK


def cmd_credentials(args: argparse.Namespace, registry: Any) -> int:
    import json

    from .errors import ClientError

    creds = _device_creds(registry, args)
    if args.format == "aiocoap":
        entry = {
            "dtls": {
                "psk": {"hex": creds.key.hex()},
                "client-identity": {"ascii": creds.identity},
            }
        }
        patterns = {}
        for address in creds.known_at():
            patterns[f"{address.uri_base}/*"] = entry
            if address.port == 5684:  # aiocoap leaves the default port out of URIs
                patterns[f"coaps://{address.hostinfo.rsplit(':', 1)[0]}/*"] = entry
        print(json.dumps(patterns, indent=2))
        return EXIT_OK
    if b"\x00" in creds.key:
        raise ClientError(
            "this key holds a zero byte, which no command line can carry; onboard again with "
            "--text-key --replace for a printable key"
        )
    print(f"-u {shlex.quote(creds.identity)} -k {_shell_bytes(creds.key)}")
    return EXIT_OK


def _shell_bytes(data: bytes) -> str:
    """A key for a POSIX shell: quoted text if printable, else $'\\xNN...'."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return shlex.quote(text)
    return "$'" + "".join(f"\\x{b:02x}" for b in data) + "'"


async def cmd_discover(args: argparse.Namespace) -> int:
    from .client import escape_text
    from .discovery import browse

    found = await browse(args.seconds)
    if not found:
        print(f"no coapdev devices answered within {args.seconds:g} s", file=sys.stderr)
        return EXIT_OK
    for dev in found:
        state = "open" if dev.onboarding_open else "closed"
        addresses = ", ".join(dev.addresses)
        print(
            f"{escape_text(dev.device_id):12} {escape_text(dev.name):28} port {dev.port:<5} "
            f"onboarding {state:6} {addresses}"
        )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
