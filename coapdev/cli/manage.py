"""Known devices and their clients: devices, forget, clients, rekey, credentials, discover."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from ..const import PATH_CLIENTS, uri_path
from .common import EXIT_OK, Console, explained, make_client
from .requests import _device_creds

# --- device management --------------------------------------------------------------


def cmd_devices(registry: Any) -> int:
    from ..client import escape_text

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
    from ..client import escape_text, revoke_self

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

    from ..client import escape_text, revoke_self

    creds = _device_creds(registry, args)
    action = args.clients_command
    with explained(registry, creds.address):
        async with make_client(args, registry, console, creds) as client:
            if action == "list":
                for c in (await client.get(uri_path(PATH_CLIENTS))).value:
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
    from ..client import rekey

    creds = _device_creds(registry, args)
    with explained(registry, creds.address):
        new = await rekey(creds, timeout_s=args.timeout, save=registry.save)
    print(f"new key in use on device {new.device_id}; identity {new.identity}")
    return EXIT_OK


def cmd_credentials(args: argparse.Namespace, registry: Any) -> int:
    import json

    from ..errors import ClientError

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
    from ..client import escape_text
    from ..discovery import browse

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
