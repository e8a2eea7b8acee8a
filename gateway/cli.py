"""``coapdev-gateway``: run a device, or manage its state directory locally.

Local commands (key, pair, clients, factory-reset) work on the state
directory and are safe while the gateway runs: it notices within a second.
Options such as ``--state-dir`` may come before or after the command, and
are checked like the config file's keys (a usage error exits with status 2).
Paths are made absolute once, at start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from coapdev import __version__
from coapdev.audit import AuditLog
from coapdev.errors import CoapdevError
from coapdev.keys import format_factory_key
from coapdev.qr import QRPayload, terminal_qr
from coapdev.server.device import default_state_dir
from coapdev.store import CredentialStore

from .config import GatewayConfig, load_config, load_default_config

log = logging.getLogger("coapdev.gateway")


#: Longest window ``pair --seconds`` opens (a year); onboarding.always_open keeps it open.
MAX_PAIR_SECONDS = 365 * 86400.0


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port between 1 and 65535, got {port}")
    return port


def pair_seconds_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(seconds) and 1 <= seconds <= MAX_PAIR_SECONDS):
        raise argparse.ArgumentTypeError(
            f"expected between 1 and {MAX_PAIR_SECONDS:.0f} seconds, got {text} "
            "(pair --close closes; onboarding.always_open keeps it open)"
        )
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coapdev-gateway",
        description="Serve this device's resources over coaps:// to onboarded clients, "
        "bridging them to local scripts.",
        epilog="exit status: 0 done, 1 error, 2 usage error",
    )
    p.add_argument("--version", action="version", version=f"coapdev-gateway {__version__}")
    p.add_argument(
        "--check",
        nargs="?",
        const=True,
        metavar="CONFIG",
        help="validate a config file (or --config, or the built-in one), including that "
        "every script it runs exists and is executable, and exit",
    )
    _common_options(p, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(parent: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[common], **kwargs)

    add(sub, "serve", help="run the device (the default)")
    add(sub, "key", help="print the factory key (canonical text) and exit")
    init = add(
        sub, "init", help="create the state directory with a provisioned factory key and device id"
    )
    init.add_argument("--key", help="the factory key (as printed on the label)")
    init.add_argument("--device-id", help="the device id (as printed on the label)")
    init.add_argument(
        "--manifest", type=Path, help="a manifest written by tools/provision (with --device-id)"
    )
    pair = add(sub, "pair", help="open onboarding for a while (like a pairing button)")
    pair.add_argument(
        "--seconds",
        type=pair_seconds_arg,
        help=f"how long, 1 to {MAX_PAIR_SECONDS:.0f} (default: onboarding.window_s)",
    )
    pair.add_argument("--close", action="store_true", help="close onboarding instead")
    clients = add(sub, "clients", help="list, rename or revoke clients")
    csub = clients.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    add(csub, "list", help="list clients")
    rev = add(csub, "revoke", help="revoke a client (id, identity or name)")
    rev.add_argument("client", help="the client's id, identity or name")
    rev.add_argument(
        "--force", action="store_true", help="also revoke the last admin (leaves no admin)"
    )
    ren = add(csub, "rename", help="rename a client")
    ren.add_argument("client", help="the client's id, identity or name")
    ren.add_argument("name", help="its new name")
    role = add(csub, "role", help="make a client admin or user")
    role.add_argument("client", help="the client's id, identity or name")
    role.add_argument("role", choices=["admin", "user"], help="admin or user")
    role.add_argument(
        "--force", action="store_true", help="also demote the last admin (leaves no admin)"
    )
    reset = add(sub, "factory-reset", help="remove every client (and optionally the key)")
    reset.add_argument("--new-key", action="store_true", help="also mint a new factory key")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return p


def _common_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted before and after the command (``key --state-dir X``)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--config",
        type=Path,
        default=default(None),
        metavar="FILE",
        help="TOML config (default: the built-in demo config)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=default(None),
        metavar="DIR",
        help="device state directory (default: $STATE_DIRECTORY, else the user's "
        "state dir, e.g. ~/.local/state/coapdev-gateway)",
    )
    p.add_argument(
        "--host", default=default(None), help="address to listen on (default ::, every address)"
    )
    p.add_argument(
        "--port",
        type=port_arg,
        default=default(None),
        help="UDP port to listen on, 1 to 65535 (default 5684)",
    )
    p.add_argument(
        "--log-level",
        default=default("info"),
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )


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
        # Resolved once: the gateway and its scripts never depend on the cwd.
        if args.config is not None:
            args.config = args.config.expanduser().absolute()
        if args.check is not None:
            return check(args)
        config = read_config(args.config)
        state_dir = (args.state_dir or config.state_dir or default_state_dir()).expanduser()
        state_dir = state_dir.absolute()
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
    target = args.config if args.check is True else Path(args.check).absolute()
    config = read_config(target)
    check_programs(config)
    print(f"{config.source}: OK ({len(config.resources)} resources)")
    return 0


def check_programs(config: GatewayConfig) -> None:
    """Every program the config runs exists and is executable (else ConfigError).

    A missing script would otherwise fail only when a client asks, with a
    5.00 answer; here it fails at start and at ``--check``, naming the key.
    """
    from coapdev.errors import ConfigError

    commands: list[tuple[str, str, tuple[str, ...]]] = []
    if config.onboarding.button:
        commands.append(("onboarding.button[0]", "", config.onboarding.button))
    for i, res in enumerate(config.resources):
        if res.handler is not None:
            commands.append((f"resource[{i}].handler[0]", res.path_text, res.handler))
        for method, mc in res.methods:
            if mc.argv:
                commands.append((f"resource[{i}].{method.lower()}.run[0]", res.path_text, mc.argv))
        if res.observe is not None and res.observe.watch is not None:
            commands.append((f"resource[{i}].observe.watch[0]", res.path_text, res.observe.watch))
    for key, path, argv in commands:
        program = argv[0]
        where = f" (resource {path})" if path else ""
        if "/" in program:
            file = Path(program)
            if not file.is_file():
                raise ConfigError(config.source, key, f"{program}: no such file{where}")
            if not os.access(file, os.X_OK):
                raise ConfigError(
                    config.source, key, f"{program}: not executable (chmod +x){where}"
                )
        elif shutil.which(program) is None:
            raise ConfigError(config.source, key, f"{program}: not found on PATH{where}")


# --- serving ------------------------------------------------------------------------


async def serve(args: argparse.Namespace, config: GatewayConfig, state_dir: Path) -> int:
    from .app import Gateway

    check_programs(config)
    config_path = args.config

    def reload() -> GatewayConfig:
        new = load_config(config_path)
        check_programs(new)
        return new

    gateway = Gateway(
        config,
        state_dir,
        reload_config=reload if config_path else None,
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


def announce(store: CredentialStore, port: int, *, to_terminal: bool | None = None) -> None:
    """Tell the person at the device how to onboard a client.

    The factory key (and the QR code, which holds it) is shown only while
    onboarding is open and only on a terminal: a service's stdout goes to
    the system journal, which others may read.  ``coapdev-gateway key``
    prints it at any time.
    """
    if to_terminal is None:
        to_terminal = sys.stdout.isatty()
    device = store.device
    lines = [f"coapdev-gateway {__version__}: device {device.id} on UDP port {port}"]
    is_open = store.onboarding_open(time.time())
    if is_open and to_terminal:
        lines.append(f"Factory key (onboarding only): {format_factory_key(device.factory_key)}")
        lines.append(onboarding_banner(store, port))
    else:
        lines.append(
            "Factory key (onboarding only): not shown here; `coapdev-gateway key` prints it."
        )
        if is_open:
            lines.append(f"Onboarding is open {_until(store)}.")
        else:
            lines.append(
                "Onboarding is closed; run `coapdev-gateway pair` on this device to open it."
            )
    print("\n".join(lines), flush=True)


def _until(store: CredentialStore) -> str:
    until = store.device.onboarding_until or 0.0
    if until == float("inf"):
        return "until closed"
    moment = time.localtime(until)
    if time.strftime("%Y-%m-%d", moment) == time.strftime("%Y-%m-%d"):
        return time.strftime("until %H:%M", moment)
    return time.strftime("until %Y-%m-%d %H:%M", moment)


def onboarding_banner(store: CredentialStore, port: int | None) -> str:
    qr = QRPayload(store.device.id, store.device.factory_key, port)
    return f"Onboarding is open {_until(store)}. QR payload: {qr.text()}\n{terminal_qr(qr.text())}"


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
