"""The query path: authorise, analyze, price, charge durably, run in the sandbox, release.

Order of decisions (each depends only on the request, the policy and the public catalog, never on data):
1. the privacy loss is finite and positive (INVALID_ARGUMENT) -- before anything else;
2. the consumer has a grant for (dataset, purpose) (PERMISSION_DENIED; unknown datasets look the same);
3. the privacy loss is within the grant's per-query cap (INVALID_ARGUMENT);
4. the SQL is one allowed SELECT (INVALID_ARGUMENT) and is priced with OpenDP;
5. the cost is reserved durably in the ledger (RESOURCE_EXHAUSTED if it cannot be paid; replay if the
   request_id was answered before);
6. the sandbox runs the plan and adds the noise; a failure after this point keeps the charge and comes
   back as one uniform error;
7. the sandbox's reported costs are re-checked against the charged ones, the answer is stored in the ledger
   (so a retry replays it), then released.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass, field

from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway import convert
from gateway.errors import (
    GatewayInternalError,
    InvalidArgumentError,
    PermissionDeniedError,
    QueryExecutionError,
    SandboxUnavailableError,
)
from gateway.ledger import GrantKey, Ledger, PriorRelease, PrivacyLoss
from gateway.policy import Grant, Policy
from gateway.postprocess import PostProcess
from gateway.postprocess import apply as postprocess
from gateway.sql.analyze import analyze_query
from sandbox import mechanisms
from sandbox.client import SandboxClient, SandboxConnectionError
from sandbox.errors import PlanRejectedError
from sandbox.protocol import (
    CatalogInfo,
    DatasetInfo,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    QueryPlan,
    ReleaseCost,
)

log = logging.getLogger("gateway.queries")

MAX_REQUEST_ID_LENGTH = 128
# Smaller epsilons give noise scales with no useful answer (and, below ~1e-308, infinite scales).
MIN_EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A validated-at-the-boundary query request (from RunQuery or ExplainQuery)."""

    consumer: str
    dataset: str
    sql: str
    purpose: str
    epsilon: float
    delta: float
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class PricedQuery:
    """A query that passed every pre-execution check, with its OpenDP costs."""

    grant: Grant
    dataset: DatasetInfo
    plan: QueryPlan
    costs: tuple[ReleaseCost, ...]
    cost: PrivacyLoss
    requested_epsilon: float  # what the scales were calibrated for; the charge `cost` is <= it
    post: PostProcess = field(default_factory=PostProcess)  # HAVING / ORDER BY / LIMIT, applied to the release (free)


def validate_privacy_loss(epsilon: float, delta: float) -> None:
    """Refuse non-finite, zero or negative epsilon and delta outside [0, 1).

    Raises:
        InvalidArgumentError: reason INVALID_PRIVACY_LOSS, naming the field.
    """
    if not math.isfinite(epsilon) or epsilon < MIN_EPSILON:
        raise InvalidArgumentError(
            f"privacy_loss.epsilon must be a finite number of at least {MIN_EPSILON:g}, "
            f"got {epsilon!r}",
            reason="INVALID_PRIVACY_LOSS",
            field="privacy_loss.epsilon",
        )
    if not math.isfinite(delta) or not 0 <= delta < 1:
        raise InvalidArgumentError(
            f"privacy_loss.delta must be a finite number in [0, 1), got {delta!r}",
            reason="INVALID_PRIVACY_LOSS",
            field="privacy_loss.delta",
        )


def _require(value: str, field: str) -> None:
    if not value.strip():
        raise InvalidArgumentError(f"{field} is required", reason="MISSING_FIELD", field=field)


