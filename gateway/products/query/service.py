"""The query product: what a SQL query computes and how it is priced (`gateway.path.governed` runs the rest).

Order of decisions (each depends only on the request, the policy and the public catalog, never on data):
1. the privacy loss is finite and positive (INVALID_ARGUMENT) -- before anything else;
2. the consumer has a grant for (dataset, purpose) in the call's policy snapshot (PERMISSION_DENIED;
   unknown datasets look the same);
3. the privacy loss is within the grant's per-query cap (INVALID_ARGUMENT);
4. the SQL is one allowed SELECT within the data owner's grade rules (INVALID_ARGUMENT) and is priced
   with OpenDP;
then the governed path charges every level, the sandbox runs the plan (re-pricing it from its own
catalog) and adds the noise, the sandbox's reported costs are re-checked against the charged ones here
(`respond`), and the answer is signed, stored for replay and released.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.budgets.governor import Governor, rho_loss
from gateway.budgets.ledger import GrantKey, PriorRelease, PrivacyLoss, Reservation
from gateway.budgets.stores import ReleaseStore
from gateway.errors import (
    GatewayInternalError,
    InvalidArgumentError,
    InvalidQueryError,
    PermissionDeniedError,
)
from gateway.path.calls import Call
from gateway.path.governed import ChargePlan, Priced
from gateway.policy.model import Grant, Policy
from gateway.products.common import check_request_id, privacy_loss, require, validate_privacy_loss, validate_rho
from gateway.products.query import convert
from gateway.products.query.cache import cache_key
from gateway.products.query.plancache import PlanCache
from gateway.products.query.postprocess import PostProcess
from gateway.products.query.postprocess import apply as postprocess
from gateway.products.query.quantile_options import apply_interval_shares
from gateway.products.query.request import QueryRequest, fingerprint, query_request
from gateway.products.query.sql.analyze import AnalyzedQuery
from gateway.products.query.weights import apply_weights, priced, solve_for_accuracy
from gateway.release.digests import normalize_sql
from sandbox.errors import PlanRejectedError
from sandbox.plans.grades import DEFAULT_GRADE_RULES, GradeError, check_plan_grades
from sandbox.pricing import mechanisms, zcdp
from sandbox.protocol.messages import (
    CatalogInfo,
    DatasetInfo,
    ExecuteRequest,
    ExecuteResult,
    QueryPlan,
    ReleaseCost,
)
from sandbox.protocol.messages import Message as SandboxMessage

__all__ = ["PricedQuery", "QueryService"]

log = logging.getLogger("gateway.products.query.service")

@dataclass(frozen=True, slots=True)
class PricedQuery:
    """A query that passed every pre-execution check, with its OpenDP costs."""

    grant: Grant
    dataset: DatasetInfo
    plan: QueryPlan
    costs: tuple[ReleaseCost, ...]
    cost: PrivacyLoss
    requested_epsilon: float  # what the scales were calibrated for; the charge `cost` is <= it
    requested_delta: float = 0.0  # the delta share given to partition selection (0 if none)
    post: PostProcess = field(default_factory=PostProcess)  # HAVING / ORDER BY / LIMIT, applied to the release (free)
    requested_rho: float = 0.0  # zCDP grants: what the scales were calibrated for (requested_epsilon is 0)

    @property
    def reported_cost(self) -> common_pb.PrivacyLoss:
        """The cost as the API shows it: (epsilon, delta), plus rho and its equivalent for zCDP grants."""
        if self.grant.zcdp:
            return rho_loss(self.cost.rho, self.cost.delta, self.grant.delta)
        return privacy_loss(self.cost)


def _post_key(post: PostProcess) -> str:
    """A canonical description of the post-processing ("" when there is none)."""
    return "" if post == PostProcess() else repr(post)


class QueryService:
    """The query product: how a SQL query is validated, authorised, priced, sent and rendered.

    `GovernedPath.release` runs it (RunQuery); `explain` prices without charging (ExplainQuery). Grants
    come from the call's live policy snapshot.
    """

    name: ClassVar[str] = "query"

    def __init__(
        self, catalog: CatalogInfo, governor: Governor, *, cache: ReleaseStore | None = None,
    ) -> None:
        """Price against the public `catalog`; read budgets through `governor`."""
        self.catalog = catalog
        self.governor = governor
        self.cache = cache
        # What each column grade allows (the data owner's [grades]); the sandbox enforces the same rules.
        self.grade_rules: Mapping[str, frozenset[str]] = DEFAULT_GRADE_RULES
        self.plans = PlanCache()  # analysis and pricing memo (decisions are still made per request)

    # -- pre-execution checks ------------------------------------------------------------------

    def grant_for(self, policy: Policy, consumer: str, dataset: str, purpose: str) -> tuple[Grant, DatasetInfo]:
        """The grant and the public dataset description, or PERMISSION_DENIED (same for unknown)."""
        grant = policy.grant(consumer, dataset, purpose)
        info = self.catalog.dataset(dataset)
        if grant is None or info is None:
            raise PermissionDeniedError(
                f"no grant for dataset {dataset!r} and purpose {purpose!r}",
                reason="DATASET_ACCESS_DENIED",
                dataset=dataset,
                purpose=purpose,
            )
        return grant, info

    def price_query(self, policy: Policy, req: QueryRequest) -> PricedQuery:
        """Run checks 1-4 and price the plan with OpenDP (epsilon-first or accuracy-first)."""
        if req.rho != 0:  # a zCDP request: rho instead of epsilon
            validate_rho(req.rho, req.epsilon)
            validate_privacy_loss(1.0, req.delta)
        elif req.accuracy is None or not math.isnan(req.epsilon):
            validate_privacy_loss(req.epsilon, req.delta)
        elif not math.isfinite(req.delta) or not 0 <= req.delta < 1:
            validate_privacy_loss(1.0, req.delta)
        require(req.dataset, "dataset")
        require(req.purpose, "purpose")
        grant, info = self.grant_for(policy, req.consumer, req.dataset, req.purpose)
        if grant.zcdp:
            return self._price_zcdp(req, grant, info)
        if req.rho != 0:
            raise InvalidArgumentError(
                f"privacy_loss.rho is for zcdp grants; this grant is {grant.privacy_definition}: set "
                "privacy_loss.epsilon instead",
                reason="INVALID_PRIVACY_LOSS",
                field="privacy_loss.rho",
            )
        if req.delta > 0 and grant.privacy_definition != "approx_dp":
            raise InvalidArgumentError(
                "privacy_loss.delta must be 0: the grant is pure differential privacy",
                reason="INVALID_PRIVACY_LOSS",
                field="privacy_loss.delta",
            )
        if req.delta > grant.delta:
            raise InvalidArgumentError(
                f"privacy_loss.delta {req.delta!r} exceeds the grant's delta {grant.delta!r}",
                reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                field="privacy_loss.delta",
            )
        analyzed, plan = self._analyze(req, info)
        if req.accuracy is not None:
            plan, epsilon = solve_for_accuracy(plan, info, req.accuracy)
            cap = grant.max_epsilon_per_query if math.isnan(req.epsilon) else min(
                req.epsilon, grant.max_epsilon_per_query)
            if epsilon > cap:
                raise InvalidArgumentError(
                    f"the accuracy target needs epsilon {epsilon:.6g}, more than the {cap!r} "
                    "this request may spend",
                    reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                    field="accuracy",
                    requiredEpsilon=repr(epsilon),
                    maxEpsilonPerQuery=repr(cap),
                )
        else:
            epsilon = req.epsilon
            if epsilon > grant.max_epsilon_per_query:
                raise InvalidArgumentError(
                    f"privacy_loss.epsilon {epsilon!r} exceeds the grant's per-query maximum "
                    f"{grant.max_epsilon_per_query!r}",
                    reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                    field="privacy_loss.epsilon",
                    maxEpsilonPerQuery=repr(grant.max_epsilon_per_query),
                )
        delta = 0.0
        if plan.partition_selection:
            # Keys without a public domain are released by OpenDP's threshold mechanism, which
            # needs delta > 0: decided from the grant and the request only.
            if grant.privacy_definition != "approx_dp" or req.delta <= 0:
                raise InvalidArgumentError(
                    "grouping by columns without a public domain releases keys through DP "
                    "partition selection, which needs delta > 0: use an approx_dp grant and set "
                    "privacy_loss.delta",
                    reason="DELTA_REQUIRED",
                    field="privacy_loss.delta",
                )
            delta = req.delta
        costs = priced(plan, lambda: self.plans.price(plan, info, epsilon, delta))  # memoized: pure
        total = mechanisms.total_epsilon(costs)
        total_delta = mechanisms.total_delta(costs)
        if total > epsilon or total_delta > delta:  # Tumult's re-check: never charge more than allowed
            raise GatewayInternalError("priced cost exceeds the requested privacy loss")
        return PricedQuery(
            grant, info, plan, costs, PrivacyLoss(total, total_delta), epsilon, delta, analyzed.post
        )

    def _analyze(self, req: QueryRequest, info: DatasetInfo) -> tuple[AnalyzedQuery, QueryPlan]:
        """Check 4: the SQL is one allowed SELECT within the data owner's grade rules; the weighted plan."""
        require(req.sql, "sql")
        analyzed = self.plans.analyze(req.sql, info, self.catalog.max_cells)  # memoized: pure in its arguments
        try:  # the data owner's grade rules, checked here too so a refusal is INVALID_ARGUMENT, not INTERNAL
            check_plan_grades(analyzed.plan, info, self.grade_rules)
        except GradeError as exc:
            raise InvalidQueryError(str(exc), reason="GRADE_NOT_ALLOWED", column=exc.column,
                                    use=exc.use) from exc
        except PlanRejectedError as exc:  # the analyzer built a plan the sandbox's rules cannot read
            raise GatewayInternalError("the query's plan could not be checked") from exc
        return analyzed, apply_interval_shares(apply_weights(analyzed.plan, req.weights), req.interval_shares)

    def _price_zcdp(self, req: QueryRequest, grant: Grant, info: DatasetInfo) -> PricedQuery:
        """Checks 3-4 and pricing for a zCDP grant: rho per query (or an accuracy target), the Gaussian
        family (`sandbox.pricing.zcdp`), partition selection by OpenDP's Gaussian threshold with the request's
        delta (at most half of the grant's delta), and the Tumult re-check that the priced rho is
        within what was asked before anything is charged."""
        if req.rho == 0 and req.accuracy is None:
            raise InvalidArgumentError(
                "the grant is zero-concentrated DP (privacy_definition zcdp): set privacy_loss.rho "
                "(epsilon is not accepted) or an accuracy target",
                reason="INVALID_PRIVACY_LOSS",
                field="privacy_loss.rho",
            )
        if not math.isnan(req.epsilon):
            validate_rho(req.rho or math.nan, req.epsilon)
        if req.delta > grant.delta / 2:
            raise InvalidArgumentError(
                f"privacy_loss.delta {req.delta!r} exceeds half of the grant's delta {grant.delta!r} "
                "(partition selection may spend at most half of a zcdp grant's delta)",
                reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                field="privacy_loss.delta",
            )
        analyzed, plan = self._analyze(req, info)
        cap = grant.max_rho_per_query
        if req.accuracy is not None:
            plan, rho = solve_for_accuracy(plan, info, req.accuracy, zcdp_grant=True)
            if req.rho:
                cap = min(cap, req.rho)
            if rho > cap:
                raise InvalidArgumentError(
                    f"the accuracy target needs rho {rho:.6g}, more than the {cap!r} this request may spend",
                    reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                    field="accuracy",
                    requiredRho=repr(rho),
                    maxRhoPerQuery=repr(cap),
                )
        else:
            rho = req.rho
            if rho > cap:
                raise InvalidArgumentError(
                    f"privacy_loss.rho {rho!r} exceeds the grant's per-query maximum {cap!r}",
                    reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                    field="privacy_loss.rho",
                    maxRhoPerQuery=repr(cap),
                )
        delta = 0.0
        if plan.partition_selection:
            if req.delta <= 0:
                raise InvalidArgumentError(
                    "grouping by columns without a public domain releases keys through DP partition "
                    "selection (OpenDP's Gaussian threshold), which needs delta > 0: set "
                    "privacy_loss.delta (at most half of the grant's delta)",
                    reason="DELTA_REQUIRED",
                    field="privacy_loss.delta",
                )
            delta = req.delta
        costs = priced(plan, lambda: self.plans.price_zcdp(plan, info, rho, delta))  # memoized: pure
        total_rho = zcdp.total_rho(costs)
        total_delta = mechanisms.total_delta(costs)
        if total_rho > rho or total_delta > delta:  # Tumult's re-check: never charge more than allowed
            raise GatewayInternalError("priced cost exceeds the requested privacy loss")
        # The charge: rho and selection delta, with the grant's (epsilon, delta) report (epsilon at the grant's
        # delta less the selection delta). What it counts on the data owner's cap is the owner's rule, applied
        # by the governor at the reservation from (rho, delta) and the owner's conversion_delta alone
        # (`sandbox.pricing.cap_rules`); the sandbox derives the same from its own pricing.
        conversion = grant.delta - total_delta
        report_epsilon, _ = zcdp.to_approx_dp(total_rho, total_delta, grant.delta)
        return PricedQuery(
            grant, info, plan, costs, PrivacyLoss(report_epsilon, total_delta, total_rho, conversion), 0.0,
            delta, analyzed.post, requested_rho=rho,
        )

    # -- the Product parts (see gateway.path.governed) ----------------------------------------------

    def price(self, call: Call, request: Any) -> Priced:
        """RunQuery's checks and price; the charge plan and the charge-once cache's answer if any."""
        req = query_request(call.identity, request, request.request_id)
        request_id = req.request_id or uuid.uuid4().hex
        check_request_id(request_id)
        call.audit.request_id = request_id
        call.audit.query = normalize_sql(req.sql)
        priced = self.price_query(call.require_policy(), req)
        post_key = _post_key(priced.post)
        if priced.grant.zcdp:  # a zCDP release is another release than a pure one at the same number
            post_key += f"|zcdp rho={priced.requested_rho!r} delta={priced.grant.delta!r}"
        ckey = cache_key(req.consumer, req.dataset, req.purpose, priced.dataset.version,
                         priced.plan, priced.requested_epsilon, post_key, priced.requested_delta)
        cached = self.cache.get(ckey) if self.cache is not None else None
        plan = ChargePlan(GrantKey(req.consumer, req.dataset, req.purpose), request_id, fingerprint(req),
                          priced.cost, len(priced.costs), self.name)
        return Priced(plan, priced, normalize_sql(req.sql), cached=cached, cache_key=ckey)

    def sandbox_request(self, priced: Priced, sandbox_request_id: str) -> ExecuteRequest:
        """The plan, with the loss the sandbox calibrates for and may not exceed."""
        q: PricedQuery = priced.payload
        return ExecuteRequest(sandbox_request_id, q.plan, q.requested_epsilon, q.requested_delta, q.requested_rho)

    def respond(self, call: Call, priced: Priced, reply: SandboxMessage, reservation: Reservation
                ) -> q_pb.RunQueryResponse:
        """The answer: the released rows, the plan with its costs, what was charged and the budget after."""
        q: PricedQuery = priced.payload
        if not isinstance(reply, ExecuteResult) or tuple(reply.costs) != q.costs:  # the path keeps the charge
            log.error("sandbox costs differ from the charged ones for request %s", priced.charge.request_id)
            raise GatewayInternalError("the sandbox's costs differ from the charged ones")
        # Post-processing of released values only (HAVING, ORDER BY, LIMIT): no extra privacy cost.
        result = postprocess(q.post, reply)
        columns, rows = convert.answer(q.plan, q.dataset, result)
        return q_pb.RunQueryResponse(
            columns=columns, rows=rows, plan=convert.plan_info(q.plan, q.dataset, q.costs),
            privacy_cost=q.reported_cost, budget=self.governor.budget_status(priced.charge.key, after=reservation),
            request_id=priced.charge.request_id, dataset_version=result.dataset_version,
        )

    def from_cache(self, call: Call, priced: Priced, reservation: Reservation) -> q_pb.RunQueryResponse:
        """The same release made earlier, as post-processing at zero cost (marked `cached`)."""
        assert priced.cached is not None
        hit = q_pb.RunQueryResponse.FromString(priced.cached)
        hit.cached = True
        hit.request_id = priced.charge.request_id
        hit.budget.CopyFrom(self.governor.budget_status(priced.charge.key, after=reservation))
        hit.privacy_cost.CopyFrom(privacy_loss(PrivacyLoss(0.0, 0.0)))  # rho 0 too
        return hit

    def replay(self, call: Call, prior: PriorRelease) -> q_pb.RunQueryResponse:
        """The stored answer of the request id, marked `replayed`."""
        replay = q_pb.RunQueryResponse.FromString(prior.response)
        replay.replayed = True
        return replay

    # -- ExplainQuery -----------------------------------------------------------------------------

    def explain(self, call: Call, request: Any) -> q_pb.ExplainQueryResponse:
        """ExplainQuery: the plan and its cost; touches neither data nor budget."""
        req = query_request(call.identity, request)
        call.audit.query = normalize_sql(req.sql)
        priced = self.price_query(call.require_policy(), req)
        key = GrantKey(req.consumer, req.dataset, req.purpose)
        status = self.governor.budget_status(key)
        affordable = (priced.cost.rho <= status.remaining.rho if priced.grant.zcdp
                      else priced.cost.epsilon <= status.remaining.epsilon)
        return q_pb.ExplainQueryResponse(
            plan=convert.plan_info(priced.plan, priced.dataset, priced.costs),
            privacy_cost=priced.reported_cost,
            budget=status,
            affordable=affordable,
        )
