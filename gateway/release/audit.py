"""Append-only, hash-chained, signed audit log of every RPC, in the ledger's SQLite database.

Chain. Entry ``seq`` (1, 2, 3, ...) stores ``prev_hash`` (the previous entry's ``hash``; 64 zeros for
entry 1) and ``hash = sha256(prev_hash_hex_ascii || canonical_json(body))``, where the body is every
field of the entry except ``hash`` (see ``entry_body``; canonical JSON as in ``gateway.release.signing``). Editing,
deleting, reordering or inserting an entry breaks the chain unless every later hash is recomputed.

Seals. Every ``seal_every`` appends (inside the same transaction), on ``seal()`` and at clean shutdown,
a seal row stores ``(seq, head_hash, time, key_id)`` and the gateway's Ed25519 signature over
``canonical_json({"type": "privacy_gateway.audit.seal.v1", "seq", "head_hash", "time", "key_id"})``
(the ``type`` keeps seal and receipt signatures apart). A rewritten-and-rehashed chain no longer matches
the seals after it; a forged seal does not verify.

Entry MAC. Each row also carries ``mac = HMAC-SHA256(k, hash)`` with ``k`` derived from the audit HMAC
key. Anyone can compute a chain hash, but not a MAC, so ``AuditLog.verify`` names a forged entry even
after a later seal covered it, and ``append`` warns when it extends a head it cannot authenticate. The MAC
is not part of the hash and is not exported (offline verifiers rely on the seals).

Pseudonymization. The SQL text and caller-marked identifier fields are stored only after every token that
looks like an 18-character resident identity number or unified social credit code (18 ASCII letters and
digits, at least 6 of them digits, not part of a longer word) is replaced by ``hmac:<16 hex>``, an
HMAC-SHA256 under ``<state_dir>/keys/audit-hmac.key``: the same identifier always maps to the same
pseudonym, and nobody without the key can test a guess.

Concurrency. Every append runs in one ``BEGIN IMMEDIATE`` transaction (read the head, write the entry,
maybe seal) on a per-call connection, WAL mode, ``synchronous=FULL``: safe across threads and across
gateway processes sharing the file, and durable when ``append`` returns. Triggers refuse UPDATE and
DELETE (defence against our own bugs; anyone who can write the file can drop them, which is what the
chain and the seals are for).

Limits. Entries after the last seal are only as trustworthy as the file: truncating the unsealed tail is
invisible to the chain (``VerifyReport.unsealed_from`` says where it starts; ``require_sealed=True`` makes
it an error). ``export`` therefore seals the exported range first.

Offline use needs only the standard library, ``cryptography`` and ``gateway.release.signing``:
``python -m gateway.release.audit verify-export FILE --public-key signing.pub``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import math
import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast

from gateway.release.signing import Signer, canonical_json, public_key_id, verify
from gateway.storage.sqlite import ConnectionPool, immediate

__all__ = [
    "EXPORT_FORMAT",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditError",
    "AuditIntegrityError",
    "AuditLog",
    "AuditRecord",
    "Outcome",
    "Problem",
    "Seal",
    "VerifyReport",
    "entry_hash",
    "keyed_hash",
    "pseudonymize_text",
    "seal_payload",
    "utc_now",
    "verify_export",
]

log = logging.getLogger("gateway.release.audit")

Outcome = Literal["answered", "refused", "failed"]
OUTCOMES: tuple[str, ...] = ("answered", "refused", "failed")
CHARGES: tuple[str, ...] = ("", "charged", "replay")
GENESIS_HASH = "0" * 64
ENTRY_VERSION = 2
SEAL_TYPE = "privacy_gateway.audit.seal.v1"
EXPORT_FORMAT = "privacy_gateway.audit.export.v1"
_MAC_CONTEXT = b"privacy_gateway.audit.entry-mac.v1"
_INSERT_WINDOW = 4096  # recent hashes remembered to tell "inserted" from "chain break"

_ID_TOKEN = re.compile(r"(?<![0-9A-Za-z_])[0-9A-Za-z]{18}(?![0-9A-Za-z_])")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq             INTEGER PRIMARY KEY CHECK (seq >= 1),
    time            TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    consumer        TEXT NOT NULL,
    rpc             TEXT NOT NULL,
    dataset         TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    query           TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    status_code     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    epsilon         REAL NOT NULL,
    delta           REAL NOT NULL,
    released_digest TEXT NOT NULL,
    identifiers     TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    mac             TEXT NOT NULL,
    v               INTEGER NOT NULL DEFAULT 1,
    rho             REAL NOT NULL DEFAULT 0,
    charge          TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX IF NOT EXISTS entries_by_request ON entries (consumer, request_id);
CREATE TABLE IF NOT EXISTS seals (
    seq       INTEGER PRIMARY KEY,
    head_hash TEXT NOT NULL,
    time      TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS seals_no_update BEFORE UPDATE ON seals
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS seals_no_delete BEFORE DELETE ON seals
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_ENTRY_COLUMNS = (
    "seq, time, request_id, consumer, rpc, dataset, purpose, query, outcome, status_code, reason,"
    " epsilon, delta, released_digest, identifiers, prev_hash, hash, v, rho, charge"
)


class AuditError(Exception):
    """The audit log cannot be read or written (storage error, closed, bad arguments)."""


class AuditIntegrityError(AuditError):
    """The audit log failed verification where an operation needs it intact (export)."""


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds and a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def keyed_hash(key: bytes, value: str) -> str:
    """``hmac:`` + the first 16 hex digits of HMAC-SHA256(key, value upper-cased, UTF-8)."""
    digest = hmac.new(key, value.strip().upper().encode("utf-8"), hashlib.sha256).hexdigest()
    return f"hmac:{digest[:16]}"


def pseudonymize_text(text: str, key: bytes) -> str:
    """Replaces every token that looks like an 18-character resident id or credit code by its keyed hash.

    Args:
        text: Free text, typically normalized SQL.
        key: The audit HMAC key.

    Returns:
        The text with identifier-like tokens replaced by ``hmac:<16 hex>``.
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if sum(c.isdigit() for c in token) < 6:  # credit codes carry a 6-digit division code
            return token
        return keyed_hash(key, token)

    return _ID_TOKEN.sub(replace, text)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What the caller knows about one RPC; ``AuditLog.append`` pseudonymizes and chains it.

    Attributes:
        request_id: The request id (the client's or the gateway's).
        consumer: The certificate identity ("" if the caller could not be identified).
        rpc: The full RPC name, e.g. ``privacy_gateway.v1.QueryService/RunQuery``.
        outcome: ``answered``, ``refused`` (decided before touching data) or ``failed``.
        status_code: The gRPC status code name, e.g. ``OK``, ``INVALID_ARGUMENT``.
        reason: The ErrorInfo reason ("" when answered).
        dataset: The dataset, if the RPC names one.
        purpose: The purpose, if the RPC names one.
        query: The normalized query text; identifier-like tokens are pseudonymized before storage.
        epsilon: The epsilon charged (0 if nothing was charged).
        delta: The delta charged.
        released_digest: Hex SHA-256 of the released response ("" if nothing was released).
        identifiers: Caller-marked identifier fields; stored only as keyed hashes.
        rho: The rho charged (zCDP grants; 0 otherwise).
        charge: ``charged`` when this entry records the charge of its request (epsilon, delta and rho are what
            was charged), ``replay`` when the call replayed the release of an earlier charged call with the same
            request id (nothing charged again), "" when nothing was charged.
    """

    request_id: str
    consumer: str
    rpc: str
    outcome: Outcome
    status_code: str = "OK"
    reason: str = ""
    dataset: str = ""
    purpose: str = ""
    query: str = ""
    epsilon: float = 0.0
    delta: float = 0.0
    released_digest: str = ""
    identifiers: Mapping[str, str] = field(default_factory=dict)
    rho: float = 0.0
    charge: str = ""

    def __post_init__(self) -> None:
        """Checks the outcome and the cost.

        Raises:
            ValueError: Unknown outcome, or a non-finite or negative cost.
        """
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.charge not in CHARGES:
            raise ValueError(f"charge must be one of {CHARGES}, got {self.charge!r}")
        for name in ("epsilon", "delta", "rho"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored, chained entry (identifiers already pseudonymized)."""

    seq: int
    time: str
    request_id: str
    consumer: str
    rpc: str
    dataset: str
    purpose: str
    query: str
    outcome: str
    status_code: str
    reason: str
    epsilon: float
    delta: float
    released_digest: str
    identifiers: Mapping[str, str]
    prev_hash: str
    hash: str
    v: int = 1  # the entry format: 2 adds rho and charge to what the hash covers
    rho: float = 0.0
    charge: str = ""

    def to_json_obj(self) -> dict[str, object]:
        """The entry as an export record (``type`` = ``entry``)."""
        obj: dict[str, object] = {"type": "entry", **asdict(self)}
        obj["identifiers"] = dict(self.identifiers)
        if self.v < 2:
            for name in ("v", "rho", "charge"):
                del obj[name]
        return obj