def fingerprint(req: QueryRequest) -> str:
    """What a request_id is bound to: a retry must repeat the same request."""
    body = json.dumps(
        [req.dataset, req.purpose, req.sql, repr(req.epsilon), repr(req.delta)],
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


class QueryService:
    """The gateway's query logic, independent of gRPC."""

    def __init__(
        self, policy: Policy, catalog: CatalogInfo, ledger: Ledger, sandbox: SandboxClient,
        *, sandbox_timeout_s: float,
    ) -> None:
        """Wire the policy, the public catalog, the ledger and the sandbox client."""
        self.policy = policy
        self.catalog = catalog
        self.ledger = ledger
        self.sandbox = sandbox
        self.sandbox_timeout_s = sandbox_timeout_s

    # -- pre-execution checks ------------------------------------------------------------------

    def grant_for(self, consumer: str, dataset: str, purpose: str) -> tuple[Grant, DatasetInfo]:
        """The grant and the public dataset description, or PERMISSION_DENIED (same for unknown)."""
        grant = self.policy.grant(consumer, dataset, purpose)
        info = self.catalog.dataset(dataset)
        if grant is None or info is None:
            raise PermissionDeniedError(
                f"no grant for dataset {dataset!r} and purpose {purpose!r}",
                reason="DATASET_ACCESS_DENIED",
                dataset=dataset,
                purpose=purpose,
            )
        return grant, info

    def price(self, req: QueryRequest) -> PricedQuery:
        """Run checks 1-4 and price the plan with OpenDP."""
        validate_privacy_loss(req.epsilon, req.delta)
        _require(req.dataset, "dataset")
        _require(req.purpose, "purpose")
        grant, info = self.grant_for(req.consumer, req.dataset, req.purpose)
        if req.epsilon > grant.max_epsilon_per_query:
            raise InvalidArgumentError(
                f"privacy_loss.epsilon {req.epsilon!r} exceeds the grant's per-query maximum "
                f"{grant.max_epsilon_per_query!r}",
                reason="PRIVACY_LOSS_ABOVE_QUERY_CAP",
                field="privacy_loss.epsilon",
                maxEpsilonPerQuery=repr(grant.max_epsilon_per_query),
            )
        _require(req.sql, "sql")
        analyzed = analyze_query(req.sql, info)
        plan = analyzed.plan
        try:
            costs = mechanisms.price(plan, info, req.epsilon)
        except PlanRejectedError as exc:  # analyzer and catalog disagree: our bug
            raise GatewayInternalError("the query could not be priced") from exc
        total = mechanisms.total_epsilon(costs)
        if total > req.epsilon:  # Tumult's re-check: never charge more than the caller allowed
            raise GatewayInternalError("priced cost exceeds the requested privacy loss")
        return PricedQuery(
            grant, info, plan, costs, PrivacyLoss(total, 0.0), req.epsilon, analyzed.post
        )

    def budget_response(self, grant: Grant) -> tuple[PrivacyLoss, Grant]:
        """What a grant has spent."""
        return self.ledger.spent(GrantKey(grant.consumer, grant.dataset, grant.purpose)), grant

    # -- RPC bodies -----------------------------------------------------------------------------

    def explain(self, req: QueryRequest) -> q_pb.ExplainQueryResponse:
        """ExplainQuery: the plan and its cost; touches neither data nor budget."""
        priced = self.price(req)
        spent = self.ledger.spent(GrantKey(req.consumer, req.dataset, req.purpose))
        remaining = priced.grant.epsilon - spent.epsilon
        return q_pb.ExplainQueryResponse(
            plan=convert.plan_info(priced.plan, priced.dataset, priced.costs),
            privacy_cost=convert.privacy_loss(priced.cost),
            budget=convert.budget_status(priced.grant, spent),
            affordable=priced.cost.epsilon <= remaining,
        )

    def run(self, req: QueryRequest) -> q_pb.RunQueryResponse:
        """RunQuery: charge durably, run in the sandbox, store the release, return it.

        Privacy: the charge is the sum of the OpenDP maps of the plan's measurements (`price`), reserved
        before the sandbox runs; the sandbox recomputes the same costs from its own catalog and refuses
        to spend more than the charged epsilon.
        """
        request_id = req.request_id or uuid.uuid4().hex
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgumentError(
                f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters",
                reason="INVALID_REQUEST_ID",
                field="request_id",
            )
        priced = self.price(req)
        key = GrantKey(req.consumer, req.dataset, req.purpose)
        budget = PrivacyLoss(priced.grant.epsilon, priced.grant.delta)
        outcome = self.ledger.reserve(
            key, request_id=request_id, fingerprint=fingerprint(req), cost=priced.cost,
            budget=budget,
        )
        if isinstance(outcome, PriorRelease):
            replay = q_pb.RunQueryResponse.FromString(outcome.response)
            replay.replayed = True
            return replay
        # Post-processing of released values only (HAVING, ORDER BY, LIMIT): no extra privacy cost.
        result = postprocess(priced.post, self._execute(key, request_id, priced))
        columns, rows = convert.answer(priced.plan, priced.dataset, result)
        response = q_pb.RunQueryResponse(
            columns=columns,
            rows=rows,
            plan=convert.plan_info(priced.plan, priced.dataset, priced.costs),
            privacy_cost=convert.privacy_loss(priced.cost),
            budget=convert.budget_status(priced.grant, outcome.spent_after),
            request_id=request_id,
            dataset_version=result.dataset_version,
        )
        self.ledger.complete(key, request_id, response.SerializeToString(deterministic=True))
        return response

    def _execute(self, key: GrantKey, request_id: str, priced: PricedQuery) -> ExecuteResult:
        """Run the charged plan in the sandbox; map every failure to the right ledger state."""
        # The sandbox calibrates with the same epsilon (so it derives the same scales) and refuses
        # to spend more than it.
        request = ExecuteRequest(request_id, priced.plan, priced.requested_epsilon)
        try:
            reply = self.sandbox.execute(request, timeout_s=self.sandbox_timeout_s)
        except SandboxConnectionError as exc:
            if exc.before_send:  # nothing reached the sandbox: data untouched, refund
                self.ledger.release_unused(key, request_id)
                raise SandboxUnavailableError("the sandbox is not reachable; nothing was charged") from exc
            log.warning("sandbox connection lost during request %s: %s", request_id, exc)
            self.ledger.fail(key, request_id)
            raise QueryExecutionError() from exc
        if isinstance(reply, ErrorReply):
            if reply.kind == "failed":
                self.ledger.fail(key, request_id)
                raise QueryExecutionError()
            # 'rejected'/'bad_request' happen before the data is touched: refund; gateway and sandbox
            # disagree about the plan, which is a deployment bug.
            self.ledger.release_unused(key, request_id)
            log.error("sandbox refused plan of request %s: %s", request_id, reply.message)
            raise GatewayInternalError("the sandbox refused the plan")
        if tuple(reply.costs) != priced.costs:
            self.ledger.fail(key, request_id)
            log.error("sandbox costs differ from the charged ones for request %s", request_id)
            raise GatewayInternalError("the sandbox's costs differ from the charged ones")
        return reply
