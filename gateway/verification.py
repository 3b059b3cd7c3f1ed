"""Verification service: grants, caps, enumeration alerts, signed receipts, and the gRPC servicer.

Order of decisions for a check (each before the data is touched, except the last two):
1. the consumer holds a `[[verification_grants]]` entry for (dataset, template, purpose) -- otherwise
   PERMISSION_DENIED / VERIFICATION_ACCESS_DENIED (unknown templates look the same);
2. the subject has the template's format, with valid check character and date (INVALID_SUBJECT);
3. the parameters are exactly the declared ones, each from its list or ladder (INVALID_PARAMETER);
4. a case reference is present where the template requires one (CASE_REFERENCE_REQUIRED);
5. the per-consumer, per-template and per-subject caps of the period are checked and charged in one
   `BEGIN IMMEDIATE` transaction of the state database (RESOURCE_EXHAUSTED /
   VERIFICATION_CAP_EXHAUSTED; the charge stays whatever happens next);
6. the sandbox evaluates the owner's template and returns the outcome (and band);
7. enumeration counters are updated (the same statements for found and not-found subjects) and a
   signed receipt is issued.

The operator policy (`policies/operator.toml`) gains two optional parts, read here:

    [verification]
    period = "day"                                  # cap period: "day" or "hour" (UTC)
    max_checks_per_consumer_per_period = 200000     # all templates together
    alert_not_found_per_window = 50                 # alert: this many unknown subjects ...
    alert_window_seconds = 3600                     # ... from one consumer within this window
    alert_distinct_parameters_per_subject = 3       # alert: this many parameter sets on one subject

    [[verification_grants]]
    consumer = "acme-bank-analyst"
    dataset = "registry"
    template = "income_at_least"
    purpose = "loan-application"
    max_checks_per_period = 10000                   # this consumer x template
    max_checks_per_subject_per_period = 3           # this consumer x template x subject
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.auth import authenticate
from gateway.errors import (
    ConfigError,
    GatewayError,
    GatewayInternalError,
    InvalidArgumentError,
    PermissionDeniedError,
    QueryExecutionError,
    SandboxUnavailableError,
)
from gateway.policy import Policy
from gateway.service import _rpc
from sandbox.client import SandboxClient, SandboxConnectionError
from sandbox.protocol import ErrorReply, Scalar
from sandbox.verification_protocol import (
    MATCH,
    MAX_BATCH,
    NO_MATCH,
    DescribeTemplatesRequest,
    TemplateInfo,
    TemplatesInfo,
    VerifyClaimsRequest,
    VerifyClaimsResult,
    subject_problem,
)

log = logging.getLogger("gateway.verification")

RESULT_NAMES = {MATCH: "MATCH", NO_MATCH: "NO_MATCH", 2: "NOT_FOUND"}
RESULT_PB = {MATCH: v_pb.VERIFICATION_RESULT_MATCH, NO_MATCH: v_pb.VERIFICATION_RESULT_NO_MATCH,
             2: v_pb.VERIFICATION_RESULT_NOT_FOUND}
ROOT_CONTEXT = b"privacy-gateway/receipt-root/v1\x00"
RESPONSE_CHUNK = 2000
MAX_CASE_REFERENCE = 256


class VerificationCapExhaustedError(GatewayError):
    """A verification cap of the period is spent (per consumer, per template, or per subject)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "VERIFICATION_CAP_EXHAUSTED"


# ---------------------------------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationGrant:
    """A consumer may run one template of one dataset for one purpose, within caps."""

    consumer: str
    dataset: str
    template: str
    purpose: str
    max_checks_per_period: int
    max_checks_per_subject_per_period: int


@dataclass(frozen=True, slots=True)
class VerificationPolicy:
    """The operator's verification settings and grants."""

    grants: tuple[VerificationGrant, ...] = ()
    period: str = "day"
    max_checks_per_consumer_per_period: int = 100_000
    alert_not_found_per_window: int = 50
    alert_window_seconds: int = 3600
    alert_distinct_parameters_per_subject: int = 3
    cap_durability: str = "full"

    def grant(self, consumer: str, dataset: str, template: str, purpose: str) -> VerificationGrant | None:
        """The grant for exactly this combination, or None."""
        for g in self.grants:
            if (g.consumer, g.dataset, g.template, g.purpose) == (consumer, dataset, template, purpose):
                return g
        return None


