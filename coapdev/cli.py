"""``coapdev``: onboard to devices and use their resources from a terminal or a script.

Every failure is one line on stderr and a non-zero exit status:
1 other errors, 3 handshake failed, 4 not authorized, 5 no answer (timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from pathlib import Path
from typing import Any

EXIT_ERROR = 1
EXIT_HANDSHAKE = 3
EXIT_NOT_AUTHORIZED = 4
EXIT_TIMEOUT = 5

_ACCEPT = {"cbor": 60, "json": 50, "text": 0}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="coapdev",
        description="Onboard to coapdev devices and use their resources over coaps://.",
        epilog="URIs: coaps://HOST[:PORT]/PATH, HOST[:PORT]/PATH, DEVICE-ID/PATH, "
        "or /PATH when only one device is known.",
    )
    p.add_argument("--version", action="version", version=f"coapdev {__version__}")
    _common_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # type: ignore[method-assign]

    ob = sub.add_parser("onboard", help="onboard this client to a device with its factory key")
    ob.add_argument(
        "device", nargs="?", help="coaps://HOST[:PORT] or HOST[:PORT] (or a discovered name or id)"
    )
    src = ob.add_mutually_exclusive_group(required=True)
    src.add_argument("--key", help="the factory key from the device's label")
    src.add_argument("--qr-text", help="the text of the device's QR code, as a scanner shows it")
    src.add_argument("--qr-image", type=Path, help="a photo or scan of the device's QR label")
    ob.add_argument("--name", help="a name for this client on the device (default user@host)")
    ob.add_argument(
        "--text-key",
        action="store_true",
        help="ask for a printable key (for tools that take a PSK as text)",
    )

    for method in ("get", "put", "post", "delete"):
        m = sub.add_parser(method, help=f"send a {method.upper()} request")
        m.add_argument("uri")
        if method in ("put", "post"):
            m.add_argument(
                "payload",
                nargs="?",
                help="JSON or CBOR diagnostic notation; a bare word is sent as text",
            )
            m.add_argument(
                "--type",
                dest="payload_type",
                default="auto",
                choices=["auto", "json", "cbor", "text"],
                help="how to read PAYLOAD (default auto)",
            )
            m.add_argument("--file", type=Path, help="send this file's bytes as the payload")
            m.add_argument(
                "--content-format",
                type=int,
                metavar="N",
                help="content format number for --file (default 42, octets)",
            )
        _output_options(m)

    obs = sub.add_parser("observe", help="print a resource's state and every change")
    obs.add_argument("uri")
    obs.add_argument("--count", type=int, metavar="N", help="stop after N values")
    obs.add_argument(
        "--exec",
        dest="exec_argv",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="run CMD (no shell) for each value, payload on stdin; must come last",
    )
    _output_options(obs)

    sub.add_parser("devices", help="list known devices")
    fg = sub.add_parser("forget", help="delete a device's credentials from this machine")
    fg.add_argument("device")

    cl = sub.add_parser("clients", help="list, rename or revoke a device's clients (admin)")
    csub = cl.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    csub.add_parser = functools.partial(csub.add_parser, parents=[common])  # type: ignore[method-assign]
    cl_list = csub.add_parser("list", help="list clients")
    cl_list.add_argument("device", nargs="?")
    cl_rev = csub.add_parser("revoke", help="revoke a client by id or name")
    cl_rev.add_argument("client")
    cl_rev.add_argument("--device")
    cl_ren = csub.add_parser("rename", help="rename a client")
    cl_ren.add_argument("client")
    cl_ren.add_argument("name")
    cl_ren.add_argument("--device")
    cl_role = csub.add_parser("role", help="make a client admin or user")
    cl_role.add_argument("client")
    cl_role.add_argument("role", choices=["admin", "user"])
    cl_role.add_argument("--device")

    rk = sub.add_parser("rekey", help="rotate this client's key on a device")
    rk.add_argument("device", nargs="?")

    ds = sub.add_parser("discover", help="list coapdev devices on the local network (mDNS)")
    ds.add_argument(
        "--seconds", type=float, default=3.0, metavar="S", help="how long to listen (default 3)"
    )
    return p


def _common_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted before and after the command (``coapdev --timeout 3 get ...``)."""
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0 if defaults else argparse.SUPPRESS,
        metavar="S",
        help="give up on a device after S seconds (default 10)",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None if defaults else argparse.SUPPRESS,
        metavar="DIR",
        help="where known devices are kept (default: the user config dir)",
    )


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept", choices=sorted(_ACCEPT), help="ask for this content format")
    p.add_argument("--raw", action="store_true", help="write the payload bytes as received")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import (
        CoapdevError,
        DeviceTimeout,
        HandshakeFailed,
        NotAuthorized,
    )

    try:
        return asyncio.run(run(args))
    except HandshakeFailed as exc:
        return _fail(exc, EXIT_HANDSHAKE)
    except NotAuthorized as exc:
        return _fail(exc, EXIT_NOT_AUTHORIZED)
    except DeviceTimeout as exc:
        return _fail(exc, EXIT_TIMEOUT)
    except CoapdevError as exc:
        return _fail(exc, EXIT_ERROR)
    except OSError as exc:
        return _fail(exc, EXIT_ERROR)
    except KeyboardInterrupt:
        return 130


