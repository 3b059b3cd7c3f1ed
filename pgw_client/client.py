"""`Client`: one mTLS connection to the gateway, with a method per product and typed answers.

    from pgw_client import Client
    with Client("127.0.0.1:50051", tls_dir=".state/certs", identity="acme-bank-analyst") as client:
        result = client.query("SELECT sex, COUNT(*) AS n FROM residents GROUP BY sex",
                              dataset="registry", purpose="credit-risk", epsilon=0.5)
        df = result.to_pandas()

Transient failures are retried: UNAVAILABLE (the gateway, its sandbox or its storage), RESOURCE_EXHAUSTED for
load and ABORTED for a request still running, each only while the gateway's RetryInfo (or a short backoff for
a connection that failed) and the call's deadline allow. Every attempt of a query, training or evaluation
carries the same request id, so an attempt after one whose answer was lost replays the stored answer and is
never charged twice. A refused request (an invalid query, an exhausted budget) is not retried.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import receipt_pb2
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from pgw_client.errors import GatewayError, Status, Unavailable, from_rpc_error
from pgw_client.models import Evaluation, Model, evaluation_from_proto, model_from_proto
from pgw_client.receipts import Receipt, key_id_of_pem
from pgw_client.results import Budget, Dataset, PrivacyLoss, Result, result_from_proto
from pgw_client.tls import ENV_TARGET, Credentials

__all__ = ["DEFAULT_TARGET", "Check", "Client", "Explanation", "RetryPolicy"]

DEFAULT_TARGET = "127.0.0.1:50051"
T = TypeVar("T")
_RESULTS = {v_pb.VERIFICATION_RESULT_MATCH: "MATCH", v_pb.VERIFICATION_RESULT_NO_MATCH: "NO_MATCH",
            v_pb.VERIFICATION_RESULT_NOT_FOUND: "NOT_FOUND", v_pb.VERIFICATION_RESULT_UNSPECIFIED: ""}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried: at most ``attempts`` calls, waiting RetryInfo's delay (or
    ``backoff_s`` doubling up to ``max_delay_s`` when the gateway sent none), within ``deadline_s`` overall."""

    attempts: int = 5
    backoff_s: float = 0.2
    max_delay_s: float = 5.0
    deadline_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a query would cost and how accurate it would be, without running it (free)."""

    releases: tuple[dict[str, Any], ...]
    cost: PrivacyLoss
    budget: Budget
    affordable: bool
    table: str
    group_by: tuple[str, ...]
    privacy_unit: str


@dataclass(frozen=True, slots=True)
class Check:
    """A yes/no verification answer: MATCH, NO_MATCH or NOT_FOUND, a band for banded templates, the receipt."""

    result: str
    band: str
    receipt: Receipt | None
    status: str = "OK"
    message: str = ""


def _loss(epsilon: float | None, delta: float, rho: float | None) -> common_pb.PrivacyLoss:
    return common_pb.PrivacyLoss(epsilon=epsilon or 0.0, delta=delta, rho=rho or 0.0)


def _model_kind(kind: str) -> m_pb.ModelKind:
    kinds = {"linear": m_pb.MODEL_KIND_LINEAR, "logistic": m_pb.MODEL_KIND_LOGISTIC}
    if kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind]


def _param(v: Any) -> v_pb.ParamValue:
    if isinstance(v, bool):
        return v_pb.ParamValue(bool_value=v)
    if isinstance(v, int):
        return v_pb.ParamValue(int64_value=v)
    if isinstance(v, float):
        return v_pb.ParamValue(double_value=v)
    return v_pb.ParamValue(string_value=str(v))


class Client:
    """A connection to the gateway as one identity (the common name of its client certificate)."""

    def __init__(self, target: str | None = None, *, tls_dir: str | Path | None = None,
                 identity: str | None = None, credentials: Credentials | None = None,
                 timeout_s: float = 60.0, retry: RetryPolicy | None = None) -> None:
        """Connect to ``target`` (default ``$PGW_TARGET`` or 127.0.0.1:50051) with the certificate of
        ``identity`` in ``tls_dir`` (defaults ``$PGW_IDENTITY``, ``$PGW_TLS_DIR``), or with ``credentials``
        (`Credentials.from_files(ca, cert, key)`).

        Raises:
            ClientSetupError: a certificate file is missing, expired, not from the CA, or not matching its key.
        """
        self.target = target or os.environ.get(ENV_TARGET) or DEFAULT_TARGET
        self.credentials = credentials or Credentials.in_dir(tls_dir, identity)
        self.identity = self.credentials.common_name
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        creds = grpc.ssl_channel_credentials(root_certificates=self.credentials.ca,
                                             private_key=self.credentials.key,
                                             certificate_chain=self.credentials.cert)
        self._channel = grpc.secure_channel(self.target, creds)
        self._query = q_grpc.QueryServiceStub(self._channel)
        self._budget = b_grpc.BudgetServiceStub(self._channel)
        self._catalog = cat_grpc.CatalogServiceStub(self._channel)
        self._keys = key_grpc.KeyServiceStub(self._channel)
        self._verification = v_grpc.VerificationServiceStub(self._channel)
        self._models = m_grpc.ModelServiceStub(self._channel)
        self._public_key: tuple[str, str] | None = None

    @classmethod
    def from_files(cls, target: str | None, *, ca: str | Path, cert: str | Path, key: str | Path,
                   **options: Any) -> Client:
        """Connect with explicit certificate paths (the CA that signed the gateway, your certificate, your key)."""
        return cls(target, credentials=Credentials.from_files(ca, cert, key), **options)

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any, *, sql: bool = False) -> T:
        """One unary call with the retry policy; failures as this package's exceptions."""
        policy = self.retry
        start = time.monotonic()
        delay = policy.backoff_s
        for attempt in range(1, policy.attempts + 1):
            remaining = policy.deadline_s - (time.monotonic() - start)
            try:
                return method(request, timeout=min(self.timeout_s, max(remaining, 0.1)))
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, sql=sql)
            wait = self._retry_delay(error, delay)
            if wait is None or attempt == policy.attempts or time.monotonic() - start + wait > policy.deadline_s:
                raise self._final(error)
            time.sleep(wait)
            delay = min(delay * 2, policy.max_delay_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_delay(self, error: GatewayError, backoff: float) -> float | None:
        """How long to wait before the next attempt, None when the error is final."""
        code = error.code
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "PRIVACY_BUDGET_EXHAUSTED":
            return None
        if error.retry_after_s is not None and code in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED):
            return min(max(error.retry_after_s, 0.05), self.retry.max_delay_s)
        if code == grpc.StatusCode.UNAVAILABLE:
            return backoff  # no connection, or a gateway restarting
        return None

    def _final(self, error: GatewayError) -> GatewayError:
        if error.code == grpc.StatusCode.UNAVAILABLE and not error.reason:
            s = error.status
            return Unavailable(Status(s.code, f"cannot reach the gateway at {self.target} ({s.message}); check "
                                      "that it runs and that --target is right; if it runs, it may have refused "
                                      "this certificate (ask its operator)", s.reason, s.metadata, s.retry_after_s))
        return error

    # -- query ----------------------------------------------------------------------------------------------

    def query(self, sql: str, *, dataset: str, purpose: str, epsilon: float | None = None, delta: float = 0.0,
              rho: float | None = None, request_id: str | None = None, accuracy: float | None = None,
              weights: Mapping[str, float] | None = None,
              interval_shares: Mapping[str, float] | None = None) -> Result:
        """Run a DP SQL query and return its `Result`.

        Give the privacy loss (``epsilon``, or ``rho`` for a zCDP grant) or an ``accuracy`` target (the 95%
        half-width every output should have; the gateway prices it). ``request_id`` makes the call idempotent:
        the same id with the same request returns the stored answer without a new charge; one is generated
        when omitted and kept across retries.

        Raises:
            InvalidQuery, InvalidRequest, BudgetExhausted, PermissionDenied, ...: see `pgw_client.errors`.
        """
        rid = request_id or str(uuid.uuid4())
        resp = self._call(self._query.RunQuery, q_pb.RunQueryRequest(
            dataset=dataset, sql=sql, purpose=purpose, request_id=rid, privacy_loss=_loss(epsilon, delta, rho),
            accuracy=q_pb.AccuracyTarget(half_width_95=accuracy) if accuracy else None,
            weights=dict(weights or {}), interval_shares=dict(interval_shares or {})), sql=True)
        return result_from_proto(resp)

    def explain(self, sql: str, *, dataset: str, purpose: str, epsilon: float | None = None, delta: float = 0.0,
                rho: float | None = None, accuracy: float | None = None,
                weights: Mapping[str, float] | None = None,
                interval_shares: Mapping[str, float] | None = None) -> Explanation:
        """What ``query`` with these arguments would cost and how wide its 95% intervals would be (free)."""
        ex = self._call(self._query.ExplainQuery, q_pb.ExplainQueryRequest(
            dataset=dataset, sql=sql, purpose=purpose, privacy_loss=_loss(epsilon, delta, rho),
            accuracy=q_pb.AccuracyTarget(half_width_95=accuracy) if accuracy else None,
            weights=dict(weights or {}), interval_shares=dict(interval_shares or {})), sql=True)
        releases = tuple({"output": r.output, "component": r.component, "mechanism": r.mechanism,
                          "sensitivity": r.sensitivity, "scale": r.scale, "epsilon": r.privacy_loss.epsilon,
                          "rho": r.privacy_loss.rho, "half_width_95": r.half_width_95} for r in ex.plan.releases)
        return Explanation(releases, PrivacyLoss.from_proto(ex.privacy_cost), Budget.from_proto(ex.budget),
                           ex.affordable, ex.plan.table, tuple(ex.plan.group_by), ex.plan.privacy_unit)

    def train(self, *, table: str, features: Iterable[str], label: str, dataset: str, purpose: str,
              epsilon: float, delta: float = 0.0, kind: str = "linear", request_id: str | None = None,
              iterations: int = 0, learning_rate: float = 0.0, clip: float = 0.0, l2: float = 0.0) -> Model:
        """Train a DP ``linear`` or ``logistic`` regression of ``label`` on ``features`` (under the caller's model
        grant); retried like a query, with one request id.

        Raises:
            InvalidRequest, PermissionDenied, BudgetExhausted, ...: see `pgw_client.errors`.
        """
        resp = self._call(self._models.TrainModel, m_pb.TrainModelRequest(
            dataset=dataset, purpose=purpose, request_id=request_id or str(uuid.uuid4()), table=table,
            privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon, delta=delta), features=list(features),
            label=label, kind=_model_kind(kind), iterations=iterations, learning_rate=learning_rate, clip=clip,
            l2=l2))
        return model_from_proto(resp)

    def evaluate(self, model: Model | Mapping[str, float], *, table: str, label: str, dataset: str, purpose: str,
                 epsilon: float, kind: str | None = None, intercept: float | None = None,
                 thresholds: Iterable[float] = (), residual_bound: float = 0.0,
                 request_id: str | None = None) -> Evaluation:
        """DP metrics of a model on ``table`` inside the sandbox (EvaluateModel, under the caller's model grant,
        charged ``epsilon`` and receipted like a query; retried with one request id).

        ``model`` is a `Model` from ``train`` (its coefficients, intercept and kind are used) or the caller's own
        coefficients by term (``"col"`` or ``"col=value"`` for a one-hot indicator) with ``kind`` and
        ``intercept``. Linear: n, rmse, r2 (residuals clamped to ``residual_bound``, default the label's
        range). Logistic: auc, n, positives and one confusion matrix per threshold.

        Raises:
            InvalidRequest, PermissionDenied, BudgetExhausted, ...: see `pgw_client.errors`.
        """
        if isinstance(model, Model):
            coefficients = {term: e.value for term, e in model.coefficients.items()}
            kind = kind or model.kind
            intercept = model.intercept.value if intercept is None else intercept
        else:
            coefficients = dict(model)
        resp = self._call(self._models.EvaluateModel, m_pb.EvaluateModelRequest(
            dataset=dataset, purpose=purpose, request_id=request_id or str(uuid.uuid4()), table=table,
            privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon), kind=_model_kind(kind or "linear"),
            coefficients=[m_pb.Coefficient(term=t, value=float(v)) for t, v in coefficients.items()],
            intercept=intercept or 0.0, label=label, thresholds=list(thresholds), residual_bound=residual_bound))
        return evaluation_from_proto(resp)

    # -- budgets, catalog, keys -----------------------------------------------------------------------------

    def budget(self, dataset: str | None = None) -> list[Budget]:
        """Every grant of this identity (on ``dataset`` only, if given): budget, spent, remaining this period."""
        resp = self._call(self._budget.GetPrivacyBudget, b_pb.GetPrivacyBudgetRequest(dataset=dataset or ""))
        return [Budget.from_proto(g) for g in resp.grants]

    def datasets(self) -> list[Dataset]:
        """The datasets this identity may query, with tables, columns, bounds, domains and descriptions."""
        resp = self._call(self._catalog.ListDatasets, cat_pb.ListDatasetsRequest())
        return [Dataset.from_proto(d) for d in resp.datasets]

    def public_key(self) -> tuple[str, str]:
        """(key id, PEM) of the key that signs every receipt, fetched once through ``KeyService``."""
        if self._public_key is None:
            resp = self._call(self._keys.GetPublicKey, receipt_pb2.GetPublicKeyRequest())
            if key_id_of_pem(resp.public_key_pem) != resp.key_id:
                raise Unavailable(Status(grpc.StatusCode.DATA_LOSS,
                                         "the gateway's public key does not match its key id"))
            self._public_key = (resp.key_id, resp.public_key_pem)
        return self._public_key

    def verify_receipt(self, receipt: Receipt | str | Path) -> bool:
        """True if the gateway's current key signed ``receipt`` (a `Receipt` or a file of one)."""
        if not isinstance(receipt, Receipt):
            from pgw_client.receipts import load_receipts

            return all(r.verify(self.public_key()[1]) for r in load_receipts(receipt))
        return receipt.verify(self.public_key()[1])

    # -- verification ---------------------------------------------------------------------------------------

    def verify(self, *, dataset: str, template: str, purpose: str, subject: str,
               parameters: Mapping[str, Any] | None = None, case_reference: str = "") -> Check:
        """One yes/no check of ``subject`` against a template (e.g. ``income_at_least``)."""
        resp = self._call(self._verification.Verify, v_pb.VerifyRequest(
            dataset=dataset, template=template, purpose=purpose, subject=subject, case_reference=case_reference,
            parameters={k: _param(v) for k, v in (parameters or {}).items()}))
        return Check(_RESULTS[resp.result], resp.band,
                     Receipt.from_proto(resp.receipt) if resp.HasField("receipt") else None)

    def verify_batch(self, claims: Iterable[Mapping[str, Any]], *, dataset: str, template: str,
                     purpose: str, chunk: int = 5000) -> list[Check]:
        """Many checks in one stream; each claim is ``{"subject": ..., "case_reference": ..., <params>}``.
        One `Check` per claim, in order; a refused claim has ``status`` other than OK and its message."""
        items = [v_pb.Claim(subject=str(c.get("subject", "")), case_reference=str(c.get("case_reference", "")),
                            parameters={k: _param(v) for k, v in c.items() if k not in ("subject", "case_reference")})
                 for c in claims]

        def requests() -> Iterable[v_pb.VerifyBatchRequest]:
            for k in range(0, max(len(items), 1), chunk):
                yield v_pb.VerifyBatchRequest(dataset=dataset, template=template, purpose=purpose,
                                              claims=items[k:k + chunk])

        try:
            results = [r for resp in self._verification.VerifyBatch(requests(), timeout=self.timeout_s)
                       for r in resp.results]
        except grpc.RpcError as exc:
            raise self._final(from_rpc_error(exc)) from None
        out: list[Check] = [Check("", "", None)] * len(items)
        for r in results:
            out[r.index] = Check(_RESULTS[r.result], r.band,
                                 Receipt.from_proto(r.receipt) if r.HasField("receipt") else None,
                                 v_pb.ClaimStatus.Name(r.status)[len("CLAIM_STATUS_"):], r.status_message)
        return out
