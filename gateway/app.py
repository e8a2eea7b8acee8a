"""The running gateway: device server + configured script resources + operations.

Start-up order: state directory and store, DTLS server, script resources,
mDNS advertisement, pairing button.  SIGHUP reloads the config (a bad one is
rejected and the old one kept); SIGTERM shuts everything down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiocoap import Message

from coapdev import logsafe
from coapdev.audit import AuditLimits, AuditLog
from coapdev.errors import ConfigError, ServiceUnavailable, StateError, TooManyRequests
from coapdev.model import Principal
from coapdev.ratelimit import AttemptLimiter, ChangeLimiter
from coapdev.server import DAY_S, DeviceHooks, DeviceOptions, DeviceServer, DtlsServerOptions
from coapdev.server.tradfri import add_tradfri_resources
from coapdev.store import CredentialStore, StoreLimits

from .config import DtlsConfig, GatewayConfig, ResourceConfig
from .resources import ScriptResource
from .scripts import base_environment, prepare_data_dir, supervise_lines

log = logging.getLogger("coapdev.gateway")

#: Held (flock) by the one gateway serving a state directory; holds its pid.
LOCK_FILE = "gateway.pid"
#: Failed or throttled handshakes are logged (at info) once per source per this span;
#: the next line says how many more there were.
HANDSHAKE_LOG_INTERVAL_S = 60.0
#: Sources remembered for that; beyond it the oldest are forgotten (bounded memory).
HANDSHAKE_LOG_SOURCES = 1024


class RateLimitedLog:
    """One log line per key per interval, with the count of those left out since.

    A peer decides how often handshakes fail; the log must not let it decide
    how many lines get written.
    """

    def __init__(self, interval_s: float, max_keys: int) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, now: float) -> int | None:
        """None: stay silent; else log now, mentioning the returned count left out."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last.pop(key, None)
        while len(self._last) >= self.max_keys:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]


