"""The model path: authorise against a model grant, price with OpenDP, charge durably, train/evaluate in
the sandbox, release only DP outputs. Mirrors `gateway.queries` step for step.

Model grants (`[[model_grants]]` in the operator policy, parsed here so `gateway.policy` stays untouched
except for accepting the key):

    [[model_grants]]
    consumer = "acme-bank-analyst"
    dataset = "registry"
    purpose = "credit-risk"
    table = "residents"
    features = ["birth_year", "employed", "sex", "region"]
    labels = ["income", "employed"]
    epsilon = 10.0                   # total model budget of this grant
    delta = 1e-5                     # total delta (logistic regression uses Gaussian noise)
    max_epsilon_per_request = 2.0

Budget choice: a model grant has its **own** (epsilon, delta) budget, kept in the same durable ledger
under the key (consumer, dataset, "<purpose>#models") ('#' cannot occur in a purpose name, so it never
collides with a query grant). Query grants are pure epsilon-DP (delta = 0), while logistic regression is
accounted in zCDP and converted to (epsilon, delta), so it cannot be charged to them. The consumer's total
loss on a dataset is the sum (basic composition) of its query and model budgets; the operator sets both.

Order of decisions (request, policy and public catalog only; never data): privacy loss valid; model grant
exists (PERMISSION_DENIED, same for unknown datasets); per-request cap; table/columns exist, no identifier
(IDENTIFIER_COLUMN), every feature and the label granted (FEATURE_NOT_ALLOWED / LABEL_NOT_ALLOWED) and
allowed by the data owner's grade rules (GRADE_NOT_ALLOWED, `sandbox.grades.check_model_grades`); price;
reserve in the ledger (RESOURCE_EXHAUSTED, nothing charged; replay of a request id); sandbox; re-check costs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tomllib
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc

from gateway import convert
from gateway.auth import authenticate
from gateway.errors import (
    ConfigError,
    GatewayInternalError,
    InvalidArgumentError,
    PermissionDeniedError,
    QueryExecutionError,
    SandboxUnavailableError,
)
from gateway.ledger import GrantKey, PriorRelease, PrivacyLoss
from gateway.policy import Grant, Policy
from gateway.queries import MAX_REQUEST_ID_LENGTH, QueryService, validate_privacy_loss
from gateway.service import _rpc
from sandbox import model_pricing as mp
from sandbox.client import SandboxConnectionError
from sandbox.errors import PlanRejectedError
from sandbox.grades import GradeError, check_model_grades
from sandbox.model_protocol import (
    ConfusionMatrix,
    Estimate,
    EvaluateRequest,
    EvaluateResult,
    ModelCost,
    ModelKind,
    TrainRequest,
    TrainResult,
)
from sandbox.protocol import DatasetInfo, ErrorReply

log = logging.getLogger("gateway.models")

MODEL_SERVICE = m_pb.DESCRIPTOR.services_by_name["ModelService"].full_name
_KINDS: dict[int, ModelKind] = {m_pb.MODEL_KIND_LINEAR: "linear", m_pb.MODEL_KIND_LOGISTIC: "logistic"}
_KIND_PB: dict[ModelKind, str] = {"linear": "MODEL_KIND_LINEAR", "logistic": "MODEL_KIND_LOGISTIC"}


@dataclass(frozen=True, slots=True)
class ModelGrant:
    """What one consumer may train and evaluate on one table, and its model budget."""

    consumer: str
    dataset: str
    purpose: str
    table: str
    features: frozenset[str]
    labels: frozenset[str]
    epsilon: float
    delta: float
    max_epsilon_per_request: float

    @property
    def ledger_key(self) -> GrantKey:
        """The ledger key of the model budget (separate from the query grant's)."""
        return GrantKey(self.consumer, self.dataset, f"{self.purpose}#models")

    def as_grant(self) -> Grant:
        """A `Grant` view for rendering the budget status."""
        return Grant(self.consumer, self.dataset, self.purpose, "approx_dp (models)", self.epsilon,
                     self.delta, self.max_epsilon_per_request)


_GRANT_KEYS = {"consumer", "dataset", "purpose", "table", "features", "labels", "epsilon", "delta",
               "max_epsilon_per_request", "description"}


def _num(file: str, key: str, v: Any, *, positive: bool, below_one: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ConfigError(file, key, f"must be a finite non-negative number, got {v!r}")
    if positive and v <= 0:
        raise ConfigError(file, key, f"must be positive, got {v!r}")
    if below_one and v >= 1:
        raise ConfigError(file, key, f"must be below 1, got {v!r}")
    return float(v)


def parse_model_grants(data: dict[str, Any], file: str, policy: Policy) -> tuple[ModelGrant, ...]:
    """Validate the `[[model_grants]]` of a parsed operator policy (absent: none)."""
    raw = data.get("model_grants", [])
    if not isinstance(raw, list):
        raise ConfigError(file, "model_grants", "must be an array of tables ([[model_grants]])")
    out: list[ModelGrant] = []
    seen: set[tuple[str, str, str]] = set()
    for i, g in enumerate(raw):
        prefix = f"model_grants[{i}]."
        if not isinstance(g, dict):
            raise ConfigError(file, f"model_grants[{i}]", "must be a table")
        for k in g:
            if k not in _GRANT_KEYS:
                raise ConfigError(file, prefix + k, f"unknown key (allowed: {', '.join(sorted(_GRANT_KEYS))})")
        for k in _GRANT_KEYS - {"description"}:
            if k not in g:
                raise ConfigError(file, prefix + k, "is required")
        for k in ("consumer", "dataset", "purpose", "table"):
            if not isinstance(g[k], str) or not g[k]:
                raise ConfigError(file, prefix + k, "must be a non-empty string")
        if g["consumer"] not in policy.consumers:
            raise ConfigError(file, prefix + "consumer", f"unknown consumer {g['consumer']!r}")
        for k in ("features", "labels"):
            if not isinstance(g[k], list) or not g[k] or not all(isinstance(x, str) for x in g[k]):
                raise ConfigError(file, prefix + k, "must be a non-empty list of column names")
        grant = ModelGrant(
            g["consumer"], g["dataset"], g["purpose"], g["table"], frozenset(g["features"]),
            frozenset(g["labels"]),
            _num(file, prefix + "epsilon", g["epsilon"], positive=True),
            _num(file, prefix + "delta", g["delta"], positive=False, below_one=True),
            _num(file, prefix + "max_epsilon_per_request", g["max_epsilon_per_request"], positive=True),
        )
        if grant.max_epsilon_per_request > grant.epsilon:
            raise ConfigError(file, prefix + "max_epsilon_per_request", "must not exceed epsilon")
        key = (grant.consumer, grant.dataset, grant.purpose)
        if key in seen:
            raise ConfigError(file, f"model_grants[{i}]", f"duplicate model grant for {key}")
        seen.add(key)
        out.append(grant)
    return tuple(out)


def load_model_grants(path: Path, policy: Policy) -> tuple[ModelGrant, ...]:
    """Read the model grants of the operator policy file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), "-", f"cannot read: {exc}") from exc
    return parse_model_grants(data, str(path), policy)


def check_grants_against_catalog(grants: tuple[ModelGrant, ...], core: QueryService, file: str) -> None:
    """Every granted column exists and is not an identifier (checked at start)."""
    for i, g in enumerate(grants):
        info = core.catalog.dataset(g.dataset)
        table = info.table(g.table) if info else None
        if table is None:
            raise ConfigError(file, f"model_grants[{i}].table", f"unknown table {g.dataset}.{g.table}")
        for name in sorted(g.features | g.labels):
            col = table.column(name)
            if col is None or col.grade == "identifier":
                raise ConfigError(file, f"model_grants[{i}]", f"{name!r} is unknown or an identifier")


# ---------------------------------------------------------------------------------------------------


def _estimate(e: Estimate) -> m_pb.Estimate:
    has = e.ci_lower is not None and e.ci_upper is not None
    return m_pb.Estimate(name=e.name, value=e.value, has_interval=has,
                         ci_lower=e.ci_lower if e.ci_lower is not None else 0.0,
                         ci_upper=e.ci_upper if e.ci_upper is not None else 0.0, note=e.note)


def _cost(c: ModelCost) -> m_pb.ModelReleaseCost:
    return m_pb.ModelReleaseCost(
        component=c.component, mechanism=c.mechanism, sensitivity=c.sensitivity, scale=c.scale,
        privacy_loss=common_pb.PrivacyLoss(epsilon=c.epsilon, delta=c.delta), rho=c.rho, count=c.count)


def _confusion(m: ConfusionMatrix) -> m_pb.ConfusionMatrix:
    return m_pb.ConfusionMatrix(threshold=m.threshold, tp=_estimate(m.tp), fp=_estimate(m.fp),
                                tn=_estimate(m.tn), fn=_estimate(m.fn))


def _fingerprint(kind: str, req: Any) -> str:
    body = json.dumps([kind, req.SerializeToString(deterministic=True).hex()])
    return hashlib.sha256(body.encode()).hexdigest()


class ModelService:
    """Model training and evaluation, independent of gRPC."""

    def __init__(self, core: QueryService, grants: tuple[ModelGrant, ...]) -> None:
        """Share the query service's catalog, ledger and sandbox client."""
        self.core = core
        self.grants = grants

    def grant_for(self, consumer: str, dataset: str, purpose: str) -> tuple[ModelGrant, DatasetInfo]:
        """The model grant, or PERMISSION_DENIED (the same for unknown datasets)."""
        info = self.core.catalog.dataset(dataset)
        for g in self.grants:
            if (g.consumer, g.dataset, g.purpose) == (consumer, dataset, purpose) and info is not None:
                return g, info
        raise PermissionDeniedError(f"no model grant for dataset {dataset!r} and purpose {purpose!r}",
                                    reason="DATASET_ACCESS_DENIED", dataset=dataset, purpose=purpose)

    def _common(self, consumer: str, req: Any, epsilon: float, delta: float
                ) -> tuple[ModelGrant, DatasetInfo, ModelKind]:
        validate_privacy_loss(epsilon, delta)
        for name in ("dataset", "purpose", "table"):
            if not getattr(req, name).strip():
                raise InvalidArgumentError(f"{name} is required", reason="MISSING_FIELD", field=name)
        if req.kind not in _KINDS:
            raise InvalidArgumentError("kind must be LINEAR or LOGISTIC", reason="MISSING_FIELD", field="kind")
        if len(req.request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgumentError(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters",
                                       reason="INVALID_REQUEST_ID", field="request_id")
        grant, info = self.grant_for(consumer, req.dataset, req.purpose)
        if epsilon > grant.max_epsilon_per_request:
            raise InvalidArgumentError(
                f"privacy_loss.epsilon {epsilon!r} exceeds the model grant's per-request maximum "
                f"{grant.max_epsilon_per_request!r}", reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                field="privacy_loss.epsilon", maxEpsilonPerQuery=repr(grant.max_epsilon_per_request))
        if req.table != grant.table:
            raise InvalidArgumentError(f"the model grant does not cover table {req.table!r}",
                                       reason="FEATURE_NOT_ALLOWED", field="table")
        return grant, info, _KINDS[req.kind]

    @staticmethod
    def _allowed(grant: ModelGrant, info: DatasetInfo, table: str, features: list[str], label: str) -> None:
        t = info.table(table)
        for name in [*features, label]:
            col = t.column(name) if t else None
            if col is not None and col.grade == "identifier":
                raise InvalidArgumentError(f"column {name!r} is an identifier", reason="IDENTIFIER_COLUMN",
                                           field="features", column=name)
        for name in features:
            if name not in grant.features:
                raise InvalidArgumentError(f"the model grant does not allow feature {name!r}",
                                           reason="FEATURE_NOT_ALLOWED", field="features", column=name)
        if label not in grant.labels:
            raise InvalidArgumentError(f"the model grant does not allow label {label!r}",
                                       reason="LABEL_NOT_ALLOWED", field="label", column=label)

    def _graded(self, info: DatasetInfo, table: str, features: list[str], label: str) -> None:
        """The data owner's grade rules on the features and label (`sandbox.grades.check_model_grades`,
        which the sandbox applies too): GRADE_NOT_ALLOWED naming the column and the use."""
        t = info.table(table)
        if t is None:
            return  # the design refuses an unknown table with its own reason
        try:
            check_model_grades(t, features, label, self.core.grade_rules)
        except GradeError as exc:
            name = exc.column.partition(".")[2]  # "table.column"; table names hold no dots
            raise InvalidArgumentError(str(exc), reason="GRADE_NOT_ALLOWED",
                                       field="features" if name in features else "label",
                                       column=exc.column, use=exc.use) from exc

    @staticmethod
    def _spec_error(exc: PlanRejectedError) -> InvalidArgumentError:
        if isinstance(exc, mp.ModelSpecError):
            return InvalidArgumentError(str(exc), reason=exc.reason, **exc.metadata)
        return InvalidArgumentError(str(exc), reason="INVALID_MODEL_PARAMETER")

    def train(self, consumer: str, req: m_pb.TrainModelRequest) -> m_pb.TrainModelResponse:
        """TrainModel: authorise, price, charge, train in the sandbox, release."""
        loss = req.privacy_loss
        grant, info, kind = self._common(consumer, req, loss.epsilon, loss.delta)
        features = list(req.features)
        self._allowed(grant, info, req.table, features, req.label)
        self._graded(info, req.table, features, req.label)
        if req.iterations < 0 or req.learning_rate < 0 or req.clip < 0 or req.l2 < 0 or not all(
                math.isfinite(x) for x in (req.learning_rate, req.clip, req.l2)):
            raise InvalidArgumentError("iterations, learning_rate, clip and l2 must be non-negative",
                                       reason="INVALID_MODEL_PARAMETER", field="iterations")
        iterations = req.iterations or mp.DEFAULT_LOGISTIC_ITERATIONS
        delta = loss.delta if kind == "logistic" else 0.0
        try:
            d = mp.design(info, req.table, features, req.label, kind)
            costs = mp.price_train(d, kind, loss.epsilon, delta, iterations, req.clip)
        except PlanRejectedError as exc:
            raise self._spec_error(exc) from exc
        request = TrainRequest("", req.dataset, req.table, kind, tuple(features), req.label, loss.epsilon,
                               delta, iterations, req.learning_rate, req.clip, req.l2)

        def respond(result: Any, request_id: str, spent: PrivacyLoss, cost: PrivacyLoss) -> bytes:
            assert isinstance(result, TrainResult)
            return m_pb.TrainModelResponse(
                kind=_KIND_PB[result.kind], coefficients=[_estimate(e) for e in result.coefficients],
                intercept=_estimate(result.intercept), metrics=[_estimate(e) for e in result.metrics],
                releases=[_cost(c) for c in result.costs], privacy_cost=convert.privacy_loss(cost),
                budget=convert.budget_status(grant.as_grant(), spent), request_id=request_id,
                dataset_version=result.dataset_version,
            ).SerializeToString(deterministic=True)

        body, replayed = self._run(grant, req, "train", request, costs, respond)
        resp = m_pb.TrainModelResponse.FromString(body)
        resp.replayed = replayed
        return resp

    def evaluate(self, consumer: str, req: m_pb.EvaluateModelRequest) -> m_pb.EvaluateModelResponse:
        """EvaluateModel: DP metrics of the caller's model."""
        grant, info, kind = self._common(consumer, req, req.privacy_loss.epsilon, req.privacy_loss.delta)
        coefs = [(c.term, c.value) for c in req.coefficients]
        columns = list(dict.fromkeys(t.split("=", 1)[0] for t, _ in coefs))
        self._allowed(grant, info, req.table, columns, req.label)
        self._graded(info, req.table, columns, req.label)
        values = [*(v for _, v in coefs), req.intercept, req.residual_bound, *req.thresholds]
        if not all(math.isfinite(v) for v in values) or req.residual_bound < 0 or not all(
                0 <= t <= 1 for t in req.thresholds) or len(req.thresholds) > mp.MAX_THRESHOLDS:
            raise InvalidArgumentError("coefficients must be finite, thresholds in [0, 1] (at most 99), "
                                       "residual_bound >= 0", reason="INVALID_MODEL_PARAMETER",
                                       field="coefficients")
        epsilon = req.privacy_loss.epsilon
        try:
            d, _ = mp.eval_design(info, req.table, coefs, req.label, kind)
            costs = mp.price_eval(d, kind, epsilon)
        except PlanRejectedError as exc:
            raise self._spec_error(exc) from exc
        request = EvaluateRequest("", req.dataset, req.table, kind, tuple(coefs), req.intercept, req.label,
                                  epsilon, tuple(req.thresholds), req.residual_bound)

        def respond(result: Any, request_id: str, spent: PrivacyLoss, cost: PrivacyLoss) -> bytes:
            assert isinstance(result, EvaluateResult)
            return m_pb.EvaluateModelResponse(
                kind=_KIND_PB[result.kind], metrics=[_estimate(e) for e in result.metrics],
                confusion=[_confusion(m) for m in result.confusion],
                releases=[_cost(c) for c in result.costs], privacy_cost=convert.privacy_loss(cost),
                budget=convert.budget_status(grant.as_grant(), spent), request_id=request_id,
                dataset_version=result.dataset_version,
            ).SerializeToString(deterministic=True)

        body, replayed = self._run(grant, req, "evaluate", request, costs, respond)
        resp = m_pb.EvaluateModelResponse.FromString(body)
        resp.replayed = replayed
        return resp

    def _run(self, grant: ModelGrant, req: Any, what: str, request: TrainRequest | EvaluateRequest,
             costs: tuple[ModelCost, ...], respond: Any) -> tuple[bytes, bool]:
        """Reserve, run in the sandbox, check costs, store; returns (serialized response, replayed)."""
        eps, delta = mp.charged(costs)
        cost = PrivacyLoss(eps, delta)
        request_id = req.request_id or uuid.uuid4().hex
        key = grant.ledger_key
        outcome = self.core.ledger.reserve(key, request_id=request_id, fingerprint=_fingerprint(what, req),
                                           cost=cost, budget=PrivacyLoss(grant.epsilon, grant.delta))
        if isinstance(outcome, PriorRelease):
            return outcome.response, True
        sandbox_req = replace(request, request_id=request_id)
        try:
            reply = self.core.sandbox.call(sandbox_req, timeout_s=self.core.sandbox_timeout_s)
        except SandboxConnectionError as exc:
            if exc.before_send:
                self.core.ledger.release_unused(key, request_id)
                raise SandboxUnavailableError("the sandbox is not reachable; nothing was charged") from exc
            self.core.ledger.fail(key, request_id)
            raise QueryExecutionError() from exc
        if isinstance(reply, ErrorReply):
            if reply.kind == "failed":
                self.core.ledger.fail(key, request_id)
                raise QueryExecutionError()
            self.core.ledger.release_unused(key, request_id)
            log.error("sandbox refused model request %s: %s", request_id, reply.message)
            raise GatewayInternalError("the sandbox refused the model request")
        if not isinstance(reply, TrainResult | EvaluateResult) or tuple(reply.costs) != costs:
            self.core.ledger.fail(key, request_id)
            log.error("sandbox model reply or costs differ for request %s", request_id)
            raise GatewayInternalError("the sandbox's costs differ from the charged ones")
        body: bytes = respond(reply, request_id, outcome.spent_after, cost)
        self.core.ledger.complete(key, request_id, body)
        return body, False


class ModelServicer(m_grpc.ModelServiceServicer):
    """privacy_gateway.v1.ModelService."""

    def __init__(self, core: ModelService) -> None:
        """Serve `core`."""
        self.core = core

    @_rpc
    def TrainModel(self, request: m_pb.TrainModelRequest, context: grpc.ServicerContext
                   ) -> m_pb.TrainModelResponse:
        """Train one model."""
        consumer = authenticate(context, self.core.core.policy)
        return self.core.train(consumer, request)

    @_rpc
    def EvaluateModel(self, request: m_pb.EvaluateModelRequest, context: grpc.ServicerContext
                      ) -> m_pb.EvaluateModelResponse:
        """Evaluate one model."""
        consumer = authenticate(context, self.core.core.policy)
        return self.core.evaluate(consumer, request)


def add_model_service(server: grpc.Server, core: QueryService, policy_path: Path) -> ModelService:
    """Load the model grants of `policy_path` and serve ModelService on `server`."""
    grants = load_model_grants(policy_path, core.policy)
    check_grants_against_catalog(grants, core, str(policy_path))
    service = ModelService(core, grants)
    m_grpc.add_ModelServiceServicer_to_server(ModelServicer(service), server)  # type: ignore[no-untyped-call]
    return service
