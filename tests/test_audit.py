"""The audit log: its chain, what tampering it reveals and what it cannot, its writer
under restarts, crashes, full disks and threads, and where decisions feed it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from pluginguard import audit
from pluginguard.audit import GENESIS, AuditLog, seal, verify_log
from pluginguard.errors import InputError
from pluginguard.operator.reconcile import DesiredState, Reconciler
from pluginguard.webhooks.admission import review
from pluginguard.webhooks.server import _record
from tests.webhooks.test_admission import (
    FakeCluster,
    admission,
    good_pod,
    signed_plugin,
    trusted,
)

KEY = b"audit-hmac-key-for-tests-0123456789"


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(audit.HMAC_KEY_ENV, raising=False)


def write_log(path: Path, count: int = 20, *, key: bytes | None = None) -> Path:
    with AuditLog(path, component="webhook", key=key) as log:
        for n in range(1, count + 1):
            log.record(
                decision="denied" if n % 2 else "allowed",
                reason="PodViolatesSandbox" if n % 2 else "Verified",
                resource=f"Pod hkp/ratelimit-{n}",
                signer="release (ECDSA-P256)",
                digest="sha256:" + "ab" * 32,
                message=f"decision {n}",
            )
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(path)]


def rewrite(path: Path, new_lines: list[str]) -> None:
    path.write_text("".join(new_lines))


def resealed(
    record: dict[str, Any], *, prev: str | None = None, keep_mac: bool = False
) -> str:
    """A record as a forger without the key rewrites it: a correct hash, and the old
    MAC left in place (``keep_mac``) or dropped."""
    changed = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    if prev is not None:
        changed["prev"] = prev
    forged = seal(changed, key=None)
    if keep_mac:
        forged["mac"] = record["mac"]
    return json.dumps(forged) + "\n"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != audit.HMAC_KEY_ENV}
    return subprocess.run(
        [sys.executable, "-m", "pluginguard.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


# --- the chain ---------------------------------------------------------------------


def test_a_written_log_verifies_and_names_its_last_hash(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    result = verify_log(path)
    assert result.intact and result.records == 20
    written = records(path)
    assert [r["seq"] for r in written] == list(range(1, 21))
    assert written[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(written, written[1:]))
    assert result.summary() == (
        f"20 records, chain intact (no hmac); last record 20 "
        f"sha256:{written[-1]['hash']}"
    )


def test_a_record_has_the_documented_fields(tmp_path: Path) -> None:
    first = records(write_log(tmp_path / "audit.jsonl", 1, key=KEY))[0]
    assert set(first) == {
        "seq",
        "time",
        "component",
        "decision",
        "reason",
        "object",
        "signer",
        "digest",
        "message",
        "prev",
        "hash",
        "mac",
    }
    assert first["time"].endswith("Z") and first["component"] == "webhook"
    assert first["object"] == "Pod hkp/ratelimit-1" and first["decision"] == "denied"
    body = {k: v for k, v in first.items() if k not in ("hash", "mac")}
    import hmac

    import rfc8785

    assert first["hash"] == hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    assert (
        first["mac"] == hmac.new(KEY, rfc8785.dumps(body), hashlib.sha256).hexdigest()
    )


def test_an_empty_log_is_intact(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    assert (
        verify_log(tmp_path / "empty.jsonl").summary()
        == "0 records, chain intact (no hmac)"
    )


# --- tampering ---------------------------------------------------------------------


def test_a_changed_field_is_a_hash_mismatch(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    content[16] = content[16].replace('"decision":"denied"', '"decision":"allowed"')
    rewrite(path, content)
    assert verify_log(path).problems == [
        "record 17 (line 17): hash mismatch — content changed"
    ]


def test_a_deleted_record_is_named(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    del content[16]
    rewrite(path, content)
    assert verify_log(path).problems == [
        "record 18 (line 17) follows record 16: record 17 deleted"
    ]


def test_several_deleted_records_are_named(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    del content[4:7]
    rewrite(path, content)
    assert verify_log(path).problems == [
        "record 8 (line 5) follows record 4: records 5–7 deleted"
    ]


def test_the_head_cut_off_is_found(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    rewrite(path, lines(path)[3:])
    assert verify_log(path).problems == [
        "record 4 (line 1): the log does not begin at the genesis record: records 1–3 deleted"
    ]


def test_an_inserted_forgery_with_a_valid_hash_is_found(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    forged = json.loads(content[16])
    forged.update(decision="allowed", message="nothing to see")
    # A correct hash of its own, but it cannot know a prev that fits: it copies one.
    content.insert(16, resealed(forged, prev=json.loads(content[14])["hash"]))
    rewrite(path, content)
    assert verify_log(path).problems == [
        "line 17 (seq 17): inserted — not in the chain; record 17 (line 18) follows "
        "record 16 (line 16)"
    ]


def test_an_inserted_forgery_with_a_fitting_prev_is_found_at_the_next_record(
    tmp_path: Path,
) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    forged = json.loads(content[16])
    forged.update(decision="allowed", message="nothing to see")
    content.insert(16, resealed(forged, prev=json.loads(content[15])["hash"]))
    rewrite(path, content)
    assert verify_log(path).problems == [
        "line 17 (seq 17): inserted — not in the chain; record 17 (line 18) follows "
        "record 16 (line 16)"
    ]


def test_a_duplicated_line_is_an_insertion(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    content.insert(10, content[9])
    rewrite(path, content)
    assert verify_log(path).problems == [
        "line 11: inserted — a copy of record 10 (line 10)"
    ]


def test_swapped_records_are_reordered(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    content[16], content[17] = content[17], content[16]
    rewrite(path, content)
    assert verify_log(path).problems == [
        "record 18 (line 17) comes before record 17 (line 18), which it follows: reordered"
    ]


def test_a_record_moved_far_is_reordered(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    content.append(content.pop(4))
    rewrite(path, content)
    problems = verify_log(path).problems
    assert problems == [
        "record 6 (line 5) comes before record 5 (line 20), which it follows: reordered"
    ]


def test_a_rewritten_record_with_a_recomputed_hash_breaks_the_next_link(
    tmp_path: Path,
) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    changed = json.loads(content[16])
    changed["decision"] = "allowed"
    content[16] = resealed(changed)
    rewrite(path, content)
    assert verify_log(path).problems == [
        "record 18 (line 18): its prev matches no record: record 17 (line 17) was changed "
        "and its hash recomputed, or replaced"
    ]


def test_a_cut_tail_is_invisible_to_the_chain_but_not_to_an_anchor(
    tmp_path: Path,
) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    anchor = verify_log(path).last_hash
    assert anchor is not None
    rewrite(path, lines(path)[:15])
    # What a hash chain alone cannot show: the 15 records left still chain.
    assert verify_log(path).intact
    result = verify_log(path, anchor=f"sha256:{anchor}")
    assert result.problems == [
        f"no record has the anchored hash {anchor}: the log was cut "
        f"short or rewritten before it"
    ]


def test_a_rewritten_tail_passes_the_chain_but_not_the_hmac(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", key=KEY)
    content = lines(path)
    prev = json.loads(content[15])["hash"]
    for index in range(16, 20):  # the forger recomputes every hash from record 17 on
        record = json.loads(content[index])
        if index == 16:
            record["decision"] = "allowed"
        content[index] = resealed(record, prev=prev, keep_mac=True)
        prev = json.loads(content[index])["hash"]
    rewrite(path, content)
    chain_only = verify_log(path)
    assert chain_only.intact
    assert "hmac not checked: no key given, chain only" in chain_only.summary()
    with_key = verify_log(path, key=KEY)
    assert with_key.problems == [
        f"record {n} (line {n}): HMAC mismatch — forged, or written with another key"
        for n in range(17, 21)
    ]


def test_hmac_verified_is_said(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", key=KEY)
    assert "(hmac verified)" in verify_log(path, key=KEY).summary()
    wrong = verify_log(path, key=b"another-key-another-key")
    assert len(wrong.problems) == 20 and "HMAC mismatch" in wrong.problems[0]


def test_a_stripped_hmac_is_found_with_the_key(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", key=KEY)
    content = lines(path)
    content[2] = resealed(json.loads(content[2]))  # rehashed, no mac
    rewrite(path, content)
    assert verify_log(path, key=KEY).problems == [
        "record 3 (line 3): no HMAC — written without the key, or the HMAC was stripped"
    ]


def test_unparseable_lines_are_input_errors_naming_the_line(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    content = lines(path)
    content[6] = "this is not json\n"
    rewrite(path, content)
    with pytest.raises(InputError, match="line 7: not an audit record: not JSON"):
        verify_log(path)
    content[6] = '{"seq": 7, "seq": 7}\n'
    rewrite(path, content)
    with pytest.raises(InputError, match="line 7: .*duplicate key 'seq'"):
        verify_log(path)


@pytest.mark.parametrize("ending", ["\n", "\n\n\n", "  \n", "\n \t"])
def test_blank_lines_at_the_very_end_are_skipped(tmp_path: Path, ending: str) -> None:
    path = write_log(tmp_path / "audit.jsonl", 5)
    path.write_bytes(path.read_bytes() + ending.encode())
    result = verify_log(path)
    assert result.intact and result.records == 5


def test_a_blank_line_before_a_record_is_not_excused(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", 5)
    content = lines(path)
    content.insert(2, "\n")
    rewrite(path, [*content, "\n"])
    with pytest.raises(InputError, match="line 3: not an audit record: not JSON"):
        verify_log(path)


def test_an_absurd_sequence_number_is_not_printed_in_full(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", 3)
    content = lines(path)
    content[1] = content[1].replace('"seq":2,', '"seq":' + "9" * 400 + ",", 1)
    assert "9" * 400 in content[1]
    rewrite(path, content)
    with pytest.raises(InputError) as raised:
        verify_log(path)
    assert str(raised.value).endswith(
        "line 2: not an audit record: it holds an integer of 400 digits, not a sequence number"
    )


# --- crashes, restarts and failures ------------------------------------------------


def test_a_partial_last_line_is_reported(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    result = verify_log(path)
    assert result.records == 19
    assert len(result.problems) == 1
    assert result.problems[0].startswith("line 20: partial last line (")


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", 5, key=KEY)
    with AuditLog(path, component="webhook", key=KEY) as log:
        log.record(decision="denied", reason="PluginNotFound", resource="Pod hkp/x")
    written = records(path)
    assert [r["seq"] for r in written] == [1, 2, 3, 4, 5, 6]
    assert written[5]["prev"] == written[4]["hash"]
    assert verify_log(path, key=KEY).intact


def test_a_restart_after_a_crash_mid_write_records_the_fragment(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", 5)
    with path.open("ab") as stream:
        stream.write(b'{"component":"webhook","decision":"den')  # the crash
    with AuditLog(path, component="webhook") as log:
        log.record(decision="allowed", reason="Verified", resource="Pod hkp/y")
    content = lines(path)
    assert content[5] == '{"component":"webhook","decision":"den\n'  # kept, ended
    recovery, after = json.loads(content[6]), json.loads(content[7])
    assert recovery["reason"] == "TornRecord" and recovery["seq"] == 6
    assert "partial line of 38 bytes" in recovery["message"]
    assert recovery["prev"] == json.loads(content[4])["hash"]
    assert after["seq"] == 7 and after["prev"] == recovery["hash"]
    result = verify_log(path)
    assert result.intact and result.records == 7
    assert result.notes == [
        "line 6: partial line from an interrupted write, recorded by record 6"
    ]


def test_a_garbled_line_without_a_recovery_record_is_not_excused(
    tmp_path: Path,
) -> None:
    path = write_log(tmp_path / "audit.jsonl", 5)
    content = lines(path)
    content.insert(3, '{"component":"web\n')
    rewrite(path, content)
    with pytest.raises(InputError, match="line 4"):
        verify_log(path)


def test_a_damaged_last_record_refuses_to_be_chained_over(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", 3)
    with path.open("a") as stream:
        stream.write("garbage\n")
    with pytest.raises(InputError, match="last complete line is not an audit record"):
        AuditLog(path, component="webhook")


def test_an_unopenable_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open the audit log"):
        AuditLog(tmp_path, component="webhook")


def test_write_failures_are_counted_and_noted_in_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, component="operator")
    log.record(decision="verified", reason="Verified", resource="Plugin hkp/a")
    assert log.flush()
    real_write = os.write
    failing = {"on": True, "calls": 0}

    def write(fd: int, data: bytes) -> int:
        if failing["on"] and fd == log._fd:
            failing["calls"] += 1
            if failing["calls"] == 1:  # half a line reaches the disk, then it is full
                return real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    for name in ("b", "c", "d"):
        log.record(
            decision="refused", reason="KeyRevoked", resource=f"Plugin hkp/{name}"
        )
    assert log.flush()
    assert log.failed == 3 and log.written == 1
    failing["on"] = False
    log.record(decision="verified", reason="Verified", resource="Plugin hkp/e")
    log.close()
    written = [
        json.loads(line)
        for line in lines(path)
        if line.startswith('{"comp') and line.rstrip().endswith("}")
    ]
    reasons = [r["reason"] for r in written]
    assert reasons == ["Verified", "TornRecord", "RecordsLost", "Verified"]
    assert "3 audit records were lost" in written[2]["message"]
    result = verify_log(path)
    assert result.intact, result.problems
    assert any("partial line" in note for note in result.notes)


def test_record_never_waits_for_the_disk_and_the_queue_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, component="webhook", capacity=10)
    release, stuck = threading.Event(), threading.Event()
    real_write = os.write

    def stuck_disk(fd: int, data: bytes) -> int:
        if fd == log._fd:
            stuck.set()
            release.wait(10)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", stuck_disk)
    log.record(decision="denied", reason="PodViolatesSandbox", resource="Pod hkp/first")
    assert stuck.wait(5)  # the writer holds that one, blocked on the disk
    slowest = 0.0
    for n in range(100):
        started = time.perf_counter()
        log.record(
            decision="denied", reason="PodViolatesSandbox", resource=f"Pod hkp/{n}"
        )
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05
    assert log.dropped == 100 - 10  # ten queued behind the blocked write
    release.set()
    log.close()
    result = verify_log(path)
    assert result.intact
    assert any("were lost" in note for note in result.notes)


def test_concurrent_writers_produce_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, component="webhook", key=KEY, capacity=100_000)

    def decide(worker: int) -> None:
        for n in range(250):
            log.record(
                decision="allowed", reason="Verified", resource=f"Pod hkp/w{worker}-{n}"
            )

    threads = [threading.Thread(target=decide, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    log.close()
    result = verify_log(path, key=KEY)
    assert result.intact and result.records == 2000 and log.dropped == 0
    assert len({r["object"] for r in records(path)}) == 2000


def test_fsync_mode_writes_the_same_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, component="webhook", fsync=True) as log:
        for n in range(5):
            log.record(decision="allowed", reason="Verified", resource=f"Pod hkp/{n}")
        assert log.flush()
        assert len(lines(path)) == 5
    assert verify_log(path).intact


# --- secrets ------------------------------------------------------------------------

PEM = (
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkD0y6cMzQ8kP1mFc2JrP2oX2Y7wqjOq3Fv"
    "\n-----END EC PRIVATE KEY-----"
)
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "secret",
    [
        PEM,
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg",  # cut off
        f"Authorization: Bearer {JWT}",
        "bearer abc.def-ghi_jkl~mno+pqr/stu==",
        JWT,
    ],
)
def test_the_writer_strips_keys_and_tokens(tmp_path: Path, secret: str) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, component="webhook") as log:
        log.record(
            decision="denied",
            reason="InternalError",
            resource="Pod hkp/x",
            signer=secret,
            message=f"could not evaluate: {secret} (sic)",
        )
    text = path.read_text()
    assert (
        "PRIVATE KEY" not in text and "MHcCAQEE" not in text and "MIGHAgEA" not in text
    )
    assert "eyJhbGci" not in text and "abc.def" not in text
    assert log.redacted == 2
    record = records(path)[0]
    assert record["message"].startswith("could not evaluate: [redacted]")
    assert verify_log(path).intact


def test_hmac_key_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_bytes(KEY + b"\n")
    assert audit.read_hmac_key(str(tmp_path / "key")) == KEY
    assert audit.read_hmac_key(None) is None
    monkeypatch.setenv(audit.HMAC_KEY_ENV, "from-the-environment-0123")
    assert audit.read_hmac_key(None) == b"from-the-environment-0123"
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(InputError, match="has 5 bytes; it needs 16 or more"):
        audit.read_hmac_key(str(tmp_path / "short"))


# --- the command ----------------------------------------------------------------------


def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", 20, key=KEY)
    (tmp_path / "key").write_bytes(KEY)
    good = run_cli(
        "audit", "verify", str(path), "--hmac-key-file", str(tmp_path / "key")
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(
        "20 records, chain intact (hmac verified); last record 20 "
    )
    chain_only = run_cli("audit", "verify", str(path))
    assert chain_only.returncode == 0
    assert "(hmac not checked: no key given, chain only)" in chain_only.stdout

    content = lines(path)
    del content[16]
    rewrite(path, content)
    broken = run_cli("audit", "verify", str(path))
    assert broken.returncode == 1
    assert (
        broken.stdout.splitlines()[0]
        == "record 18 (line 17) follows record 16: record 17 deleted"
    )
    assert "19 records, 1 problem: not intact" in broken.stdout

    content[3] = "{\n"
    rewrite(path, content)
    unusable = run_cli("audit", "verify", str(path))
    assert unusable.returncode == 2
    assert "line 4: not an audit record" in unusable.stderr
    missing = run_cli("audit", "verify", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_cli_verify_tolerates_a_trailing_blank_line(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl", 3)
    path.write_bytes(path.read_bytes() + b"\n")
    result = run_cli("audit", "verify", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("3 records, chain intact")


# --- where decisions come from ----------------------------------------------------------


class Recorded:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, **fields: Any) -> None:
        self.records.append(fields)


def _decide_and_record(
    cluster: FakeCluster, obj: dict[str, Any], endpoint: str, sink: Recorded, **kw: Any
) -> None:
    body = admission(obj, **kw)
    _, decision = review(body, cluster, kind=endpoint)
    _record(decision, body["request"], endpoint, None, audit=sink)  # type: ignore[arg-type]


def test_the_webhook_audits_plugins_and_plugin_pods_only(tmp_path: Path) -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    sink = Recorded()
    _decide_and_record(cluster, signed_plugin(), "plugins", sink, kind="Plugin")
    _decide_and_record(cluster, good_pod(), "pods", sink)
    _decide_and_record(
        cluster, good_pod(image="registry.example/hkp/ratelimit:v1"), "pods", sink
    )
    plain = good_pod()
    plain["metadata"]["labels"] = {}
    _decide_and_record(cluster, plain, "pods", sink)  # not a plugin pod
    _decide_and_record(cluster, good_pod(), "pods", sink, dry_run=True)
    _decide_and_record(cluster, good_pod(), "mutate-pods", sink)
    assert [(r["resource"], r["decision"], r["reason"]) for r in sink.records] == [
        ("Plugin hkp/ratelimit", "allowed", "Verified"),
        ("Pod hkp/rl-1", "allowed", "Verified"),
        ("Pod hkp/rl-1", "denied", "PodViolatesSandbox"),
    ]
    assert sink.records[0]["signer"] and sink.records[0]["digest"].startswith("sha256:")


def test_the_operator_audits_each_changed_outcome_once() -> None:
    sink = Recorded()
    reconciler = Reconciler(client.ApiClient(), None, None, audit=sink)  # type: ignore[arg-type]

    def outcome(sequence: int, reason: str, verified: bool) -> DesiredState:
        status = {
            "verified": verified,
            "reason": reason,
            "message": f"{reason}!",
            "signer": "release",
            "digest": None,
            "outcomeSequence": sequence,
        }
        events = [
            ("Normal" if verified else "Warning", reason, f"{reason}!"),
            ("Normal", "SeccompProfileGenerated", "profile generated"),
        ]
        return DesiredState(status, None, None, events)

    reconciler._report(outcome(1, "Verified", True), "Plugin hkp/a", "uid-1")
    reconciler._report(
        outcome(1, "Verified", True), "Plugin hkp/a", "uid-1"
    )  # replayed
    reconciler._report(outcome(2, "KeyRevoked", False), "Plugin hkp/a", "uid-1")
    reconciler._report(
        outcome(1, "Verified", True), "Plugin hkp/a", "uid-2"
    )  # recreated
    unchanged = DesiredState(
        {
            "verified": True,
            "reason": "Verified",
            "message": "",
            "signer": None,
            "digest": None,
            "outcomeSequence": 2,
        },
        None,
        None,
        [],
    )
    reconciler._report(unchanged, "Plugin hkp/b", "uid-3")
    assert [(r["resource"], r["decision"], r["reason"]) for r in sink.records] == [
        ("Plugin hkp/a", "verified", "Verified"),
        ("Plugin hkp/a", "refused", "KeyRevoked"),
        ("Plugin hkp/a", "verified", "Verified"),
    ]
