"""Issue 11 §1, on a real full disk: a small tmpfs this test mounts (CI runs as root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from support import Gateway

from coapdev.client import Client, onboard
from coapdev.errors import HandshakeFailed, NotAuthorized, RequestFailed

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "sd-card"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write until the file system is full; returns the file to delete to free it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return ballast


def test_a_full_disk_refuses_changes_with_a_reason_and_loses_nothing(small_disk, run):
    config = small_disk.parent / "gateway.toml"
    config.write_text(
        "[device]\nadvertise = false\ndemo_light = true\n[onboarding]\nattempts_burst = 100\n"
        # forty onboardings in a row from one host: lift the change limits (tested on their own)
        "[limits]\nchanges_burst = 1000\ndevice_changes_per_s = 100000\n"
    )
    gw = Gateway(state_dir=small_disk / "state", config=config, log_dir=small_disk.parent)
    gw.start()
    try:
        key = gw.factory_key()

        async def before():
            owner = await onboard(gw.uri, key, "owner")
            phones = [await onboard(gw.uri, key, f"phone-{i}") for i in range(40)]
            return owner, phones

        owner, phones = run(before())
        ballast = fill(small_disk)

        async def while_full():
            async with Client(owner) as dev:
                # The journal's last page has some room left: revoke until a change
                # needs more disk than there is.
                for victim in phones:
                    response = await dev.request(
                        "DELETE", f"/clients/{victim.client_id}", check=False
                    )
                    if not response.ok:
                        break
                else:
                    pytest.fail("40 revokes fitted on a full disk")
                for _ in range(3):  # a retry is refused the same way, not "no client"
                    assert str(response.code).startswith("5.03"), response
                    assert b"state directory full" in response.payload
                    response = await dev.request(
                        "DELETE", f"/clients/{victim.client_id}", check=False
                    )
                assert (await dev.get("/device")).ok  # reads are still served
                listed = {c["name"] for c in (await dev.get("/clients")).value}
                assert victim.name in listed
            async with Client(victim) as p:
                assert (await p.get("/device")).ok  # nothing was acknowledged
            return victim, listed

        victim, listed = run(while_full())
        log = gw.log()
        assert log.count("change refused, state directory full") == 1, log
        assert "Traceback" not in log
        gw.restart()  # still full: the state is exactly what was acknowledged

        async def after_restart():
            async with Client(owner) as dev:
                assert {c["name"] for c in (await dev.get("/clients")).value} == listed
            ballast.unlink()
            async with Client(owner) as dev:
                await dev.delete(f"/clients/{victim.client_id}")
            with pytest.raises((NotAuthorized, HandshakeFailed, RequestFailed)):
                async with Client(victim, timeout_s=3) as p:
                    await p.get("/device")

        run(after_restart())
        gw.restart()

        async def revoked_for_good():
            async with Client(owner) as dev:
                names = {c["name"] for c in (await dev.get("/clients")).value}
            assert names == listed - {victim.name}

        run(revoked_for_good())
    finally:
        gw.stop()
