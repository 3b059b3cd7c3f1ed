"""The audit log accounts for every charge, and every request id gets a definite outcome: real gateway
processes, real sandboxes, a real ledger; faults injected (SIGKILL loops under load, a dead holder's
reservation, an audit file from before the audit log moved into the ledger's database).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.budgets.ledger import GrantKey, Ledger, PrivacyLoss
from gateway.cli.client import error_details
from gateway.path.settle import Settler
from gateway.products.query.request import QueryRequest, fingerprint
from gateway.release.accounting import reconcile
from gateway.release.audit import AuditLog, AuditRecord
from gateway.release.oversight import Oversight
from gateway.release.signing import Signer, load_or_create_hmac_key
from gateway.rpc.server import start_gateway
from tests.gateway.path.test_healing import _serve
from tests.helpers import Env, channel_for, isolated_settings

pytestmark = pytest.mark.integration

SQL = "SELECT COUNT(*) FROM residents WHERE birth_year > {n}"


def _request(n: int, request_id: str, epsilon: float = 0.01) -> q_pb.RunQueryRequest:
    return q_pb.RunQueryRequest(dataset="registry", purpose="testing", sql=SQL.format(n=n), request_id=request_id,
                                privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon))


def _entries(db: Path) -> list[tuple[str, str, str, float, str]]:
    with sqlite3.connect(db) as conn:
        return [(str(c), str(r), str(ch), float(e), str(rpc)) for c, r, ch, e, rpc in conn.execute(
            "SELECT consumer, request_id, charge, epsilon, rpc FROM entries ORDER BY seq")]


def _charges(db: Path) -> dict[tuple[str, str], tuple[str, float]]:
    with sqlite3.connect(db) as conn:
        return {(str(c), str(r)): (str(s), float(e)) for c, r, s, e in conn.execute(
            "SELECT consumer, request_id, status, epsilon FROM charges")}


def test_every_kind_of_outcome_is_audited_once_with_its_cost(env: Env) -> None:
    """Answered, cached, replayed and refused calls: every charge of the ledger has one entry recording it with
    its cost, a replay's entry records a replay (no cost), and the totals per grant and month are equal."""
    settings = isolated_settings(env, "accounting-kinds")
    gw = start_gateway(settings)
    try:
        with channel_for(env, gw.port, "analyst") as ch:
            stub = q_grpc.QueryServiceStub(ch)
            first = stub.RunQuery(_request(1, "a1", 0.5))
            replay = stub.RunQuery(_request(1, "a1", 0.5))
            cached = stub.RunQuery(_request(1, "a2", 0.5))  # the same release again: the charge-once cache
            with pytest.raises(grpc.RpcError):
                stub.RunQuery(_request(1, "a3", 1e9))  # refused: over the per-query maximum
        assert replay.replayed and cached.cached and not first.replayed
    finally:
        gw.stop()
    db = settings.ledger_path
    entries = [e for e in _entries(db) if e[0] == "analyst" and e[4].endswith("RunQuery")]
    assert [(r, ch, eps) for _, r, ch, eps, _ in entries] == [
        ("a1", "charged", 0.5), ("a1", "replay", 0.0), ("a2", "charged", 0.0), ("a3", "", 0.0)]
    result = reconcile(db)
    assert result.ok and result.in_flight == 0, result.to_json_obj()


def test_a_dead_holders_reservation_is_settled_and_audited(env: Env) -> None:
    """A reservation made by a process that died before completing it (its lease is never renewed) is settled
    as failed within seconds, with an audit entry recording its cost; a retry with its request id then gets a
    final QUERY_EXECUTION_FAILED, never REQUEST_IN_PROGRESS for good."""
    settings = isolated_settings(env, "accounting-settle")
    gw = start_gateway(settings)
    try:
        req = QueryRequest("analyst", "registry", SQL.format(n=7), "testing", 0.25, 0.0, request_id="dead-1")
        other = Ledger(settings.ledger_path)  # another gateway process, which then dies
        other.reserve(GrantKey("analyst", "registry", "testing"), request_id="dead-1", fingerprint=fingerprint(req),
                      cost=PrivacyLoss(0.25), budget=PrivacyLoss(1000.0))
        other.close()
        with channel_for(env, gw.port, "analyst") as ch:
            stub = q_grpc.QueryServiceStub(ch)
            deadline, reasons = time.monotonic() + 30, []
            while time.monotonic() < deadline:
                with pytest.raises(grpc.RpcError) as info:
                    stub.RunQuery(_request(7, "dead-1", 0.25))
                reasons.append(error_details(info.value).reason)
                if reasons[-1] != "REQUEST_IN_PROGRESS":
                    break
                time.sleep(0.5)
        assert reasons[-1] == "QUERY_EXECUTION_FAILED", reasons
        assert gw.settler is not None and gw.settler.settled == 1
    finally:
        gw.stop()
    assert _charges(settings.ledger_path)[("analyst", "dead-1")] == ("failed", 0.25)
    assert [e for e in _entries(settings.ledger_path) if e[1] == "dead-1" and e[2] == "charged"] == [
        ("analyst", "dead-1", "charged", 0.25, "privacy_gateway.v1.Recovery/SettleCharge")]
    assert reconcile(settings.ledger_path).ok


