"""Unit tests for gateway.release.audit: chain, seals, tamper detection, concurrency, export and offline verify."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import pytest

from gateway.release.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditIntegrityError,
    AuditLog,
    AuditRecord,
    entry_hash,
    keyed_hash,
    pseudonymize_text,
    verify_export,
)
from gateway.release.signing import Signer, load_or_create_hmac_key
from gateway.settings import ROOT
from gateway.storage.pg import PgDatabase
from gateway.storage.sqlite import open_location

RESIDENT_ID = "11010519491231002X"
CREDIT_CODE = "91350100M000100Y43"


def _record(i: int, **overrides: object) -> AuditRecord:
    fields: dict[str, object] = {
        "request_id": f"req-{i}",
        "consumer": "analyst",
        "rpc": "privacy_gateway.v1.QueryService/RunQuery",
        "outcome": "answered",
        "dataset": "registry",
        "purpose": "testing",
        "query": f"SELECT COUNT(*) FROM residents WHERE birth_year > {1900 + i}",
        "epsilon": 0.25,
        "released_digest": f"{i:064x}",
    }
    fields.update(overrides)
    return AuditRecord(**fields)  # type: ignore[arg-type]


# state directory -> the PostgreSQL database its log lives in (the PostgreSQL runs of these tests)
_DATABASES: dict[str, PgDatabase] = {}


@pytest.fixture
def state(tmp_path: Path, storage: Callable[[str], Path | PgDatabase]) -> Path:
    """A state directory with the gateway's keys; the log lives in it (SQLite) or in a fresh PostgreSQL database."""
    where = storage("audit.sqlite3")
    if isinstance(where, PgDatabase):
        _DATABASES[str(tmp_path / "state")] = where
    return tmp_path / "state"


def _open(state: Path, seal_every: int = 5) -> AuditLog:
    return AuditLog(
        _DATABASES.get(str(state), state / "audit.sqlite3"),
        Signer.load_or_create(state),
        load_or_create_hmac_key(state),
        seal_every=seal_every,
    )


@pytest.fixture
def log12(state: Path) -> AuditLog:
    """A log with 12 entries, sealed automatically at 5 and 10 and on demand at 12."""
    audit = _open(state)
    for i in range(1, 13):
        audit.append(_record(i))
    assert audit.seal() is not None
    return audit


def _connect(path: Path | PgDatabase) -> sqlite3.Connection:
    return open_location(path, busy_timeout_s=5.0)