class StateDirLock:
    """One gateway per state directory: a second one refuses to start.

    Two gateways on one directory would advertise ``name-2`` over mDNS and
    race each other's writes.  The lock is an advisory ``flock`` that the
    kernel drops when the process dies, so a crash leaves no stale lock;
    the file keeps the holder's pid for the message.  Local commands
    (``pair``, ``clients``) do not take it: they are meant to run beside
    the gateway.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"{self.path.parent} is in use by pid {holder} (another coapdev-gateway); "
                "stop it first, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


#: How often counts of suppressed log lines are reported.
LOG_SUMMARY_INTERVAL_S = 60.0
#: A pairing button command prints short lines; a longer one restarts it.
BUTTON_MAX_LINE_BYTES = 4096


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        state_dir: Path,
        *,
        reload_config: Callable[[], GatewayConfig] | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.reload_config = reload_config
        self.host = host or config.host
        self.port = port if port is not None else config.port
        self.audit = AuditLog(state_dir, _audit_limits(config))
        self.data_dir = state_dir / "data"
        self.log_limiter = logsafe.RepeatLimiter()
        self.store: CredentialStore | None = None
        self.server: DeviceServer | None = None
        # Two allowances per source: failed handshakes (a wrong key) and
        # onboarding attempts (each costs one, successful or not).
        self.handshake_limiter = AttemptLimiter(
            config.onboarding.attempts_burst, config.onboarding.attempts_per_minute
        )
        self.onboarding_limiter = AttemptLimiter(
            config.onboarding.attempts_burst, config.onboarding.attempts_per_minute
        )
        self._handshake_log = RateLimitedLog(HANDSHAKE_LOG_INTERVAL_S, HANDSHAKE_LOG_SOURCES)
        # State changes clients ask for: per client, per host, and in total.
        self.change_limiter = ChangeLimiter(
            config.limits.changes_burst,
            config.limits.changes_per_minute,
            config.limits.device_changes_per_s,
        )
        self._resources: dict[tuple[str, ...], ScriptResource] = {}
        self._background: list[asyncio.Task[None]] = []
        self.advertiser: Any = None
        self.stopped = asyncio.Event()
        self._lock = StateDirLock(state_dir)

    @property
    def device_name(self) -> str:
        """The name advertised over mDNS and told to Tradfri clients."""
        assert self.store is not None
        return self.config.name or f"coapdev-{self.store.device.id}"

    # --- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock.acquire()
        try:
            await self._start()
        except BaseException:
            self._lock.release()
            raise

    async def _start(self) -> None:
        cfg = self.config
        self.log_limiter = logsafe.install(cfg.limits.log_burst, cfg.limits.log_lines_per_minute)
        self._background.append(asyncio.create_task(self._report_suppressed_lines()))
        self.data_dir = prepare_data_dir(self.state_dir)
        store = CredentialStore.open(
            self.state_dir,
            onboarding_window_s=cfg.onboarding.window_s,
            limits=StoreLimits(max_clients=cfg.onboarding.max_clients),
            audit=self.audit,
        )
        self.store = store
        self._apply_onboarding_policy()
        options = DeviceOptions(
            host=self.host,
            port=self.port,
            demo_light=cfg.demo_light,
            expire_after_s=cfg.onboarding.expire_after_days * DAY_S,
            transport=cfg.transport,
            dtls=DtlsServerOptions(
                max_sessions=cfg.limits.max_sessions,
                idle_timeout_s=cfg.limits.idle_timeout_s,
                handshake_timeout_s=cfg.limits.handshake_timeout_s,
                max_handshakes=cfg.limits.max_handshakes,
                max_sessions_per_host=cfg.limits.max_sessions_per_host,
                max_sessions_per_identity=cfg.limits.max_sessions_per_identity,
                max_exchanges_per_session=cfg.limits.max_exchanges_per_session,
                max_exchanges=cfg.limits.max_exchanges,
                require_extended_master_secret=cfg.dtls.require_extended_master_secret,
                require_renegotiation_info=cfg.dtls.require_renegotiation_info,
            ),
            max_observations_per_session=cfg.limits.max_observations_per_session,
            max_observations_per_client=cfg.limits.max_observations_per_client,
            max_observations_per_host=cfg.limits.max_observations_per_host,
            max_observations=cfg.limits.max_observations,
            max_uploads_per_resource=cfg.limits.max_uploads_per_resource,
        )
        own_transport = cfg.transport == "coapdev"
        hooks = DeviceHooks(
            before_onboarding=self._before_onboarding,
            before_change=self._before_change,
            # The aiocoap transport cannot take these (it refuses to start with them).
            admit_handshake=self._admit_handshake if own_transport else None,
            handshake_failed=self._handshake_failed if own_transport else None,
        )
        server = DeviceServer(store, options, audit=self.audit, hooks=hooks)
        add_tradfri_resources(server, lambda: self.device_name)
        self.server = server
        for res_cfg in cfg.resources:
            self._mount(res_cfg)
        await server.start()
        if not own_transport:
            log.warning(
                "device.transport = 'aiocoap': failed handshakes are neither rate-limited "
                "nor audited (the stock transport has no hooks for them)"
            )
        if not own_transport and cfg.dtls != DtlsConfig(True, True):
            log.warning(
                "device.transport = 'aiocoap' requires extended_master_secret and "
                "renegotiation_info from every client; the [dtls] settings apply to 'coapdev'"
            )
        if cfg.onboarding.button:
            self._background.append(asyncio.create_task(self._button(cfg.onboarding.button)))
        if cfg.advertise:
            await self._advertise()

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        await self._withdraw()
        for res in self._resources.values():
            res.retire()
        if self.server is not None:
            await self.server.stop()
        self._lock.release()
        self.stopped.set()

    def install_signal_handlers(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    # --- resources and reload --------------------------------------------------------

    def _mount(self, res_cfg: ResourceConfig) -> None:
        assert self.server is not None
        res = ScriptResource(self.server.state, res_cfg, data_dir=self.data_dir)
        self.server.add_resource(res_cfg.path, res)
        self._resources[res_cfg.path] = res

    async def reload(self) -> bool:
        """Re-read the config; keep the old one (and say why) if the new one is bad."""
        if self.reload_config is None:
            log.warning("SIGHUP: nothing to reload (running on the built-in config)")
            return False
        try:
            new = self.reload_config()
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self.audit.record("config-reload-rejected", error=str(exc))
            return False
        except Exception as exc:  # anything else unexpected while reading
            log.error("config reload failed, keeping the running config: %s", exc)
            return False
        old = self.config
        if (new.host, new.port, new.transport) != (old.host, old.port, old.transport):
            log.warning("host, port and transport changes take effect at the next restart")
        if new.dtls != old.dtls:
            self._apply_handshake_policy(new)
        if new.demo_light != old.demo_light:
            log.warning("device.demo_light changes take effect at the next restart")
        old_by_path = {r.path: r for r in old.resources}
        new_by_path = {r.path: r for r in new.resources}
        assert self.server is not None
        for path, res_cfg in old_by_path.items():
            if new_by_path.get(path) != res_cfg:
                res = self._resources.pop(path)
                self.server.remove_resource(path)
                res.retire()
        for path, res_cfg in new_by_path.items():
            if path not in self._resources:
                self._mount(res_cfg)
        self.change_limiter.configure(
            new.limits.changes_burst,
            new.limits.changes_per_minute,
            new.limits.device_changes_per_s,
        )
        self.audit.configure(_audit_limits(new))
        self.log_limiter.burst = float(new.limits.log_burst)
        self.log_limiter.rate_per_s = new.limits.log_lines_per_minute / 60.0
        for limiter in (self.handshake_limiter, self.onboarding_limiter):
            limiter.burst = float(new.onboarding.attempts_burst)
            limiter.rate_per_s = new.onboarding.attempts_per_minute / 60.0
        self.config = new
        self._apply_onboarding_policy()
        log.info("config reloaded from %s: %d resources", new.source, len(new.resources))
        self.audit.record("config-reloaded", resources=len(new.resources))
        return True

    def _apply_handshake_policy(self, cfg: GatewayConfig) -> None:
        """[dtls] settings apply to the next handshake; sessions already open stay."""
        dtls = getattr(self.server.transport if self.server else None, "dtls", None)
        if dtls is None:
            log.warning("[dtls] changes take effect at the next restart")
            return
        dtls.set_handshake_policy(
            require_extended_master_secret=cfg.dtls.require_extended_master_secret,
            require_renegotiation_info=cfg.dtls.require_renegotiation_info,
        )
        log.info(
            "handshake policy: extended_master_secret %s, renegotiation_info %s",
            "required" if cfg.dtls.require_extended_master_secret else "optional",
            "required" if cfg.dtls.require_renegotiation_info else "optional",
        )

    # --- onboarding ------------------------------------------------------------------

    def _apply_onboarding_policy(self) -> None:
        store = self.store
        assert store is not None
        always = store.device.onboarding_until == float("inf")
        if self.config.onboarding.always_open and not always:
            store.open_onboarding(None, now=time.time())
        elif not self.config.onboarding.always_open and always:
            store.open_onboarding(0, now=time.time())

    def _before_onboarding(self, request: Message) -> None:
        host = _host(request)
        if not self.onboarding_limiter.attempt(host):
            self.audit.refusal("onboard-throttled", host)
            wait = self.onboarding_limiter.retry_after_s(host)
            raise TooManyRequests(
                f"too many onboarding attempts from {host}; retry in {wait:.0f} s",
                retry_after_s=wait,
            )
        self._limit_change(host, None, "onboard")

    def _before_change(self, request: Message, who: Principal, operation: str) -> None:
        client = who.client.id if who.client is not None else None
        self._limit_change(_host(request), client, operation)

    def _limit_change(self, host: str, client: str | None, operation: str) -> None:
        """4.29 (this client or host asks too often) or 5.03 (the device is busy), with Max-Age."""
        refused = self.change_limiter.check(client, host)
        if refused is None:
            return
        wait = refused.retry_after_s
        self.audit.refusal(
            "change-throttled", host, operation=operation, client=client, scope=refused.scope
        )
        if refused.scope == "device":
            raise ServiceUnavailable(
                f"the device is busy with other changes; retry in {wait:.1f} s",
                retry_after_s=wait,
            )
        whose = "this client" if refused.scope == "client" else f"{host}"
        raise TooManyRequests(
            f"too many changes from {whose}; retry in {wait:.0f} s", retry_after_s=wait
        )

    def _handshake_failed(self, host: str, reason: str) -> None:
        self.handshake_limiter.failure(host)
        self.audit.refusal("handshake-failed", host, reason=reason)
        left_out = self._handshake_log(f"failed {host}", time.monotonic())
        if left_out is not None:
            more = f" ({left_out} more since the last line)" if left_out else ""
            log.info("handshake from %s failed: %s%s", host, reason, more)

    def _admit_handshake(self, host: str) -> bool:
        if self.handshake_limiter.allowed(host):
            return True
        left_out = self._handshake_log(f"throttled {host}", time.monotonic())
        if left_out is not None:
            more = f" ({left_out} more since the last line)" if left_out else ""
            log.info(
                "rate-limited: ignoring handshakes from %s after repeated failures%s", host, more
            )
        return False

    async def _button(self, argv: tuple[str, ...]) -> None:
        """A pairing button: each line the command prints opens onboarding."""

        def pressed(line: bytes) -> None:
            if not line.strip():
                return
            assert self.store is not None
            self.store.open_onboarding(self.config.onboarding.window_s, now=time.time())
            log.info(
                "pairing button pressed: onboarding open for %.0f s",
                self.config.onboarding.window_s,
            )

        env = base_environment(self.data_dir)
        env["COAPDEV_DEVICE_ID"] = self.store.device.id if self.store else ""
        await supervise_lines(
            argv,
            pressed,
            what="pairing button command",
            env=env,
            cwd=str(self.data_dir),
            max_line_bytes=BUTTON_MAX_LINE_BYTES,
            backoff_s=(1.0, 60.0),
        )

    async def _report_suppressed_lines(self) -> None:
        """Say how many log lines and audit events were held back, once a minute."""
        while True:
            await asyncio.sleep(LOG_SUMMARY_INTERVAL_S)
            self.log_limiter.flush()
            self.audit.flush_suppressed()

    # --- discovery -------------------------------------------------------------------

    async def _advertise(self) -> None:
        """Advertise in the background: registering takes a few seconds of probing."""
        from coapdev.discovery import Advertiser

        assert self.store is not None and self.server is not None
        store = self.store
        advertiser = Advertiser(
            name=self.device_name,
            device_id=store.device.id,
            port=self.server.port,
            host=self.host,
            onboarding_open=lambda: store.onboarding_open(time.time()),
        )
        self.advertiser = advertiser

        async def run() -> None:
            try:
                await advertiser.start()
            except Exception as exc:  # a device without mDNS still works by address
                log.warning("mDNS advertising is off: %s", exc)
                return
            await advertiser.follow()

        self._background.append(asyncio.create_task(run(), name="coapdev mDNS"))

    async def _withdraw(self) -> None:
        if self.advertiser is not None:
            with contextlib.suppress(Exception):
                await self.advertiser.stop()
            self.advertiser = None


def _audit_limits(config: GatewayConfig) -> AuditLimits:
    limits = config.limits
    return AuditLimits(
        max_bytes=limits.audit_max_bytes,
        reserve_free_bytes=limits.audit_reserve_bytes,
        refusals_per_minute=limits.audit_refusals_per_minute,
    )


def _host(request: Message) -> str:
    try:
        return request.remote.hostinfo.rsplit(":", 1)[0].strip("[]")
    except Exception:
        return "?"
