"""The model product: DP linear and logistic regression trained, and callers' models evaluated, in the sandbox.

What a model request computes and how it is priced; `gateway.path.governed` runs the rest of the path.
Order of decisions (request, policy snapshot and public catalog only; never data): privacy loss valid;
a model grant (`[[model_grants]]`, `gateway.policy.grants`) and the organisation's grant for the same dataset and
purpose (PERMISSION_DENIED otherwise, the same for unknown datasets); the grant's privacy definition can
pay the model (logistic regression spends delta, so it needs an approx_dp grant; zCDP grants account in
rho and do not take model requests); the per-request maximum; table and columns exist, no identifier
(IDENTIFIER_COLUMN), every feature and the label granted (FEATURE_NOT_ALLOWED / LABEL_NOT_ALLOWED) and
allowed by the data owner's grade rules (GRADE_NOT_ALLOWED, `sandbox.plans.grades.check_model_grades`); price
with OpenDP (`sandbox.pricing.models`). The charge goes to the
organisation's grant at every level (member, organisation, the data owner's cap) like a query's; the
sandbox re-prices the request, charges the owner's cap and refuses a request id it has seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from msgspec.structs import replace
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb

from gateway.budgets.governor import Governor
from gateway.budgets.ledger import GrantKey, PriorRelease, PrivacyLoss, Reservation
from gateway.errors import (
    GatewayInternalError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from gateway.path.calls import Call
from gateway.path.governed import ChargePlan, Priced
from gateway.policy.grants import ModelGrant
from gateway.policy.model import Grant
from gateway.products.common import check_request_id, privacy_loss, require, validate_privacy_loss
from sandbox.errors import PlanRejectedError
from sandbox.plans.grades import DEFAULT_GRADE_RULES, GradeError, check_model_grades
from sandbox.pricing import models as mp
from sandbox.protocol.messages import CatalogInfo, DatasetInfo
from sandbox.protocol.messages import Message as SandboxMessage
from sandbox.protocol.models import (
    ConfusionMatrix,
    Estimate,
    EvaluateRequest,
    EvaluateResult,
    ModelCost,
    ModelKind,
    TrainRequest,
    TrainResult,
)

__all__ = ["EvaluateProduct", "TrainProduct", "check_model_grants_against_catalog"]

log = logging.getLogger("gateway.products.models.service")

_KINDS: dict[int, ModelKind] = {m_pb.MODEL_KIND_LINEAR: "linear", m_pb.MODEL_KIND_LOGISTIC: "logistic"}
_KIND_PB: dict[ModelKind, str] = {"linear": "MODEL_KIND_LINEAR", "logistic": "MODEL_KIND_LOGISTIC"}


def check_model_grants_against_catalog(grants: tuple[ModelGrant, ...], catalog: CatalogInfo, file: str) -> None:
    """Every granted table and column exists and no column is an identifier (checked at start and reload).

    Raises:
        ConfigError: names the model grant and the problem.
    """
    from gateway.errors import ConfigError

    for i, g in enumerate(grants):
        info = catalog.dataset(g.dataset)
        table = info.table(g.table) if info else None
        if table is None:
            raise ConfigError(file, f"model_grants[{i}].table", f"unknown table {g.dataset}.{g.table}")
        for name in sorted(g.features | g.labels):
            col = table.column(name)
            if col is None or col.grade == "identifier":
                raise ConfigError(file, f"model_grants[{i}]", f"{name!r} is unknown or an identifier")


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


@dataclass(frozen=True, slots=True)
class _ModelPriced:
    grant: Grant
    model_grant: ModelGrant
    info: DatasetInfo
    kind: ModelKind
    request: TrainRequest | EvaluateRequest
    costs: tuple[ModelCost, ...]
    cost: PrivacyLoss


class _ModelProduct:
    """What training and evaluation share: authorisation, the charge plan, the sandbox request."""

    name: ClassVar[str] = "model"
    what: ClassVar[str]

    def __init__(self, catalog: CatalogInfo, governor: Governor,
                 grade_rules: Mapping[str, frozenset[str]] = DEFAULT_GRADE_RULES) -> None:
        """Price against the public `catalog`; render budgets through `governor`; check features and
        labels against the data owner's `grade_rules` (the sandbox enforces the same)."""
        self.catalog = catalog
        self.governor = governor
        self.grade_rules = grade_rules

    def _authorise(self, call: Call, req: Any, epsilon: float, delta: float
                   ) -> tuple[Grant, ModelGrant, DatasetInfo, ModelKind]:
        validate_privacy_loss(epsilon, delta)
        for name in ("dataset", "purpose", "table"):
            require(getattr(req, name), name)
        if req.kind not in _KINDS:
            raise InvalidArgumentError("kind must be LINEAR or LOGISTIC", reason="MISSING_FIELD", field="kind")
        check_request_id(req.request_id)
        policy = call.require_policy()
        gov = policy.governance
        model_grant = gov.model_grant(call.identity, req.dataset, req.purpose) if gov is not None else None
        grant = policy.grant(call.identity, req.dataset, req.purpose)
        info = self.catalog.dataset(req.dataset)
        if model_grant is None or grant is None or info is None:
            raise PermissionDeniedError(f"no model grant for dataset {req.dataset!r} and purpose {req.purpose!r}",
                                        reason="DATASET_ACCESS_DENIED", dataset=req.dataset, purpose=req.purpose)
        kind = _KINDS[req.kind]
        if grant.zcdp:
            raise InvalidArgumentError(
                "model requests are priced in (epsilon, delta); the grant for this purpose is zcdp: use a "
                "pure_dp or approx_dp grant", reason="PRIVACY_DEFINITION_MISMATCH", field="purpose")
        if delta > 0 and grant.privacy_definition != "approx_dp":
            raise InvalidArgumentError(
                "privacy_loss.delta must be 0: the grant for this purpose is pure differential privacy "
                "(logistic regression spends delta and needs an approx_dp grant)",
                reason="INVALID_PRIVACY_LOSS", field="privacy_loss.delta")
        if delta > grant.delta:
            raise InvalidArgumentError(f"privacy_loss.delta {delta!r} exceeds the grant's delta {grant.delta!r}",
                                       reason="PRIVACY_LOSS_ABOVE_QUERY_CAP", field="privacy_loss.delta")
        cap = min(model_grant.max_epsilon_per_request, grant.max_epsilon_per_query)
        if epsilon > cap:
            raise InvalidArgumentError(
                f"privacy_loss.epsilon {epsilon!r} exceeds the per-request maximum {cap!r}",
                reason="PRIVACY_LOSS_ABOVE_QUERY_CAP", field="privacy_loss.epsilon", maxEpsilonPerQuery=repr(cap))
        if req.table != model_grant.table:
            raise InvalidArgumentError(f"the model grant does not cover table {req.table!r}",
                                       reason="FEATURE_NOT_ALLOWED", field="table")
        return grant, model_grant, info, kind

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
        """The data owner's grade rules on the features and label (`sandbox.plans.grades.check_model_grades`,
        which the sandbox applies too): GRADE_NOT_ALLOWED naming the column and the use."""
        t = info.table(table)
        if t is None:
            return  # the design refuses an unknown table with its own reason
        try:
            check_model_grades(t, features, label, self.grade_rules)
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

    def _priced(self, call: Call, req: Any, grant: Grant, model_grant: ModelGrant, info: DatasetInfo,
                kind: ModelKind, sandbox_req: TrainRequest | EvaluateRequest, costs: tuple[ModelCost, ...],
                description: str) -> Priced:
        eps, delta = mp.charged(costs)
        cost = PrivacyLoss(eps, delta)
        request_id = req.request_id or uuid.uuid4().hex
        call.audit.request_id, call.audit.query = request_id, description
        body = json.dumps([self.what, req.SerializeToString(deterministic=True).hex()])
        # What the data owner's cap counts is the request's loss in its own definition (logistic regression:
        # the composed rho), not the (epsilon, delta) the model grant is charged.
        plan = ChargePlan(GrantKey(call.identity, req.dataset, req.purpose), request_id,
                          hashlib.sha256(body.encode()).hexdigest(), cost, len(costs), self.name,
                          owner_loss=mp.owner_loss(costs),
                          product_budget=None if model_grant.epsilon is None
                          else PrivacyLoss(model_grant.epsilon, model_grant.delta))
        return Priced(plan, _ModelPriced(grant, model_grant, info, kind, sandbox_req, costs, cost), description)

    def sandbox_request(self, priced: Priced, sandbox_request_id: str) -> SandboxMessage:
        """The model request with the id the sandbox dedupes by."""
        m: _ModelPriced = priced.payload
        return replace(m.request, request_id=sandbox_request_id)

    def _checked(self, priced: Priced, reply: SandboxMessage, kind: type) -> Any:
        m: _ModelPriced = priced.payload
        if not isinstance(reply, kind) or tuple(getattr(reply, "costs", ())) != m.costs:  # the path keeps the charge
            log.error("sandbox model reply or costs differ for request %s", priced.charge.request_id)
            raise GatewayInternalError("the sandbox's costs differ from the charged ones")
        return reply

    def from_cache(self, call: Call, priced: Priced, reservation: Reservation) -> Any:
        """Models have no charge-once cache."""
        raise GatewayInternalError("no cached model releases")


