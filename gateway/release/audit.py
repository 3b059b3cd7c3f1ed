"""Append-only, hash-chained, signed audit log of every RPC, in the ledger's database (SQLite or PostgreSQL).

The records, the chain and its verifier are in `gateway.release.audit_records`; the offline check of an
export in `gateway.release.audit_export`; this module stores the log.

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

One entry per charge. An entry that records a charge (``charge = 'charged'``) is written only if its
request has none yet, checked inside the appending transaction: when two writers settle the same charge
(the settler and a call whose completion committed but reported a storage error), the later entry is
stored with ``charge = ''`` and zero cost, so the audit log's totals stay equal to the ledger's.

Concurrency. Every append runs in one ``BEGIN IMMEDIATE`` transaction (read the head, write the entry,
maybe seal) on a per-call connection, WAL mode, ``synchronous=FULL``: safe across threads and across
gateway processes sharing the file, and durable when ``append`` returns. On PostgreSQL the same
transaction holds the one write lock of `gateway.storage.pg` instead, so replicas on one database extend
ONE chain (they need the same keys: share or copy ``<state_dir>/keys``). Triggers refuse UPDATE and
DELETE (defence against our own bugs; anyone who can write the file can drop them, which is what the
chain and the seals are for).

Limits. Entries after the last seal are only as trustworthy as the file: truncating the unsealed tail is
invisible to the chain (``VerifyReport.unsealed_from`` says where it starts; ``require_sealed=True`` makes
it an error). ``export`` therefore seals the exported range first.

Offline use needs only the standard library, ``cryptography`` and ``gateway.release.signing``:
``python -m gateway.release.audit verify-export FILE --public-key signing.pub``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from gateway.release.audit_export import main, verify_export
from gateway.release.audit_records import (
    _MAC_CONTEXT,
    ENTRY_VERSION,
    EXPORT_FORMAT,
    GENESIS_HASH,
    AuditEntry,
    AuditError,
    AuditIntegrityError,
    AuditRecord,
    Outcome,
    Problem,
    Seal,
    VerifyReport,
    _ChainVerifier,
    _entry_from_row,
    _export_payload,
    entry_hash,
    keyed_hash,
    pseudonymize_text,
    seal_payload,
    utc_now,
)
from gateway.release.signing import Signer, canonical_json
from gateway.storage.pg import PgDatabase, append_only_trigger, ddl, ensure_schema
from gateway.storage.sqlite import ConnectionPool, immediate, open_location, prepare_location, writer_queue

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


class AuditLog:
    """The audit log in one SQLite file; safe across threads and processes (see the module docstring)."""

    def __init__(
        self,
        path: Path | PgDatabase,
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
        self._path = path if isinstance(path, PgDatabase) else Path(path)
        self._signer = signer
        self._hmac_key = bytes(hmac_key)
        self._mac_key = hmac.new(self._hmac_key, _MAC_CONTEXT, hashlib.sha256).digest()
        self._seal_every = seal_every
        self._busy_timeout_s = float(busy_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        prepare_location(self._path)
        self._writers = writer_queue(self._path)  # shared with the ledger when the tables share its database
        self._pool = ConnectionPool(
            lambda: self._open(check_same_thread=False), lambda: AuditError("audit log storage error")
        )
        # Held open so per-call connections closing do not checkpoint and delete the WAL (as the ledger).
        self._anchor: sqlite3.Connection | None = None
        if isinstance(self._path, PgDatabase):  # no WAL to keep; a storage failure is an AuditError
            with self._pool.connection() as conn:
                self._initialize(conn)
            return
        self._anchor = self._open(check_same_thread=False)
        try:
            self._initialize(self._anchor)
        except BaseException:
            self._anchor.close()
            self._anchor = None
            raise

    @property
    def path(self) -> Path | PgDatabase:
        """The SQLite file or PostgreSQL database."""
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
        if record.charge == "charged" and conn.execute(
                "SELECT 1 FROM entries WHERE consumer = ? AND request_id = ? AND charge = 'charged' LIMIT 1",
                (record.consumer, record.request_id)).fetchone():
            # The charge already has its entry (settled by another writer while this call ran: the settler,
            # a peer replica, the call's own settlement that committed and then reported a storage error).
            # Each charge is recorded exactly once; this call's entry says what happened, charging nothing.
            record = replace(record, charge="", epsilon=0.0, delta=0.0, rho=0.0)
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
        return open_location(self._path, busy_timeout_s=self._busy_timeout_s)

    def _initialize(self, conn: sqlite3.Connection) -> None:
        if isinstance(self._path, PgDatabase):
            try:
                ensure_schema(conn, [*ddl(_SCHEMA[:_SCHEMA.index("CREATE TRIGGER")]),
                                     *append_only_trigger("entries"), *append_only_trigger("seals")])
            except sqlite3.Error as exc:
                raise AuditError("the audit log could not be opened") from exc
            return
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
        busy = AuditError("the audit log is busy (no write turn within the busy timeout)")
        with self._writers.turn(self._busy_timeout_s, lambda: busy), self._connection() as conn, immediate(conn):
            yield conn

    def __enter__(self) -> AuditLog:
        """Returns the log itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Closes the log."""
        self.close()



if __name__ == "__main__":
    sys.exit(main())
