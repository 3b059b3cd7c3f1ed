"""The audit log's records: entries, their hash chain and MACs, seals, and the chain verifier.

Pure (no database): shared by the log (`gateway.release.audit`) and the offline check of an export
(`gateway.release.audit_export`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal, cast

from gateway.release.signing import canonical_json, verify

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