def entry_body(entry: AuditEntry) -> dict[str, object]:
    """Everything the hash covers: all fields except ``hash``, plus the format version ``v``."""
    body: dict[str, object] = {
        "v": entry.v,
        "seq": entry.seq,
        "time": entry.time,
        "request_id": entry.request_id,
        "consumer": entry.consumer,
        "rpc": entry.rpc,
        "dataset": entry.dataset,
        "purpose": entry.purpose,
        "query": entry.query,
        "outcome": entry.outcome,
        "status_code": entry.status_code,
        "reason": entry.reason,
        "epsilon": float(entry.epsilon),
        "delta": float(entry.delta),
        "released_digest": entry.released_digest,
        "identifiers": dict(entry.identifiers),
        "prev_hash": entry.prev_hash,
    }
    if entry.v >= 2:
        body["rho"] = float(entry.rho)
        body["charge"] = entry.charge
    return body


def entry_hash(entry: AuditEntry) -> str:
    """``sha256(prev_hash || canonical_json(entry_body(entry)))`` as hex (prev_hash as its ASCII hex)."""
    return hashlib.sha256(
        entry.prev_hash.encode("utf-8") + canonical_json(entry_body(entry))
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class Seal:
    """A signed statement that the chain had ``head_hash`` at ``seq``."""

    seq: int
    head_hash: str
    time: str
    key_id: str
    signature: bytes

    def to_json_obj(self) -> dict[str, object]:
        """The seal as an export record (``type`` = ``seal``, signature in hex)."""
        return {
            "type": "seal",
            "seq": self.seq,
            "head_hash": self.head_hash,
            "time": self.time,
            "key_id": self.key_id,
            "signature": self.signature.hex(),
        }


def _export_payload(sha256_hex: str, key_id: str) -> bytes:
    """The bytes an export's trailer signature covers: the SHA-256 of every line before it."""
    return canonical_json({"type": EXPORT_FORMAT, "sha256": sha256_hex, "key_id": key_id})


def seal_payload(seq: int, head_hash: str, time: str, key_id: str) -> bytes:
    """The exact bytes a seal signature covers."""
    return canonical_json(
        {"type": SEAL_TYPE, "seq": seq, "head_hash": head_hash, "time": time, "key_id": key_id}
    )


@dataclass(frozen=True, slots=True)
class Problem:
    """One integrity problem.

    Attributes:
        seq: The first entry sequence number the problem concerns (None: not tied to an entry).
        kind: ``missing``, ``modified``, ``chain_break``, ``inserted``, ``forged_entry``,
            ``forged_seal``, ``unknown_key``, ``seal_mismatch``, ``seal_without_entry``, ``unsealed``,
            ``malformed``, ``key_mismatch``, ``range``.
        detail: A sentence for humans.
    """

    seq: int | None
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of verifying a chain and its seals.

    Attributes:
        entries: Number of entries read.
        seals: Number of seals read.
        first_seq: The first sequence number expected.
        last_seq: The highest sequence number read (first_seq - 1 if none).
        sealed_through: The highest seq covered by a valid seal with no problem at or before it.
        problems: Every problem found, ordered by seq.
    """

    entries: int
    seals: int
    first_seq: int
    last_seq: int
    sealed_through: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True if no problem was found."""
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        """The lowest seq named by a problem, or None."""
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    @property
    def unsealed_from(self) -> int | None:
        """The first seq not covered by a valid seal, or None if every entry is covered."""
        return self.sealed_through + 1 if self.sealed_through < self.last_seq else None

    def to_json_obj(self) -> dict[str, object]:
        """The report as plain JSON data."""
        return {
            "ok": self.ok,
            "entries": self.entries,
            "seals": self.seals,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "sealed_through": self.sealed_through,
            "unsealed_from": self.unsealed_from,
            "first_bad_seq": self.first_bad_seq,
            "problems": [asdict(p) for p in self.problems],
        }


class _ChainVerifier:
    """Streams entries in seq order, then checks seals; pure (no I/O)."""

    def __init__(
        self, first_seq: int, anchor: str | None, seals: Iterable[Seal], public_keys: Mapping[str, bytes]
    ) -> None:
        self.first_seq = first_seq
        self.expected = first_seq
        self.prev_hash = anchor  # None: trust the first entry's prev_hash (an export from the middle)
        self.last_seq = first_seq - 1
        self.count = 0
        self.recent: dict[str, int] = {}
        self.seals = sorted(seals, key=lambda s: s.seq)
        self.seal_seqs = {s.seq for s in self.seals}
        self.hash_at: dict[int, str] = {}
        self.public_keys = public_keys
        self.problems: list[Problem] = []

    def add(self, seq: int | None, kind: str, detail: str) -> None:
        self.problems.append(Problem(seq, kind, detail))

    def feed(self, e: AuditEntry) -> None:
        self.count += 1
        gap = e.seq != self.expected
        if e.seq < self.expected:
            self.add(e.seq, "malformed", f"entry {e.seq} is out of order or duplicated")
        elif gap:
            missing = f"entry {self.expected}" if e.seq == self.expected + 1 else (
                f"entries {self.expected}..{e.seq - 1}"
            )
            self.add(self.expected, "missing", f"{missing} missing (gap in seq)")
        if entry_hash(e) != e.hash:
            self.add(e.seq, "modified", f"entry {e.seq} does not match its hash (edited or moved)")
        if self.prev_hash is not None and e.prev_hash != self.prev_hash:
            linked = self.recent.get(e.prev_hash)
            if linked is not None and linked < self.last_seq:
                self.add(
                    linked + 1,
                    "inserted",
                    f"entry {e.seq} links to entry {linked}: entries {linked + 1}..{self.last_seq}"
                    " are not part of the original chain",
                )
            elif not gap:
                which = "the genesis hash" if self.count == 1 else f"the hash of entry {self.last_seq}"
                self.add(e.seq, "chain_break", f"entry {e.seq}'s prev_hash does not match {which}")
        self.recent[e.hash] = e.seq
        if len(self.recent) > _INSERT_WINDOW:
            self.recent.pop(next(iter(self.recent)))
        if e.seq in self.seal_seqs:
            self.hash_at[e.seq] = e.hash
        self.prev_hash = e.hash
        self.last_seq = max(self.last_seq, e.seq)
        self.expected = max(self.expected, e.seq + 1)

    def finish(self, *, require_sealed: bool, expected_last: int | None = None) -> VerifyReport:
        if expected_last is not None and self.last_seq < expected_last:
            self.add(self.last_seq + 1, "missing", f"entries {self.last_seq + 1}..{expected_last} missing")
        valid: list[int] = []
        previous_valid = self.first_seq - 1
        for s in self.seals:
            pub = self.public_keys.get(s.key_id)
            if pub is None:
                self.add(s.seq, "unknown_key", f"seal at seq {s.seq} names unknown key {s.key_id!r}")
            elif not verify(pub, seal_payload(s.seq, s.head_hash, s.time, s.key_id), s.signature):
                self.add(s.seq, "forged_seal", f"seal at seq {s.seq} has an invalid signature")
            elif s.seq not in self.hash_at:
                self.add(s.seq, "seal_without_entry", f"seal at seq {s.seq} vouches for a missing entry")
            elif self.hash_at[s.seq] != s.head_hash:
                # Name the first seq the seal no longer vouches for, unless a precise problem in that
                # range already names the culprit (then the seal's own seq).
                precise = any(
                    p.seq is not None and previous_valid < p.seq <= s.seq for p in self.problems
                )
                self.add(
                    s.seq if precise else previous_valid + 1,
                    "seal_mismatch",
                    f"seal at seq {s.seq} vouches for a different chain: entries"
                    f" {previous_valid + 1}..{s.seq} were rewritten and rehashed",
                )
            else:
                valid.append(s.seq)
                previous_valid = s.seq
        bad = [p.seq for p in self.problems if p.seq is not None]
        first_bad = min(bad) if bad else None
        sealed_through = max(
            (s for s in valid if first_bad is None or s < first_bad), default=self.first_seq - 1
        )
        if require_sealed and sealed_through < self.last_seq:
            self.add(
                sealed_through + 1,
                "unsealed",
                f"entries {sealed_through + 1}..{self.last_seq} are not covered by a valid seal",
            )
        self.problems.sort(key=lambda p: (p.seq if p.seq is not None else -1))
        return VerifyReport(
            entries=self.count,
            seals=len(self.seals),
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            sealed_through=sealed_through,
            problems=tuple(self.problems),
        )


def _entry_from_row(row: tuple[object, ...]) -> AuditEntry:
    (seq, time, request_id, consumer, rpc, dataset, purpose, query, outcome, status_code, reason,
     epsilon, delta, released_digest, identifiers, prev_hash, hash_, v, rho, charge) = row
    try:
        ids = json.loads(str(identifiers))
    except ValueError:
        ids = {"_malformed": str(identifiers)}
    if not isinstance(ids, dict):
        ids = {"_malformed": str(identifiers)}
    return AuditEntry(
        seq=int(cast(int, seq)), time=str(time), request_id=str(request_id), consumer=str(consumer),
        rpc=str(rpc), dataset=str(dataset), purpose=str(purpose), query=str(query),
        outcome=str(outcome), status_code=str(status_code), reason=str(reason),
        epsilon=float(cast(float, epsilon)), delta=float(cast(float, delta)),
        released_digest=str(released_digest), identifiers={str(k): str(x) for k, x in ids.items()},
        prev_hash=str(prev_hash), hash=str(hash_), v=int(cast(int, v)), rho=float(cast(float, rho)),
        charge=str(charge),
    )


class AuditLog:
    """The audit log in one SQLite file; safe across threads and processes (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        signer: Signer,
        hmac_key: bytes,
        *,
        seal_every: int = 100,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        """Opens (creating if needed) the audit file and its schema.

        Args:
            path: The SQLite file, normally the ledger's database ``<state_dir>/ledger.sqlite3`` (the tables
                share it so an entry can commit with the charge it records).
            signer: The gateway's signing key (seals).
            hmac_key: The pseudonymization key (at least 32 bytes).
            seal_every: Seal automatically every this many entries.
            busy_timeout_s: How long a call waits for another writer.
            clock: Returns the current UTC time as ISO text (tests pin it).

        Raises:
            ValueError: seal_every < 1, busy_timeout_s <= 0, or a short hmac_key.
            AuditError: The file exists but is not an audit log of a known version.
        """
        if seal_every < 1:
            raise ValueError(f"seal_every must be >= 1, got {seal_every!r}")
        if not busy_timeout_s > 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        if len(hmac_key) < 32:
            raise ValueError("hmac_key must be at least 32 bytes")
        self._path = Path(path)
        self._signer = signer
        self._hmac_key = bytes(hmac_key)
        self._mac_key = hmac.new(self._hmac_key, _MAC_CONTEXT, hashlib.sha256).digest()
        self._seal_every = seal_every
        self._busy_timeout_s = float(busy_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._pool = ConnectionPool(
            lambda: self._open(check_same_thread=False), lambda: AuditError("audit log storage error")
        )
        # Held open so per-call connections closing do not checkpoint and delete the WAL (as the ledger).
        self._anchor: sqlite3.Connection | None = self._open(check_same_thread=False)
        try:
            self._initialize(self._anchor)
        except BaseException:
            self._anchor.close()
            self._anchor = None
            raise

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    @property
    def public_keys(self) -> dict[str, bytes]:
        """Key id -> PEM of the keys seals are checked against."""
        return {self._signer.key_id: self._signer.public_pem}

    def pseudonymize(self, value: str) -> str:
        """The keyed hash of one identifier value (``hmac:<16 hex>``)."""
        return keyed_hash(self._hmac_key, value)

    def append(self, record: AuditRecord) -> AuditEntry:
        """Pseudonymizes, chains and durably stores one record; seals every ``seal_every`` entries.

        Args:
            record: What happened.

        Returns:
            The stored entry.

        Raises:
            AuditError: The log is closed or the storage failed.
        """
        with self._transaction() as conn:
            return self.append_in(conn, record)

    def append_in(self, conn: sqlite3.Connection, record: AuditRecord) -> AuditEntry:
        """`append` inside the caller's open write transaction on this log's database (the ledger's, where
        the audit tables live): the entry commits atomically with whatever else the transaction writes (the
        charge it records). The caller must hold a write transaction (BEGIN IMMEDIATE) on ``conn``.

        Raises:
            sqlite3.Error: the storage failed (the caller's transaction rolls back).
        """
        ids = {k: self.pseudonymize(v) for k, v in sorted(record.identifiers.items())}
        head = conn.execute("SELECT seq, hash, mac FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        if head is None:
            seq, prev_hash = 1, GENESIS_HASH
        else:
            seq, prev_hash = int(head[0]) + 1, str(head[1])
            if not hmac.compare_digest(str(head[2]), self._mac(prev_hash)):
                log.critical("audit log head entry %d has an invalid MAC (forged?)", head[0])
        draft = AuditEntry(
            seq=seq, time=self._clock(), request_id=record.request_id, consumer=record.consumer,
            rpc=record.rpc, dataset=record.dataset, purpose=record.purpose,
            query=pseudonymize_text(record.query, self._hmac_key), outcome=record.outcome,
            status_code=record.status_code, reason=record.reason, epsilon=float(record.epsilon),
            delta=float(record.delta), released_digest=record.released_digest, identifiers=ids,
            prev_hash=prev_hash, hash="", v=ENTRY_VERSION, rho=float(record.rho), charge=record.charge,
        )
        entry = replace(draft, hash=entry_hash(draft))
        conn.execute(
            f"INSERT INTO entries ({_ENTRY_COLUMNS}, mac)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.seq, entry.time, entry.request_id, entry.consumer, entry.rpc, entry.dataset,
             entry.purpose, entry.query, entry.outcome, entry.status_code, entry.reason,
             entry.epsilon, entry.delta, entry.released_digest,
             canonical_json(ids).decode("utf-8"), entry.prev_hash, entry.hash, entry.v, entry.rho,
             entry.charge, self._mac(entry.hash)),
        )
        if seq % self._seal_every == 0:
            self._insert_seal(conn, seq, entry.hash)
        return entry

    def import_rows(self, columns: list[str], entries: list[tuple[object, ...]], seals: list[tuple[object, ...]]
                    ) -> None:
        """Copy entries (``columns`` of the entries table, MACs included) and seals from another file into this
        empty log, unchanged.

        Raises:
            AuditError: this log already holds entries.
        """
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone():
                raise AuditError(f"{self._path} already holds audit entries; the old audit file is not merged")
            conn.executemany(f"INSERT INTO entries ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                             entries)
            conn.executemany("INSERT INTO seals (seq, head_hash, time, key_id, signature) VALUES (?, ?, ?, ?, ?)",
                             seals)

    def seal(self) -> Seal | None:
        """Seals the current head now; None if the log is empty or the head is already sealed.

        Raises:
            AuditError: The log is closed or the storage failed.
        """
        with self._transaction() as conn:
            head = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            if head is None:
                return None
            if conn.execute("SELECT 1 FROM seals WHERE seq = ?", (head[0],)).fetchone():
                return None
            return self._insert_seal(conn, int(head[0]), str(head[1]))

    def entries(self, from_seq: int = 1, to_seq: int | None = None) -> list[AuditEntry]:
        """The stored entries with ``from_seq <= seq <= to_seq``, in seq order."""
        with self._connection() as conn:
            return list(self._iter_entries(conn, from_seq, to_seq))

    def page(self, before_seq: int, limit: int, consumer: str | None = None) -> list[AuditEntry]:
        """At most `limit` stored entries with ``seq < before_seq`` (0: no bound), newest first; only
        `consumer`'s when given."""
        upper = before_seq if before_seq > 0 else 2**62
        where, args = "seq < ?", list[object]([upper])
        if consumer is not None:
            where, args = where + " AND consumer = ?", [*args, consumer]
        with self._connection() as conn:
            rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE {where} ORDER BY seq DESC LIMIT ?",
                                (*args, limit)).fetchall()
        return [_entry_from_row(tuple(r)) for r in rows]

    def find(self, consumer: str, request_id: str) -> list[AuditEntry]:
        """`consumer`'s entries with `request_id`, in seq order."""
        with self._connection() as conn:
            rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE consumer = ? AND request_id = ?"
                                " ORDER BY seq", (consumer, request_id)).fetchall()
        return [_entry_from_row(tuple(r)) for r in rows]

    def last_seq(self) -> int:
        """The newest entry's seq (0 when the log is empty)."""
        with self._connection() as conn:
            (seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()
        return int(seq)

    def seals(self, from_seq: int = 1, to_seq: int | None = None) -> list[Seal]:
        """The stored seals with ``from_seq <= seq <= to_seq``, in seq order."""
        with self._connection() as conn:
            return self._read_seals(conn, from_seq, to_seq)

    def verify(self, *, require_sealed: bool = False) -> VerifyReport:
        """Recomputes the whole chain, every entry MAC and every seal, in one read snapshot.

        Args:
            require_sealed: Also report entries after the last valid seal as a problem.

        Returns:
            The report; ``report.ok`` is True only if nothing is wrong.

        Raises:
            AuditError: The log is closed or the storage failed.
        """
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                checker = _ChainVerifier(1, GENESIS_HASH, self._read_seals(conn, 1, None), self.public_keys)
                for entry, mac in self._iter_entries_with_mac(conn, 1, None):
                    checker.feed(entry)
                    if not hmac.compare_digest(mac, self._mac(entry.hash)):
                        checker.add(entry.seq, "forged_entry", f"entry {entry.seq} has an invalid MAC")
            finally:
                conn.execute("COMMIT")
        return checker.finish(require_sealed=require_sealed)

    def export(self, from_seq: int, to_seq: int, out: Path) -> Path:
        """Writes entries ``from_seq..to_seq``, their seals and the public key as a JSONL file.

        The log is verified first; the range is then sealed at ``to_seq`` (a seal is added if none
        exists there), so an offline verifier can check every exported entry against a signature.

        Args:
            from_seq: First entry to export (>= 1).
            to_seq: Last entry to export (<= the head).
            out: The file to write (replaced atomically).

        Returns:
            ``out``.

        Raises:
            ValueError: The range is empty or beyond the head.
            AuditIntegrityError: The log has a problem at or before ``to_seq``.
            AuditError: The log is closed or the storage failed.
        """
        if from_seq < 1 or to_seq < from_seq:
            raise ValueError(f"invalid range {from_seq}..{to_seq}")
        report = self.verify()
        if to_seq > report.last_seq:
            raise ValueError(f"to_seq {to_seq} is beyond the last entry {report.last_seq}")
        bad = [p for p in report.problems if p.seq is None or p.seq <= to_seq]
        if bad:
            raise AuditIntegrityError(f"audit log fails verification at seq {bad[0].seq}: {bad[0].detail}")
        with self._transaction() as conn:
            if not conn.execute("SELECT 1 FROM seals WHERE seq = ?", (to_seq,)).fetchone():
                (head_hash,) = conn.execute("SELECT hash FROM entries WHERE seq = ?", (to_seq,)).fetchone()
                self._insert_seal(conn, to_seq, str(head_hash))
            entries = list(self._iter_entries(conn, from_seq, to_seq))
            seals = self._read_seals(conn, from_seq, to_seq)
        header = {
            "type": "header",
            "format": EXPORT_FORMAT,
            "from_seq": from_seq,
            "to_seq": to_seq,
            "key_id": self._signer.key_id,
            "public_key_pem": self._signer.public_pem.decode("ascii"),
            "exported_at": self._clock(),
        }
        lines = [header] + [e.to_json_obj() for e in entries] + [s.to_json_obj() for s in seals]
        body = b"".join(canonical_json(obj) + b"\n" for obj in lines)
        digest = hashlib.sha256(body).hexdigest()
        trailer = {
            "type": "export_signature",
            "sha256": digest,
            "signature": self._signer.sign(_export_payload(digest, self._signer.key_id)).hex(),
        }
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(body + canonical_json(trailer) + b"\n")
        tmp.replace(out)
        return out

    def close(self) -> None:
        """Closes the log (does not seal; ``Oversight.close`` seals at clean shutdown). Idempotent."""
        with self._lock:
            self._closed = True
            anchor, self._anchor = self._anchor, None
        self._pool.close()
        if anchor is not None:
            anchor.close()

    # -- internals -------------------------------------------------------------------------

    def _mac(self, entry_hash_hex: str) -> str:
        return hmac.new(self._mac_key, entry_hash_hex.encode("utf-8"), hashlib.sha256).hexdigest()

    def _insert_seal(self, conn: sqlite3.Connection, seq: int, head_hash: str) -> Seal:
        time = self._clock()
        key_id = self._signer.key_id
        signature = self._signer.sign(seal_payload(seq, head_hash, time, key_id))
        conn.execute(
            "INSERT INTO seals (seq, head_hash, time, key_id, signature) VALUES (?, ?, ?, ?, ?)",
            (seq, head_hash, time, key_id, signature.hex()),
        )
        return Seal(seq, head_hash, time, key_id, signature)

    @staticmethod
    def _iter_entries_with_mac(
        conn: sqlite3.Connection, from_seq: int, to_seq: int | None
    ) -> Iterator[tuple[AuditEntry, str]]:
        upper = to_seq if to_seq is not None else 2**62
        cursor = conn.execute(
            f"SELECT {_ENTRY_COLUMNS}, mac FROM entries WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (from_seq, upper),
        )
        for row in cursor:
            yield _entry_from_row(tuple(row[:-1])), str(row[-1])

    def _iter_entries(
        self, conn: sqlite3.Connection, from_seq: int, to_seq: int | None
    ) -> Iterator[AuditEntry]:
        for entry, _mac in self._iter_entries_with_mac(conn, from_seq, to_seq):
            yield entry

    @staticmethod
    def _read_seals(conn: sqlite3.Connection, from_seq: int, to_seq: int | None) -> list[Seal]:
        upper = to_seq if to_seq is not None else 2**62
        seals = []
        for seq, head_hash, time, key_id, signature in conn.execute(
            "SELECT seq, head_hash, time, key_id, signature FROM seals"
            " WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (from_seq, upper),
        ):
            try:
                sig = bytes.fromhex(str(signature))
            except ValueError:
                sig = b""
            seals.append(Seal(int(seq), str(head_hash), str(time), str(key_id), sig))
        return seals

    def _open(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout_s, isolation_level=None,
            check_same_thread=check_same_thread,
        )
        try:
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _initialize(self, conn: sqlite3.Connection) -> None:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise AuditError("the audit log could not switch to WAL mode")
            conn.execute("BEGIN IMMEDIATE")
            try:
                # The audit tables may share their file with the ledger (which owns PRAGMA user_version), so
                # the format is told by the columns: entry format 2 added v, rho and charge.
                columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
                if columns and "v" not in columns:
                    for column in ("v INTEGER NOT NULL DEFAULT 1", "rho REAL NOT NULL DEFAULT 0",
                                   "charge TEXT NOT NULL DEFAULT ''"):
                        conn.execute(f"ALTER TABLE entries ADD COLUMN {column}")
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditError("the audit log could not be opened") from exc

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise AuditError("the audit log is closed")
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn, immediate(conn):
            yield conn

    def __enter__(self) -> AuditLog:
        """Returns the log itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Closes the log."""
        self.close()


# -- offline verification of an export (pure: no database, no gateway state) -------------------

_ENTRY_FIELDS = {
    "type", "seq", "time", "request_id", "consumer", "rpc", "dataset", "purpose", "query", "outcome",
    "status_code", "reason", "epsilon", "delta", "released_digest", "identifiers", "prev_hash", "hash",
}
_SEAL_FIELDS = {"type", "seq", "head_hash", "time", "key_id", "signature"}
_STR_ENTRY_FIELDS = _ENTRY_FIELDS - {"type", "seq", "epsilon", "delta", "identifiers"}
_V2_FIELDS = {"v", "rho", "charge"}


def _parse_entry(obj: dict[str, object]) -> AuditEntry:
    v2 = "v" in obj
    if set(obj) != (_ENTRY_FIELDS | _V2_FIELDS if v2 else _ENTRY_FIELDS):
        raise ValueError("entry has missing or unexpected fields")
    seq, ids = obj["seq"], obj["identifiers"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("seq is not an integer")
    if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
        raise ValueError("identifiers is not an object of strings")
    for name in _STR_ENTRY_FIELDS:
        if not isinstance(obj[name], str):
            raise ValueError(f"{name} is not a string")
    eps, delta = obj["epsilon"], obj["delta"]
    if not isinstance(eps, str) or not isinstance(delta, str):
        raise ValueError("epsilon and delta must be repr strings")
    text = {name: str(obj[name]) for name in _STR_ENTRY_FIELDS}
    version, rho, charge = (obj["v"], obj["rho"], obj["charge"]) if v2 else (1, "0.0", "")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(rho, str) or not isinstance(
            charge, str):
        raise ValueError("v, rho and charge must be an integer, a repr string and a string")
    return AuditEntry(
        seq=seq, time=text["time"], request_id=text["request_id"], consumer=text["consumer"],
        rpc=text["rpc"], dataset=text["dataset"], purpose=text["purpose"], query=text["query"],
        outcome=text["outcome"], status_code=text["status_code"], reason=text["reason"],
        epsilon=float(eps), delta=float(delta), released_digest=text["released_digest"],
        identifiers={str(k): str(v) for k, v in ids.items()}, prev_hash=text["prev_hash"],
        hash=text["hash"], v=version, rho=float(rho), charge=charge,
    )


def _canonical_hex(text: str) -> bytes:
    """Bytes from lowercase hex, as the gateway writes it; any other spelling (upper case) is a change.

    Raises:
        ValueError: not lowercase hex of whole bytes.
    """
    raw = bytes.fromhex(text)
    if raw.hex() != text:
        raise ValueError("hex must be lowercase, as written")
    return raw


def _parse_seal(obj: dict[str, object]) -> Seal:
    if set(obj) != _SEAL_FIELDS:
        raise ValueError("seal has missing or unexpected fields")
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("seq is not an integer")
    head_hash, time, key_id, signature = obj["head_hash"], obj["time"], obj["key_id"], obj["signature"]
    if not all(isinstance(v, str) for v in (head_hash, time, key_id, signature)):
        raise ValueError("seal fields must be strings")
    return Seal(seq, str(head_hash), str(time), str(key_id), _canonical_hex(str(signature)))


def verify_export(path: Path, pub_pem: bytes | str) -> VerifyReport:
    """Verifies an export offline against a trusted public key.

    The whole file must match the signed SHA-256 in its last line, every line must be canonical JSON,
    the entries must form an unbroken chain from ``from_seq`` to ``to_seq`` (from the genesis hash when
    ``from_seq`` is 1), every seal must verify under ``pub_pem`` and match the chain, and the last
    entry must be covered by a seal.

    Args:
        path: The JSONL file written by ``AuditLog.export``.
        pub_pem: The gateway's public key, obtained out of band (``pgw keys export``).

    Returns:
        The report (never raises for bad content; it becomes a problem).

    Raises:
        OSError: The file cannot be read.
    """
    raw = Path(path).read_bytes()
    problems: list[Problem] = []
    try:
        trusted_id = public_key_id(pub_pem)
    except ValueError:
        return VerifyReport(0, 0, 1, 0, 0, (Problem(None, "key_mismatch", "the public key is not Ed25519 PEM"),))
    header: dict[str, object] | None = None
    entries: list[AuditEntry] = []
    seals: list[Seal] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    trailer_line = lines.pop() if lines else b""
    body = raw[: len(raw) - len(trailer_line) - 1] if trailer_line else raw
    try:
        trailer = json.loads(trailer_line.decode("utf-8"))
        if not isinstance(trailer, dict) or canonical_json(trailer) != trailer_line:
            raise ValueError("not canonical JSON")
        if trailer.get("type") != "export_signature" or set(trailer) != {"type", "sha256", "signature"}:
            raise ValueError("the last line is not an export signature")
        digest, signature = str(trailer["sha256"]), _canonical_hex(str(trailer["signature"]))
        if digest != hashlib.sha256(body).hexdigest():
            problems.append(Problem(None, "modified", "the export's content does not match its signed digest"))
        if not verify(pub_pem, _export_payload(digest, trusted_id), signature):
            problems.append(Problem(None, "forged_seal", "the export signature does not verify"))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        problems.append(Problem(None, "malformed", f"export signature line: {exc}"))
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict) or canonical_json(obj) != line:
                raise ValueError("not canonical JSON")
            kind = obj.get("type")
            if number == 1:
                if kind != "header" or obj.get("format") != EXPORT_FORMAT:
                    raise ValueError("the first line is not an export header")
                header = obj
            elif kind == "entry":
                entries.append(_parse_entry(obj))
            elif kind == "seal":
                seals.append(_parse_seal(obj))
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            problems.append(Problem(None, "malformed", f"line {number}: {exc}"))
    if header is None:
        problems.append(Problem(None, "malformed", "no export header"))
        return VerifyReport(len(entries), len(seals), 1, 0, 0, tuple(problems))
    from_seq, to_seq = header.get("from_seq"), header.get("to_seq")
    if not isinstance(from_seq, int) or not isinstance(to_seq, int) or not 1 <= from_seq <= to_seq:
        problems.append(Problem(None, "malformed", "the header's range is invalid"))
        return VerifyReport(len(entries), len(seals), 1, 0, 0, tuple(problems))
    if header.get("key_id") != trusted_id:
        problems.append(Problem(None, "key_mismatch", "the export was sealed under another key id"))
    embedded = header.get("public_key_pem")
    try:
        embedded_id = public_key_id(embedded) if isinstance(embedded, str) else None
    except (ValueError, UnicodeEncodeError):
        embedded_id = None
    if embedded_id != trusted_id:
        problems.append(Problem(None, "key_mismatch", "the embedded public key is not the trusted key"))
    for s in seals:
        if not from_seq <= s.seq <= to_seq:
            problems.append(Problem(s.seq, "range", f"seal at seq {s.seq} is outside the exported range"))
    for e in entries:
        if not from_seq <= e.seq <= to_seq:
            problems.append(Problem(e.seq, "range", f"entry {e.seq} is outside the exported range"))
    anchor = GENESIS_HASH if from_seq == 1 else None
    checker = _ChainVerifier(from_seq, anchor, seals, {trusted_id: _pem_bytes(pub_pem)})
    checker.problems.extend(problems)
    for e in entries:  # in file order: the format writes them ascending, so a reordering is a problem
        checker.feed(e)
    return checker.finish(require_sealed=True, expected_last=to_seq)


def _pem_bytes(pub_pem: bytes | str) -> bytes:
    return pub_pem.encode("ascii") if isinstance(pub_pem, str) else bytes(pub_pem)


def _report_text(report: VerifyReport) -> str:
    lines = [
        f"{'OK' if report.ok else 'FAILED'}: {report.entries} entries (seq {report.first_seq}.."
        f"{report.last_seq}), {report.seals} seals, sealed through seq {report.sealed_through}"
    ]
    if report.ok and report.unsealed_from is not None:
        lines.append(f"warning: entries {report.unsealed_from}..{report.last_seq} are not sealed yet")
    lines += [f"  seq {p.seq if p.seq is not None else '-'}: {p.kind}: {p.detail}" for p in report.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.release.audit verify-export FILE --public-key PEM [--json]``; exit 0 if valid."""
    parser = argparse.ArgumentParser(prog="python -m gateway.release.audit", description="offline audit export check")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify-export", help="verify an exported audit range against a public key")
    v.add_argument("file")
    v.add_argument("--public-key", required=True, help="the gateway's public key PEM file")
    v.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = verify_export(Path(args.file), Path(args.public_key).read_bytes())
    print(json.dumps(report.to_json_obj(), indent=2) if args.json else _report_text(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
