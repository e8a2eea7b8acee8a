"""DeviceServer: the store, the site and the DTLS transport, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiocoap import Message, resource

from ..audit import AuditLog
from ..const import DEFAULT_COAPS_PORT
from ..errors import StateWriteError
from ..model import Credential, Principal
from ..store import CredentialStore
from . import budget
from .dtls import DtlsServerOptions
from .resources import DeviceSite, ServerState, build_site
from .transport import DtlsTransport, TransportHooks, start_transport

log = logging.getLogger("coapdev.server")

DAY_S = 24 * 3600.0


@dataclass
class DeviceOptions:
    host: str = "::"
    port: int = DEFAULT_COAPS_PORT
    #: Serve the built-in demo light at /light.
    demo_light: bool = True
    #: How often to look for changes made by other processes (local CLI).
    refresh_interval_s: float = 0.5
    #: How often last-seen times are written out.
    flush_interval_s: float = 60.0
    #: Clients unused this long are removed (0: never).
    expire_after_s: float = 90 * DAY_S
    #: How often expiry is checked (default: a tenth of expire_after_s, 1 s to 1 h).
    expiry_check_interval_s: float | None = None
    #: DTLS server transport: "coapdev" (our own) or "aiocoap" (the stock one).
    transport: str = "coapdev"
    dtls: DtlsServerOptions = field(default_factory=DtlsServerOptions)
    max_observations_per_session: int = budget.MAX_OBSERVATIONS_PER_SESSION
    max_observations_per_client: int = budget.MAX_OBSERVATIONS_PER_CLIENT
    max_observations_per_host: int = budget.MAX_OBSERVATIONS_PER_HOST
    max_observations: int = budget.MAX_OBSERVATIONS
    max_uploads_per_resource: int = budget.MAX_UPLOADS_PER_RESOURCE


@dataclass(frozen=True)
class DeviceHooks:
    """The owner's checks (rate limits, audit), given when the device is made.

    ``before_onboarding`` and ``before_change`` raise a RequestRefused to
    refuse; ``admit_handshake`` and ``handshake_failed`` need the coapdev
    transport (the aiocoap one refuses to start with them).
    """

    before_onboarding: Callable[[Message], None] | None = None
    before_change: Callable[[Message, Principal, str], None] | None = None
    admit_handshake: Callable[[str], bool] | None = None
    handshake_failed: Callable[[str, str], None] | None = None


class DeviceServer:
    """A running device.  ``site`` may be extended before :meth:`start`."""

    def __init__(
        self,
        store: CredentialStore,
        options: DeviceOptions | None = None,
        *,
        audit: AuditLog | None = None,
        hooks: DeviceHooks | None = None,
    ) -> None:
        self.store = store
        self.options = options or DeviceOptions()
        self.audit = audit
        self.hooks = hooks or DeviceHooks()
        self.state = ServerState(
            store=store,
            audit=audit,
            close_sessions=self._close_sessions,
            before_onboarding=self.hooks.before_onboarding,
            before_change=self.hooks.before_change,
            max_observations_per_session=self.options.max_observations_per_session,
            max_observations_per_client=self.options.max_observations_per_client,
            max_observations_per_host=self.options.max_observations_per_host,
            max_observations=self.options.max_observations,
            max_uploads_per_resource=self.options.max_uploads_per_resource,
        )
        demo = store.directory / "light.json" if self.options.demo_light else None
        self.site: DeviceSite = build_site(self.state, demo_light=demo)
        self.transport: DtlsTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Whatever invalidates key material, here or in another process (found
        # when the store reloads), ends the sessions it opened.
        store.listeners.append(self._credentials_invalidated)

    def add_resource(self, path: tuple[str, ...], res: resource.Resource) -> None:
        self.site.add_resource(path, res)

    def remove_resource(self, path: tuple[str, ...]) -> None:
        self.site.remove_resource(path)

    @property
    def port(self) -> int:
        return self.transport.port if self.transport else self.options.port

    async def start(self) -> None:
        hooks = TransportHooks(
            admit_handshake=self.hooks.admit_handshake,
            handshake_failed=self.hooks.handshake_failed,
            screen_factory=self.site.screen_factory,
        )
        if self.options.transport == "aiocoap":
            # It cannot screen: a factory-key session's requests reach aiocoap
            # (the resources still refuse them).
            log.info("the aiocoap transport does not screen factory-key requests")
            hooks = replace(hooks, screen_factory=None)
        self.transport = await start_transport(
            self.site,
            self.options.host,
            self.options.port,
            self.store.credential_for,
            kind=self.options.transport,
            options=self.options.dtls,
            hooks=hooks,
        )
        self._tasks = [
            asyncio.create_task(self._follow_store(), name="coapdev store refresh"),
            asyncio.create_task(self._flush_and_expire(), name="coapdev store upkeep"),
        ]
        log.info(
            "device %s serving coaps://%s on port %d",
            self.store.device.id,
            self.options.host,
            self.port,
        )

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.store.listeners.remove(self._credentials_invalidated)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            self.store.flush()
        except StateWriteError as exc:
            log.warning("could not write last-seen times: %s (%s)", exc.message, exc.detail)
        except Exception:  # never let a flush failure keep the device from stopping
            log.exception("could not write last-seen times")
        if self.transport is not None:
            await self.transport.shutdown()
            self.transport = None

    def _close_sessions(self, credentials: Collection[Credential]) -> int:
        if self.transport is None or not credentials:
            return 0
        closed = self.transport.close_sessions(credentials)
        if closed:
            log.info("closed %d live session(s) whose key is no longer valid", closed)
        return closed

    def _credentials_invalidated(self, credentials: frozenset[Credential]) -> None:
        """Sessions opened with these keys end: right after the current callback, so
        the answer to the request that revoked them (a client revoking itself)
        still goes out first.  Until then every request on them is refused."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._close_sessions(credentials)
            return
        loop.call_soon(self._close_sessions, credentials)

    async def _follow_store(self) -> None:
        """Pick up changes other processes made (local revoke, pair, factory reset)."""
        while True:
            await asyncio.sleep(self.options.refresh_interval_s)
            try:
                if self.store.refresh():
                    log.info("state changed on disk; reloaded")
            except Exception as exc:
                log.error("cannot reload %s: %s (keeping the loaded state)", self.store.path, exc)

    def _expiry_check_interval_s(self) -> float:
        options = self.options
        if options.expiry_check_interval_s is not None:
            return options.expiry_check_interval_s
        return min(3600.0, max(1.0, options.expire_after_s / 10))

    async def _flush_and_expire(self) -> None:
        last_expiry = 0.0
        check_every_s = self._expiry_check_interval_s()
        while True:
            await asyncio.sleep(min(self.options.flush_interval_s, check_every_s))
            try:
                now = time.time()
                if self.options.expire_after_s > 0 and now - last_expiry >= check_every_s:
                    last_expiry = now
                    gone = self.store.expire_idle(self.options.expire_after_s, now=now)
                    if gone:
                        log.info("expired %d idle client(s)", len(gone))
                self.store.flush()
            except StateWriteError as exc:
                log.warning("store upkeep postponed: %s (%s)", exc.message, exc.detail)
            except Exception:
                log.exception("store upkeep failed")


def default_state_dir() -> Path:
    import os

    env = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
    if env:
        return Path(env.split(":")[0])
    import platformdirs

    return Path(platformdirs.user_state_dir("coapdev-gateway"))
