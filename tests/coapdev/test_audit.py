"""The audit log: bounded in size, in refusal lines per host, in field length; never raises."""

from __future__ import annotations

import json

from coapdev.audit import AUDIT_ROTATED, MAX_FIELD_CHARS, AuditLimits, AuditLog, read_audit
from coapdev.store import AUDIT_FILE


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def lines(directory) -> list[dict]:
    return read_audit(directory)


def test_refusals_are_limited_per_host_not_per_port(tmp_path):
    clock = Clock()
    audit = AuditLog(tmp_path, AuditLimits(refusals_per_minute=10), clock=clock)
    for port in range(1000, 1200):  # every datagram from a fresh source port
        audit.refusal("refused", f"127.0.0.1:{port}", path="/x")
    audit.refusal("refused", "[::1]:5000", path="/x")  # another host has its own allowance
    refused = [e for e in lines(tmp_path) if e["event"] == "refused"]
    assert len(refused) == 11
    assert refused[0]["source"] == "127.0.0.1:1000"


def test_suppressed_refusals_are_summarised(tmp_path):
    clock = Clock()
    audit = AuditLog(tmp_path, AuditLimits(refusals_per_minute=10), clock=clock)
    for port in range(50):
        audit.refusal("handshake-failed", f"10.0.0.7:{port}", reason="bad key")
    clock.t += 6.0  # one line's allowance refills (10 a minute)
    audit.refusal("handshake-failed", "10.0.0.7:99", reason="bad key")
    events = lines(tmp_path)
    summary = [e for e in events if e["event"] == "suppressed"]
    assert summary == [
        {
            "time": summary[0]["time"],
            "event": "suppressed",
            "of": "handshake-failed",
            "source": "10.0.0.7",
            "count": 40,
            "text": "40 similar events suppressed",
        }
    ]
    assert events[-1]["source"] == "10.0.0.7:99"
    for _ in range(5):
        audit.refusal("handshake-failed", "10.0.0.7:1", reason="bad key")
    assert audit.flush_suppressed() == 1
    assert lines(tmp_path)[-1]["count"] == 5
    assert audit.flush_suppressed() == 0


def test_refusal_lines_are_bounded_in_total_over_many_hosts(tmp_path):
    audit = AuditLog(tmp_path, AuditLimits(refusals_per_minute=10), clock=Clock())
    for i in range(5000):
        audit.refusal("refused", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:1")
    refused = [e for e in lines(tmp_path) if e["event"] == "refused"]
    assert len(refused) == AuditLimits().refusals_total_per_minute(10)


def test_peer_supplied_fields_are_bounded(tmp_path):
    audit = AuditLog(tmp_path)
    audit.refusal("refused", "127.0.0.1:1", path="/" + "x" * 5000, name="ü" * 900)
    entry = lines(tmp_path)[-1]
    assert len(entry["path"]) == MAX_FIELD_CHARS + 3 and entry["path"].endswith("...")
    assert len(entry["name"]) == MAX_FIELD_CHARS + 3
    raw = (tmp_path / AUDIT_FILE).read_bytes()
    assert len(raw) < 1024


def test_total_size_is_capped_with_one_rotated_file(tmp_path):
    cap = 64 * 1024
    audit = AuditLog(tmp_path, AuditLimits(max_bytes=cap))
    for i in range(5000):
        audit.record("rename", client=f"c{i}", name=f"name-{i}", by="admin")
    current = (tmp_path / AUDIT_FILE).stat().st_size
    rotated = (tmp_path / AUDIT_ROTATED).stat().st_size
    assert current + rotated <= cap
    assert oct((tmp_path / AUDIT_ROTATED).stat().st_mode & 0o777) == "0o600"
    events = lines(tmp_path)
    assert events[-1]["client"] == "c4999"  # the newest are kept, oldest first
    numbers = [int(e["client"][1:]) for e in events]
    assert numbers == sorted(numbers) and len(numbers) > 100


def test_the_audit_log_pauses_before_the_store_runs_out_of_room(tmp_path):
    free = [100 * 2**20]
    audit = AuditLog(
        tmp_path, AuditLimits(reserve_free_bytes=8 * 2**20), free_bytes=lambda: free[0]
    )
    assert audit.record("onboard", client="a")
    free[0] = 7 * 2**20  # below the reserve: the store's room is not for the audit log
    assert not audit.record("onboard", client="b")
    assert audit.dropped == 1
    free[0] = 9 * 2**20
    assert audit.record("onboard", client="c")
    assert [e["client"] for e in lines(tmp_path)] == ["a", "c"]


def test_audit_failures_never_raise(tmp_path):
    directory = tmp_path / "gone"
    audit = AuditLog(directory)  # the directory does not exist: every write fails
    assert not audit.record("onboard", client="a")
    audit.refusal("refused", "127.0.0.1:1")
    audit("rekey", {"client": "a"})
    assert audit.dropped == 3


def test_lines_are_json_with_every_control_character_escaped(tmp_path):
    AuditLog(tmp_path).refusal("refused", "127.0.0.1:1", path="/a\nb\x1b\u2028\u202e")
    raw = (tmp_path / AUDIT_FILE).read_text()
    assert raw.count("\n") == 1 and raw.isascii()
    assert json.loads(raw)["path"] == "/a\nb\x1b\u2028\u202e"
