"""Requests to a device: get, put, post, delete, fetch, patch, ipatch, observe, ls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any

from .common import EXIT_OK, MAX_PAYLOAD_BYTES, Console, UsageError, explained, make_client

# --- requests -----------------------------------------------------------------------


def resolve_target(registry: Any, uri: str) -> tuple[Any, str]:
    """(credentials, path) for a URI as typed."""
    with _device_hints():
        return registry.target(uri)


@contextlib.contextmanager
def _device_hints() -> Iterator[None]:
    """Errors for an unnamed device, with how to name or onboard one on this command line."""
    from ..errors import UnknownDevice
    from ..registry import NoKnownDevice, SeveralKnownDevices

    try:
        yield
    except NoKnownDevice as exc:
        raise UnknownDevice(f"{exc} (coapdev onboard)") from None
    except SeveralKnownDevices as exc:
        raise UnknownDevice(f"{exc} (DEVICE/PATH, or -d DEVICE)") from None


def _device_creds(registry: Any, args: argparse.Namespace) -> Any:
    positional = getattr(args, "device", None)
    option = getattr(args, "device_opt", None)
    if positional and option and positional != option:
        raise UsageError(f"two devices given ({positional} and {option}); name one")
    with _device_hints():
        return registry.credentials_for(positional or option)


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

    from ..errors import ClientError, RequestFailed

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
    from ..client import escape_text

    hint = " or ".join(escape_text(c) for c in close)
    better = RequestFailed(exc.code, f"{exc} (did you mean {hint}?)")
    better.args = (f"{exc} (did you mean {hint}?)",)
    return better


def read_payload(args: argparse.Namespace) -> tuple[bytes, int | None]:
    """(bytes, content format) from PAYLOAD, --file, or piped stdin, typed by the one rule."""
    from ..const import ContentFormat
    from ..errors import PayloadError
    from ..payload import parse_typed_payload

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
    from ..errors import ClientError

    if name == "-":
        return _read_stream(sys.stdin.buffer, "stdin")
    try:
        with open(name, "rb") as f:
            return _read_stream(f, name)
    except OSError as exc:
        raise ClientError(f"{name}: {exc.strerror}") from None


def _read_stream(stream: Any, name: str) -> bytes:
    from ..errors import ClientError

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
    from ..client import code_name
    from ..errors import PayloadError
    from ..payload import format_for_humans

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
    from ..client import escape_text

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
    from ..errors import ClientError

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
    from ..client import escape_text
    from ..payload import content_format_name

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
