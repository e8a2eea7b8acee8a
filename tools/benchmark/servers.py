"""The servers compared, each started on loopback and serving the same tiny resource.

- ``coapdev``: the gateway (``python -m gateway``) with tools/bench-gateway.toml:
  GET /light is the built-in demo light (CBOR ``{"on": false}``, 5 bytes),
  GET /script runs ``/bin/echo hi``, GET /handler asks a persistent handler
  (benchmark/handler.py) for the same 5 bytes as /light.
- ``aiocoap``: aiocoap's stock DTLS server (``tinydtls_server``), GET /light
  answering the same 5 bytes (benchmark/stock_aiocoap_server.py).
- ``libcoap``: libcoap's ``coap-server-openssl`` with a PSK; /light is created
  with a plain-CoAP PUT of the same 5 bytes before measuring.
- ``pyecho``: asyncio UDP echo (benchmark/echo_server.py), the floor for any
  Python server.
- ``cecho``: the load generator's own C echo: the generator's ceiling.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import Proc, StartError, free_udp_port

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BENCH_CONFIG = REPO / "tools" / "bench-gateway.toml"
HOST = "127.0.0.1"
#: The tiny resource's payload everywhere: CBOR {"on": false}.
PAYLOAD = bytes.fromhex("a1626f6ef4")
#: Identity and key the reference servers accept (16 ASCII bytes, tinydtls's limit).
REFERENCE_IDENTITY = "bench"
REFERENCE_KEY = b"bench-psk-0123ab"


@dataclass
class Credentials:
    identity: str
    key: bytes

    def loadgen_options(self) -> dict[str, str]:
        return {"identity": self.identity, "key_hex": self.key.hex()}


@dataclass
class Server:
    name: str
    proc: Proc
    port: int
    credentials: Credentials | None = None
    state_dir: Path | None = None
    factory_key: str | None = None

    def stop(self) -> None:
        self.proc.stop()


def python() -> str:
    return sys.executable


def script_argv() -> list[str]:
    """The command GET /script runs, as the bench config gives it."""
    import tomllib

    config = tomllib.loads(BENCH_CONFIG.read_text())
    for resource in config.get("resource", []):
        if resource.get("path") == "/script":
            return list(resource["get"]["run"])
    raise StartError(f"{BENCH_CONFIG}: no /script resource")


# --- references -------------------------------------------------------------------------


def start_cecho(loadgen_binary: Path, workdir: Path, max_s: float) -> Server:
    port = free_udp_port(HOST)
    argv = [str(loadgen_binary), "echo", "--host", HOST, "--port", str(port)]
    argv += ["--duration", str(max_s)]
    proc = Proc("C UDP echo", argv, workdir / "cecho.log").start()
    proc.wait_for_udp_port(port)
    return Server("cecho", proc, port)


def start_pyecho(workdir: Path) -> Server:
    port = free_udp_port(HOST)
    argv = [python(), str(HERE / "echo_server.py"), HOST, str(port)]
    proc = Proc("Python UDP echo", argv, workdir / "pyecho.log").start()
    proc.wait_for_udp_port(port)
    return Server("pyecho", proc, port)


def start_aiocoap(workdir: Path) -> Server:
    port = free_udp_port(HOST)
    argv = [python(), str(HERE / "stock_aiocoap_server.py"), HOST, str(port)]
    argv += [REFERENCE_IDENTITY, REFERENCE_KEY.decode()]
    env = dict(os.environ, AIOCOAP_REUSE_PORT="0")
    proc = Proc("aiocoap stock DTLS server", argv, workdir / "aiocoap.log", env=env).start()
    proc.wait_for_udp_port(port)
    return Server("aiocoap", proc, port, Credentials(REFERENCE_IDENTITY, REFERENCE_KEY))


def libcoap_binary() -> str | None:
    return shutil.which("coap-server-openssl")


def start_libcoap(workdir: Path, port: int | None = None, log: str = "libcoap") -> Server:
    """coap-server-openssl on a fresh port pair, or on ``port`` (DTLS) again after a restart."""
    binary = libcoap_binary()
    if binary is None:
        raise StartError(
            "coap-server-openssl not found: install libcoap3-bin "
            "(sudo apt-get install -y libcoap3-bin, or tools/setup --test)"
        )
    plain = port - 1 if port else free_udp_port(HOST, pair=True)
    port = plain + 1  # coap-server listens for DTLS on its port + 1
    argv = [binary, "-A", HOST, "-p", str(plain), "-k", REFERENCE_KEY.decode(), "-d", "4"]
    proc = Proc("libcoap coap-server-openssl", argv, workdir / f"{log}.log").start()
    proc.wait_for_udp_port(port)
    _put_plain(plain, ("light",), PAYLOAD)
    return Server("libcoap", proc, port, Credentials(REFERENCE_IDENTITY, REFERENCE_KEY))


def _put_plain(port: int, path: tuple[str, ...], payload: bytes, timeout_s: float = 5.0) -> None:
    """A confirmable CoAP PUT over plain UDP (creates libcoap's dynamic resource)."""
    mid = secrets.randbits(16)
    message = bytes([0x41, 0x03, mid >> 8, mid & 0xFF, 0x5A])  # CON PUT, 1-byte token
    last = 0
    for segment in path:
        raw = segment.encode()
        message += bytes([((11 - last) << 4) | len(raw)]) + raw
        last = 11
    message += b"\xff" + payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sock.sendto(message, (HOST, port))
            try:
                answer = sock.recv(2048)
            except TimeoutError:
                continue
            if len(answer) >= 4 and answer[2:4] == message[2:4]:
                if answer[1] >> 5 == 2:
                    return
                code = f"{answer[1] >> 5}.{answer[1] & 31:02d}"
                raise StartError(f"libcoap refused to create /light: {code}")
    raise StartError("libcoap did not answer the PUT that creates /light")


# --- coapdev ----------------------------------------------------------------------------


def gateway_argv(state_dir: Path, port: int) -> list[str]:
    return [
        python(),
        "-m",
        "gateway",
        "--state-dir",
        str(state_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--config",
        str(BENCH_CONFIG),
    ]


def gateway_proc(name: str, state_dir: Path, port: int, log: Path) -> Proc:
    env = dict(os.environ, COAPDEV_MDNS_INTERFACES=HOST)
    return Proc(name, gateway_argv(state_dir, port), log, env=env, cwd=REPO)


def start_gateway(name: str, state_dir: Path, workdir: Path, port: int | None = None) -> Server:
    port = port or free_udp_port(HOST)
    proc = gateway_proc(f"coapdev gateway ({name})", state_dir, port, workdir / f"{name}.log")
    proc.start()
    proc.wait_for_udp_port(port)
    return Server("coapdev", proc, port, state_dir=state_dir)


def restart_gateway(server: Server) -> None:
    """A new gateway process on the same state directory and port (after a crash)."""
    assert server.state_dir is not None
    old = server.proc
    proc = gateway_proc(old.name, server.state_dir, server.port, old.log_path)
    proc.start()
    proc.wait_for_udp_port(server.port)
    server.proc = proc


def factory_key(state_dir: Path) -> str:
    """The factory key, as ``coapdev-gateway key`` prints it."""
    argv = [python(), "-m", "gateway", "--state-dir", str(state_dir), "key"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    if proc.returncode != 0:
        raise StartError(f"coapdev-gateway key failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def onboard(server: Server, name: str = "bench") -> Credentials:
    """Onboard one client with the library, as any client would (text key)."""
    from coapdev.client import onboard as library_onboard

    assert server.state_dir is not None
    server.factory_key = factory_key(server.state_dir)

    async def go():
        return await asyncio.wait_for(
            library_onboard(f"{HOST}:{server.port}", server.factory_key, name, text_key=True),
            30,
        )

    creds = asyncio.run(go())
    server.credentials = Credentials(creds.identity, bytes(creds.key))
    return server.credentials


def populate_store(state_dir: Path, clients: int) -> Credentials:
    """A state directory holding ``clients`` minted clients; the first one's credentials.

    Made through the store's own API, as the gateway would make them: the
    store creates the directory (device id, factory key) and mints the
    clients ``bench-00000``, ``bench-00001``, ... (text keys; the first is the
    admin), then folds its journal into one snapshot, and is opened again to
    check it.
    """
    from coapdev.model import Origin
    from coapdev.store import CredentialStore, StoreLimits

    store = CredentialStore.open(
        state_dir, onboarding_window_s=3600, limits=StoreLimits(max_clients=max(clients, 1))
    )
    now = time.time()
    first: Credentials | None = None
    for i in range(clients):
        identity = f"bench-{i:05d}"
        record = store.mint_client(
            identity, now=now, text_key=True, origin=Origin.LOCAL, identity=identity
        )
        if first is None:
            first = Credentials(record.identity, record.key)
    store.compact()
    loaded = CredentialStore.open(state_dir, create=False)
    if len(loaded) != clients:
        raise StartError(f"{state_dir}: minted {clients} clients, the store reads {len(loaded)}")
    assert first is not None
    return first


def stored_credentials(state_dir: Path, identity: str = "bench-00000") -> Credentials:
    """Credentials of one client minted by :func:`populate_store`."""
    from coapdev.store import read_state

    _, clients = read_state(state_dir)
    for record in clients:
        if record.identity == identity:
            return Credentials(identity, record.key)
    raise StartError(f"{state_dir}: no client {identity!r}")


def onboarding_payload(name: str = "bench-onboard") -> bytes:
    """CBOR ``{"name": NAME, "key-format": "text"}``, the native onboarding request."""
    import cbor2

    return cbor2.dumps({"name": name, "key-format": "text"})


def write_creds(state_dir: Path, path: Path, count: int) -> Path:
    """The first ``count`` clients of a :func:`populate_store` directory as the load
    generator's ``--creds`` file (``identity hexkey`` per line): one identity per client."""
    from coapdev.store import read_state

    _, clients = read_state(state_dir)
    wanted = {f"bench-{i:05d}" for i in range(count)}
    lines = [f"{r.identity} {bytes(r.key).hex()}" for r in clients if r.identity in wanted]
    if len(lines) != count:
        raise StartError(f"{state_dir}: {len(lines)} of {count} clients found for the storm")
    path.write_text("\n".join(sorted(lines)) + "\n")
    return path
