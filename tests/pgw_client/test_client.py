"""The client library through a real gateway (its own, with a fresh ledger and small admission limits): typed
results, DataFrames, replays that charge once, receipts of both kinds verified with the published key, every
exception type, retries with RetryInfo, and certificate problems reported before any connection."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import grpc
import pytest
from privacy_gateway.v1 import verification_service_pb2 as v_pb

from gateway.rpc.server import Gateway, start_gateway
from pgw_client import (
    BudgetExhausted,
    Busy,
    Client,
    ClientSetupError,
    Credentials,
    InvalidQuery,
    InvalidRequest,
    PermissionDenied,
    Receipt,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    load_receipts,
)
from tests.helpers import TEST_POLICY, Env, channel_for, fresh, isolated_settings

pytestmark = [pytest.mark.integration]

COUNT = "SELECT COUNT(*) AS n FROM residents"
MODEL_GRANT = """
[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "testing"
table = "residents"
features = ["birth_year", "employed"]
labels = ["income"]
max_epsilon_per_request = 10.0
"""


@pytest.fixture(scope="module")
def gw(env: Env) -> Iterator[Gateway]:
    """A gateway of its own: fresh budgets, a model grant, and one call at a time per identity (so a held call makes
    the next one RESOURCE_EXHAUSTED with RetryInfo)."""
    policy = env.root / "client-policy.toml"
    policy.write_text(TEST_POLICY + MODEL_GRANT)
    settings = dataclasses.replace(isolated_settings(env, "client"), max_calls_per_identity=1, queue_wait_ms=300,
                                   stream_message_timeout_ms=1500, policy=policy)
    g = start_gateway(settings)
    yield g
    g.stop()


@pytest.fixture
def client(env: Env, gw: Gateway) -> Iterator[Client]:
    with Client(f"127.0.0.1:{gw.port}", tls_dir=env.tls_dir, identity="analyst") as c:
        yield c


def test_query_gives_native_rows_noise_and_a_dataframe(client: Client, env: Env) -> None:
    """Group keys and counts come back as Python str/int (not strings of int64); each noisy cell has its sd and
    a 95% interval around the value; to_arrow keeps int64 and adds _lower/_upper/_std columns."""
    result = client.query(fresh("SELECT sex, COUNT(*) AS n, SUM(income) AS total FROM residents GROUP BY sex"),
                          dataset="registry", purpose="testing", epsilon=1.0)
    assert result.column_names == ["sex", "n", "total"]
    assert [c.noisy for c in result.columns] == [False, True, True]
    truth = dict(env.exact("SELECT sex, COUNT(*) FROM residents GROUP BY sex"))  # type: ignore[arg-type]
    assert {row[0] for row in result.rows} == set(truth)
    for row, noise in zip(result.rows, result.noise, strict=True):
        assert isinstance(row[0], str) and isinstance(row[1], int) and not isinstance(row[1], bool)
        assert noise[0] is None and noise[1] is not None
        assert noise[1].lower <= row[1] <= noise[1].upper and noise[1].std > 0
        assert abs(row[1] - truth[row[0]]) < 200  # Laplace sd of a count at epsilon 0.5 is ~3
    assert result.charged.epsilon == pytest.approx(1.0) and not result.replayed and not result.cached
    table = result.to_arrow()
    assert table.column_names == ["sex", "n", "n_lower", "n_upper", "n_std", "total", "total_lower",
                                  "total_upper", "total_std"]
    assert str(table.schema.field("n").type) == "int64" and table.num_rows == len(result.rows)
    assert result.records()[0]["n_std"] == result.noise[0][1].std  # type: ignore[union-attr]


def test_to_pandas_names_the_missing_dependency_or_gives_a_frame(client: Client) -> None:
    result = client.query(fresh(COUNT), dataset="registry", purpose="testing", epsilon=0.5)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            result.to_pandas()
    else:
        frame = result.to_pandas()
        assert list(frame.columns) == ["n", "n_lower", "n_upper", "n_std"] and len(frame) == 1


def test_same_request_id_replays_and_charges_once(client: Client) -> None:
    """A retry with the request id of an answered request gets the stored answer: replayed, charged 0, the
    original cost reported separately, the budget spent once, the same receipt."""
    rid = str(uuid.uuid4())
    sql = fresh(COUNT)
    spent = client.budget("registry")
    before = next(b for b in spent if b.purpose == "testing").spent.epsilon
    first = client.query(sql, dataset="registry", purpose="testing", epsilon=0.5, request_id=rid)
    again = client.query(sql, dataset="registry", purpose="testing", epsilon=0.5, request_id=rid)
    after = next(b for b in client.budget("registry") if b.purpose == "testing").spent.epsilon
    assert first.request_id == again.request_id == rid
    assert again.replayed and again.charged.epsilon == 0 and again.original_cost.epsilon == pytest.approx(0.5)
    assert again.rows == first.rows
    assert after - before == pytest.approx(0.5)
    assert again.receipt is not None and first.receipt is not None
    assert again.receipt.payload_bytes == first.receipt.payload_bytes


def test_query_receipt_round_trips_through_a_file(client: Client, tmp_path: Path) -> None:
    """result.receipt.save(path) writes a file that load_receipts reads back and the published key verifies;
    a changed payload does not verify."""
    result = client.query(fresh(COUNT), dataset="registry", purpose="testing", epsilon=0.3)
    assert result.receipt is not None
    path = result.receipt.save(tmp_path / "receipt.json")
    (loaded,) = load_receipts(path)
    key_id, pem = client.public_key()
    assert loaded.key_id == key_id and loaded.request_id == result.request_id
    assert loaded.verify(pem) and client.verify_receipt(path)
    forged = dataclasses.replace(loaded, payload_bytes=loaded.payload_bytes.replace(b'"consumer":"analyst"',
                                                                                   b'"consumer":"planner"'))
    assert forged.payload_bytes != loaded.payload_bytes and not forged.verify(pem)


def test_verification_receipts_of_one_check_and_a_batch_verify(client: Client, env: Env, tmp_path: Path) -> None:
    """A Verify receipt and every receipt of a VerifyBatch (Merkle proofs, one signature) verify with the same
    key; the batch's receipts saved as JSON lines load back."""
    rows = duckdb.connect().execute(
        f"SELECT id_number, name FROM read_parquet('{env.data_dir}/residents.parquet') LIMIT 3").fetchall()
    one = client.verify(dataset="registry", template="identity_match", purpose="kyc", subject=rows[0][0],
                        parameters={"name": rows[0][1]})
    assert one.result == "MATCH" and one.receipt is not None and one.receipt.kind == "verification"
    _, pem = client.public_key()
    assert one.receipt.verify(pem)
    checks = client.verify_batch([{"subject": s, "name": n} for s, n in rows] + [{"subject": rows[0][0],
                                 "name": "nobody"}], dataset="registry", template="identity_match", purpose="kyc")
    assert [c.result for c in checks] == ["MATCH", "MATCH", "MATCH", "NO_MATCH"]
    lines = tmp_path / "receipts.jsonl"
    import json

    lines.write_text("".join(json.dumps({"index": k, **c.receipt.to_json()}) + "\n"  # type: ignore[union-attr]
                             for k, c in enumerate(checks)))
    loaded = load_receipts(lines)
    assert len(loaded) == 4 and all(r.verify(pem) for r in loaded)
    bad = dataclasses.replace(loaded[1], leaf_index=2)
    assert not bad.verify(pem)


def test_train_then_evaluate_through_the_model_grant(client: Client) -> None:
    """evaluate() takes the Model train() returned (or coefficients by term): DP metrics from the sandbox, charged
    exactly its epsilon to the model grant with a receipt that verifies; the same request id replays it without
    a second charge; a term the grant does not allow is refused before any charge."""
    model = client.train(table="residents", features=["birth_year", "employed"], label="income",
                         dataset="registry", purpose="testing", epsilon=2.0)
    assert set(model.coefficients) == {"birth_year", "employed"} and model.charged.epsilon == pytest.approx(2.0)
    rid = str(uuid.uuid4())
    first = client.evaluate(model, table="residents", label="income", dataset="registry", purpose="testing",
                            epsilon=1.0, request_id=rid)
    assert first.kind == "linear" and {"n", "rmse", "r2"} <= set(first.metrics)
    assert first.metrics["n"].value > 0 and not first.replayed
    assert first.charged.epsilon == pytest.approx(1.0)
    assert first.budget.spent.epsilon - model.budget.spent.epsilon == pytest.approx(1.0)
    assert first.receipt is not None and first.receipt.request_id == rid
    assert first.receipt.verify(client.public_key()[1])
    again = client.evaluate({t: e.value for t, e in model.coefficients.items()}, kind="linear",
                            intercept=model.intercept.value, table="residents", label="income", dataset="registry",
                            purpose="testing", epsilon=1.0, request_id=rid)
    assert again.replayed and again.charged.epsilon == 0 and again.original_cost.epsilon == pytest.approx(1.0)
    assert again.budget.spent.epsilon == pytest.approx(first.budget.spent.epsilon)
    assert again.metrics == first.metrics
    with pytest.raises(InvalidRequest) as info:
        client.evaluate({"income": 1.0}, kind="linear", table="residents", label="income", dataset="registry",
                        purpose="testing", epsilon=1.0)
    assert info.value.reason == "FEATURE_NOT_ALLOWED", info.value
    with pytest.raises(ValueError, match="kind must be one of"):
        client.evaluate({"birth_year": 1.0}, kind="tree", table="residents", label="income", dataset="registry",
                        purpose="testing", epsilon=1.0)


def test_datasets_and_budget_are_plain_records(client: Client) -> None:
    datasets = {d.name: d for d in client.datasets()}
    registry = datasets["registry"]
    residents = next(t for t in registry.tables if t.name == "residents")
    income = next(c for c in residents.columns if c.name == "income")
    assert income.type in ("int64", "double") and income.lower is not None and income.upper is not None
    grants = client.budget()
    testing = next(b for b in grants if b.purpose == "testing")
    assert testing.budget.epsilon == 1000.0 and testing.remaining.epsilon <= 1000.0


def test_explain_is_free_and_names_each_release(client: Client) -> None:
    before = next(b for b in client.budget("registry") if b.purpose == "testing").spent.epsilon
    ex = client.explain("SELECT AVG(income) AS a FROM residents", dataset="registry", purpose="testing",
                        epsilon=0.4)
    assert ex.affordable and ex.cost.epsilon == pytest.approx(0.4)
    assert {r["output"] for r in ex.releases} == {"a"} and all(r["half_width_95"] > 0 for r in ex.releases)
    assert next(b for b in client.budget("registry") if b.purpose == "testing").spent.epsilon == before


def test_refused_sql_is_invalid_query_with_reason_and_metadata(client: Client) -> None:
    with pytest.raises(InvalidQuery) as info:
        client.query("SELECT * FROM residents", dataset="registry", purpose="testing", epsilon=0.1)
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason and str(err).startswith("INVALID_ARGUMENT (")
    with pytest.raises(InvalidQuery) as info:
        client.query("SELECT SUM(LENGTH(sex)) AS s FROM residents", dataset="registry", purpose="testing",
                     epsilon=0.1)
    assert info.value.suggestion is not None and "CLAMP" in info.value.suggestion


def test_bad_privacy_loss_is_invalid_request_not_invalid_query(client: Client) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.query(COUNT, dataset="registry", purpose="testing", epsilon=-1.0)
    assert not isinstance(info.value, InvalidQuery) and info.value.reason == "INVALID_PRIVACY_LOSS"


def test_a_purpose_without_grant_is_permission_denied(client: Client) -> None:
    with pytest.raises(PermissionDenied) as info:
        client.query(COUNT, dataset="registry", purpose="planning", epsilon=0.1)
    assert info.value.reason


def test_budget_exhausted_is_not_retried_and_says_which_level(env: Env, gw: Gateway) -> None:
    """planner's grant is epsilon 1 with at most 0.5 per query: the third query is refused, not charged."""
    with Client(f"127.0.0.1:{gw.port}", tls_dir=env.tls_dir, identity="planner") as planner:
        for _ in range(2):
            planner.query(fresh(COUNT), dataset="registry", purpose="planning", epsilon=0.5)
        t = time.monotonic()
        with pytest.raises(BudgetExhausted) as info:
            planner.query(fresh(COUNT), dataset="registry", purpose="planning", epsilon=0.5)
        assert time.monotonic() - t < 1.0  # refused at once, no retry
        assert info.value.reason == "PRIVACY_BUDGET_EXHAUSTED" and info.value.metadata
        assert planner.budget("registry")[0].spent.epsilon == pytest.approx(1.0)


def test_an_unknown_identity_is_unauthenticated(env: Env, gw: Gateway) -> None:
    with Client(f"127.0.0.1:{gw.port}", tls_dir=env.tls_dir, identity="stranger") as stranger, \
            pytest.raises(Unauthenticated):
        stranger.budget()


def test_busy_gateway_is_retried_with_retry_info(env: Env, gw: Gateway, client: Client) -> None:
    """analyst's one call slot is held by a VerifyBatch stream that goes silent (freed after 1.5 s); the client's
    next call is refused RESOURCE_EXHAUSTED with RetryInfo, retried, and answered once the slot is free. With
    retries off the same situation raises Busy carrying the delay."""
    gate = threading.Event()

    def silent() -> Iterator[v_pb.VerifyBatchRequest]:
        yield v_pb.VerifyBatchRequest(dataset="registry", template="identity_match", purpose="kyc", claims=[
            v_pb.Claim(subject="110101199001011234", parameters={"name": v_pb.ParamValue(string_value="x")})])
        gate.wait(10)

    def hold() -> None:
        with channel_for(env, gw.port, "analyst") as ch:
            stream = ch.stream_stream("/privacy_gateway.v1.VerificationService/VerifyBatch",
                                      request_serializer=v_pb.VerifyBatchRequest.SerializeToString,
                                      response_deserializer=v_pb.VerifyBatchResponse.FromString)
            with contextlib.suppress(grpc.RpcError):
                list(stream(silent(), timeout=10))

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        time.sleep(0.4)
        with Client(f"127.0.0.1:{gw.port}", tls_dir=env.tls_dir, identity="analyst",
                    retry=RetryPolicy(attempts=1)) as once, pytest.raises(Busy) as info:
            once.budget()
        assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
        t = time.monotonic()
        assert client.budget()  # retried until the slot is free
        assert time.monotonic() - t > 0.2
    finally:
        gate.set()
        holder.join(15)


def test_no_gateway_is_unavailable_with_what_to_check(env: Env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", tls_dir=env.tls_dir, identity="analyst",
                retry=RetryPolicy(attempts=2, backoff_s=0.05)) as c, pytest.raises(Unavailable) as info:
        c.budget()
    assert f"cannot reach the gateway at 127.0.0.1:{port}" in str(info.value)


def test_certificate_problems_are_reported_before_connecting(env: Env, tmp_path: Path) -> None:
    with pytest.raises(ClientSetupError, match="no such TLS directory"):
        Client("127.0.0.1:1", tls_dir=tmp_path / "nowhere", identity="analyst")
    with pytest.raises(ClientSetupError, match=r"nobody\.crt: client certificate not found"):
        Client("127.0.0.1:1", tls_dir=env.tls_dir, identity="nobody")
    with pytest.raises(ClientSetupError, match="expired on"):
        Credentials.in_dir(env.tls_dir, "analyst", now=datetime.now(UTC) + timedelta(days=3650))
    with pytest.raises(ClientSetupError, match="not issued by the CA"):
        Client.from_files("127.0.0.1:1", ca=env.tls_dir / "ca.crt", cert=env.foreign_tls_dir / "analyst.crt",
                          key=env.foreign_tls_dir / "analyst.key")
    with pytest.raises(ClientSetupError, match="does not belong to the certificate"):
        Client.from_files("127.0.0.1:1", ca=env.tls_dir / "ca.crt", cert=env.tls_dir / "analyst.crt",
                          key=env.tls_dir / "planner.key")


def test_environment_defaults(env: Env, gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGW_TARGET", f"127.0.0.1:{gw.port}")
    monkeypatch.setenv("PGW_TLS_DIR", str(env.tls_dir))
    monkeypatch.setenv("PGW_IDENTITY", "analyst")
    with Client() as c:
        assert c.identity == "analyst" and c.budget()


def test_receipt_files_that_are_not_receipts_say_so(tmp_path: Path) -> None:
    from pgw_client import ReceiptError

    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ReceiptError, match=r"bad\.json: not a receipt"):
        load_receipts(bad)
    with pytest.raises(ReceiptError, match="no such file"):
        load_receipts(tmp_path / "missing.json")
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"payload_json": "{}", "signature_b64": "", "key_id": "k"}\nnot json\n')
    with pytest.raises(ReceiptError, match="line 2 is not JSON"):
        load_receipts(lines)
    assert Receipt.from_json({"payloadJson": "{}", "signature": "", "keyId": "k"}).kind == "release"
