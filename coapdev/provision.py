"""Provisioning at manufacturing: factory keys for a batch of devices, and their labels.

``tools/provision --count 20 --out batch/`` writes

- ``batch/manifest.json`` and ``batch/manifest.csv`` (mode 0600: they hold the
  keys): device id, factory key, the label form of the key, the QR payload and
  the label files of each device;
- ``batch/labels/<ID>.png`` and ``.svg``: the QR code and, for typing, the key
  in groups of four.

A device is then given its identity with
``coapdev-gateway init --manifest batch/manifest.json --device-id ID``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_atomic
from .errors import CoapdevError
from .keys import format_factory_key, mint_device_id, mint_factory_key
from .qr import QRPayload


@dataclass
class ProvisionedDevice:
    device_id: str
    factory_key: str
    factory_key_label: str
    qr_payload: str
    png: str
    svg: str


def _matrix(text: str) -> list[list[bool]]:
    import qrcode

    qr = qrcode.QRCode(border=4, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(text)
    qr.make(fit=True)
    return qr.get_matrix()


def label_png(payload: QRPayload, path: Path, *, module_px: int = 8) -> None:
    from PIL import Image, ImageDraw, ImageFont

    matrix = _matrix(payload.text())
    size = len(matrix) * module_px
    width, height = size + 520, max(size, 260)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                draw.rectangle(
                    [
                        x * module_px,
                        y * module_px,
                        (x + 1) * module_px - 1,
                        (y + 1) * module_px - 1,
                    ],
                    fill=0,
                )
    try:
        big = ImageFont.load_default(size=34)
        small = ImageFont.load_default(size=22)
    except TypeError:  # Pillow before 10.1: one fixed bitmap font
        big = small = ImageFont.load_default()
    x = size + 10
    draw.text((x, 30), "coapdev device", font=small, fill=0)
    draw.text((x, 70), f"ID {payload.device_id}", font=small, fill=0)
    draw.text((x, 120), "Factory key:", font=small, fill=0)
    draw.text((x, 155), format_factory_key(payload.factory_key), font=big, fill=0)
    image.save(path, format="PNG")
    os.chmod(path, 0o600)


def label_svg(payload: QRPayload, path: Path, *, module: int = 4) -> None:
    matrix = _matrix(payload.text())
    size = len(matrix) * module
    width, height = size + 280, max(size, 140)
    cells = "".join(
        f"M{x * module} {y * module}h{module}v{module}h-{module}z"
        for y, row in enumerate(matrix)
        for x, dark in enumerate(row)
        if dark
    )
    x = size + 8
    key_label = format_factory_key(payload.factory_key)
    svg = f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}mm" height="{height}mm" \
viewBox="0 0 {width} {height}">
<rect width="{width}" height="{height}" fill="#fff"/>
<path d="{cells}" fill="#000"/>
<g font-family="DejaVu Sans Mono, monospace" fill="#000">
<text x="{x}" y="24" font-size="12">coapdev device</text>
<text x="{x}" y="44" font-size="12">ID {payload.device_id}</text>
<text x="{x}" y="72" font-size="12">Factory key:</text>
<text x="{x}" y="94" font-size="17" font-weight="bold">{key_label}</text>
</g>
</svg>
"""
    write_atomic(path, svg.encode())


def provision(count: int, out: Path, *, port: int | None = None) -> list[ProvisionedDevice]:
    if count < 1:
        raise CoapdevError("--count must be at least 1")
    labels = out / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    devices = []
    seen: set[str] = set()
    while len(devices) < count:
        device_id = mint_device_id()
        if device_id in seen:
            continue
        seen.add(device_id)
        payload = QRPayload(device_id, mint_factory_key(), port)
        png, svg = labels / f"{device_id}.png", labels / f"{device_id}.svg"
        label_png(payload, png)
        label_svg(payload, svg)
        devices.append(
            ProvisionedDevice(
                device_id=device_id,
                factory_key=payload.factory_key,
                factory_key_label=format_factory_key(payload.factory_key),
                qr_payload=payload.text(),
                png=str(png.relative_to(out)),
                svg=str(svg.relative_to(out)),
            )
        )
    rows = [asdict(d) for d in devices]
    write_atomic(out / "manifest.json", json.dumps({"devices": rows}, indent=1).encode() + b"\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "manifest.csv", buffer.getvalue().encode())
    return devices


def read_manifest_entry(path: Path, device_id: str) -> ProvisionedDevice:
    try:
        doc = json.loads(Path(path).read_text())
        entries = [ProvisionedDevice(**row) for row in doc["devices"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CoapdevError(f"{path}: not a provisioning manifest ({exc})") from None
    for entry in entries:
        if entry.device_id == device_id.upper():
            return entry
    raise CoapdevError(f"{path}: no device {device_id!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/provision",
        description="Mint factory keys for a batch of devices and print their labels.",
    )
    p.add_argument("--count", type=int, default=1, help="how many devices (default 1)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--port", type=int, help="UDP port to put in the QR payload (default 5684)")
    args = p.parse_args(argv)
    try:
        devices = provision(args.count, args.out, port=args.port)
    except (CoapdevError, OSError) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    for d in devices:
        print(f"{d.device_id}  {d.factory_key_label}  {args.out / d.png}")
    print(f"manifest: {args.out / 'manifest.json'} (keep it secret)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
