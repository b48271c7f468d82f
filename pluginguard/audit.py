"""A tamper-evident audit log of PluginGuard's decisions: JSON lines, hash-chained.

Each line is one record. ``hash`` is the SHA-256 of the record's RFC 8785 canonical
bytes without ``hash`` and ``mac``; ``prev`` is the previous record's ``hash`` (the
first record's ``prev`` is ``GENESIS``); ``mac``, when a key is configured, is
HMAC-SHA256 over the same canonical bytes. So a record changed in place, deleted,
inserted or moved breaks the chain where it happened, and ``verify_log`` names it.

What a chain cannot show on its own: a log cut short at its end (the remaining records
still chain), or, without the HMAC key, a log rewritten from some record onwards with
every hash recomputed. The key closes the second gap; for the first, note the last hash
``verify_log`` reports somewhere the writer cannot reach and pass it back as an anchor.

A crash in the middle of a write leaves a partial last line. The writer never chains
over it silently: on start it ends that line and writes a ``TornRecord`` record that
says where the fragment lies and continues the chain from the last complete record;
``verify_log`` reports such a recovered fragment, and a fragment not (yet) recovered.

Writes happen on a background thread fed by a bounded queue: a decision never waits on
the disk, and a record that cannot be queued or written is counted, logged and noted in
the chain (``RecordsLost``), never raised to the caller.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import rfc8785

from pluginguard.errors import InputError

log = logging.getLogger(__name__)

GENESIS = hashlib.sha256(b"pluginguard.dev audit log v1").hexdigest()
HMAC_KEY_ENV = "PLUGINGUARD_AUDIT_HMAC_KEY"
MIN_KEY_BYTES = 16
TORN_RECORD = "TornRecord"
RECORDS_LOST = "RecordsLost"

_SEALS = ("hash", "mac")
_TEXT_FIELDS = (
    "time",
    "component",
    "decision",
    "reason",
    "object",
    "message",
    "prev",
    "hash",
)
_MAX_MESSAGE = 4096
_TAIL_LIMIT = 1 << 20  # a record is a few KiB at most; the last line sits within this

# Values that must never reach a log: PEM private keys, bearer and basic credentials,
# and JWTs (Kubernetes service account tokens are JWTs).
_SECRETS = (
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?"
        r"(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
        re.DOTALL,
    ),
    re.compile(r"(?i)\bauthorization\s*[:=]\s*\S+(?:\s+[A-Za-z0-9\-._~+/]+=*)?"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
)
_SECRET_HINTS = ("private key", "authorization", "bearer", "eyj")  # cheap pre-check
REDACTED = "[redacted]"


def redact(text: str) -> tuple[str, int]:
    """``text`` with anything that looks like a private key or a token replaced, and how
    many replacements were made."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _SECRET_HINTS):
        return text, 0
    count = 0
    for pattern in _SECRETS:
        text, replaced = pattern.subn(REDACTED, text)
        count += replaced
    return text, count


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes ``hash`` and ``mac`` cover: the record without them, per RFC 8785."""
    return rfc8785.dumps({k: v for k, v in record.items() if k not in _SEALS})


def seal(record: dict[str, Any], *, key: bytes | None) -> dict[str, Any]:
    """``record`` with its ``hash`` (and ``mac`` when there is a key) set."""
    body = canonical(record)
    sealed = {k: v for k, v in record.items() if k not in _SEALS}
    sealed["hash"] = hashlib.sha256(body).hexdigest()
    if key is not None:
        sealed["mac"] = hmac.new(key, body, hashlib.sha256).hexdigest()
    return sealed


def read_hmac_key(path: str | None) -> bytes | None:
    """The HMAC key from ``path`` (a file, or a Secret mounted as one), else from
    ``$PLUGINGUARD_AUDIT_HMAC_KEY``, else None.

    Raises InputError for an unreadable file or a key shorter than 16 bytes.
    """
    where = path or f"${HMAC_KEY_ENV}"
    if path:
        try:
            key = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as error:
            raise InputError(
                path, f"cannot read the audit HMAC key: {error}"
            ) from error
    elif os.environ.get(HMAC_KEY_ENV):
        key = os.environ[HMAC_KEY_ENV].encode()
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise InputError(
            where,
            f"the audit HMAC key has {len(key)} bytes; it needs "
            f"{MIN_KEY_BYTES} or more",
        )
    return key


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- writing ---------------------------------------------------------------------------


class AuditLog:
    """Appends records to one file from a background thread.

    One writer per file: two processes appending to the same file would fork the chain.
    Raises InputError from the constructor when the file cannot be opened or its last
    complete line is not a record (a damaged log is for a person to look at, not to
    chain over).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        component: str,
        key: bytes | None = None,
        fsync: bool = False,
        capacity: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self.component = component
        self.written = 0
        self.dropped = 0  # the queue was full
        self.failed = 0  # the disk refused
        self.redacted = 0
        self._key = key
        self._fsync = fsync
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(capacity)
        self._counters = threading.Lock()
        self._reported_lost = 0
        self._partial = 0  # bytes of a line cut short that the file still ends with
        self._fd, self._seq, self._prev, fragment, offset = self._open()
        if fragment:
            # A crash cut the last line short. End it, so that it stays visible as
            # itself, and say in the chain where it is.
            log.warning(
                "audit log %s ends with a partial line (%d bytes at byte %d); "
                "recording it and continuing the chain from record %d",
                self.path,
                len(fragment),
                offset,
                self._seq,
            )
            self._partial = len(fragment)
            self._repair(
                f"a partial line of {len(fragment)} bytes at byte {offset} was "
                f"left by an interrupted write"
            )
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        decision: str,
        reason: str,
        resource: str,
        signer: str | None = None,
        digest: str | None = None,
        message: str = "",
    ) -> None:
        """Queue a record about ``resource`` (e.g. "Pod hkp/ratelimit-0"); returns at
        once, and never raises."""
        entry = {
            "time": _now(),
            "component": self.component,
            "decision": decision,
            "reason": reason,
            "object": resource,
            "signer": signer,
            "digest": digest,
            "message": message,
        }
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            with self._counters:
                self.dropped += 1
                dropped = self.dropped
            if dropped % 1000 == 1:
                log.warning("audit queue full; %d records dropped so far", dropped)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is written (and synced, with ``fsync``);
        False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread and close the file."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("audit log %s: closing with the queue still full", self.path)
            return
        self._thread.join(timeout)
        if not self._thread.is_alive():
            os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # The chain's state (_seq, _prev, _partial) is touched only by the writing thread,
    # after the constructor.

    def _open(self) -> tuple[int, int, str, bytes, int]:
        """The file, the seq and hash to chain from, and a partial last line (with its
        offset) if a crash left one."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as error:
            raise InputError(
                str(self.path), f"cannot open the audit log: {error}"
            ) from error
        try:
            last, fragment, offset = _tail(self.path)
            if fragment and _complete(fragment):
                # Only the newline is missing: the record itself was written whole.
                os.write(fd, b"\n")
                last, fragment = fragment, b""
            seq, prev = _continue_from(last, self.path)
        except OSError as error:
            os.close(fd)
            raise InputError(
                str(self.path), f"cannot read the audit log: {error}"
            ) from error
        except InputError:
            os.close(fd)
            raise
        return fd, seq, prev, fragment, offset

    def _run(self) -> None:
        while True:
            # A batch shares one fsync; it also bounds what the thread holds beyond
            # the queue's capacity.
            batch = [self._queue.get()]
            while len(batch) < 512:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for entry in batch:
                if entry is None:
                    continue
                try:
                    self._append(entry)
                except Exception:  # noqa: BLE001 - a record is never worth the thread
                    log.exception("audit log %s: record not written", self.path)
                    self._lose()
            if self._fsync:
                try:
                    os.fsync(self._fd)
                except OSError as error:
                    log.warning("audit log %s: fsync failed: %s", self.path, error)
            for _ in batch:
                self._queue.task_done()
            if None in batch:
                return

    def _append(self, entry: dict[str, Any]) -> None:
        if self._partial and not self._repair("a write failed part way"):
            self._lose()
            return
        lost = self.dropped + self.failed - self._reported_lost
        if lost > 0 and self._write(
            _notice(
                self.component,
                RECORDS_LOST,
                f"{lost} audit records were lost (queue full or write failed)",
            )
        ):
            self._reported_lost += lost
        if not self._write(self._clean(entry)):
            self._lose()

    def _repair(self, what: str) -> bool:
        """End a partial line and write a TornRecord record after it."""
        try:
            os.write(self._fd, b"\n")
        except OSError as error:
            log.warning("audit log %s: cannot end a partial line: %s", self.path, error)
            return False
        self._partial = 0
        return self._write(
            _notice(
                self.component,
                TORN_RECORD,
                f"{what}; the chain continues from record {self._seq}",
            )
        )

    def _write(self, entry: dict[str, Any]) -> bool:
        record = seal(
            {"seq": self._seq + 1, **entry, "prev": self._prev}, key=self._key
        )
        # The line need not be canonical (the hash is over canonical bytes); sorted,
        # compact JSON reads the same and costs a quarter of a second canonicalisation.
        line = (
            json.dumps(
                record, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
            + b"\n"
        )
        done = 0
        try:
            while done < len(line):
                done += os.write(self._fd, line[done:])
        except OSError as error:
            self._partial = done
            if self.failed % 1000 == 0:
                log.warning("cannot write to audit log %s: %s", self.path, error)
            return False
        self._seq, self._prev = record["seq"], record["hash"]
        self.written += 1
        return True

    def _lose(self) -> None:
        with self._counters:
            self.failed += 1

    def _clean(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry with secrets stripped, text made text, and the message bounded."""
        cleaned = dict(entry)
        for name, value in entry.items():
            if value is None and name in ("signer", "digest"):
                continue
            if value is not None:
                # Lone surrogates cannot be canonicalised; keep them visible, escaped.
                value = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
            if isinstance(value, str):
                text, count = redact(value)
                if count:
                    self.redacted += count
                    if self.redacted == count or self.redacted % 1000 < count:
                        log.warning(
                            "audit record field %r held something that looks like a key "
                            "or token; redacted (%d so far)",
                            name,
                            self.redacted,
                        )
                cleaned[name] = text
            else:
                cleaned[name] = ""
        cleaned["message"] = cleaned["message"][:_MAX_MESSAGE]
        return cleaned


