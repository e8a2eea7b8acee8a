"""A long-lived client heals itself: real gateway processes, real DTLS, real failures.

Every test keeps one ``Client`` (and its observation) alive across something
that kills its session: a restart, a kill -9, idle or cap eviction, a network
outage; and checks that the observation is re-registered, delivers again and
that the application was told (``on_reconnect``, ``on_observe_restored``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from support.netem import UdpRelay

from coapdev.audit import read_audit
from coapdev.client import Client, DeviceAddress, onboard

pytestmark = pytest.mark.e2e


def light_config(tmp_path: Path, limits: str = "", name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(f"[device]\ndemo_light = true\nadvertise = false\n[limits]\n{limits}\n")
    return path


class Watcher:
    """Consumes ``client.observe(path)`` in a task and records every value."""

    def __init__(self, client: Client, path: str = "/light") -> None:
        self.values: list[tuple[float, object]] = []
        self.restored: list[str] = []
        self.reconnects = 0
        self.client = client
        self.path = path
        self._changed = asyncio.Event()
        client.on_observe_restored = self._restored
        client.on_reconnect = self._reconnected
        self.task = asyncio.create_task(self._run())

    def _restored(self, path: str) -> None:
        self.restored.append(path)

    def _reconnected(self) -> None:
        self.reconnects += 1

    async def _run(self) -> None:
        async for response in self.client.observe(self.path):
            self.values.append((time.monotonic(), response.value["on"]))
            self._changed.set()

    async def wait_for_value(self, value: bool, after: float, timeout_s: float) -> float:
        """Time from ``after`` until ``value`` was seen (observed at or after ``after``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for when, seen in self.values:
                if when >= after and seen == value:
                    return when - after
            if self.task.done():
                self.task.result()  # raises what ended the observation
                raise AssertionError("the observation ended")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no notification {value!r} within {timeout_s} s; seen {self.values}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def toggle_and_expect(watcher: Watcher, writer: Client, value: bool, timeout_s: float):
    started = time.monotonic()
    await writer.put("/light", {"on": value})
    return await watcher.wait_for_value(value, started, timeout_s)


async def two_clients(gw):
    key = gw.factory_key()
    return await onboard(gw.uri, key, "observer"), await onboard(gw.uri, key, "writer")


def test_observation_survives_restarts_and_tells_the_application(gateway_factory, tmp_path, run):
    gw = gateway_factory(config=light_config(tmp_path))

    async def scenario():
        observer, writer = await two_clients(gw)
        async with Client(observer, timeout_s=4) as obs, Client(writer, timeout_s=4) as w:
            watcher = Watcher(obs)
            await toggle_and_expect(watcher, w, True, 5)
            for i in range(2):  # a clean restart (close_notify), twice
                await asyncio.to_thread(gw.restart)
                await toggle_and_expect(watcher, w, i % 2 == 1, 15)
            assert watcher.restored == ["/light", "/light"]
            assert watcher.reconnects == 2
            await watcher.stop()

    run(scenario(), 90)


def test_observation_survives_kill_9_without_any_other_request(gateway_factory, tmp_path, run):
    """The gateway dies without a word: only the keepalive probe can notice."""
    gw = gateway_factory(config=light_config(tmp_path))

    async def scenario():
        observer, writer = await two_clients(gw)
        async with Client(observer, timeout_s=3, keepalive_s=2) as obs:
            watcher = Watcher(obs)
            async with Client(writer, timeout_s=3) as w:
                await toggle_and_expect(watcher, w, True, 5)
            await asyncio.to_thread(gw.kill9)
            await asyncio.to_thread(gw.start)
            async with Client(writer, timeout_s=3) as w:  # a fresh writer: the state changes
                started = time.monotonic()
                await w.put("/light", {"on": False})
                took = await watcher.wait_for_value(False, started, 20)
            assert watcher.restored == ["/light"]
            assert took < 12  # keepalive (2 s) + a timed-out probe + re-registration
            await watcher.stop()

    run(scenario(), 90)


def test_observation_survives_idle_eviction(gateway_factory, tmp_path, run):
    limits = "idle_timeout_s = 1\nhandshake_timeout_s = 2"  # the sweep runs every 0.5 s
    gw = gateway_factory(config=light_config(tmp_path, limits))

    async def scenario():
        observer, writer = await two_clients(gw)
        # keepalive far beyond the idle timeout: the gateway evicts the session.
        async with Client(observer, timeout_s=4, keepalive_s=60) as obs:
            watcher = Watcher(obs)
            async with Client(writer, timeout_s=4) as w:
                await toggle_and_expect(watcher, w, True, 5)
                # Both sessions are evicted (close_notify); the observer registers again.
                for _ in range(100):
                    if watcher.restored:
                        break
                    await asyncio.sleep(0.1)
                assert watcher.restored, "the evicted observation was not re-registered"
                await toggle_and_expect(watcher, w, False, 10)
            await watcher.stop()

    run(scenario(), 60)


def test_observation_survives_session_cap_eviction(gateway_factory, tmp_path, run):
    gw = gateway_factory(config=light_config(tmp_path, "max_sessions = 3"))

    async def scenario():
        key = gw.factory_key()
        observer, writer = await two_clients(gw)
        others = [await onboard(gw.uri, key, f"other-{i}") for i in range(3)]
        async with Client(observer, timeout_s=4, keepalive_s=60) as obs:
            watcher = Watcher(obs)
            async with Client(writer, timeout_s=4) as w:
                await toggle_and_expect(watcher, w, True, 5)
                async with contextlib.AsyncExitStack() as stack:
                    for creds in others:  # each new session evicts the least recently active
                        other = await stack.enter_async_context(Client(creds, timeout_s=4))
                        assert (await other.get("/device")).ok
                    for value in (False, True, False):
                        await toggle_and_expect(watcher, w, value, 10)
            assert watcher.restored, "the observation was never evicted: the test proves nothing"
            await watcher.stop()

    run(scenario(), 60)


def test_observation_and_requests_survive_a_network_outage(gateway_factory, tmp_path, run):
    """A link that drops everything for 6 s: requests fail meanwhile, then heal by themselves."""
    gw = gateway_factory(config=light_config(tmp_path))

    async def scenario():
        observer, writer = await two_clients(gw)
        relay = await UdpRelay.start(("127.0.0.1", gw.port))
        try:
            via_relay = DeviceAddress("127.0.0.1", relay.port)
            observer.address = via_relay
            async with (
                Client(observer, timeout_s=3, keepalive_s=2) as obs,
                Client(writer, timeout_s=3) as w,  # direct, so the state changes meanwhile
            ):
                watcher = Watcher(obs)
                await toggle_and_expect(watcher, w, True, 5)
                relay.block()
                started = time.monotonic()
                await w.put("/light", {"on": False})  # its notification is lost
                await asyncio.sleep(6)
                relay.unblock()
                await watcher.wait_for_value(False, started, 15)
                assert relay.dropped > 0
                assert (await obs.get("/device")).ok  # the observer's own requests work
                await toggle_and_expect(watcher, w, True, 10)
                await watcher.stop()
        finally:
            relay.close()

    run(scenario(), 90)


def test_two_gateways_one_process_never_mix_credentials(gateway_factory, run):
    gw_a = gateway_factory("a")
    gw_b = gateway_factory("b")  # the built-in config: /light is a script resource

    async def scenario():
        a1 = await onboard(gw_a.uri, gw_a.factory_key(), "a-admin")
        a2 = await onboard(gw_a.uri, gw_a.factory_key(), "a-user")
        b1 = await onboard(gw_b.uri, gw_b.factory_key(), "b-admin")
        assert a1.device_id != b1.device_id
        creds = [a1, a2, b1]
        seen: dict[str, set[str]] = {c.identity: set() for c in creds}
        errors: list[tuple[str, float, str]] = []
        restart_done = [0.0]
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Client(c, timeout_s=4, keepalive_s=3))
                for c in creds
            ]

            restarted = asyncio.Event()

            async def hammer(client: Client):
                i = 0
                ok_after_restart = 0
                while ok_after_restart < 20:  # bounded by the scenario's timeout
                    i += 1
                    try:
                        device = (await client.get("/device")).value
                        seen[client.credentials.identity].add(device["id"])
                        if i % 5 == 0:
                            await client.put("/light", {"on": i % 2 == 0})
                        if restarted.is_set():
                            ok_after_restart += 1
                    except Exception as exc:
                        errors.append((client.credentials.name, time.monotonic(), str(exc)))
                    await asyncio.sleep(0.05)

            async def restart_a():
                await asyncio.sleep(1.0)
                await asyncio.to_thread(gw_a.restart)
                restart_done[0] = time.monotonic()
                restarted.set()

            await asyncio.gather(*(hammer(c) for c in clients), restart_a())
            for client in clients:  # each admin sees itself as "self" on its own device
                if client.credentials.role == "admin":
                    listing = (await client.get("/clients")).value
                    me = [c for c in listing if c["self"]]
                    assert [c["id"] for c in me] == [client.credentials.client_id]
        assert seen == {
            a1.identity: {a1.device_id},
            a2.identity: {a1.device_id},
            b1.identity: {b1.device_id},
        }
        # Only device A's clients may fail, only while A is down (or a request
        # sent then), and only by not getting an answer; B's client notices nothing.
        for name, when, message in errors:
            assert name.startswith("a-") and when < restart_done[0] + 4.5, errors
            assert "nothing is listening" in message or "no answer" in message, errors

    run(scenario(), 120)
    for gw in (gw_a, gw_b):
        failures = [e for e in read_audit(gw.state_dir) if e["event"] == "handshake-failed"]
        assert failures == [], failures
    assert "Traceback" not in gw_b.log()


