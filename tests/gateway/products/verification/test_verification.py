"""Verification service end to end: real gateway, real sandbox process, generated stubs, mTLS."""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import duckdb
import grpc
import pytest
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.cli.client import error_details
from gateway.exampledata.identifiers import credit_code_check_char, resident_id_check_char
from gateway.products.verification.receipts import ReceiptData, load_public_key, root_message_of, verify_receipt
from gateway.release.signing import public_key_id
from gateway.rpc.server import Gateway
from tests.helpers import Env, channel_for

pytestmark = pytest.mark.integration


@pytest.fixture
def verifier(env: Env, gateway: Gateway) -> Iterator[v_grpc.VerificationServiceStub]:
    """A VerificationService stub for `analyst`."""
    ch = channel_for(env, gateway.port, "analyst")
    yield v_grpc.VerificationServiceStub(ch)
    ch.close()


def residents(env: Env, n: int, offset: int = 0) -> list[tuple[str, str, int, int]]:
    """(id_number, name, income, person_id) of residents, straight from the file (the test's truth)."""
    con = duckdb.connect()
    return con.execute(
        f"SELECT id_number, name, income, person_id FROM read_parquet('{env.data_dir}/residents.parquet') "
        f"ORDER BY person_id LIMIT {n} OFFSET {offset}").fetchall()


def unknown_id(seq: int) -> str:
    """A well-formed resident id number that is not in the data (birth year 2010 is outside it)."""
    body = f"110101201001{seq % 28 + 1:02d}{seq % 999 + 1:03d}"
    return body + resident_id_check_char(body)


def pv(v: object) -> v_pb.ParamValue:
    """A ParamValue."""
    if isinstance(v, bool):
        return v_pb.ParamValue(bool_value=v)
    if isinstance(v, int):
        return v_pb.ParamValue(int64_value=v)
    return v_pb.ParamValue(string_value=str(v))


def verify(stub: v_grpc.VerificationServiceStub, template: str, subject: str, dataset: str = "registry",
           purpose: str = "kyc", case: str = "", **params: object) -> v_pb.VerifyResponse:
    """One Verify call."""
    return stub.Verify(v_pb.VerifyRequest(
        dataset=dataset, template=template, purpose=purpose, subject=subject, case_reference=case,
        parameters={k: pv(v) for k, v in params.items()}))


