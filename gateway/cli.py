"""``coapdev-gateway``: run a device, or manage its state directory locally."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from coapdev import __version__
from coapdev.audit import AuditLog
from coapdev.errors import CoapdevError
from coapdev.keys import format_factory_key
from coapdev.qr import QRPayload, terminal_qr
from coapdev.server.device import DeviceOptions, DeviceServer, default_state_dir
from coapdev.store import CredentialStore

log = logging.getLogger("coapdev.gateway")

DEFAULT_ONBOARDING_WINDOW_S = 15 * 60.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coapdev-gateway",
        description="Serve this device's resources over coaps:// to onboarded clients.",
    )
    p.add_argument("--version", action="version", version=f"coapdev-gateway {__version__}")
    p.add_argument("--state-dir", type=Path, help="device state directory")
    p.add_argument("--host", help="address to listen on (default ::, all addresses)")
    p.add_argument("--port", type=int, help="UDP port to listen on (default 5684)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the device (the default)")
    sub.add_parser("key", help="print the factory key (canonical text) and exit")
    clients = sub.add_parser("clients", help="list or revoke clients on this device")
    csub = clients.add_subparsers(dest="clients_command", required=True)
    csub.add_parser("list", help="list clients")
    revoke = csub.add_parser("revoke", help="revoke a client (id, identity or name)")
    revoke.add_argument("client")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("coap-server").setLevel(logging.WARNING)
    logging.getLogger("coap").setLevel(logging.WARNING)
    state_dir: Path = args.state_dir or default_state_dir()
    try:
        if args.command == "key":
            store = CredentialStore.open(state_dir, create=False)
            print(store.device.factory_key)
            return 0
        if args.command == "clients":
            return clients_command(args, state_dir)
        return asyncio.run(serve(args, state_dir))
    except CoapdevError as exc:
        print(f"coapdev-gateway: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"coapdev-gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def clients_command(args: argparse.Namespace, state_dir: Path) -> int:
    store = CredentialStore.open(state_dir, create=False, audit=AuditLog(state_dir))
    if args.clients_command == "list":
        for c in store.clients():
            seen = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(c.last_seen))
                if c.last_seen
                else "never"
            )
            print(f"{c.id:14} {c.role.value:6} {c.name:24} last seen {seen}")
        return 0
    if args.clients_command == "revoke":
        record = store.revoke(store.find_client(args.client).id)
        print(f"revoked {record.name} ({record.id})")
        return 0
    return 2


async def serve(args: argparse.Namespace, state_dir: Path) -> int:
    audit = AuditLog(state_dir) if state_dir.exists() else None
    store = CredentialStore.open(state_dir, onboarding_window_s=DEFAULT_ONBOARDING_WINDOW_S)
    if audit is None:
        audit = AuditLog(state_dir)
    store.audit = audit
    options = DeviceOptions()
    if args.host:
        options.host = args.host
    if args.port is not None:
        options.port = args.port
    server = DeviceServer(store, options, audit=audit)
    await server.start()
    announce(store, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    return 0


def announce(store: CredentialStore, port: int) -> None:
    """Tell the person at the device how to onboard a client."""
    device = store.device
    lines = [
        f"coapdev-gateway {__version__}: device {device.id} on UDP port {port}",
        f"Factory key (onboarding only): {format_factory_key(device.factory_key)}",
    ]
    if store.onboarding_open(time.time()):
        qr = QRPayload(device.id, device.factory_key, port)
        lines.append(f"Onboarding is open. QR payload: {qr.text()}")
        lines.append(terminal_qr(qr.text()))
    else:
        lines.append("Onboarding is closed; run `coapdev-gateway pair` to open it.")
    print("\n".join(lines), flush=True)