def _notice(component: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "time": _now(),
        "component": component,
        "decision": "recovered",
        "reason": reason,
        "object": "AuditLog",
        "signer": None,
        "digest": None,
        "message": message,
    }


def _tail(path: Path) -> tuple[bytes, bytes, int]:
    """The last complete line of ``path`` (without its newline), whatever follows the
    last newline, and the byte offset of that."""
    with open(path, "rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_LIMIT)
        stream.seek(start)
        tail = stream.read()
    end = tail.rfind(b"\n")
    if end == -1:
        return b"", tail, start
    begin = tail.rfind(b"\n", 0, end) + 1
    return tail[begin:end], tail[end + 1 :], start + end + 1


def _complete(line: bytes) -> bool:
    try:
        record = _parse(line)
    except ValueError:
        return False
    return hashlib.sha256(canonical(record)).hexdigest() == record["hash"]


def _continue_from(last: bytes, path: Path) -> tuple[int, str]:
    """The seq and hash to chain from, given the last complete line."""
    if not last:
        return 0, GENESIS
    try:
        record = _parse(last)
    except ValueError as error:
        raise InputError(
            str(path),
            f"the last complete line is not an audit record "
            f"({error}); check the log with `pluginguard audit "
            f"verify`, then move it aside",
        ) from error
    if hashlib.sha256(canonical(record)).hexdigest() != record["hash"]:
        log.warning(
            "audit log %s: the hash of its last record %d does not match its "
            "content; continuing the chain from the recorded hash, and `audit "
            "verify` will report the record",
            path,
            record["seq"],
        )
    return int(record["seq"]), str(record["hash"])


# --- verifying -------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What the chain check needs of one record."""

    line: int
    seq: int
    hash: str
    prev: str


@dataclass
class Verification:
    """The outcome of verify_log: problems (empty when the chain is intact) and notes
    (recovered torn lines, records reported lost)."""

    records: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mac: str = "absent"  # verified | unchecked | absent
    last_seq: int | None = None
    last_hash: str | None = None

    @property
    def intact(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        macs = {
            "verified": "hmac verified",
            "unchecked": "hmac not checked: no key given, chain only",
            "absent": "no hmac",
        }[self.mac]
        if self.problems:
            count = len(self.problems)
            text = f"{self.records} records, {count} problem{'s' if count > 1 else ''}: not intact"
        else:
            text = f"{self.records} records, chain intact ({macs})"
        if self.last_hash is not None:
            # A changed record's hash may be any string; a real one has 64 digits.
            shown = self.last_hash if len(self.last_hash) <= 64 else f"{self.last_hash[:64]}..."
            text += f"; last record {self.last_seq} sha256:{shown}"
        return text


def verify_log(
    path: str | Path, *, key: bytes | None = None, anchor: str | None = None
) -> Verification:
    """Check the chain (and, with ``key``, every record's HMAC) of the log at ``path``.

    ``anchor`` is a record hash noted earlier; the log must still hold that record.
    Raises InputError for an unreadable file or a line that is not a record (other
    than a partial line left by a crash, which is reported).
    """
    result = Verification()
    entries: list[Entry] = []
    blanks: list[tuple[int, bytes, bool, bytes | None]] = []
    for number, line, ended, following in _lines(path):
        if not line.strip():
            # Blank lines at the very end are an editor's or a shell's doing, and are
            # skipped; the writer never writes one, so one before a record is an error.
            blanks.append((number, line, ended, following))
            continue
        for held in (*blanks, (number, line, ended, following)):
            entry = _entry(*held, path=path, key=key, result=result)
            if entry is not None:
                entries.append(entry)
        blanks.clear()
    result.records = len(entries)
    if entries:
        result.last_seq, result.last_hash = entries[-1].seq, entries[-1].hash
    result.problems.extend(_chain_problems(entries))
    if anchor is not None:
        wanted = anchor.removeprefix("sha256:").lower()
        if not any(e.hash == wanted for e in entries):
            result.problems.append(
                f"no record has the anchored hash {wanted}: the log "
                f"was cut short or rewritten before it"
            )
    return result


def _entry(
    number: int,
    line: bytes,
    ended: bool,
    following: bytes | None,
    *,
    path: str | Path,
    key: bytes | None,
    result: Verification,
) -> Entry | None:
    """The checked record of one line, or None for a torn line (which is reported)."""
    try:
        record = _parse(line)
    except ValueError as error:
        if _torn(line, ended, following, result, number):
            return None
        raise InputError(
            str(path), f"line {number}: not an audit record: {error}"
        ) from error
    return _check_record(record, number, key=key, result=result)


def _lines(path: str | Path) -> Iterator[tuple[int, bytes, bool, bytes | None]]:
    """(line number, line, whether it ended with a newline, the line after it)."""
    try:
        with open(path, "rb") as stream:
            previous: bytes | None = None
            number = 0
            for raw in stream:
                if previous is not None:
                    yield number, previous.rstrip(b"\n"), True, raw
                number += 1
                previous = raw
            if previous is not None:
                yield number, previous.rstrip(b"\n"), previous.endswith(b"\n"), None
    except OSError as error:
        raise InputError(str(path), f"cannot read: {error}") from error


def _torn(
    line: bytes, ended: bool, following: bytes | None, result: Verification, number: int
) -> bool:
    """Whether an unparseable line is a fragment left by a crash; reports it if so."""
    if not ended:
        result.problems.append(
            f"line {number}: partial last line ({len(line)} bytes, no newline): a write "
            f"was interrupted and the log was not reopened since; the records before it "
            f"were checked"
        )
        return True
    try:
        recovery = _parse(following.rstrip(b"\n")) if following else None
    except ValueError:
        recovery = None
    if recovery is None or recovery["reason"] != TORN_RECORD:
        return False
    result.notes.append(
        f"line {number}: partial line from an interrupted write, "
        f"recorded by record {recovery['seq']}"
    )
    return True


def _check_record(
    record: dict[str, Any], number: int, *, key: bytes | None, result: Verification
) -> Entry:
    """The record's own checks: its hash and its MAC."""
    where = f"record {record['seq']} (line {number})"
    body = canonical(record)
    if hashlib.sha256(body).hexdigest() != record["hash"]:
        result.problems.append(f"{where}: hash mismatch — content changed")
    if key is not None:
        result.mac = "verified"
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        if "mac" not in record:
            result.problems.append(
                f"{where}: no HMAC — written without the key, or the HMAC was stripped"
            )
        elif not hmac.compare_digest(expected, str(record["mac"])):
            result.problems.append(
                f"{where}: HMAC mismatch — forged, or written with another key"
            )
    elif "mac" in record:
        result.mac = "unchecked"
    if record["reason"] == RECORDS_LOST and record["decision"] == "recovered":
        result.notes.append(f"{where}: {record['message']}")
    return Entry(number, record["seq"], record["hash"], record["prev"])


def _chain_problems(entries: list[Entry]) -> list[str]:
    """Where the links between records break, each break named once."""
    first: dict[str, int] = {}
    for index, entry in enumerate(entries):
        first.setdefault(entry.hash, index)
    parents = [-1 if e.prev == GENESIS else first.get(e.prev) for e in entries]
    children: dict[int, list[int]] = {}
    for index, parent in enumerate(parents):
        if parent is not None and parent >= 0:
            children.setdefault(parent, []).append(index)
    explained: set[int] = set()
    problems = []
    for index, entry in enumerate(entries):
        if index in explained:
            continue
        before = entries[index - 1] if index else None
        expected_seq = before.seq + 1 if before else 1
        if parents[index] == index - 1 and entry.seq == expected_seq:
            continue
        problems.append(_diagnose(index, entries, parents, children, first, explained))
    return problems


def _diagnose(
    index: int,
    entries: list[Entry],
    parents: list[int | None],
    children: dict[int, list[int]],
    first: dict[str, int],
    explained: set[int],
) -> str:
    """Name the break at ``entries[index]``; marks lines the same cause explains."""
    entry, parent = entries[index], parents[index]
    here = f"record {entry.seq} (line {entry.line})"
    if first[entry.hash] != index:
        original = entries[first[entry.hash]]
        explained.add(index + 1)
        return f"line {entry.line}: inserted — a copy of record {original.seq} (line {original.line})"

    # 1. A block of lines that nothing follows, after which the chain resumes from the
    #    record before them: inserted.
    if index > 0:
        for after in range(index + 1, min(len(entries), index + 65)):
            if parents[after] != index - 1:
                continue
            block = range(index, after)
            # Nothing outside follows the block, and it does not hang off a record
            # further down (that would be records moved, not inserted).
            followed = any(c not in block for i in block for c in children.get(i, ()))
            hanging = any((parents[i] or -1) >= after for i in block)
            if not followed and not hanging:
                explained.add(after)
                resumed, kept = entries[after], entries[index - 1]
                return (
                    f"{_lines_named(entries, block)}: inserted — not in the chain; "
                    f"record {resumed.seq} (line {resumed.line}) follows record "
                    f"{kept.seq} (line {kept.line})"
                )
            break

    # 2. The record it follows is somewhere else in the file: reordered.
    if parent is not None and parent >= 0 and parent != index - 1:
        other = entries[parent]
        if parent > index:
            explained.update(range(index + 1, parent + 2))
            return (
                f"{here} comes before record {other.seq} (line {other.line}), which "
                f"it follows: reordered"
            )
        skipped = range(parent + 1, index)
        if all(i not in children for i in skipped):
            return (
                f"{_lines_named(entries, skipped)}: inserted — not in the chain; "
                f"{here} follows record {other.seq} (line {other.line})"
            )
        return f"{here} follows record {other.seq} (line {other.line}): reordered"

    # 3. It follows nothing in the file.
    if parent == -1:
        if index == 0:
            return f"{here}: sequence number {entry.seq} where the chain starts at 1"
        return (
            f"{here} starts a new chain (its prev is the genesis hash): inserted, "
            f"or another log was appended"
        )
    if index == 0:
        return (
            f"{here}: the log does not begin at the genesis record: records 1–"
            f"{entry.seq - 1} deleted"
        )
    before = entries[index - 1]
    if parent == index - 1:
        return f"{here}: sequence number {entry.seq} does not follow {before.seq}"
    if entry.seq > before.seq + 1:
        gone = (
            f"record {before.seq + 1}"
            if entry.seq == before.seq + 2
            else f"records {before.seq + 1}–{entry.seq - 1}"
        )
        return f"record {entry.seq} (line {entry.line}) follows record {before.seq}: {gone} deleted"
    return (
        f"{here}: its prev matches no record: record {before.seq} (line {before.line}) "
        f"was changed and its hash recomputed, or replaced"
    )


def _lines_named(entries: list[Entry], indices: range) -> str:
    named = [entries[i].line for i in indices]
    if len(named) == 1:
        return f"line {named[0]} (seq {entries[indices[0]].seq})"
    return f"lines {named[0]}–{named[-1]}"


def _parse(line: bytes) -> dict[str, Any]:
    """One line as a record; ValueError says what is wrong with it."""
    try:
        record = json.loads(
            line.decode("utf-8"), object_pairs_hook=_unique_keys, parse_int=_integer
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if not isinstance(record.get("seq"), int) or isinstance(record.get("seq"), bool):
        raise ValueError("no integer seq")
    for name in _TEXT_FIELDS:
        if not isinstance(record.get(name), str):
            raise ValueError(f"no {name} string")
    for name in ("signer", "digest"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise ValueError(f"{name} is neither a string nor null")
    try:
        canonical(record)
    except (rfc8785.IntegerDomainError, rfc8785.FloatDomainError):
        # rfc8785's message holds the whole number; the record may hold a huge one.
        raise ValueError(
            "cannot be canonicalised: a number in it is outside the range JSON "
            "carries exactly (integers up to 2^53)"
        ) from None
    except Exception as error:  # noqa: BLE001 - rfc8785 raises several types
        raise ValueError(f"cannot be canonicalised: {error}") from None
    return record


# A record's integers are sequence numbers, which JSON carries exactly up to 2^53 (16
# digits); one that is longer is not a record's, and is not worth converting in full.
_MAX_DIGITS = 16


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_DIGITS:
        raise ValueError(f"it holds an integer of {digits} digits, not a sequence number")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would let a reader and the hash see different records.
    record: dict[str, Any] = {}
    for name, value in pairs:
        if name in record:
            raise ValueError(f"duplicate key {name!r}")
        record[name] = value
    return record


# --- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit options of ``webhook serve`` and ``operator run``."""
    parser.add_argument(
        "--audit-log",
        metavar="PATH",
        help="append a hash-chained record of every decision to PATH (JSON lines); "
        "check it with `pluginguard audit verify`",
    )
    parser.add_argument(
        "--audit-hmac-key-file",
        metavar="PATH",
        help="HMAC the audit records with this key, e.g. a mounted Secret "
        f"(default: ${HMAC_KEY_ENV} if set)",
    )
    parser.add_argument(
        "--audit-fsync",
        action="store_true",
        help="fsync the audit log after each batch of records",
    )


def from_arguments(args: argparse.Namespace, *, component: str) -> AuditLog | None:
    """The AuditLog the options ask for, or None; raises InputError like AuditLog."""
    if not args.audit_log:
        return None
    key = read_hmac_key(args.audit_hmac_key_file)
    return AuditLog(
        args.audit_log, component=component, key=key, fsync=args.audit_fsync
    )