def test_a_charge_is_audited_once_when_two_writers_settle_it(env: Env, tmp_path: Path) -> None:
    """The settler settles a charge (its holder's lease lapsed) while the call that made it is still running;
    the call then fails and its own entry arrives: the charge keeps exactly one entry recording it, the call's
    entry records no cost, and the audit totals equal the ledger's."""
    state = tmp_path / "state"
    state.mkdir()
    oversight = Oversight.open(state, env.settings.policy)
    ledger = Ledger(state / "ledger.sqlite3")
    try:
        ledger.reserve(GrantKey("analyst", "registry", "testing"), request_id="twice", fingerprint="f",
                       cost=PrivacyLoss(0.25), budget=PrivacyLoss(1000.0))
        settler = Settler(Ledger(state / "ledger.sqlite3"), oversight, clock=lambda: time.time() + 60)
        settler.run_once()  # the holder's lease lapsed: settled as failed, with its Recovery entry
        assert settler.settled == 1
        oversight.record_rpc(service="QueryService", method="RunQuery", code="ABORTED", request_id="twice",
                             consumer="analyst", dataset="registry", purpose="testing", epsilon=0.25,
                             charge="charged", reason="QUERY_EXECUTION_FAILED", duration_s=0.01)
        entries = [e for e in _entries(state / "ledger.sqlite3") if e[1] == "twice"]
        assert [(ch, eps, rpc.rsplit("/", 1)[1]) for _, _, ch, eps, rpc in entries] == [
            ("charged", 0.25, "SettleCharge"), ("", 0.0, "RunQuery")]
        result = reconcile(state / "ledger.sqlite3")
        assert result.ok and not result.duplicated, result.to_json_obj()
        assert oversight.audit.verify().ok
    finally:
        ledger.close()
        oversight.close()


def test_the_settler_leaves_a_running_calls_charge_to_that_call(env: Env, tmp_path: Path) -> None:
    """A charge whose holder's lease lapsed (storage was down) but whose call is still running in this process
    is not settled under it; once the call is gone it is."""
    state = tmp_path / "state"
    state.mkdir()
    oversight = Oversight.open(state, env.settings.policy)
    holder = Ledger(state / "ledger.sqlite3")
    try:
        holder.reserve(GrantKey("analyst", "registry", "testing"), request_id="running", fingerprint="f",
                       cost=PrivacyLoss(0.5), budget=PrivacyLoss(1000.0))
        in_flight = {("analyst", "running")}
        settler = Settler(Ledger(state / "ledger.sqlite3"), oversight, clock=lambda: time.time() + 60,
                          in_flight=in_flight)
        settler.run_once()
        assert settler.settled == 0
        assert _charges(state / "ledger.sqlite3")[("analyst", "running")] == ("reserved", 0.5)
        in_flight.clear()
        settler.run_once()
        assert settler.settled == 1
        assert _charges(state / "ledger.sqlite3")[("analyst", "running")] == ("failed", 0.5)
        assert reconcile(state / "ledger.sqlite3").ok
    finally:
        holder.close()
        oversight.close()


def test_an_audit_file_from_before_moves_into_the_ledger(env: Env, tmp_path: Path) -> None:
    """A state directory whose audit log is its own file (as before): its entries and seals are moved into the
    ledger's database unchanged (chain, MACs, seals verify), and the old file is renamed."""
    state = tmp_path / "state"
    state.mkdir()
    old = AuditLog(state / "audit.sqlite3", Signer.load_or_create(state), load_or_create_hmac_key(state), seal_every=2)
    for i in range(5):
        old.append(AuditRecord(request_id=f"r{i}", consumer="analyst", rpc="privacy_gateway.v1.QueryService/RunQuery",
                               outcome="answered", epsilon=0.1))
    old.close()
    oversight = Oversight.open(state, env.settings.policy)
    try:
        entries = oversight.audit.entries()
        assert [e.request_id for e in entries] == [f"r{i}" for i in range(5)]
        assert oversight.audit.path == state / "ledger.sqlite3"
        report = oversight.audit.verify()
        assert report.ok and report.seals >= 2
    finally:
        oversight.close()
    assert not (state / "audit.sqlite3").exists() and (state / "audit.sqlite3.migrated").exists()


