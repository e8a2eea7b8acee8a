"""``coapdev onboard``: from the label's key to saved credentials, never losing one."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    ENV_FACTORY_KEY,
    EXIT_OK,
    LOCATE_TIMEOUT_S,
    MAX_KEY_INPUT_CHARS,
    Console,
    UsageError,
    explained,
)

# --- onboarding ---------------------------------------------------------------------


async def cmd_onboard(args: argparse.Namespace, registry: Any, console: Console) -> int:
    from ..client import locate, onboard_at
    from ..keys import canonical_factory_key
    from ..qr import parse_qr_text

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
        creds = await onboard_at(
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
    from ..client import escape_text
    from ..errors import ClientError

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
    from ..client import escape_text, revoke_self
    from ..errors import ClientError

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

    from ..client import Client, revoke_self
    from ..errors import ClientError, HandshakeRejected

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
    from ..errors import InvalidQRPayload

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
