"""Crash safety: kill -9 at random moments during an onboarding storm, many times.

What a client was told is what the device knows after any crash: every
client that got 2.01 for its onboarding is there, every 2.02 revocation
stays revoked, every confirmed rekey has the new key and not the old one;
an interrupted rekey leaves at least one working key.  A truncated or
corrupt state file is refused with an error naming it, and the previous
good copy is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coapdev.client import Client, Credentials, onboard, rekey
from coapdev.errors import ClientError, HandshakeFailed, NotAuthorized
from coapdev.store import STATE_FILE, read_state

pytestmark = pytest.mark.e2e

STORM_CONFIG = """
[device]
advertise = false
[onboarding]
always_open = true
max_clients = 100000
attempts_burst = 100000
attempts_per_minute = 100000
[limits]
# the storm changes state as fast as it can: not what is tested here
changes_burst = 1000000
changes_per_minute = 1000000
device_changes_per_s = 1000000
"""


@dataclass
class Ledger:
    """What the clients were told, and what is still in doubt."""

    live: dict[str, Credentials] = field(default_factory=dict)  # client id -> current creds
    revoked: dict[str, Credentials] = field(default_factory=dict)
    rotated_away: list[Credentials] = field(default_factory=list)  # old creds of a rekey
    doubtful_rekeys: list[tuple[Credentials, Credentials | None]] = field(default_factory=list)
    doubtful_revokes: list[Credentials] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    onboard_attempts: int = 0
    ok_onboards: int = 0
    ok_revokes: int = 0
    ok_rekeys: int = 0

    def idle_victim(self, rng: random.Random, admin_id: str) -> Credentials | None:
        candidates = [c for cid, c in self.live.items() if cid not in self.busy and cid != admin_id]
        return rng.choice(candidates) if candidates else None


async def storm(uri: str, key: str, admin: Credentials, ledger: Ledger, stop, seed: int):
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        n += 1
        action = rng.random()
        try:
            if action < 0.7:
                ledger.onboard_attempts += 1
                creds = await onboard(uri, key, f"storm-{seed}-{n}", timeout_s=2)
                ledger.live[creds.client_id] = creds  # got 2.01
                ledger.ok_onboards += 1
            elif action < 0.85:
                victim = ledger.idle_victim(rng, admin.client_id)
                if victim is None:
                    continue
                ledger.busy.add(victim.client_id)
                try:
                    async with Client(admin, timeout_s=2) as a:
                        await a.delete(f"/clients/{victim.client_id}")  # 2.02
                    ledger.revoked[victim.client_id] = ledger.live.pop(victim.client_id)
                    ledger.ok_revokes += 1
                except ClientError:
                    # Interrupted: revoked or not, both are right; no longer checked.
                    ledger.doubtful_revokes.append(ledger.live.pop(victim.client_id))
                    raise
                finally:
                    ledger.busy.discard(victim.client_id)
            else:
                victim = ledger.idle_victim(rng, admin.client_id)
                if victim is None:
                    continue
                ledger.busy.add(victim.client_id)
                saved: list[Credentials] = []
                try:
                    new = await rekey(victim, timeout_s=2, save=saved.append)
                    ledger.live[victim.client_id] = new  # the new key was used: confirmed
                    ledger.rotated_away.append(victim)
                    ledger.ok_rekeys += 1
                except ClientError:
                    # Interrupted: the old key, or the new one if it got that far, works.
                    ledger.live.pop(victim.client_id, None)
                    ledger.doubtful_rekeys.append((victim, saved[0] if saved else None))
                    raise
                finally:
                    ledger.busy.discard(victim.client_id)
        except ClientError:
            await asyncio.sleep(0.05)  # the gateway is down or was killed mid-request


def check_state_file(
    state_dir: Path, live: dict[str, Credentials], revoked: dict[str, Credentials]
) -> None:
    """The file on disk holds every confirmed client and none of the confirmed revocations.

    ``live`` leaves out clients with an operation in flight when the gateway was
    killed: the device may have carried it out without the client hearing so.
    """
    _, clients = read_state(state_dir)  # the snapshot and its journal
    on_disk = {c.id: c for c in clients}
    missing = [cid for cid in live if cid not in on_disk]
    assert not missing, f"clients told 2.01 but not on disk after kill -9: {missing}"
    back = [cid for cid in revoked if cid in on_disk]
    assert not back, f"clients told 2.02 (revoked) but on disk after kill -9: {back}"
    for cid, creds in live.items():
        record = on_disk[cid]
        assert creds.identity in (
            record.identity,
            record.pending.identity if record.pending else None,
        )


async def works(creds: Credentials) -> bool:
    try:
        async with Client(creds, timeout_s=3) as c:
            return (await c.get("/device")).ok
    except (HandshakeFailed, NotAuthorized):
        return False


def run_storm(gateway_factory, tmp_path: Path, run, cycles: int, seed: int) -> Ledger:
    config = tmp_path / "storm.toml"
    config.write_text(STORM_CONFIG)
    gw = gateway_factory("storm", config=config)
    key = gw.factory_key()
    rng = random.Random(seed)

    async def scenario() -> Ledger:
        admin = await onboard(gw.uri, key, "storm-admin")
        ledger = Ledger()
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(storm(gw.uri, key, admin, ledger, stop, seed * 100 + i))
            for i in range(4)
        ]
        try:
            for _ in range(cycles):
                await asyncio.sleep(rng.uniform(0.2, 1.2))
                await asyncio.to_thread(gw.kill9)
                live = {k: v for k, v in ledger.live.items() if k not in ledger.busy}
                revoked = dict(ledger.revoked)
                await asyncio.to_thread(check_state_file, gw.state_dir, live, revoked)
                await asyncio.to_thread(gw.start)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
        # Over the network: what each client was told is what the device does.
        for creds in [*ledger.live.values(), admin]:
            assert await works(creds), f"{creds.name}: got 2.01 (or a confirmed rekey) but fails"
        for creds in ledger.revoked.values():
            assert not await works(creds), f"{creds.name}: revoked (2.02) but still works"
        for creds in ledger.rotated_away:
            assert not await works(creds), f"{creds.name}: rotated away but its old key works"
        for old, new in ledger.doubtful_rekeys:
            ok_old = await works(old)
            ok_new = new is not None and await works(new)
            assert ok_old or ok_new, f"{old.name}: an interrupted rekey left no working key"
        return ledger

    ledger = run(scenario(), 60 + cycles * 10)
    assert ledger.ok_onboards > cycles, "the storm did not get going"
    leftovers = list(gw.state_dir.glob(".*.tmp"))
    assert leftovers == [], leftovers  # a write interrupted by a kill is tidied at start
    return ledger


def test_onboarding_storm_survives_kill_9(gateway_factory, tmp_path, run):
    ledger = run_storm(gateway_factory, tmp_path, run, cycles=6, seed=11)
    assert ledger.ok_revokes + ledger.ok_rekeys > 0


@pytest.mark.slow
def test_onboarding_storm_survives_kill_9_many_times(gateway_factory, tmp_path, run):
    ledger = run_storm(gateway_factory, tmp_path, run, cycles=60, seed=int(time.time()))
    print(
        f"storm: {ledger.onboard_attempts} onboarding attempts, {ledger.ok_onboards} got 2.01, "
        f"{ledger.ok_revokes} revokes, {ledger.ok_rekeys} rekeys confirmed, "
        f"{len(ledger.doubtful_rekeys)} rekeys and {len(ledger.doubtful_revokes)} revokes "
        "interrupted: all consistent after 60 kill -9"
    )


# --- a damaged state file -------------------------------------------------------------


def _onboard_two(gw, run) -> tuple[Credentials, Credentials]:
    async def two():
        key = gw.factory_key()
        return await onboard(gw.uri, key, "first"), await onboard(gw.uri, key, "second")

    return run(two())


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated (a disk that lost the tail)
        lambda raw: b"",  # empty
        lambda raw: raw.replace(b'"schema": 1', b'"schema": 1, "x": \x00'),  # garbage inside
        lambda raw: json.dumps({**json.loads(raw), "clients": 5}).encode(),  # wrong shape
    ],
    ids=["truncated", "empty", "garbage", "wrong-shape"],
)
def test_damaged_state_file_is_refused_naming_it_and_the_good_copy_kept(
    gateway_factory, run, damage
):
    gw = gateway_factory("damaged")
    first, _ = _onboard_two(gw, run)
    gw.stop()
    state = gw.state_dir / STATE_FILE
    backup = gw.state_dir / (STATE_FILE + ".bak")
    good_backup = backup.read_bytes()
    state.write_bytes(damage(state.read_bytes()))
    damaged = state.read_bytes()

    with pytest.raises(AssertionError) as info:
        gw.start(ready_timeout_s=10)
    message = info.value.args[0]
    assert f"coapdev-gateway: {state}: " in message  # one line, naming the file
    assert str(backup) in message  # it says where the previous good copy is
    assert "Traceback" not in message
    listing = gw.local("clients", "list", check=False)
    assert listing.returncode == 1 and str(state) in listing.stderr
    # Nothing was overwritten: the damaged file is left for inspection, the backup kept.
    assert state.read_bytes() == damaged and backup.read_bytes() == good_backup

    # The operator restores the previous good copy: the device comes back with it.
    state.write_bytes(good_backup)
    gw.start()

    async def first_works():
        return await works(first)

    assert run(first_works())


def test_state_file_damaged_while_running_is_detected_and_never_overwritten(gateway, run):
    first, _ = _onboard_two(gateway, run)
    key = gateway.factory_key()
    state = gateway.state_dir / STATE_FILE
    backup = gateway.state_dir / (STATE_FILE + ".bak")
    good_backup = backup.read_bytes()
    state.write_bytes(state.read_bytes()[:50])  # damaged behind the gateway's back
    time.sleep(1.5)  # it looks at the file twice a second

    async def scenario():
        assert await works(first)  # the state already loaded keeps serving
        with pytest.raises(ClientError):  # a change cannot be written over a damaged file
            await onboard(gateway.uri, key, "third", timeout_s=5)

    run(scenario())
    log = gateway.log()
    assert f"cannot reload {state}" in log
    assert len(state.read_bytes()) == 50 and backup.read_bytes() == good_backup
    with contextlib.suppress(Exception):
        gateway.stop()