class TrainProduct(_ModelProduct):
    """TrainModel."""

    what: ClassVar[str] = "train"

    def price(self, call: Call, request: m_pb.TrainModelRequest) -> Priced:
        """Authorise, check the design and the parameters, and price the training with OpenDP."""
        loss = request.privacy_loss
        grant, model_grant, info, kind = self._authorise(call, request, loss.epsilon, loss.delta)
        features = list(request.features)
        self._allowed(model_grant, info, request.table, features, request.label)
        self._graded(info, request.table, features, request.label)
        if request.iterations < 0 or request.learning_rate < 0 or request.clip < 0 or request.l2 < 0 or not all(
                math.isfinite(x) for x in (request.learning_rate, request.clip, request.l2)):
            raise InvalidArgumentError("iterations, learning_rate, clip and l2 must be non-negative",
                                       reason="INVALID_MODEL_PARAMETER", field="iterations")
        iterations = request.iterations or mp.DEFAULT_LOGISTIC_ITERATIONS
        delta = loss.delta if kind == "logistic" else 0.0
        try:
            d = mp.design(info, request.table, features, request.label, kind)
            costs = mp.price_train(d, kind, loss.epsilon, delta, iterations, request.clip)
        except PlanRejectedError as exc:
            raise self._spec_error(exc) from exc
        sandbox_req = TrainRequest("", request.dataset, request.table, kind, tuple(features), request.label,
                                   loss.epsilon, delta, iterations, request.learning_rate, request.clip, request.l2)
        description = f"TRAIN {kind} {request.table} ({', '.join(features)}) -> {request.label}"
        return self._priced(call, request, grant, model_grant, info, kind, sandbox_req, costs, description)

    def respond(self, call: Call, priced: Priced, reply: SandboxMessage, reservation: Reservation
                ) -> m_pb.TrainModelResponse:
        """Coefficients, metrics and their costs, what was charged, the budget after."""
        result: TrainResult = self._checked(priced, reply, TrainResult)
        m: _ModelPriced = priced.payload
        return m_pb.TrainModelResponse(
            kind=_KIND_PB[result.kind], coefficients=[_estimate(e) for e in result.coefficients],
            intercept=_estimate(result.intercept), metrics=[_estimate(e) for e in result.metrics],
            releases=[_cost(c) for c in result.costs], privacy_cost=privacy_loss(m.cost),
            budget=self.governor.budget_status(priced.charge.key, after=reservation),
            request_id=priced.charge.request_id, dataset_version=result.dataset_version,
        )

    def replay(self, call: Call, prior: PriorRelease) -> m_pb.TrainModelResponse:
        """The stored answer, marked `replayed`."""
        resp = m_pb.TrainModelResponse.FromString(prior.response)
        resp.replayed = True
        return resp