def _positive_int(file: str, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(file, key, "must be an integer >= 1")
    return v


def parse_verification_policy(data: dict[str, Any], file: str, policy: Policy) -> VerificationPolicy:
    """Validate the `[verification]` table and `[[verification_grants]]` of a parsed operator policy."""
    settings = data.get("verification", {})
    if not isinstance(settings, dict):
        raise ConfigError(file, "verification", "must be a table")
    defaults = VerificationPolicy()
    allowed = {"period", "max_checks_per_consumer_per_period", "alert_not_found_per_window",
               "alert_window_seconds", "alert_distinct_parameters_per_subject", "cap_durability"}
    for k in settings:
        if k not in allowed:
            raise ConfigError(file, f"verification.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    period = settings.get("period", defaults.period)
    if period not in ("day", "hour"):
        raise ConfigError(file, "verification.period", "must be 'day' or 'hour'")
    durability = settings.get("cap_durability", defaults.cap_durability)
    if durability not in ("full", "normal"):
        raise ConfigError(file, "verification.cap_durability", "must be 'full' or 'normal'")
    ints = {k: _positive_int(file, f"verification.{k}", settings.get(k, getattr(defaults, k)))
            for k in sorted(allowed - {"period", "cap_durability"})}
    raw = data.get("verification_grants", [])
    if not isinstance(raw, list):
        raise ConfigError(file, "verification_grants", "must be an array of tables ([[verification_grants]])")
    grants: list[VerificationGrant] = []
    seen: set[tuple[str, str, str, str]] = set()
    keys = {"consumer", "dataset", "template", "purpose", "max_checks_per_period",
            "max_checks_per_subject_per_period", "description"}
    for i, g in enumerate(raw):
        prefix = f"verification_grants[{i}]."
        if not isinstance(g, dict):
            raise ConfigError(file, f"verification_grants[{i}]", "must be a table")
        for k in g:
            if k not in keys:
                raise ConfigError(file, prefix + k, f"unknown key (allowed: {', '.join(sorted(keys))})")
        for k in keys - {"description"}:
            if k not in g:
                raise ConfigError(file, prefix + k, "is required")
        for k in ("consumer", "dataset", "template", "purpose"):
            if not isinstance(g[k], str) or not g[k]:
                raise ConfigError(file, prefix + k, "must be a non-empty string")
        if g["consumer"] not in policy.consumers:
            raise ConfigError(file, prefix + "consumer", f"unknown consumer {g['consumer']!r}")
        grant = VerificationGrant(
            g["consumer"], g["dataset"], g["template"], g["purpose"],
            _positive_int(file, prefix + "max_checks_per_period", g["max_checks_per_period"]),
            _positive_int(file, prefix + "max_checks_per_subject_per_period",
                          g["max_checks_per_subject_per_period"]),
        )
        key = (grant.consumer, grant.dataset, grant.template, grant.purpose)
        if key in seen:
            raise ConfigError(file, f"verification_grants[{i}]", f"duplicate grant for {key}")
        seen.add(key)
        grants.append(grant)
    return VerificationPolicy(tuple(grants), period, cap_durability=durability, **ints)


def load_verification_policy(path: Path, policy: Policy) -> VerificationPolicy:
    """Read the verification parts of the operator policy file (the rest is `gateway.policy`'s)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), "-", f"cannot read: {exc}") from exc
    return parse_verification_policy(data, str(path), policy)


# ---------------------------------------------------------------------------------------------------
# Keys: the Signer protocol (Ed25519 here; gateway/signing.py can replace it) and the HMAC key
# ---------------------------------------------------------------------------------------------------


class Signer(Protocol):
    """Signs receipts. `key_id` names the public key a verifier needs."""

    @property
    def key_id(self) -> str:
        """The key id."""
        ...

    def sign(self, data: bytes) -> bytes:
        """A signature over `data`."""
        ...


def _create_private_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """Read `path`, or create it with mode 0600 (first writer wins across threads and processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # another process is writing it
            data = path.read_bytes()
            if data:
                return data
            time.sleep(0.01)
        raise
    data = make()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def key_id_of(public: Ed25519PublicKey) -> str:
    """"ed25519:" and the first 16 hex digits of SHA-256 over the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class Ed25519FileSigner:
    """An Ed25519 key kept in a PEM file (PKCS#8, mode 0600) under the state directory."""

    def __init__(self, path: Path) -> None:
        """Load the key at `path`, creating it on first use."""
        pem = _create_private_file(path, lambda: Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(str(path), "-", "not an Ed25519 private key")
        self._key = key
        self.public_key = key.public_key()
        self._key_id = key_id_of(self.public_key)

    @property
    def key_id(self) -> str:
        """The key id."""
        return self._key_id

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature."""
        return self._key.sign(data)

    def public_pem(self) -> str:
        """The public key as PEM (SubjectPublicKeyInfo)."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class KeyedHasher:
    """HMAC-SHA256 with a 32-byte key kept under the state directory (mode 0600)."""

    def __init__(self, path: Path) -> None:
        """Load the key at `path`, creating it on first use."""
        key = _create_private_file(path, lambda: os.urandom(32))
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def hex(self, *parts: str) -> str:
        """HMAC over the NUL-joined UTF-8 parts, hex."""
        h = self._base.copy()
        h.update("\x00".join(parts).encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Receipts: Merkle tree over canonical JSON leaves, one Ed25519 signature per tree
# ---------------------------------------------------------------------------------------------------


def _leaf(payload: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + payload).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root_message(root: bytes, size: int) -> bytes:
    return ROOT_CONTEXT + root + size.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class ReceiptData:
    """A receipt in plain Python form (the proto `Receipt` has the same fields)."""

    payload: bytes
    signature: bytes
    key_id: str
    leaf_index: int
    tree_size: int
    audit_path: bytes

    def to_json(self) -> dict[str, Any]:
        """A JSON document for `pgw verify-receipt` (bytes base64)."""
        return {"payload": base64.b64encode(self.payload).decode(),
                "signature": base64.b64encode(self.signature).decode(), "key_id": self.key_id,
                "leaf_index": self.leaf_index, "tree_size": self.tree_size,
                "audit_path": base64.b64encode(self.audit_path).decode()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReceiptData:
        """Parse `to_json`'s output."""
        return cls(base64.b64decode(d["payload"]), base64.b64decode(d["signature"]), str(d["key_id"]),
                   int(d["leaf_index"]), int(d["tree_size"]), base64.b64decode(d.get("audit_path", "")))

    def to_pb(self) -> v_pb.VerificationReceipt:
        """The proto form."""
        return v_pb.VerificationReceipt(payload=self.payload, signature=self.signature, key_id=self.key_id,
                            leaf_index=self.leaf_index, tree_size=self.tree_size, audit_path=self.audit_path)

    @classmethod
    def from_pb(cls, r: v_pb.VerificationReceipt) -> ReceiptData:
        """From the proto form."""
        return cls(r.payload, r.signature, r.key_id, r.leaf_index, r.tree_size, r.audit_path)


def issue_receipts(signer: Signer, payloads: list[bytes]) -> list[ReceiptData]:
    """Receipts for `payloads`: one Merkle tree (odd nodes carried up), one signature over its root."""
    level = [_leaf(p) for p in payloads]
    levels = [level]
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    size = len(payloads)
    signature = signer.sign(_root_message(level[0], size))
    out = []
    for i, p in enumerate(payloads):
        path, j = [], i
        for lv in levels[:-1]:
            sib = j ^ 1
            if sib < len(lv):
                path.append(lv[sib])
            j //= 2
        out.append(ReceiptData(p, signature, signer.key_id, i, size, b"".join(path)))
    return out


def verify_receipt(receipt: ReceiptData, public_key: Ed25519PublicKey) -> bool:
    """True if the receipt's payload is in a tree whose root the key signed, and its key id matches."""
    if receipt.key_id != key_id_of(public_key) or not 0 <= receipt.leaf_index < receipt.tree_size:
        return False
    if len(receipt.audit_path) % 32:
        return False
    try:
        claimed = json.loads(receipt.payload)
    except ValueError:
        return False
    if not isinstance(claimed, dict) or claimed.get("key_id") != receipt.key_id:
        return False
    h, j, n = _leaf(receipt.payload), receipt.leaf_index, receipt.tree_size
    path = [receipt.audit_path[k:k + 32] for k in range(0, len(receipt.audit_path), 32)]
    while n > 1:
        if j ^ 1 < n:
            if not path:
                return False
            sib = path.pop(0)
            h = _node(h, sib) if j % 2 == 0 else _node(sib, h)
        j, n = j // 2, (n + 1) // 2
    if path:
        return False
    try:
        public_key.verify(receipt.signature, _root_message(h, receipt.tree_size))
    except InvalidSignature:
        return False
    return True


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


# ---------------------------------------------------------------------------------------------------
# State: caps, case references, enumeration alerts (SQLite under the state directory)
# ---------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consumer_counts (
    period TEXT NOT NULL, consumer TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (period, consumer)) STRICT;
CREATE TABLE IF NOT EXISTS template_counts (
    period TEXT NOT NULL, consumer TEXT NOT NULL, dataset TEXT NOT NULL, template TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (period, consumer, dataset, template)) STRICT;
CREATE TABLE IF NOT EXISTS subject_checks (
    period TEXT NOT NULL, consumer TEXT NOT NULL, dataset TEXT NOT NULL, template TEXT NOT NULL,
    subject TEXT NOT NULL, params TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (period, consumer, dataset, template, subject, params)) STRICT;
CREATE TABLE IF NOT EXISTS case_references (
    consumer TEXT NOT NULL, dataset TEXT NOT NULL, template TEXT NOT NULL, subject TEXT NOT NULL,
    case_reference TEXT NOT NULL, created_at REAL NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS not_found_windows (
    consumer TEXT NOT NULL, window_start INTEGER NOT NULL, checks INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (consumer, window_start)) STRICT;
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, created_at REAL NOT NULL, kind TEXT NOT NULL, consumer TEXT NOT NULL,
    dataset TEXT NOT NULL, template TEXT NOT NULL, subject TEXT NOT NULL, window TEXT NOT NULL,
    count INTEGER NOT NULL) STRICT;
"""


@dataclass(frozen=True, slots=True)
class ClaimCharge:
    """One claim to charge: keyed hashes only."""

    subject: str
    params: str
    case_reference: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """An enumeration alert."""

    created_at: float
    kind: str  # "not_found_burst" or "parameter_probe"
    consumer: str
    dataset: str
    template: str
    subject: str  # keyed hash ("" for not_found_burst)
    window: str
    count: int


def period_key(period: str, now: float) -> str:
    """The UTC period containing `now`: "YYYY-MM-DD" (day) or "YYYY-MM-DDTHH" (hour)."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    return t.strftime("%Y-%m-%d") if period == "day" else t.strftime("%Y-%m-%dT%H")


class VerificationState:
    """Caps and alerts, durable. Every change is one BEGIN IMMEDIATE transaction on a connection
    opened for the call, so checks and charges are atomic across threads and processes."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0, durability: str = "full") -> None:
        """Open (and create) the database at `path`.

        `durability` "full" (synchronous=FULL: a charge survives power loss once committed) or
        "normal" (synchronous=NORMAL in WAL mode: survives a crash of the process, the last commits
        may roll back on power loss or an OS crash; saves one fsync per check). Alert counters always
        use "normal": they are advisory.
        """
        if durability not in ("full", "normal"):
            raise ValueError("durability must be 'full' or 'normal'")
        self.path = path
        self._busy = busy_timeout_s
        self._sync = durability.upper()
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._open().executescript(_SCHEMA)

    def _open(self, sync: str | None = None) -> sqlite3.Connection:
        """This thread's connection (kept open: closing the last connection of a WAL database
        checkpoints and fsyncs, which would cost every check a disk flush)."""
        level = sync or self._sync
        cons: dict[str, sqlite3.Connection] = self._local.__dict__.setdefault("cons", {})
        con = cons.get(level)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self._busy, isolation_level=None,
                                  check_same_thread=True)
            con.execute("PRAGMA journal_mode = WAL")
            con.execute(f"PRAGMA synchronous = {level}")
            cons[level] = con
        return con

    @contextmanager
    def _tx(self, sync: str | None = None) -> Iterator[sqlite3.Connection]:
        con = self._open(sync)
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def charge(self, *, consumer: str, grant: VerificationGrant, policy: VerificationPolicy,
               claims: list[ClaimCharge], now: float) -> list[str | None]:
        """Check and charge every claim in order, in one transaction.

        Returns, per claim, None (charged) or which cap refused it ("consumer", "template",
        "subject"). A refused claim is not charged.
        """
        period = period_key(policy.period, now)
        ds, tp = grant.dataset, grant.template
        out: list[str | None] = []
        with self._tx() as con:
            row = con.execute("SELECT n FROM consumer_counts WHERE period = ? AND consumer = ?",
                              (period, consumer)).fetchone()
            c_n = row[0] if row else 0
            row = con.execute("SELECT n FROM template_counts WHERE period = ? AND consumer = ? AND "
                              "dataset = ? AND template = ?", (period, consumer, ds, tp)).fetchone()
            t_n = row[0] if row else 0
            subjects = sorted({c.subject for c in claims})
            existing: dict[str, dict[str, int]] = {s: {} for s in subjects}
            base = ("SELECT s.subject, s.params, s.n FROM subject_checks s WHERE s.period = ? AND "
                    "s.consumer = ? AND s.dataset = ? AND s.template = ?")
            if len(subjects) == 1:
                rows = con.execute(base + " AND s.subject = ?", (period, consumer, ds, tp, subjects[0]))
            else:
                con.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (subject TEXT PRIMARY KEY)")
                con.execute("DELETE FROM wanted")
                con.executemany("INSERT INTO wanted VALUES (?)", ((s,) for s in subjects))
                rows = con.execute(base + " AND s.subject IN (SELECT subject FROM wanted)",
                                   (period, consumer, ds, tp))
            for s, p, n in rows:
                existing[s][p] = n
            totals = {s: sum(ps.values()) for s, ps in existing.items()}
            before = {s: len(ps) for s, ps in existing.items()}
            added: dict[tuple[str, str], int] = {}
            for c in claims:
                if c_n + 1 > policy.max_checks_per_consumer_per_period:
                    out.append("consumer")
                elif t_n + 1 > grant.max_checks_per_period:
                    out.append("template")
                elif totals[c.subject] + 1 > grant.max_checks_per_subject_per_period:
                    out.append("subject")
                else:
                    out.append(None)
                    c_n += 1
                    t_n += 1
                    totals[c.subject] += 1
                    existing[c.subject].setdefault(c.params, 0)
                    added[(c.subject, c.params)] = added.get((c.subject, c.params), 0) + 1
            con.execute("INSERT INTO consumer_counts VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET n = ?",
                        (period, consumer, c_n, c_n))
            con.execute("INSERT INTO template_counts VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET n = ?",
                        (period, consumer, ds, tp, t_n, t_n))
            con.executemany(
                "INSERT INTO subject_checks VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET n = n + ?",
                ((period, consumer, ds, tp, s, p, k, k) for (s, p), k in added.items()))
            refs = [(consumer, ds, tp, c.subject, c.case_reference, now)
                    for c, r in zip(claims, out, strict=True) if r is None and c.case_reference]
            con.executemany("INSERT INTO case_references VALUES (?, ?, ?, ?, ?, ?)", refs)
            limit = policy.alert_distinct_parameters_per_subject
            probes = [(now, "parameter_probe", consumer, ds, tp, s, period, len(existing[s]))
                      for s in subjects if before[s] < limit <= len(existing[s])]
            con.executemany("INSERT INTO alerts (created_at, kind, consumer, dataset, template, subject, "
                            "window, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", probes)
        return out

    def record_not_found(self, *, consumer: str, dataset: str, template: str, not_found: int,
                         policy: VerificationPolicy, now: float) -> None:
        """Count unknown subjects per consumer and window; alert when the threshold is crossed.

        Runs the same statements, and changes the row (`checks`), whether `not_found` is 0 or not: an
        unchanged row would skip the write and answer an unknown subject measurably faster."""
        window = int(now // policy.alert_window_seconds) * policy.alert_window_seconds
        with self._tx("NORMAL") as con:
            row = con.execute(
                "INSERT INTO not_found_windows VALUES (?, ?, 1, ?) ON CONFLICT DO UPDATE SET "
                "checks = checks + 1, n = n + ? RETURNING n", (consumer, window, not_found, not_found)
            ).fetchone()
            total = int(row[0])
            limit = policy.alert_not_found_per_window
            crossed = total - not_found < limit <= total
            con.executemany(
                "INSERT INTO alerts (created_at, kind, consumer, dataset, template, subject, window, count) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(now, "not_found_burst", consumer, dataset, template, "", str(window), total)] if crossed else [])

    def alerts(self, since: float = 0.0) -> list[Alert]:
        """Alerts recorded at or after `since`, oldest first."""
        rows = self._open().execute("SELECT created_at, kind, consumer, dataset, template, subject, window, "
                                    "count FROM alerts WHERE created_at >= ? ORDER BY id", (since,)).fetchall()
        return [Alert(*r) for r in rows]

    def alert_counts(self) -> dict[tuple[str, str], int]:
        """(kind, consumer) -> number of alerts: for metrics."""
        rows = self._open().execute("SELECT kind, consumer, count(*) FROM alerts GROUP BY kind, consumer").fetchall()
        return {(k, c): n for k, c, n in rows}

    def case_reference_count(self) -> int:
        """Stored case references (hashes)."""
        return int(self._open().execute("SELECT count(*) FROM case_references").fetchone()[0])


# ---------------------------------------------------------------------------------------------------
# The service core
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimIn:
    """A claim as received: subject, typed parameters, case reference."""

    subject: str
    params: dict[str, Scalar]
    case_reference: str = ""


@dataclass(frozen=True, slots=True)
class ClaimOut:
    """A claim's answer, or its refusal (`status` is a reason, "" when answered)."""

    status: str = ""
    message: str = ""
    outcome: int = -1
    band: str = ""
    receipt: ReceiptData | None = None


def _canonical_params(params: dict[str, Scalar]) -> str:
    return json.dumps(sorted(params.items()), separators=(",", ":"), ensure_ascii=False)


def _issued_at(now: float) -> str:
    """Fixed width (27 characters) so receipts of one kind have one size."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class VerificationCore:
    """Everything a check needs; the servicer only converts."""

    policy: Policy
    vpolicy: VerificationPolicy
    client: SandboxClient
    templates: TemplatesInfo
    state: VerificationState
    signer: Signer
    hasher: KeyedHasher
    public_pem: str = ""
    clock: Callable[[], float] = time.time
    sandbox_timeout_s: float = 30.0
    _hashes: dict[str, str] = field(default_factory=dict)

    MAX_PARAM_CACHE: ClassVar[int] = 10_000

    @classmethod
    def start(cls, policy: Policy, policy_path: Path, client: SandboxClient, state_dir: Path,
              signer: Signer | None = None, sandbox_timeout_s: float = 30.0) -> VerificationCore:
        """Load the verification policy and keys, fetch the templates from the sandbox."""
        vpolicy = load_verification_policy(policy_path, policy)
        reply = client.call(DescribeTemplatesRequest())
        if not isinstance(reply, TemplatesInfo):
            raise SandboxConnectionError(f"unexpected reply to describe-templates: {type(reply).__name__}")
        pem = ""
        if signer is None:
            file_signer = Ed25519FileSigner(state_dir / "verification-signing.key")
            pem, signer = file_signer.public_pem(), file_signer
        state = VerificationState(state_dir / "verification.sqlite3", durability=vpolicy.cap_durability)
        return cls(policy, vpolicy, client, reply, state,
                   signer, KeyedHasher(state_dir / "verification-hmac.key"), pem,
                   sandbox_timeout_s=sandbox_timeout_s)

    # -- authorisation ------------------------------------------------------------------------------

    def authorise(self, consumer: str, dataset: str, template: str, purpose: str
                  ) -> tuple[VerificationGrant, TemplateInfo]:
        """The grant and template, or PERMISSION_DENIED (unknown templates look the same)."""
        grant = self.vpolicy.grant(consumer, dataset, template, purpose)
        info = self.templates.template(dataset, template)
        if grant is None or info is None:
            raise PermissionDeniedError(
                f"no verification grant for template {template!r} of dataset {dataset!r} and purpose "
                f"{purpose!r}", reason="VERIFICATION_ACCESS_DENIED", dataset=dataset, template=template,
                purpose=purpose)
        return grant, info

    def granted_templates(self, consumer: str) -> list[tuple[TemplateInfo, list[VerificationGrant]]]:
        """The templates this consumer holds grants for, with the grants."""
        out = []
        for t in self.templates.templates:
            gs = [g for g in self.vpolicy.grants
                  if (g.consumer, g.dataset, g.template) == (consumer, t.dataset, t.name)]
            if gs:
                out.append((t, gs))
        return out

    # -- validation ---------------------------------------------------------------------------------

    @staticmethod
    def claim_problem(info: TemplateInfo, claim: ClaimIn) -> tuple[str, str] | None:
        """(reason, message) of the first problem with the claim, or None. Independent of data."""
        problem = subject_problem(info.subject_format, claim.subject)
        if problem:
            return "INVALID_SUBJECT", f"subject is not a valid {info.subject_format}: {problem}"
        problem = info.params_problem(claim.params)
        if problem:
            return "INVALID_PARAMETER", problem
        if len(claim.case_reference) > MAX_CASE_REFERENCE:
            return "INVALID_PARAMETER", f"case_reference must be at most {MAX_CASE_REFERENCE} characters"
        if info.requires_case_reference and not claim.case_reference.strip():
            return "CASE_REFERENCE_REQUIRED", (
                f"template {info.name!r} requires a consent or case reference with every check")
        return None

    def _params_hash(self, dataset: str, template: str, params: dict[str, Scalar]) -> str:
        canon = _canonical_params(params)
        h = self._hashes.get(canon)
        if h is None:
            h = self.hasher.hex("params", dataset, template, canon)
            if len(self._hashes) < self.MAX_PARAM_CACHE:
                self._hashes[canon] = h
        return h

    # -- the check ----------------------------------------------------------------------------------

    def check(self, consumer: str, dataset: str, template: str, purpose: str,
              claims: list[ClaimIn], *, single: bool) -> list[ClaimOut]:
        """Validate, charge, evaluate, count, and sign; refusals of a single check raise."""
        grant, info = self.authorise(consumer, dataset, template, purpose)
        if not 1 <= len(claims) <= MAX_BATCH:
            raise InvalidArgumentError(f"a batch carries 1 to {MAX_BATCH} claims",
                                       reason="BATCH_TOO_LARGE", field="claims")
        results: list[ClaimOut | None] = [None] * len(claims)
        valid: list[int] = []
        for i, c in enumerate(claims):
            problem = self.claim_problem(info, c)
            if problem is None:
                valid.append(i)
                continue
            if single:
                field_name = {"INVALID_SUBJECT": "subject", "CASE_REFERENCE_REQUIRED": "case_reference"}
                raise InvalidArgumentError(problem[1], reason=problem[0],
                                           field=field_name.get(problem[0], "parameters"), template=template)
            results[i] = ClaimOut(problem[0], problem[1])
        now = self.clock()
        subj = {i: self.hasher.hex("subject", dataset, claims[i].subject) for i in valid}
        prm = {i: self._params_hash(dataset, template, claims[i].params) for i in valid}
        charges = [ClaimCharge(subj[i], prm[i],
                               self.hasher.hex("case", claims[i].case_reference)
                               if claims[i].case_reference else None) for i in valid]
        refused = self.state.charge(consumer=consumer, grant=grant, policy=self.vpolicy,
                                    claims=charges, now=now) if valid else []
        admitted = []
        for i, why in zip(valid, refused, strict=True):
            if why is None:
                admitted.append(i)
                continue
            message = {"consumer": "the consumer's verification cap for this period is spent",
                       "template": "the cap of checks with this template for this period is spent",
                       "subject": "the cap of checks of this subject with this template for this period "
                                  "is spent"}[why]
            if single:
                raise VerificationCapExhaustedError(message, cap=why, template=template,
                                                    period=self.vpolicy.period)
            results[i] = ClaimOut("VERIFICATION_CAP_EXHAUSTED", message)
        if admitted:
            answer = self._evaluate(info, [claims[i] for i in admitted])
            self.state.record_not_found(consumer=consumer, dataset=dataset, template=template,
                                        not_found=answer.not_found, policy=self.vpolicy, now=now)
            issued = _issued_at(now)
            batch_id = uuid.uuid4().hex
            head = json.dumps({"v": 1, "consumer": consumer, "dataset": dataset, "template": template,
                               "purpose": purpose, "data_version": answer.dataset_version,
                               "issued_at": issued, "key_id": self.signer.key_id},
                              separators=(",", ":"), ensure_ascii=False)[1:-1]
            labels = info.band_labels
            payloads = []
            for n, i in enumerate(admitted):
                outcome, band_i = answer.outcomes[n], answer.bands[n]
                band = labels[band_i] if labels and band_i >= 0 else ""
                claim = self.hasher.hex("claim", subj[i], prm[i])
                payloads.append(
                    ('{' + head + f',"id":"{batch_id}-{n:06d}","claim":"{claim}",'
                     f'"result":"{RESULT_NAMES[outcome]}","band":{json.dumps(band, ensure_ascii=False)}}}'
                     ).encode())
                results[i] = ClaimOut("", "", outcome, band)
            for n, (i, receipt) in enumerate(zip(admitted, issue_receipts(self.signer, payloads), strict=True)):
                r = results[i]
                assert r is not None
                results[i] = ClaimOut(r.status, r.message, answer.outcomes[n], r.band, receipt)
        return [r if r is not None else ClaimOut("INTERNAL", "") for r in results]

    def _evaluate(self, info: TemplateInfo, claims: list[ClaimIn]) -> VerifyClaimsResult:
        req = VerifyClaimsRequest(
            request_id=uuid.uuid4().hex, dataset=info.dataset, template=info.name,
            subjects=tuple(c.subject for c in claims),
            params=tuple((p.name, tuple(c.params[p.name] for c in claims)) for p in info.parameters),
        )
        try:
            reply = self.client.call(req, self.sandbox_timeout_s)
        except SandboxConnectionError as exc:
            if exc.before_send:
                raise SandboxUnavailableError("the sandbox is not reachable; the checks stay charged") from exc
            raise QueryExecutionError() from exc
        if isinstance(reply, VerifyClaimsResult) and len(reply.outcomes) == len(claims):
            return reply
        if isinstance(reply, ErrorReply) and reply.kind == "failed":
            raise QueryExecutionError()
        log.error("unexpected sandbox reply to a verification: %r", reply)
        raise GatewayInternalError()


# ---------------------------------------------------------------------------------------------------
# gRPC
# ---------------------------------------------------------------------------------------------------


def param_from_pb(v: v_pb.ParamValue) -> Scalar:
    """A typed parameter value from its proto form (unset: None, refused by validation)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    value: Scalar = getattr(v, kind)
    return value


def param_to_pb(v: Scalar) -> v_pb.ParamValue:
    """The proto form of a parameter value."""
    if isinstance(v, bool):
        return v_pb.ParamValue(bool_value=v)
    if isinstance(v, int):
        return v_pb.ParamValue(int64_value=v)
    if isinstance(v, float):
        return v_pb.ParamValue(double_value=v)
    return v_pb.ParamValue(string_value=str(v))


def _claim(subject: str, params: Any, case_reference: str) -> ClaimIn:
    return ClaimIn(subject, {k: param_from_pb(v) for k, v in params.items()}, case_reference)


class VerificationServicer(v_grpc.VerificationServiceServicer):
    """privacy_gateway.v1.VerificationService."""

    def __init__(self, core: VerificationCore) -> None:
        """Serve `core`."""
        self.core = core

    @_rpc
    def ListTemplates(self, request: v_pb.ListTemplatesRequest, context: grpc.ServicerContext
                      ) -> v_pb.ListTemplatesResponse:
        """The caller's templates."""
        consumer = authenticate(context, self.core.policy)
        out = []
        for t, grants in self.core.granted_templates(consumer):
            out.append(v_pb.Template(
                dataset=t.dataset, name=t.name, description=t.description, subject_format=t.subject_format,
                parameters=[v_pb.TemplateParameter(
                    name=p.name, type=p.type, description=p.description, max_length=p.max_length or 0,
                    allowed=[param_to_pb(v) for v in p.allowed or ()],
                    ladder=[param_to_pb(v) for v in p.ladder or ()]) for p in t.parameters],
                band_labels=list(t.band_labels), not_found_as_no_match=t.not_found_as_no_match,
                requires_case_reference=t.requires_case_reference,
                purposes=sorted(g.purpose for g in grants),
                max_checks_per_period=min(g.max_checks_per_period for g in grants),
                max_checks_per_subject_per_period=min(g.max_checks_per_subject_per_period for g in grants),
                period=self.core.vpolicy.period))
        return v_pb.ListTemplatesResponse(templates=out, receipt_public_key_pem=self.core.public_pem,
                                          receipt_key_id=self.core.signer.key_id)

    @_rpc
    def Verify(self, request: v_pb.VerifyRequest, context: grpc.ServicerContext) -> v_pb.VerifyResponse:
        """One check."""
        consumer = authenticate(context, self.core.policy)
        (out,) = self.core.check(consumer, request.dataset, request.template, request.purpose,
                                 [_claim(request.subject, request.parameters, request.case_reference)],
                                 single=True)
        assert out.receipt is not None
        return v_pb.VerifyResponse(result=RESULT_PB[out.outcome], band=out.band, receipt=out.receipt.to_pb())

    def VerifyBatch(self, request_iterator: Iterable[v_pb.VerifyBatchRequest],
                    context: grpc.ServicerContext) -> Iterator[v_pb.VerifyBatchResponse]:
        """A batch: receive every chunk, then answer in chunks."""
        try:
            results = self._batch(request_iterator, context)
        except GatewayError as exc:
            error: GatewayError = exc
        except Exception:
            error = GatewayInternalError()
            log.exception("unexpected error in VerifyBatch (%s)", error.message)
        else:
            for k in range(0, len(results), RESPONSE_CHUNK):
                yield v_pb.VerifyBatchResponse(results=results[k:k + RESPONSE_CHUNK])
            return
        from grpc_status import rpc_status

        from gateway.service import status_for

        context.abort_with_status(rpc_status.to_status(status_for(error)))

    def _batch(self, request_iterator: Iterable[v_pb.VerifyBatchRequest],
               context: grpc.ServicerContext) -> list[v_pb.ClaimResult]:
        consumer = authenticate(context, self.core.policy)
        head: tuple[str, str, str] | None = None
        claims: list[ClaimIn] = []
        for chunk in request_iterator:
            this = (chunk.dataset, chunk.template, chunk.purpose)
            if head is None:
                head = this
            elif any(this) and this != head:
                raise InvalidArgumentError("dataset, template and purpose must not change within a batch",
                                           reason="INVALID_BATCH", field="template")
            if head is not None and len(claims) == 0:
                self.core.authorise(consumer, *head)  # refuse early, before reading 100,000 claims
            claims.extend(_claim(c.subject, c.parameters, c.case_reference) for c in chunk.claims)
            if len(claims) > MAX_BATCH:
                raise InvalidArgumentError(f"a batch carries 1 to {MAX_BATCH} claims",
                                           reason="BATCH_TOO_LARGE", field="claims")
        if head is None:
            raise InvalidArgumentError("the batch is empty", reason="INVALID_BATCH", field="claims")
        outs = self.core.check(consumer, *head, claims, single=False)
        status = {"": v_pb.CLAIM_STATUS_OK, "INVALID_SUBJECT": v_pb.CLAIM_STATUS_INVALID_SUBJECT,
                  "INVALID_PARAMETER": v_pb.CLAIM_STATUS_INVALID_PARAMETER,
                  "CASE_REFERENCE_REQUIRED": v_pb.CLAIM_STATUS_CASE_REFERENCE_REQUIRED,
                  "VERIFICATION_CAP_EXHAUSTED": v_pb.CLAIM_STATUS_CAP_EXHAUSTED}
        results = []
        for i, o in enumerate(outs):
            if o.receipt is None:
                results.append(v_pb.ClaimResult(index=i, status=status[o.status], status_message=o.message))
            else:
                results.append(v_pb.ClaimResult(index=i, result=RESULT_PB[o.outcome], band=o.band,
                                                receipt=o.receipt.to_pb()))
        return results


# ---------------------------------------------------------------------------------------------------
# Offline verification CLI: python -m gateway.verification --public-key K.pem receipt.json
# ---------------------------------------------------------------------------------------------------


def verify_receipt_file(receipt_path: Path, public_key_path: Path) -> tuple[bool, dict[str, Any]]:
    """(valid, payload) for a receipt JSON file (ReceiptData.to_json) and a PEM public key."""
    receipt = ReceiptData.from_json(json.loads(receipt_path.read_text()))
    ok = verify_receipt(receipt, load_public_key(public_key_path.read_bytes()))
    try:
        payload = json.loads(receipt.payload)
    except ValueError:
        payload = {}
    return ok, payload if isinstance(payload, dict) else {}
