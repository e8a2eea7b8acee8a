"""The command line: every command, its options and their checks."""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path
from typing import Any

from .common import DEVICE_HELP, ENV_FACTORY_KEY, EXIT_HELP, PAYLOAD_RULE, URI_HELP

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
    from ..errors import PayloadError
    from ..payload import content_format_number

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
    from ..errors import PayloadError
    from ..payload import parse_option

    try:
        return parse_option(text)
    except PayloadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