def _fail(exc: BaseException, status: int) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"coapdev: {message}", file=sys.stderr)
    return status


async def run(args: argparse.Namespace) -> int:
    from .registry import DeviceRegistry, default_config_dir

    registry = DeviceRegistry(args.config_dir or default_config_dir())
    command = args.command
    if command == "onboard":
        return await cmd_onboard(args, registry)
    if command in ("get", "put", "post", "delete"):
        return await cmd_request(args, registry)
    if command == "observe":
        return await cmd_observe(args, registry)
    if command == "devices":
        return cmd_devices(registry)
    if command == "forget":
        creds = registry.resolve(args.device)
        registry.forget(creds.device_id)
        print(f"forgot device {creds.device_id}")
        return 0
    if command == "clients":
        return await cmd_clients(args, registry)
    if command == "rekey":
        return await cmd_rekey(args, registry)
    if command == "discover":
        return await cmd_discover(args)
    raise AssertionError(command)


# --- onboarding ---------------------------------------------------------------------


async def cmd_onboard(args: argparse.Namespace, registry: Any) -> int:
    from .client import onboard
    from .qr import parse_qr_text

    key = args.key
    qr = None
    if args.qr_text or args.qr_image:
        text = args.qr_text if args.qr_text else read_qr_image(args.qr_image)
        qr = parse_qr_text(text)
        key = qr.factory_key
    address = await locate_device(args.device, qr)
    creds = await onboard(address, key, args.name, text_key=args.text_key, timeout_s=args.timeout)
    if qr is not None and creds.device_id != qr.device_id:
        from .errors import ClientError

        raise ClientError(
            f"the device at {address} is {creds.device_id}, not {qr.device_id} from the QR code"
        )
    registry.save(creds)
    print(
        f"onboarded to device {creds.device_id} at {creds.address} as {creds.name!r} "
        f"(role {creds.role}); credentials saved in {registry.path}"
    )
    return 0