def test_revoked_observer_stops_instead_of_retrying_forever(gateway_factory, tmp_path, run):
    gw = gateway_factory(config=light_config(tmp_path))

    async def scenario():
        observer, writer = await two_clients(gw)
        async with Client(observer, timeout_s=3, keepalive_s=2) as obs:
            watcher = Watcher(obs)
            async with Client(writer, timeout_s=3) as w:
                await toggle_and_expect(watcher, w, True, 5)
            await asyncio.to_thread(gw.local, "clients", "revoke", "observer", "--force")
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(watcher.task, 20)
            assert type(info.value).__name__ in ("NotAuthorized", "HandshakeRejected")

    run(scenario(), 60)


def test_sigstop_is_an_outage_too(gateway_factory, tmp_path, run):
    """A gateway frozen for a while (overloaded host) answers late; nothing is lost."""
    gw = gateway_factory(config=light_config(tmp_path))

    async def scenario():
        observer, writer = await two_clients(gw)
        async with Client(observer, timeout_s=3, keepalive_s=2) as obs:
            watcher = Watcher(obs)
            async with Client(writer, timeout_s=3) as w:
                await toggle_and_expect(watcher, w, True, 5)
                os.kill(gw.proc.pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(5)
                finally:
                    os.kill(gw.proc.pid, signal.SIGCONT)
                await toggle_and_expect(watcher, w, False, 15)
            await watcher.stop()

    run(scenario(), 60)