def _tamper(path: Path | PgDatabase, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Edit the file as an attacker would: a separate connection, triggers dropped first (PostgreSQL: a
    superuser's session with triggers off)."""
    con = _connect(path)
    if isinstance(path, PgDatabase):
        con.execute("SET session_replication_role = replica")
    else:
        for trigger in ("entries_no_update", "entries_no_delete", "seals_no_update", "seals_no_delete"):
            con.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for sql, params in statements:
        con.execute(sql, params)
    con.close()


def _kinds(audit: AuditLog) -> set[tuple[int | None, str]]:
    return {(p.seq, p.kind) for p in audit.verify().problems}


def test_append_and_verify(log12: AuditLog) -> None:
    """Appends chain from the genesis hash, seal every 5 and on demand, and verify clean."""
    entries = log12.entries()
    assert [e.seq for e in entries] == list(range(1, 13))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert all(entry_hash(e) == e.hash for e in entries)
    assert [s.seq for s in log12.seals()] == [5, 10, 12]
    assert log12.seal() is None  # the head is already sealed
    report = log12.verify(require_sealed=True)
    assert report.ok, report.problems
    assert (report.entries, report.seals, report.sealed_through, report.unsealed_from) == (12, 3, 12, None)


def test_unsealed_tail_is_reported(state: Path) -> None:
    """Entries after the last seal are ok by default and a problem with require_sealed."""
    audit = _open(state)
    for i in range(1, 8):
        audit.append(_record(i))
    report = audit.verify()
    assert report.ok and report.sealed_through == 5 and report.unsealed_from == 6
    strict = audit.verify(require_sealed=True)
    assert [(p.seq, p.kind) for p in strict.problems] == [(6, "unsealed")]


def test_identifiers_are_pseudonymized(state: Path) -> None:
    """Resident ids and credit codes in SQL and marked fields are stored only as keyed hashes."""
    audit = _open(state)
    sql = (
        f"SELECT COUNT(*) FROM residents WHERE id_number = '{RESIDENT_ID.lower()}'"
        f" OR employer_credit_code IN ('{CREDIT_CODE}') AND registrationstatusx = 1"
    )
    entry = audit.append(_record(1, query=sql, identifiers={"subject": RESIDENT_ID}))
    stored = audit.entries()[0]
    assert stored == entry
    assert RESIDENT_ID.lower() not in stored.query and CREDIT_CODE not in stored.query
    assert audit.pseudonymize(RESIDENT_ID) in stored.query  # case-insensitive: same pseudonym
    assert audit.pseudonymize(CREDIT_CODE) in stored.query
    assert "registrationstatusx" in stored.query  # an 18-letter word is not an identifier
    assert stored.identifiers == {"subject": audit.pseudonymize(RESIDENT_ID)}
    if isinstance(audit.path, Path):  # the bytes on disk (PostgreSQL: the rows read back, above)
        raw = audit.path.read_bytes()
        assert RESIDENT_ID.encode() not in raw and CREDIT_CODE.encode() not in raw
    key_a, key_b = b"a" * 32, b"b" * 32
    assert keyed_hash(key_a, RESIDENT_ID) != keyed_hash(key_b, RESIDENT_ID)
    assert pseudonymize_text("x = 123456789012345678", key_a) == f"x = {keyed_hash(key_a, '123456789012345678')}"


def test_edited_entry_is_detected(log12: AuditLog) -> None:
    """Changing one field of entry 7 names seq 7 as modified."""
    _tamper(log12.path, ("UPDATE entries SET consumer = 'mallory' WHERE seq = 7", ()))
    report = log12.verify()
    assert report.first_bad_seq == 7
    assert (7, "modified") in _kinds(log12)


def test_edited_cost_is_detected(log12: AuditLog) -> None:
    """Lowering the recorded epsilon of entry 3 is detected at seq 3."""
    _tamper(log12.path, ("UPDATE entries SET epsilon = 0.0 WHERE seq = 3", ()))
    assert log12.verify().first_bad_seq == 3


def test_deleted_entry_is_detected(log12: AuditLog) -> None:
    """Deleting entry 7 names seq 7 as missing."""
    _tamper(log12.path, ("DELETE FROM entries WHERE seq = 7", ()))
    report = log12.verify()
    assert report.first_bad_seq == 7
    assert (7, "missing") in _kinds(log12)


def test_deleted_sealed_tail_is_detected(log12: AuditLog) -> None:
    """Deleting the sealed last entry leaves its seal vouching for a missing entry."""
    _tamper(log12.path, ("DELETE FROM entries WHERE seq = 12", ()))
    assert (12, "seal_without_entry") in _kinds(log12)


def test_swapped_entries_are_detected(log12: AuditLog) -> None:
    """Swapping the contents of entries 4 and 9 names seq 4."""
    columns = [
        "time", "request_id", "consumer", "rpc", "dataset", "purpose", "query", "outcome",
        "status_code", "reason", "epsilon", "delta", "released_digest", "identifiers", "prev_hash",
        "hash", "mac",
    ]
    con = _connect(log12.path)
    rows = {
        seq: con.execute(f"SELECT {', '.join(columns)} FROM entries WHERE seq = ?", (seq,)).fetchone()
        for seq in (4, 9)
    }
    con.close()
    assignments = ", ".join(f"{c} = ?" for c in columns)
    _tamper(
        log12.path,
        (f"UPDATE entries SET {assignments} WHERE seq = 4", rows[9]),
        (f"UPDATE entries SET {assignments} WHERE seq = 9", rows[4]),
    )
    report = log12.verify()
    assert report.first_bad_seq == 4
    assert {(4, "modified"), (9, "modified")} <= _kinds(log12)


def _forged(prev: AuditEntry, seq: int, consumer: str = "mallory") -> AuditEntry:
    draft = AuditEntry(
        seq=seq, time=prev.time, request_id="forged", consumer=consumer, rpc=prev.rpc,
        dataset=prev.dataset, purpose=prev.purpose, query="SELECT COUNT(*) FROM residents",
        outcome="answered", status_code="OK", reason="", epsilon=0.0, delta=0.0, released_digest="",
        identifiers={}, prev_hash=prev.hash, hash="",
    )
    return AuditEntry(**{**{f: getattr(draft, f) for f in draft.__dataclass_fields__}, "hash": entry_hash(draft)})


def _insert_sql(e: AuditEntry, mac: str = "0" * 64) -> tuple[str, tuple[object, ...]]:
    return (
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (e.seq, e.time, e.request_id, e.consumer, e.rpc, e.dataset, e.purpose, e.query, e.outcome,
         e.status_code, e.reason, e.epsilon, e.delta, e.released_digest, "{}", e.prev_hash, e.hash, mac,
         e.v, e.rho, e.charge),
    )


def test_forged_tail_entry_is_detected(log12: AuditLog) -> None:
    """An appended row with a correct chain hash but no seal and no MAC is named at its seq."""
    head = log12.entries()[-1]
    _tamper(log12.path, _insert_sql(_forged(head, 13)))
    report = log12.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(13, "forged_entry")]
    assert report.unsealed_from == 13  # no seal covers it either
    strict = log12.verify(require_sealed=True)
    assert {(13, "forged_entry"), (13, "unsealed")} == {(p.seq, p.kind) for p in strict.problems}


def test_inserted_entry_is_detected(log12: AuditLog) -> None:
    """A row slipped in at seq 7 (later rows renumbered, not rehashed) is named as inserted at 7."""
    entries = log12.entries()
    renumber = [(f"UPDATE entries SET seq = seq + 1 WHERE seq = {s}", ()) for s in range(12, 6, -1)]
    _tamper(log12.path, *renumber, _insert_sql(_forged(entries[5], 7)))
    report = log12.verify()
    assert report.first_bad_seq == 7
    assert (7, "inserted") in _kinds(log12)


def test_rewritten_and_rehashed_chain_is_caught_by_seals(log12: AuditLog) -> None:
    """Editing entry 7 and recomputing every later hash still fails the seal at 10 and the MACs."""
    entries = log12.entries()
    statements = []
    prev = entries[5]
    for original in entries[6:]:
        consumer = "mallory" if original.seq == 7 else original.consumer
        draft = AuditEntry(**{**{f: getattr(original, f) for f in original.__dataclass_fields__},
                              "consumer": consumer, "prev_hash": prev.hash, "hash": ""})
        new_hash = entry_hash(draft)
        statements.append((
            "UPDATE entries SET consumer = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (consumer, prev.hash, new_hash, original.seq),
        ))
        prev = AuditEntry(**{**{f: getattr(draft, f) for f in draft.__dataclass_fields__}, "hash": new_hash})
    _tamper(log12.path, *statements)
    report = log12.verify()
    kinds = _kinds(log12)
    assert (10, "seal_mismatch") in kinds  # the seal at 10 vouches for a chain that differs after seq 5
    assert (7, "forged_entry") in kinds  # the MAC names the first rewritten entry exactly
    assert report.first_bad_seq == 7
    assert report.sealed_through == 5


def test_rehashed_export_is_caught_offline(log12: AuditLog, state: Path, tmp_path: Path) -> None:
    """Offline (no MAC), an edited and rehashed export fails its seal, from the first unvouched seq."""
    out = log12.export(1, 10, tmp_path / "audit.jsonl")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    prev_hash = None
    for rec in records:
        if rec["type"] != "entry" or rec["seq"] < 7:
            continue
        if rec["seq"] == 7:
            rec["consumer"] = "mallory"
        rec["prev_hash"] = prev_hash or rec["prev_hash"]
        fields = {k: v for k, v in rec.items() if k != "type"}
        fields["epsilon"], fields["delta"] = float(fields["epsilon"]), float(fields["delta"])
        if "rho" in fields:
            fields["rho"] = float(fields["rho"])
        rec["hash"] = entry_hash(AuditEntry(**fields))
        prev_hash = rec["hash"]
    from gateway.release.signing import canonical_json

    out.write_bytes(b"".join(canonical_json(r) + b"\n" for r in records))  # the trailer cannot be re-signed
    report = verify_export(out, (state / "keys" / "signing.pub").read_bytes())
    problems = [(p.seq, p.kind) for p in report.problems]
    assert problems == [(None, "modified"), (6, "seal_mismatch"), (6, "unsealed")]


def test_forged_seal_is_detected(log12: AuditLog) -> None:
    """A seal whose signature was changed is named at its seq."""
    (sig,) = _connect(log12.path).execute("SELECT signature FROM seals WHERE seq = 10").fetchone()
    flipped = ("1" if sig[0] == "0" else "0") + sig[1:]
    _tamper(log12.path, ("UPDATE seals SET signature = ? WHERE seq = 10", (flipped,)))
    report = log12.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(10, "forged_seal")]
    assert report.sealed_through == 5