async def locate_device(ref: str | None, qr: Any = None) -> Any:
    """The address of a device named by address, mDNS name or id (or the QR code's id)."""
    from .client import DeviceAddress, parse_address
    from .discovery import can_resolve, find, looks_like_address
    from .errors import UnknownDevice

    if ref and looks_like_address(ref):
        address, _ = parse_address(ref)
        if qr is not None and qr.port and ":" not in ref.split("://")[-1].rsplit("]", 1)[-1]:
            address = DeviceAddress(address.host, qr.port)
        return address
    wanted = ref or (qr.device_id if qr is not None else None)
    if not wanted:
        raise UnknownDevice("name the device: HOST[:PORT], its mDNS name or its id")
    found = await find(wanted, seconds=3.0)
    if found is not None:
        return DeviceAddress(found.address, found.port)
    if ref and can_resolve(ref):
        return DeviceAddress(ref, qr.port if qr is not None and qr.port else 5684)
    raise UnknownDevice(
        f"no device {wanted!r} answered on mDNS within 3 s (and it is not a "
        "host name); give its address"
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
    from .client import parse_address
    from .errors import ClientError, UnknownDevice

    devices = registry.load()
    if uri.startswith("/"):
        if len(devices) == 1:
            return next(iter(devices.values())), uri
        if not devices:
            raise UnknownDevice("no known devices; onboard one first (coapdev onboard)")
        raise UnknownDevice(
            f"several devices are known ({', '.join(sorted(devices))}); put one before the path"
        )
    head, _, rest = uri.partition("/")
    if "://" not in uri and (head in devices or head.upper() in devices):
        return registry.resolve(head), "/" + rest
    try:
        _, path = parse_address(uri)
    except ClientError:
        raise UnknownDevice(f"{uri}: not a URI or known device") from None
    authority = uri.split("://", 1)[-1].split("/", 1)[0]
    return registry.resolve(authority), path


def _accept(args: argparse.Namespace) -> int | None:
    return _ACCEPT[args.accept] if getattr(args, "accept", None) else None


async def with_rediscovery(registry: Any, creds: Any, timeout_s: float, action: Any) -> Any:
    """Run ``action(client)``; if the device does not answer, find it again by id (mDNS).

    A device whose address changed (DHCP) is found at its new address, which
    is saved for next time.
    """
    from dataclasses import replace

    from .client import Client, DeviceAddress
    from .discovery import find
    from .errors import DeviceTimeout

    try:
        async with Client(creds, timeout_s=timeout_s) as client:
            return await action(client)
    except DeviceTimeout:
        found = await find(creds.device_id, seconds=3.0)
        moved = found is not None and DeviceAddress(found.address, found.port) != creds.address
        if not moved:
            raise
        assert found is not None
        creds = replace(creds, address=DeviceAddress(found.address, found.port))
        print(f"coapdev: device {creds.device_id} moved to {creds.address}", file=sys.stderr)
        registry.save(creds)
        async with Client(creds, timeout_s=timeout_s) as client:
            return await action(client)


async def cmd_request(args: argparse.Namespace, registry: Any) -> int:
    creds, path = resolve_target(registry, args.uri)
    body: bytes = b""
    fmt: int | None = None
    if args.command in ("put", "post"):
        body, fmt = read_payload(args)

    async def send(client: Any) -> Any:
        return await client.request(
            args.command.upper(), path, body, content_format=fmt, accept=_accept(args)
        )

    response = await with_rediscovery(registry, creds, args.timeout, send)
    if response.payload:
        show(response, args.raw)
    elif not args.raw:
        print(str(response), file=sys.stderr)
    return 0


def read_payload(args: argparse.Namespace) -> tuple[bytes, int | None]:
    from .errors import ClientError
    from .payload import parse_typed_payload

    if args.file is not None:
        if args.payload is not None:
            raise ClientError("give a PAYLOAD or --file, not both")
        try:
            return args.file.read_bytes(), (
                42 if args.content_format is None else args.content_format
            )
        except OSError as exc:
            raise ClientError(f"{args.file}: {exc.strerror}") from None
    if args.payload is None:
        return b"", None
    return parse_typed_payload(args.payload, args.payload_type)


def show(response: Any, raw: bool, *, compact: bool = False) -> None:
    from .errors import PayloadError
    from .payload import format_for_humans

    if raw:
        sys.stdout.buffer.write(response.payload)
        sys.stdout.flush()
        return
    try:
        text = format_for_humans(response.payload, response.content_format, compact=compact)
    except PayloadError:
        text = response.payload.hex(" ")
    print(text, flush=True)


async def cmd_observe(args: argparse.Namespace, registry: Any) -> int:
    from .client import Client

    creds, path = resolve_target(registry, args.uri)
    seen = 0

    def restored(observed: str) -> None:
        print(f"coapdev: observation of {observed} re-registered on a new session", file=sys.stderr)

    async with Client(creds, timeout_s=args.timeout, on_observe_restored=restored) as client:
        async for response in client.observe(path, accept=_accept(args)):
            if args.exec_argv:
                await run_for_notification(args.exec_argv, response, creds, path)
            else:
                show(response, args.raw, compact=True)  # one line per value
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


async def run_for_notification(argv: list[str], response: Any, creds: Any, path: str) -> None:
    """Run a local command for one notification: no shell, payload on stdin."""
    from .errors import ClientError

    if not argv:
        raise ClientError("--exec needs a command")
    env = dict(os.environ)
    env.update(
        COAPDEV_DEVICE=creds.device_id,
        COAPDEV_PATH=path,
        COAPDEV_CODE=response.code,
        COAPDEV_CONTENT_FORMAT=""
        if response.content_format is None
        else str(int(response.content_format)),
    )
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, env=env)
    except OSError as exc:
        raise ClientError(f"--exec {argv[0]}: {exc.strerror or exc}") from None
    await proc.communicate(response.payload)
    if proc.returncode:
        print(f"coapdev: {argv[0]} exited with status {proc.returncode}", file=sys.stderr)


