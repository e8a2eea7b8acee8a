"""``coapdev-gateway``: run a device, or manage its state directory locally.

Local commands (key, pair, clients, factory-reset) work on the state
directory and are safe while the gateway runs: it notices within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from coapdev import __version__
from coapdev.audit import AuditLog
from coapdev.errors import CoapdevError
from coapdev.keys import format_factory_key
from coapdev.qr import QRPayload, terminal_qr
from coapdev.server.device import default_state_dir
from coapdev.store import CredentialStore

from .config import GatewayConfig, load_config, load_default_config

log = logging.getLogger("coapdev.gateway")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coapdev-gateway",
        description="Serve this device's resources over coaps:// to onboarded clients, "
        "bridging them to local scripts.",
    )
    p.add_argument("--version", action="version", version=f"coapdev-gateway {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config (default: the built-in demo config)",
    )
    p.add_argument(
        "--check",
        nargs="?",
        const=True,
        metavar="CONFIG",
        help="validate a config file (or --config, or the built-in one) and exit",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="device state directory (default: $STATE_DIRECTORY, else the user's "
        "state dir, e.g. ~/.local/state/coapdev-gateway)",
    )
    p.add_argument("--host", help="address to listen on (default ::, every address)")
    p.add_argument("--port", type=int, help="UDP port to listen on (default 5684)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the device (the default)")
    sub.add_parser("key", help="print the factory key (canonical text) and exit")
    init = sub.add_parser(
        "init", help="create the state directory with a provisioned factory key and device id"
    )
    init.add_argument("--key", help="the factory key (as printed on the label)")
    init.add_argument("--device-id", help="the device id (as printed on the label)")
    init.add_argument(
        "--manifest", type=Path, help="a manifest written by tools/provision (with --device-id)"
    )
    pair = sub.add_parser("pair", help="open onboarding for a while (like a pairing button)")
    pair.add_argument("--seconds", type=float, help="how long (default: onboarding.window_s)")
    pair.add_argument("--close", action="store_true", help="close onboarding instead")
    clients = sub.add_parser("clients", help="list, rename or revoke clients")
    csub = clients.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    csub.add_parser("list", help="list clients")
    rev = csub.add_parser("revoke", help="revoke a client (id, identity or name)")
    rev.add_argument("client")
    rev.add_argument(
        "--force", action="store_true", help="also revoke the last admin (leaves no admin)"
    )
    ren = csub.add_parser("rename", help="rename a client")
    ren.add_argument("client")
    ren.add_argument("name")
    role = csub.add_parser("role", help="make a client admin or user")
    role.add_argument("client")
    role.add_argument("role", choices=["admin", "user"])
    role.add_argument(
        "--force", action="store_true", help="also demote the last admin (leaves no admin)"
    )
    reset = sub.add_parser("factory-reset", help="remove every client (and optionally the key)")
    reset.add_argument("--new-key", action="store_true", help="also mint a new factory key")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("coap-server", "coap", "coapdev.coap", "coapdev.client.coap"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # zeroconf logs a traceback for every interface it cannot send on
    logging.getLogger("zeroconf").setLevel(logging.ERROR)
    try:
        if args.check is not None:
            return check(args)
        config = read_config(args.config)
        state_dir = args.state_dir or config.state_dir or default_state_dir()
        command = args.command or "serve"
        if command == "serve":
            return asyncio.run(serve(args, config, state_dir))
        if command == "init":
            return init_command(args, config, state_dir)
        return local_command(args, config, state_dir)
    except CoapdevError as exc:
        print(f"coapdev-gateway: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"coapdev-gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def read_config(path: Path | None) -> GatewayConfig:
    return load_config(path) if path is not None else load_default_config()


def check(args: argparse.Namespace) -> int:
    target = args.config if args.check is True else Path(args.check)
    config = read_config(target)
    print(f"{config.source}: OK ({len(config.resources)} resources)")
    return 0


# --- serving ------------------------------------------------------------------------


async def serve(args: argparse.Namespace, config: GatewayConfig, state_dir: Path) -> int:
    from .app import Gateway

    config_path = args.config
    gateway = Gateway(
        config,
        state_dir,
        reload_config=(lambda: load_config(config_path)) if config_path else None,
        host=args.host,
        port=args.port,
    )
    await gateway.start()
    assert gateway.store is not None and gateway.server is not None
    announce(gateway.store, gateway.server.port)
    stop = asyncio.Event()
    gateway.install_signal_handlers(stop)
    await stop.wait()
    log.info("shutting down")
    await gateway.stop()
    return 0


def announce(store: CredentialStore, port: int) -> None:
    """Tell the person at the device how to onboard a client."""
    device = store.device
    lines = [
        f"coapdev-gateway {__version__}: device {device.id} on UDP port {port}",
        f"Factory key (onboarding only): {format_factory_key(device.factory_key)}",
    ]
    if store.onboarding_open(time.time()):
        lines.append(onboarding_banner(store, port))
    else:
        lines.append("Onboarding is closed; run `coapdev-gateway pair` on this device to open it.")
    print("\n".join(lines), flush=True)


def onboarding_banner(store: CredentialStore, port: int | None) -> str:
    qr = QRPayload(store.device.id, store.device.factory_key, port)
    until = store.device.onboarding_until
    when = (
        "until closed"
        if until == float("inf")
        else time.strftime("until %H:%M", time.localtime(until or 0))
    )
    return f"Onboarding is open {when}. QR payload: {qr.text()}\n{terminal_qr(qr.text())}"


# --- local management ---------------------------------------------------------------


def local_command(args: argparse.Namespace, config: GatewayConfig, state_dir: Path) -> int:
    store = CredentialStore.open(state_dir, create=False, audit=AuditLog(state_dir))
    command = args.command
    if command == "key":
        print(store.device.factory_key)
        return 0
    if command == "pair":
        if args.close:
            store.open_onboarding(0, now=time.time())
            print("onboarding closed")
            return 0
        seconds = args.seconds if args.seconds is not None else config.onboarding.window_s
        store.open_onboarding(seconds, now=time.time())
        print(onboarding_banner(store, args.port or config.port))
        return 0
    if command == "clients":
        return clients_command(args, store)
    if command == "factory-reset":
        if not args.yes:
            if not sys.stdin.isatty():
                print(
                    "coapdev-gateway: factory-reset needs --yes when not run interactively",
                    file=sys.stderr,
                )
                return 1
            answer = input(f"Remove all {len(store)} clients of device {store.device.id}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                return 1
        store.factory_reset(
            new_factory_key=args.new_key,
            now=time.time(),
            onboarding_window_s=config.onboarding.window_s,
        )
        print(f"device {store.device.id}: every client removed")
        if args.new_key:
            print(f"new factory key: {format_factory_key(store.device.factory_key)}")
        return 0
    return 2


def init_command(args: argparse.Namespace, config: GatewayConfig, state_dir: Path) -> int:
    from coapdev.errors import StateError
    from coapdev.provision import read_manifest_entry
    from coapdev.store import STATE_FILE

    if (state_dir / STATE_FILE).exists():
        raise StateError(f"{state_dir}: already initialised (factory-reset --new-key to re-key)")
    key, device_id = args.key, args.device_id
    if args.manifest is not None:
        if not device_id:
            raise StateError("--manifest needs --device-id to pick the device")
        key = read_manifest_entry(args.manifest, device_id).factory_key
    if not key or not device_id:
        raise StateError("give --key and --device-id (or --manifest and --device-id)")
    store = CredentialStore.open(
        state_dir,
        factory_key=key,
        device_id=device_id,
        onboarding_window_s=config.onboarding.window_s,
        audit=AuditLog(state_dir),
    )
    print(f"initialised device {store.device.id} in {state_dir}")
    return 0


def clients_command(args: argparse.Namespace, store: CredentialStore) -> int:
    from coapdev.const import Role

    action = args.clients_command
    if action == "list":
        if not len(store):
            print("no clients", file=sys.stderr)
        for c in store.clients():
            seen = "never"
            if c.last_seen:
                seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.last_seen))
            print(f"{c.id:14} {c.role.value:6} {c.name:24} last seen {seen}")
        return 0
    target = store.find_client(args.client)
    if action == "revoke":
        store.revoke(target.id, force=args.force)
        print(f"revoked {target.name} ({target.id})")
    elif action == "rename":
        record = store.rename(target.id, args.name)
        print(f"renamed {target.id} to {record.name!r}")
    elif action == "role":
        record = store.set_role(target.id, Role(args.role), force=args.force)
        print(f"{record.name} is now {record.role.value}")
    return 0