def test_seal_signed_by_another_key_is_detected(log12: AuditLog, state: Path) -> None:
    """A seal made with an attacker's key (even with its own key id) does not count."""
    other = Signer.generate()
    entries = log12.entries()
    from gateway.release.audit import seal_payload

    payload = seal_payload(13, entries[-1].hash, "2030-01-01T00:00:00.000000Z", log12.public_keys.popitem()[0])
    _tamper(log12.path, _insert_sql(_forged(entries[-1], 13)))
    _tamper(log12.path, (
        "INSERT INTO seals VALUES (?, ?, ?, ?, ?)",
        (13, entries[-1].hash, "2030-01-01T00:00:00.000000Z", Signer.load_or_create(state).key_id,
         other.sign(payload).hex()),
    ))
    assert (13, "forged_seal") in _kinds(log12)


def test_append_only_triggers(log12: AuditLog) -> None:
    """Ordinary UPDATE and DELETE are refused by triggers (defence against our own bugs)."""
    con = _connect(log12.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("UPDATE entries SET consumer = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("DELETE FROM seals")
    con.close()


def _process_worker(
    state: str, url: str, n_threads: int, per_thread: int, barrier: ProcessBarrier, out: Queue[list[str]]
) -> None:
    if url:
        _DATABASES[state] = PgDatabase(url)
    audit = _open(Path(state), seal_every=20)
    errors: list[str] = []
    guard = threading.Lock()

    def worker(t: int) -> None:
        for i in range(per_thread):
            try:
                audit.append(_record(t * 1000 + i))
            except BaseException as exc:  # reported to the parent, which fails the test
                with guard:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    barrier.wait()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.close()
    out.put(errors)


def test_concurrent_appends_keep_a_valid_chain(state: Path) -> None:
    """2 processes x 8 threads x 10 appends give 160 chained entries and a seal every 20."""
    _open(state).close()  # keys and schema exist before the race (creation races are tested below)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out: Queue[list[str]] = ctx.Queue()
    url = _DATABASES[str(state)].url if str(state) in _DATABASES else ""
    procs = [ctx.Process(target=_process_worker, args=(str(state), url, 8, 10, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert reports == [[], []]
    audit = _open(state, seal_every=20)
    report = audit.verify()
    assert report.ok, report.problems
    assert report.entries == 160
    assert [s.seq for s in audit.seals()] == list(range(20, 161, 20))


def test_export_and_offline_verify(log12: AuditLog, state: Path, tmp_path: Path) -> None:
    """An exported range verifies offline with only the public key; the range end gets sealed."""
    out = log12.export(3, 8, tmp_path / "audit.jsonl")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["key_id"] == Signer.load_or_create(state).key_id
    assert [x["seq"] for x in lines if x["type"] == "entry"] == list(range(3, 9))
    assert [x["seq"] for x in lines if x["type"] == "seal"] == [5, 8]
    pub = (state / "keys" / "signing.pub").read_bytes()
    report = verify_export(out, pub)
    assert report.ok, report.problems
    assert (report.first_seq, report.last_seq, report.sealed_through) == (3, 8, 8)
    whole = log12.export(1, 12, tmp_path / "all.jsonl")
    assert verify_export(whole, pub).ok
    assert not verify_export(whole, Signer.generate().public_pem).ok


def _assert_every_flip_fails(path: Path, pub: bytes, positions: set[int], tmp_path: Path) -> None:
    data = path.read_bytes()
    corrupted = tmp_path / "corrupted.jsonl"
    for bit in sorted(positions):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        corrupted.write_bytes(bytes(flipped))
        assert not verify_export(corrupted, pub).ok, f"bit {bit} flip went unnoticed"


def test_offline_verify_catches_any_one_bit_change(log12: AuditLog, state: Path, tmp_path: Path) -> None:
    """Flipping any one of 400 sampled bits of an export fails offline verification."""
    out = log12.export(1, 6, tmp_path / "audit.jsonl")
    pub = (state / "keys" / "signing.pub").read_bytes()
    bits = len(out.read_bytes()) * 8
    _assert_every_flip_fails(out, pub, set(random.Random(20240611).sample(range(bits), 400)), tmp_path)


@pytest.mark.slow
def test_offline_verify_catches_every_bit_of_an_entry_and_a_seal(
    log12: AuditLog, state: Path, tmp_path: Path
) -> None:
    """Flipping each bit of the first entry line and of the seal line fails offline verification."""
    out = log12.export(1, 5, tmp_path / "audit.jsonl")
    pub = (state / "keys" / "signing.pub").read_bytes()
    data = out.read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    entry_line, seal_line = (starts[1], starts[2]), (starts[-3], starts[-2])
    positions = {b for lo, hi in (entry_line, seal_line) for b in range(lo * 8, hi * 8)}
    _assert_every_flip_fails(out, pub, positions, tmp_path)


def test_offline_verify_catches_removed_and_reordered_lines(log12: AuditLog, state: Path, tmp_path: Path) -> None:
    """Dropping an entry line, dropping the last seal, or swapping two entries fails."""
    out = log12.export(1, 7, tmp_path / "audit.jsonl")
    pub = (state / "keys" / "signing.pub").read_bytes()
    lines = out.read_bytes().splitlines(keepends=True)
    variants = {
        "drop entry 4": lines[:4] + lines[5:],
        "drop last seal": lines[:-2] + lines[-1:],
        "drop signature": lines[:-1],
        "swap 2 and 3": [lines[0], lines[1], lines[3], lines[2], *lines[4:]],
    }
    for name, variant in variants.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(variant))
        assert not verify_export(path, pub).ok, name


def test_export_refuses_a_tampered_log(log12: AuditLog, tmp_path: Path) -> None:
    """Export verifies first and refuses to seal over a broken chain."""
    _tamper(log12.path, ("UPDATE entries SET reason = 'x' WHERE seq = 2", ()))
    with pytest.raises(AuditIntegrityError):
        log12.export(1, 4, tmp_path / "audit.jsonl")


def test_verify_export_runs_standalone(log12: AuditLog, state: Path, tmp_path: Path) -> None:
    """`python -m gateway.release.audit verify-export` works and imports neither grpc nor duckdb."""
    out = log12.export(1, 12, tmp_path / "audit.jsonl")
    pub = state / "keys" / "signing.pub"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.release.audit", "verify-export", str(out), "--public-key", str(pub)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 12 entries")
    probe = (
        "import sys; from gateway.release import audit;"
        f"rc = audit.main(['verify-export', {str(out)!r}, '--public-key', {str(pub)!r}, '--json']);"
        "assert not {'grpc', 'duckdb', 'opendp'} & set(sys.modules), 'heavy import';"
        "sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
