"""Every answer is signed and every request is audited before it leaves, through the real gateway."""

from __future__ import annotations

import uuid

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import receipt_pb2
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc

from gateway.release.receipts import verify_receipt
from gateway.rpc.server import Gateway
from tests.helpers import Stubs, fresh

pytestmark = pytest.mark.integration


def _run(s: Stubs, sql: str, rid: str) -> q_pb.RunQueryResponse:
    return s.query.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose="testing", request_id=rid,
        privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))


def test_answer_carries_a_receipt_a_third_party_can_verify(analyst: Stubs) -> None:
    """The receipt verifies with the key from KeyService; one flipped bit breaks it; replays keep it."""
    rid = str(uuid.uuid4())
    sql = fresh("SELECT COUNT(*) FROM residents")
    resp = _run(analyst, sql, rid)
    assert _run(analyst, sql, rid).receipt == resp.receipt
    key = key_grpc.KeyServiceStub(analyst.channel).GetPublicKey(receipt_pb2.GetPublicKeyRequest())
    r = resp.receipt
    assert r.key_id == key.key_id
    payload = r.payload_json.encode()
    assert verify_receipt(payload, r.signature, key.public_key_pem)
    assert rid in r.payload_json and "registry" in r.payload_json
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x01
    assert not verify_receipt(bytes(flipped), r.signature, key.public_key_pem)


def test_every_outcome_is_audited_and_the_chain_verifies(analyst: Stubs, gateway: Gateway) -> None:
    """Answered, refused and denied requests all land in the audit log; the chain verifies."""
    assert gateway.oversight is not None
    audit = gateway.oversight.audit
    rid = str(uuid.uuid4())
    _run(analyst, fresh("SELECT COUNT(*) FROM residents"), rid)
    with pytest.raises(grpc.RpcError):
        _run(analyst, "SELECT * FROM residents", str(uuid.uuid4()))
    with pytest.raises(grpc.RpcError):
        analyst.query.RunQuery(q_pb.RunQueryRequest(
            dataset="enterprises", sql="SELECT COUNT(*) FROM enterprises", purpose="testing",
            privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))
    entries = list(audit.entries())[-3:]
    assert [e.outcome for e in entries] == ["answered", "refused", "refused"]
    assert entries[0].request_id == rid and entries[0].epsilon > 0 and entries[0].released_digest
    assert entries[1].reason == "SELECT_STAR" and entries[1].epsilon == 0
    assert entries[2].status_code == "PERMISSION_DENIED"
    assert all(e.consumer == "analyst" for e in entries)
    assert audit.verify().ok


def test_identifiers_in_refused_queries_never_reach_the_audit_log(analyst: Stubs, gateway: Gateway) -> None:
    """A resident identity number in a refused query never reaches the audit log in clear: the entry of a
    refusal keeps the query's SHA-256 and size, not its text."""
    assert gateway.oversight is not None
    idn = "11010519491231002X"
    with pytest.raises(grpc.RpcError):
        _run(analyst, f"SELECT COUNT(*) FROM residents WHERE id_number = '{idn}'", str(uuid.uuid4()))
    last = list(gateway.oversight.audit.entries())[-1]
    assert idn not in last.query and last.query.startswith("sha256=") and last.query.endswith("chars=69")
    assert idn not in gateway.oversight.audit.path.read_bytes().decode("latin-1")


def test_charge_completion_cache_entry_and_outcome_are_stored_together(analyst: Stubs, gateway: Gateway) -> None:
    """A charged answer's release cache entry and 'charged' outcome live in the ledger's file with its charge
    (one transaction); the same query again is served from that cache, and a retry is recorded as replayed."""
    assert gateway.governor is not None and gateway.core.cache is not None
    assert gateway.core.cache.path == gateway.ledger.path == gateway.governor.state.path
    rid = str(uuid.uuid4())
    sql = fresh("SELECT COUNT(*) FROM residents")
    resp = _run(analyst, sql, rid)
    assert _run(analyst, sql, str(uuid.uuid4())).cached
    assert _run(analyst, sql, rid).replayed
    mine = [o for o in gateway.governor.state.outcomes(("registry",)) if o.request_id == rid]
    assert [o.outcome for o in mine] == ["charged", "replayed"]
    assert mine[0].epsilon == resp.privacy_cost.epsilon > 0


def test_a_bug_after_the_reservation_keeps_the_charge_durably(
    analyst: Stubs, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected failure after the sandbox ran (here: building the response) is INTERNAL to the client,
    and the charge is kept and marked failed (a durable commit) before that error leaves."""
    import gateway.products.query.service as queries

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("bug")

    monkeypatch.setattr(queries.convert, "answer", broken)
    rid = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as info:
        _run(analyst, fresh("SELECT COUNT(*) FROM residents"), rid)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    monkeypatch.undo()
    charges = [c for c in gateway.ledger.charges_between(None, None) if c["request_id"] == rid]
    assert [(c["status"], c["epsilon"] > 0) for c in charges] == [("failed", True)]