# --- device management --------------------------------------------------------------


def cmd_devices(registry: Any) -> int:
    devices = registry.load()
    if not devices:
        print("no known devices (coapdev onboard DEVICE --key KEY)", file=sys.stderr)
        return 0
    for creds in devices.values():
        print(f"{creds.device_id:12} {creds.address!s:32} {creds.name} ({creds.role})")
    return 0


def _device_creds(registry: Any, ref: str | None) -> Any:
    from .errors import UnknownDevice

    if ref:
        return registry.resolve(ref)
    devices = registry.load()
    if len(devices) == 1:
        return next(iter(devices.values()))
    raise UnknownDevice("name the device (several or none are known)")


async def cmd_clients(args: argparse.Namespace, registry: Any) -> int:
    import time

    from .client import Client

    creds = _device_creds(registry, getattr(args, "device", None))
    async with Client(creds, timeout_s=args.timeout) as client:
        if args.clients_command == "list":
            for c in (await client.get("/clients")).value:
                seen = c.get("last-seen")
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(seen)) if seen else "never"
                me = "  (this client)" if c.get("self") else ""
                print(f"{c['id']:14} {c['role']:6} {c['name']:24} last seen {when}{me}")
        elif args.clients_command == "revoke":
            await client.delete(f"/clients/{args.client}")
            print(f"revoked {args.client}")
        elif args.clients_command == "rename":
            r = await client.put(f"/clients/{args.client}", {"name": args.name})
            print(f"renamed {r.value['id']} to {r.value['name']!r}")
        elif args.clients_command == "role":
            r = await client.put(f"/clients/{args.client}", {"role": args.role})
            print(f"{r.value['name']} is now {r.value['role']}")
    return 0


async def cmd_rekey(args: argparse.Namespace, registry: Any) -> int:
    from .client import rekey

    creds = _device_creds(registry, args.device)
    new = await rekey(creds, timeout_s=args.timeout, save=registry.save)
    print(f"new key in use on device {new.device_id}; identity {new.identity}")
    return 0


async def cmd_discover(args: argparse.Namespace) -> int:
    from .discovery import browse

    found = await browse(args.seconds)
    if not found:
        print(f"no coapdev devices answered within {args.seconds:g} s", file=sys.stderr)
        return 0
    for dev in found:
        state = "open" if dev.onboarding_open else "closed"
        addresses = ", ".join(dev.addresses)
        print(
            f"{dev.device_id:12} {dev.name:28} port {dev.port:<5} onboarding {state:6} {addresses}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