class EvaluateProduct(_ModelProduct):
    """EvaluateModel."""

    what: ClassVar[str] = "evaluate"

    def price(self, call: Call, request: m_pb.EvaluateModelRequest) -> Priced:
        """Authorise, check the caller's model, and price its DP metrics with OpenDP."""
        loss = request.privacy_loss
        grant, model_grant, info, kind = self._authorise(call, request, loss.epsilon, loss.delta)
        coefs = [(c.term, c.value) for c in request.coefficients]
        columns = list(dict.fromkeys(t.split("=", 1)[0] for t, _ in coefs))
        self._allowed(model_grant, info, request.table, columns, request.label)
        self._graded(info, request.table, columns, request.label)
        values = [*(v for _, v in coefs), request.intercept, request.residual_bound, *request.thresholds]
        if not all(math.isfinite(v) for v in values) or request.residual_bound < 0 or not all(
                0 <= t <= 1 for t in request.thresholds) or len(request.thresholds) > mp.MAX_THRESHOLDS:
            raise InvalidArgumentError("coefficients must be finite, thresholds in [0, 1] (at most 99), "
                                       "residual_bound >= 0", reason="INVALID_MODEL_PARAMETER",
                                       field="coefficients")
        try:
            d, _ = mp.eval_design(info, request.table, coefs, request.label, kind)
            costs = mp.price_eval(d, kind, loss.epsilon)
        except PlanRejectedError as exc:
            raise self._spec_error(exc) from exc
        sandbox_req = EvaluateRequest("", request.dataset, request.table, kind, tuple(coefs), request.intercept,
                                      request.label, loss.epsilon, tuple(request.thresholds),
                                      request.residual_bound)
        description = f"EVALUATE {kind} {request.table} ({', '.join(columns)}) -> {request.label}"
        return self._priced(call, request, grant, model_grant, info, kind, sandbox_req, costs, description)

    def respond(self, call: Call, priced: Priced, reply: SandboxMessage, reservation: Reservation
                ) -> m_pb.EvaluateModelResponse:
        """DP metrics (and confusion matrices), what was charged, the budget after."""
        result: EvaluateResult = self._checked(priced, reply, EvaluateResult)
        m: _ModelPriced = priced.payload
        return m_pb.EvaluateModelResponse(
            kind=_KIND_PB[result.kind], metrics=[_estimate(e) for e in result.metrics],
            confusion=[_confusion(c) for c in result.confusion],
            releases=[_cost(c) for c in result.costs], privacy_cost=privacy_loss(m.cost),
            budget=self.governor.budget_status(priced.charge.key, after=reservation),
            request_id=priced.charge.request_id, dataset_version=result.dataset_version,
        )

    def replay(self, call: Call, prior: PriorRelease) -> m_pb.EvaluateModelResponse:
        """The stored answer, marked `replayed`."""
        resp = m_pb.EvaluateModelResponse.FromString(prior.response)
        resp.replayed = True
        return resp