@pytest.mark.slow
def test_a_kill_loop_under_load_leaves_every_charge_accounted_for(env: Env, tmp_path: Path) -> None:
    """SIGKILL `pgw serve` 20 times while four clients query with their own request ids. Afterwards: every
    answer a client received is in the ledger as released, with the same release, and recorded by exactly one
    audit entry with its epsilon; every request id has a definite outcome (a retry gets the stored answer or a
    final status, never REQUEST_IN_PROGRESS once the settler ran); the audit log's totals equal the ledger's."""
    state = tmp_path / "state"
    log = tmp_path / "gateway.log"
    received: dict[str, q_pb.RunQueryResponse] = {}
    sent: dict[str, int] = {}
    lock = threading.Lock()
    port = [0]
    stop = threading.Event()
    rng = random.Random(12)

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            rid, n = f"c{k}-{i}-{uuid.uuid4().hex[:6]}", rng.randrange(10**9)
            i += 1
            with lock:
                sent[rid] = n
            try:
                with channel_for(env, port[0], "analyst") as ch:
                    resp = q_grpc.QueryServiceStub(ch).RunQuery(_request(n, rid), timeout=10)
                with lock:
                    received[rid] = resp
            except grpc.RpcError:
                time.sleep(0.05)

    proc, port[0], _ = _serve(env, state, log)
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            time.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            proc.wait()
            proc, port[0], _ = _serve(env, state, log)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
        time.sleep(12)  # the killed processes' leases expire; the last gateway's settler settles their charges
        with channel_for(env, port[0], "analyst") as ch:
            stub = q_grpc.QueryServiceStub(ch)
            outcomes = {}
            for rid, n in sent.items():
                try:
                    resp = stub.RunQuery(_request(n, rid), timeout=30)
                    outcomes[rid] = "released"
                    if rid in received:
                        assert resp.rows == received[rid].rows and resp.replayed
                except grpc.RpcError as exc:
                    outcomes[rid] = error_details(exc).reason
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert "REQUEST_IN_PROGRESS" not in outcomes.values()
    assert all(outcomes[rid] == "released" for rid in received)
    db = state / "ledger.sqlite3"
    charges = _charges(db)
    charged = {(c, r): eps for c, r, ch, eps, _ in _entries(db) if ch == "charged"}
    for rid in received:
        assert charges[("analyst", rid)] == ("released", 0.01)
        assert charged[("analyst", rid)] == 0.01
    result = reconcile(db)
    assert result.ok and result.in_flight == 0, result.to_json_obj()
    assert len(received) > 50
    print(f"kill loop: {len(sent)} requests, {len(received)} answers received, "
          f"{sum(1 for s, _ in charges.values() if s == 'failed')} settled as failed, "
          f"ledger epsilon {sum(e for _, e in charges.values()):.2f} = audit "
          f"{sum(g.audit_epsilon for g in result.grants):.2f}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs for the gateway's state (skipped where this process may not mount one)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _usage(mount: Path) -> str:
    """What fills `mount`: free bytes and the largest files (printed, shown when the test fails)."""
    st = os.statvfs(mount)
    files = sorted(((p.stat().st_size, str(p.relative_to(mount))) for p in mount.rglob("*") if p.is_file()),
                   reverse=True)[:8]
    return f"{st.f_bavail * st.f_frsize} bytes free; largest files: {files}"


def _fill(path: Path) -> None:
    """Append to `path` (created before the gateway started, so no new inode is needed now) until the file
    system is full."""
    print(f"before filling: {_usage(path.parent)}")
    with path.open("ab") as f:
        block = b"\0" * (1 << 20)
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_a_full_disk_refuses_early_and_every_charge_settles(env: Env, small_disk: Path) -> None:
    """The state directory on a small tmpfs is filled to the last byte while two clients query: no call gets
    INTERNAL (storage trouble is UNAVAILABLE with RetryInfo), new work is refused early (STORAGE_LOW); after the
    filler is removed the gateway serves again unaided, and every charge has a definite outcome and exactly
    one audit entry with its cost."""
    settings = dataclasses.replace(isolated_settings(env, "disk"), state_dir=small_disk / "state",
                                   sandbox_socket=small_disk / "state" / "sandbox.sock", storage_reserve_mb=4)
    (small_disk / "filler.bin").touch()
    gw = start_gateway(settings)
    codes: Counter[str] = Counter()
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        with channel_for(env, gw.port, "analyst") as ch:
            stub = q_grpc.QueryServiceStub(ch)
            while not stop.is_set():
                i += 1
                try:
                    stub.RunQuery(_request(i * 10 + k, f"d{k}-{i}"), timeout=30)
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    d = error_details(exc)
                    codes[f"{d.code.name}/{d.reason}"] += 1
                    time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        _fill(small_disk / "filler.bin")
        time.sleep(5.0)
        (small_disk / "filler.bin").unlink()
        recovered = time.monotonic()
        before = codes["OK"]
        deadline = time.monotonic() + 60
        while codes["OK"] == before and time.monotonic() < deadline:
            time.sleep(0.05)
        recovered = time.monotonic() - recovered
        stop.set()
        for t in threads:
            t.join(60)
        time.sleep(2.5)  # the settler's rounds
    finally:
        stop.set()
        gw.stop()
    assert not [c for c in codes if c.startswith(("INTERNAL", "UNKNOWN"))], codes
    assert any(c.startswith("UNAVAILABLE/STORAGE") for c in codes), codes
    assert codes["OK"] > before, f"not serving again after the disk was freed: {codes}"
    result = reconcile(settings.ledger_path)
    assert result.ok and result.in_flight == 0, result.to_json_obj()
    print(f"disk full: {dict(codes)}; serving again {recovered:.2f} s after the filler was removed "
          f"(load average {os.getloadavg()[0]:.2f})")