def refused(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """ErrorDetails of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return error_details(info.value)


def test_list_templates_and_public_key(verifier: v_grpc.VerificationServiceStub) -> None:
    """The caller sees its granted templates with parameters, ladders and caps, never a predicate."""
    resp = verifier.ListTemplates(v_pb.ListTemplatesRequest())
    names = {(t.dataset, t.name) for t in resp.templates}
    assert names == {("registry", "identity_match"), ("registry", "income_at_least"),
                     ("registry", "insured_months_at_least"), ("enterprises", "enterprise_active")}
    income = next(t for t in resp.templates if t.name == "income_at_least")
    assert [v.int64_value for v in income.parameters[0].ladder] == [50000, 100000, 200000]
    assert income.requires_case_reference and income.max_checks_per_subject_per_period == 3
    assert resp.receipt_key_id == public_key_id(resp.receipt_public_key_pem)  # the gateway's key: KeyService's
    assert "predicate" not in str(resp)


def test_answers_match_the_data(verifier: v_grpc.VerificationServiceStub, env: Env) -> None:
    """identity_match, income_at_least, insured_months_at_least, enterprise_active agree with the files."""
    rows = residents(env, 20)
    con = duckdb.connect()
    for id_number, name, income, person_id in rows:
        assert verify(verifier, "identity_match", id_number, name=name).result == v_pb.VERIFICATION_RESULT_MATCH
        assert verify(verifier, "identity_match", id_number, name=name + "x").result == \
            v_pb.VERIFICATION_RESULT_NO_MATCH
        want = v_pb.VERIFICATION_RESULT_MATCH if income >= 50000 else v_pb.VERIFICATION_RESULT_NO_MATCH
        assert verify(verifier, "income_at_least", id_number, case="loan-1", threshold=50000).result == want
        months = con.execute(
            f"SELECT count(DISTINCT month) FROM read_parquet('{env.data_dir}/social_insurance.parquet') "
            f"WHERE person_id = {person_id} AND contribution > 0").fetchone()[0]
        r = verify(verifier, "insured_months_at_least", id_number, months=6)
        assert r.result == (v_pb.VERIFICATION_RESULT_MATCH if months >= 6 else v_pb.VERIFICATION_RESULT_NO_MATCH)
        assert r.band == ("0-5 months" if months < 6 else "6-11 months" if months < 12 else "12 months")
    ents = con.execute(f"SELECT credit_code, status FROM read_parquet('{env.data_dir}/enterprises.parquet') "
                       "LIMIT 30").fetchall()
    for code, status in ents:
        r = verify(verifier, "enterprise_active", code, dataset="enterprises")
        assert r.result == (v_pb.VERIFICATION_RESULT_MATCH if status == "active"
                            else v_pb.VERIFICATION_RESULT_NO_MATCH)


@pytest.mark.parametrize(("subject", "problem"), [
    ("11010519491231002", "18 characters"),  # too short
    ("1101051949123100211", "18 characters"),  # too long
    ("110105194912310021", "check character"),  # bad check character (correct is X)
    ("110105194913310026", "birth date"),  # month 13
    ("11010519490230002X", "birth date"),  # 30 February
    ("11010519491231002x", "check character"),  # lowercase x
    ("A10105194912310021", "digits"),
])
def test_malformed_resident_ids_are_refused(verifier: v_grpc.VerificationServiceStub, subject: str,
                                            problem: str) -> None:
    """Wrong length, bad check character, impossible date: INVALID_ARGUMENT / INVALID_SUBJECT."""
    assert resident_id_check_char("11010519491231002") == "X"
    d = refused(verify, verifier, "identity_match", subject, name="x")
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.reason == "INVALID_SUBJECT"
    assert problem in d.message and subject not in d.message


def test_malformed_credit_codes_are_refused(verifier: v_grpc.VerificationServiceStub) -> None:
    """A credit code with a bad check character, bad characters or wrong length is INVALID_SUBJECT."""
    body = "91110105MA0000001"
    good = body + credit_code_check_char(body)
    bad_check = body + ("0" if good[-1] != "0" else "1")
    for s, problem in [(bad_check, "check character"), (good[:-1], "18 characters"),
                       ("91110105MA000000I" + good[-1], "characters must come from"),
                       ("9111A105MA0000001" + good[-1], "region code")]:
        d = refused(verify, verifier, "enterprise_active", s, dataset="enterprises")
        assert d.reason == "INVALID_SUBJECT" and problem in d.message, (s, d.message)
    assert verify(verifier, "enterprise_active", good, dataset="enterprises").result == \
        v_pb.VERIFICATION_RESULT_NO_MATCH


def test_undeclared_and_off_ladder_parameters_are_refused(verifier: v_grpc.VerificationServiceStub,
                                                          env: Env) -> None:
    """Thresholds off the ladder, undeclared, missing or mistyped parameters: INVALID_PARAMETER."""
    subject = residents(env, 1, 100)[0][0]
    for params in ({"threshold": 75000}, {"threshold": 50000, "extra": 1}, {},
                   {"threshold": "50000"}, {"income": 50000}):
        d = refused(verify, verifier, "income_at_least", subject, case="c", **params)
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.reason == "INVALID_PARAMETER", params
    d = refused(verify, verifier, "identity_match", subject, name="x" * 65)
    assert d.reason == "INVALID_PARAMETER"


def test_case_reference_required(verifier: v_grpc.VerificationServiceStub, env: Env,
                                 gateway: Gateway) -> None:
    """income_at_least needs a case reference; only its keyed hash is stored."""
    subject = residents(env, 1, 101)[0][0]
    d = refused(verify, verifier, "income_at_least", subject, threshold=50000)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.reason == "CASE_REFERENCE_REQUIRED"
    verify(verifier, "income_at_least", subject, case="LOAN-2026-000123", threshold=50000)
    assert gateway.verification is not None
    raw = gateway.verification.state.path.read_bytes()
    assert b"LOAN-2026-000123" not in raw and subject.encode() not in raw


def test_no_grant_is_permission_denied(env: Env, gateway: Gateway,
                                       verifier: v_grpc.VerificationServiceStub) -> None:
    """A consumer without a grant for the template (or purpose, or an unknown template): PERMISSION_DENIED."""
    subject = residents(env, 1, 102)[0][0]
    ch = channel_for(env, gateway.port, "planner")
    try:
        planner = v_grpc.VerificationServiceStub(ch)
        assert not planner.ListTemplates(v_pb.ListTemplatesRequest()).templates
        d = refused(verify, planner, "identity_match", subject, name="x")
        assert d.code == grpc.StatusCode.PERMISSION_DENIED and d.reason == "VERIFICATION_ACCESS_DENIED"
    finally:
        ch.close()
    for template, purpose in (("identity_match", "other"), ("no_such_template", "kyc")):
        d = refused(verify, verifier, template, subject, purpose=purpose, name="x")
        assert d.code == grpc.StatusCode.PERMISSION_DENIED and d.reason == "VERIFICATION_ACCESS_DENIED"


def test_receipt_verifies_and_one_bit_breaks_it(verifier: v_grpc.VerificationServiceStub, env: Env) -> None:
    """A third party verifies a receipt with the public key alone; flipping any one bit breaks it."""
    keys = verifier.ListTemplates(v_pb.ListTemplatesRequest())
    public = load_public_key(keys.receipt_public_key_pem.encode())
    id_number, name, _, _ = residents(env, 1, 103)[0]
    r = verify(verifier, "identity_match", id_number, name=name)
    receipt = ReceiptData.from_pb(r.receipt)
    assert verify_receipt(receipt, public)
    payload = json.loads(receipt.payload)
    assert payload["result"] == "MATCH" and payload["template"] == "identity_match"
    assert payload["key_id"] == keys.receipt_key_id and len(payload["claim"]) == 64
    assert id_number not in receipt.payload.decode() and name not in receipt.payload.decode()
    for fieldname in ("payload", "signature"):
        blob = getattr(receipt, fieldname)
        for bit in (0, 7, 8 * len(blob) // 2, 8 * len(blob) - 1):
            flipped = bytearray(blob)
            flipped[bit // 8] ^= 1 << (bit % 8)
            bad = ReceiptData(**{**receipt_fields(receipt), fieldname: bytes(flipped)})
            assert not verify_receipt(bad, public), (fieldname, bit)


def receipt_fields(r: ReceiptData) -> dict[str, object]:
    """The fields of a ReceiptData."""
    return {f: getattr(r, f) for f in ("payload", "signature", "key_id", "leaf_index", "tree_size",
                                       "audit_path")}


def test_caps_hold_under_concurrency(env: Env, gateway: Gateway) -> None:
    """32 threads check one subject under a per-subject cap of 3: exactly 3 are answered."""
    subject = residents(env, 1, 104)[0][0]
    ch = channel_for(env, gateway.port, "racer")
    stub = v_grpc.VerificationServiceStub(ch)
    start = threading.Barrier(32)

    def one(_: int) -> str:
        start.wait()
        try:
            verify(stub, "income_at_least", subject, purpose="racing", case="c", threshold=100000)
            return "ok"
        except grpc.RpcError as exc:
            d = error_details(exc)
            assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED, d
            return d.reason

    try:
        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(one, range(32)))
    finally:
        ch.close()
    assert outcomes.count("ok") == 3
    assert outcomes.count("VERIFICATION_CAP_EXHAUSTED") == 29


def test_threshold_probing_is_capped_and_alerted(verifier: v_grpc.VerificationServiceStub, env: Env,
                                                 gateway: Gateway) -> None:
    """Three rungs on one subject use up its cap (no binary search) and raise a probing alert."""
    subject = residents(env, 1, 105)[0][0]
    for t in (50000, 100000, 200000):
        verify(verifier, "income_at_least", subject, case="c", threshold=t)
    d = refused(verify, verifier, "income_at_least", subject, case="c", threshold=100000)
    assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED and d.reason == "VERIFICATION_CAP_EXHAUSTED"
    assert gateway.verification is not None
    kinds = [(a.kind, a.template) for a in gateway.verification.state.alerts()]
    assert ("parameter_probe", "income_at_least") in kinds


def test_enumeration_of_unknown_subjects_raises_an_alert(verifier: v_grpc.VerificationServiceStub,
                                                         gateway: Gateway) -> None:
    """Many unknown subjects from one consumer within the window are recorded as an alert."""
    assert gateway.verification is not None
    before = gateway.verification.state.alert_counts().get(("not_found_burst", "analyst"), 0)
    for i in range(25):
        verify(verifier, "enterprise_active", _unknown_credit_code(i), dataset="enterprises")
    after = gateway.verification.state.alert_counts().get(("not_found_burst", "analyst"), 0)
    assert after >= before + 1 or before >= 1


def _unknown_credit_code(i: int) -> str:
    body = f"92440300MA{i:07d}"
    return body + credit_code_check_char(body)


def test_no_match_and_not_found_look_the_same_on_the_wire(verifier: v_grpc.VerificationServiceStub,
                                                          env: Env) -> None:
    """Same status, same fields, same serialized size for a wrong name and an unknown id number."""
    id_number, _name, _, _ = residents(env, 1, 106)[0]
    a = verify(verifier, "identity_match", id_number, name="Nobody")
    b = verify(verifier, "identity_match", unknown_id(1), name="Nobody")
    assert a.result == b.result == v_pb.VERIFICATION_RESULT_NO_MATCH
    assert a.band == b.band == ""
    assert [f.name for f, _ in a.ListFields()] == [f.name for f, _ in b.ListFields()]
    assert len(a.SerializeToString()) == len(b.SerializeToString())
    pa, pb = json.loads(a.receipt.payload), json.loads(b.receipt.payload)
    assert sorted(pa) == sorted(pb) and pa["result"] == pb["result"] == "NO_MATCH"
    # Also with a band: an unknown subject lands in the lowest band, like a person with no months.
    c = verify(verifier, "insured_months_at_least", unknown_id(2), months=12)
    assert c.result == v_pb.VERIFICATION_RESULT_NO_MATCH and c.band == "0-5 months"


@pytest.mark.statistical
@pytest.mark.slow
def test_no_match_and_not_found_take_the_same_time(verifier: v_grpc.VerificationServiceStub, env: Env) -> None:
    """Interleaved NO_MATCH (known subject, wrong name) and not-found checks have the same latency.

    Tolerance: the difference of the two medians (400 calls each, interleaved so drift affects both)
    must be below max(0.5 ms, 15% of the overall median). A real code-path difference (e.g. skipping
    the sandbox or the alert transaction for unknown subjects) costs more than 1 ms here; scheduler
    noise moves a median of 400 samples by far less. False-failure rate observed: 0 in 20 runs.
    """
    known = [r[0] for r in residents(env, 400, 200)]
    found, missing = [], []
    for i in range(400):
        for subject, bucket in ((known[i], found), (unknown_id(1000 + i), missing)):
            t0 = time.perf_counter()
            r = verify(verifier, "identity_match", subject, name="Nobody")
            bucket.append(time.perf_counter() - t0)
            assert r.result == v_pb.VERIFICATION_RESULT_NO_MATCH
    m_found, m_missing = statistics.median(found), statistics.median(missing)
    overall = statistics.median(found + missing)
    assert abs(m_found - m_missing) < max(0.0005, 0.15 * overall), (m_found, m_missing)


def _batch_requests(template: str, claims: list[v_pb.Claim], chunk: int = 7) -> Iterator[v_pb.VerifyBatchRequest]:
    for k in range(0, len(claims), chunk):
        yield v_pb.VerifyBatchRequest(dataset="registry", template=template, purpose="kyc",
                                      claims=claims[k:k + chunk])


def test_batch_equals_one_by_one(verifier: v_grpc.VerificationServiceStub, env: Env) -> None:
    """Each claim of a batch gets the same answer (and band) as the same check made alone; every
    receipt verifies; invalid claims get their own status without failing the batch."""
    public = load_public_key(verifier.ListTemplates(v_pb.ListTemplatesRequest()).receipt_public_key_pem.encode())
    rows = residents(env, 60, 300)
    claims = []
    for i, (id_number, _, _, _) in enumerate(rows):
        claims.append(v_pb.Claim(subject=id_number if i % 5 else unknown_id(i),
                                 parameters={"months": pv([3, 6, 12][i % 3])}))
    claims.append(v_pb.Claim(subject="110105194912310021", parameters={"months": pv(3)}))
    claims.append(v_pb.Claim(subject=rows[0][0], parameters={"months": pv(4)}))
    results = [r for resp in verifier.VerifyBatch(_batch_requests("insured_months_at_least", claims))
               for r in resp.results]
    assert [r.index for r in results] == list(range(len(claims)))
    assert results[-2].status == v_pb.CLAIM_STATUS_INVALID_SUBJECT
    assert results[-1].status == v_pb.CLAIM_STATUS_INVALID_PARAMETER
    for c, r in zip(claims[:-2], results[:-2], strict=True):
        assert r.status == v_pb.CLAIM_STATUS_OK
        alone = verify(verifier, "insured_months_at_least", c.subject, months=c.parameters["months"].int64_value)
        assert (r.result, r.band) == (alone.result, alone.band)
        assert verify_receipt(ReceiptData.from_pb(r.receipt), public)
        assert r.receipt.tree_size == len(claims) - 2


def test_batch_caps_are_charged_per_claim(verifier: v_grpc.VerificationServiceStub, env: Env) -> None:
    """Five claims on one subject under a cap of 3: three answered, two CAP_EXHAUSTED, in order."""
    subject = residents(env, 1, 107)[0][0]
    claims = [v_pb.Claim(subject=subject, parameters={"threshold": pv(50000)}, case_reference="c")
              for _ in range(5)]
    results = [r for resp in verifier.VerifyBatch(_batch_requests("income_at_least", claims))
               for r in resp.results]
    assert [r.status for r in results] == [v_pb.CLAIM_STATUS_OK] * 3 + [v_pb.CLAIM_STATUS_CAP_EXHAUSTED] * 2


def test_batch_without_grant_is_permission_denied(env: Env, gateway: Gateway) -> None:
    """A batch on a template the caller holds no grant for fails as a whole with PERMISSION_DENIED."""
    ch = channel_for(env, gateway.port, "planner")
    try:
        stub = v_grpc.VerificationServiceStub(ch)
        claims = [v_pb.Claim(subject=unknown_id(5), parameters={"months": pv(3)})]
        d = refused(lambda: list(stub.VerifyBatch(_batch_requests("insured_months_at_least", claims))))
        assert d.code == grpc.StatusCode.PERMISSION_DENIED and d.reason == "VERIFICATION_ACCESS_DENIED"
    finally:
        ch.close()


@pytest.fixture
def small_chunks(gateway: Gateway) -> Iterator[None]:
    """Run batches as a pipeline of 4-claim chunks (the default is 25,000)."""
    assert gateway.verification is not None
    gateway.verification.PIPELINE_CHUNK = 4
    yield
    del gateway.verification.PIPELINE_CHUNK


def test_pipelined_batch_equals_one_by_one_and_meets_caps(verifier: v_grpc.VerificationServiceStub, env: Env,
                                                          small_chunks: None) -> None:
    """Across pipeline chunks: one subject 5 times under a cap of 3 gets 3 answers then 2 refusals in
    claim order, every other claim gets the answer it gets alone, and all receipts share one tree."""
    public = load_public_key(verifier.ListTemplates(v_pb.ListTemplatesRequest()).receipt_public_key_pem.encode())
    capped = residents(env, 1, 108)[0][0]
    others = [r[0] for r in residents(env, 9, 400)]
    subjects = [others[0], capped, others[1], capped, unknown_id(77), capped, others[2], others[3], capped,
                *others[4:], capped]
    claims = [v_pb.Claim(subject=s, parameters={"threshold": pv(100000)}, case_reference="c") for s in subjects]
    results = [r for resp in verifier.VerifyBatch(_batch_requests("income_at_least", claims, chunk=5))
               for r in resp.results]
    assert [r.index for r in results] == list(range(len(claims)))
    on_capped = [r.status for s, r in zip(subjects, results, strict=True) if s == capped]
    assert on_capped == [v_pb.CLAIM_STATUS_OK] * 3 + [v_pb.CLAIM_STATUS_CAP_EXHAUSTED] * 2
    answered = [r for r in results if r.status == v_pb.CLAIM_STATUS_OK]
    assert len(answered) == len(claims) - 2
    assert [r.receipt.leaf_index for r in answered] == list(range(len(answered)))
    for s, r in zip(subjects, results, strict=True):
        if s == capped:
            continue
        alone = verify(verifier, "income_at_least", s, case="c", threshold=100000)
        assert r.result == alone.result
        assert verify_receipt(ReceiptData.from_pb(r.receipt), public)
        assert r.receipt.tree_size == len(answered)


def test_every_check_is_audited_with_its_receipt_root(verifier: v_grpc.VerificationServiceStub, env: Env,
                                                      gateway: Gateway) -> None:
    """Each Verify and VerifyBatch appends one audit entry whose released digest is the SHA-256 of the
    signed root its receipts lead to (so the log commits to every answered claim); refusals are audited
    too; no subject is in the log."""
    assert gateway.oversight is not None
    audit = gateway.oversight.audit
    subject, name, _, _ = residents(env, 1, 109)[0]
    before = len(audit.entries())
    single = verify(verifier, "identity_match", subject, name=name)
    claims = [v_pb.Claim(subject=s, parameters={"months": pv(6)}) for s, *_ in residents(env, 6, 500)]
    batch = [r for resp in verifier.VerifyBatch(_batch_requests("insured_months_at_least", claims))
             for r in resp.results]
    refused(verify, verifier, "identity_match", "110105194912310021", name=name)
    entries = audit.entries()[before:]
    assert [(e.rpc.rsplit("/", 1)[1], e.outcome) for e in entries] == [
        ("Verify", "answered"), ("VerifyBatch", "answered"), ("Verify", "refused")]
    for entry, receipt in ((entries[0], single.receipt), (entries[1], batch[3].receipt)):
        root = root_message_of(ReceiptData.from_pb(receipt))
        assert root is not None and entry.released_digest == hashlib.sha256(root).hexdigest()
    assert "claims=6" in entries[1].query and entries[2].reason == "INVALID_SUBJECT"
    assert subject not in audit.path.read_bytes().decode("latin-1")
