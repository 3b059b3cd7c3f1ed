"""gRPC servicers: authenticate from the certificate, convert requests, call the query logic, render errors.

Every RPC goes through `_rpc`, the one place that turns a GatewayError into a `google.rpc.Status` with
an `ErrorInfo` (reason, domain, metadata) and turns anything unexpected into INTERNAL with an incident id.
No library exception text reaches a client.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway import convert
from gateway.audit import AuditError
from gateway.auth import authenticate
from gateway.digests import normalize_sql
from gateway.errors import (
    ERROR_DOMAIN,
    GatewayError,
    GatewayInternalError,
    PermissionDeniedError,
    PrivacyBudgetExhaustedError,
    QueryExecutionError,
)
from gateway.ledger import GrantKey
from gateway.oversight import Oversight
from gateway.queries import AccuracyRequest, QueryRequest, QueryService
from gateway.receipts import release_bytes

log = logging.getLogger("gateway.service")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_for(error: GatewayError) -> status_pb2.Status:
    """The rich status for an error: ErrorInfo always, plus QuotaFailure or BadRequest where they fit."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details = [info]
    if isinstance(error, PrivacyBudgetExhaustedError):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=error.metadata.get("grant", ""), description=error.message
                    )
                ]
            )
        )
    elif error.code == grpc.StatusCode.INVALID_ARGUMENT:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.metadata.get("field", "sql"), description=error.message
                    )
                ]
            )
        )
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)


def _caller(context: grpc.ServicerContext) -> str:
    """The certificate common name, for the audit log only (authorisation uses `authenticate`)."""
    auth: dict[str, list[bytes]] = dict(context.auth_context())  # type: ignore[arg-type]
    names = auth.get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if len(names) == 1 else ""


def _rpc(
    method: Callable[[Any, Req, grpc.ServicerContext], Resp],
) -> Callable[[Any, Req, grpc.ServicerContext], Resp]:
    """Run one RPC: render GatewayErrors as rich statuses, anything else as INTERNAL with an incident id,
    and append every request (answered, refused, failed) to the audit log BEFORE the answer leaves.

    If the audit entry cannot be written, the caller gets INTERNAL instead of the answer (fail closed);
    a charged answer stays in the ledger, and a retry with the same request_id replays it and is audited.
    """

    @functools.wraps(method)
    def wrapper(self: Any, request: Req, context: grpc.ServicerContext) -> Resp:
        started = time.monotonic()
        response: Resp | None = None
        error: GatewayError | None = None
        try:
            response = method(self, request, context)
        except GatewayError as exc:
            error = exc
        except Exception:
            error = GatewayInternalError()
            log.exception("unexpected error in %s (%s)", method.__name__, error.message)
        oversight = getattr(getattr(self, "core", None), "oversight", None)
        if oversight is not None:
            try:
                _audit(oversight, self, method.__name__, request, context, response, error,
                       time.monotonic() - started)
            except AuditError:
                log.critical("audit entry not written; withholding the answer of %s", method.__name__)
                error, response = GatewayInternalError("the request could not be audited"), None
        if error is None:
            assert response is not None
            return response
        context.abort_with_status(rpc_status.to_status(status_for(error)))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    return wrapper


def _audit(
    oversight: Oversight, servicer: Any, method: str, request: Any, context: grpc.ServicerContext,
    response: Any, error: GatewayError | None, duration_s: float,
) -> None:
    epsilon = delta = 0.0
    released = None
    request_id = getattr(request, "request_id", "")
    if isinstance(response, q_pb.RunQueryResponse):
        request_id = response.request_id
        released = release_bytes(response)
        if not (response.replayed or response.cached):
            epsilon, delta = response.privacy_cost.epsilon, response.privacy_cost.delta
    elif isinstance(error, QueryExecutionError):
        epsilon = error.charged_epsilon
    oversight.record_rpc(
        service=getattr(type(servicer), "SERVICE", type(servicer).__name__.removesuffix("Servicer") + "Service"),
        method=method,
        code="OK" if error is None else error.code.name,
        reason="" if error is None else error.reason,
        duration_s=duration_s,
        request_id=request_id,
        consumer=_caller(context),
        dataset=str(getattr(request, "dataset", "") or getattr(request, "name", "")),
        purpose=str(getattr(request, "purpose", "")),
        normalized_query=normalize_sql(str(getattr(request, "sql", ""))),
        epsilon=epsilon,
        delta=delta,
        released=released,
    )


# -- issue-gov: effective policy (overrides), revocation, outcome recording -------------------------


def identify(core: QueryService, context: grpc.ServicerContext) -> str:
    """The caller's certificate identity, checked against the effective policy and the revocations."""
    if core.governor is not None:
        core.policy = core.governor.current()  # overrides/reloads from any gateway process
    identity = authenticate(context, core.policy)
    if core.governor is not None:
        core.governor.check_not_revoked(identity)
    return identity


def _policy_snapshot(core: QueryService) -> AbstractContextManager[object]:
    """One read of the effective policy for the whole request (`Governor.snapshot`)."""
    return core.governor.snapshot() if core.governor is not None else nullcontext()


def _record(core: QueryService, req: QueryRequest, outcome: str, *, reason: str = "",
            epsilon: float = 0.0, request_id: str = "") -> None:
    if core.governor is not None:
        core.governor.record_outcome(
            consumer=req.consumer, dataset=req.dataset, purpose=req.purpose,
            request_id=request_id or req.request_id, outcome=outcome, reason=reason,
            epsilon=epsilon, sql=req.sql,
        )


# -- end issue-gov ------------------------------------------------------------------------------------


def _query_request(consumer: str, req: Any, request_id: str = "") -> QueryRequest:
    accuracy = None
    if req.HasField("accuracy"):
        accuracy = AccuracyRequest(
            half_width_95=req.accuracy.half_width_95 or float("nan"),
            per_output=tuple(sorted(req.accuracy.per_output.items())),
        )
    has_loss = req.HasField("privacy_loss") and (accuracy is None or req.privacy_loss.epsilon != 0)
    rho = req.privacy_loss.rho if req.HasField("privacy_loss") else 0.0
    if rho != 0 and req.privacy_loss.epsilon == 0:  # zCDP: rho set, epsilon left unset
        has_loss = False
    return QueryRequest(
        consumer=consumer,
        dataset=req.dataset,
        sql=req.sql,
        purpose=req.purpose,
        epsilon=req.privacy_loss.epsilon if has_loss else float("nan"),
        delta=req.privacy_loss.delta if req.HasField("privacy_loss") else 0.0,
        request_id=request_id,
        weights=tuple(sorted(req.weights.items())),
        accuracy=accuracy,
        rho=rho,
        interval_shares=tuple(sorted(req.interval_shares.items())),
    )


class QueryServicer(q_grpc.QueryServiceServicer):
    """privacy_gateway.v1.QueryService."""

    SERVICE = "QueryService"

    def __init__(self, core: QueryService) -> None:
        """Serve `core`."""
        self.core = core

    @_rpc
    def RunQuery(
        self, request: q_pb.RunQueryRequest, context: grpc.ServicerContext
    ) -> q_pb.RunQueryResponse:
        """Run one query."""
        with _policy_snapshot(self.core):
            return self._run_query(request, context)

    def _run_query(
        self, request: q_pb.RunQueryRequest, context: grpc.ServicerContext
    ) -> q_pb.RunQueryResponse:
        consumer = identify(self.core, context)
        req = _query_request(consumer, request, request.request_id)
        try:
            resp = self.core.run(req)
        except QueryExecutionError as exc:  # issue-gov: charged (at most the requested epsilon)
            _record(self.core, req, "failed", reason=exc.reason, epsilon=exc.charged_epsilon)
            raise
        except GatewayError as exc:
            _record(self.core, req, "refused", reason=exc.reason)
            raise
        if resp.replayed:  # a charged answer's outcome is stored with its completion (QueryService._complete)
            _record(self.core, req, "replayed", request_id=resp.request_id)
        return resp

    @_rpc
    def ExplainQuery(
        self, request: q_pb.ExplainQueryRequest, context: grpc.ServicerContext
    ) -> q_pb.ExplainQueryResponse:
        """Explain one query."""
        with _policy_snapshot(self.core):
            consumer = identify(self.core, context)
            return self.core.explain(_query_request(consumer, request))


class CatalogServicer(cat_grpc.CatalogServiceServicer):
    """privacy_gateway.v1.CatalogService: the public catalog, limited to granted datasets."""

    SERVICE = "CatalogService"

    def __init__(self, core: QueryService) -> None:
        """Serve `core`."""
        self.core = core

    def _granted(self, consumer: str) -> dict[str, list[str]]:
        purposes: dict[str, list[str]] = {}
        for g in self.core.policy.grants_of(consumer):
            purposes.setdefault(g.dataset, []).append(g.purpose)
        return purposes

    @_rpc
    def ListDatasets(
        self, request: cat_pb.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> cat_pb.ListDatasetsResponse:
        """List granted datasets."""
        consumer = identify(self.core, context)
        granted = self._granted(consumer)
        return cat_pb.ListDatasetsResponse(
            datasets=[
                convert.dataset(d, granted[d.name])
                for d in self.core.catalog.datasets
                if d.name in granted
            ]
        )

    @_rpc
    def GetDataset(
        self, request: cat_pb.GetDatasetRequest, context: grpc.ServicerContext
    ) -> cat_pb.Dataset:
        """One granted dataset."""
        consumer = identify(self.core, context)
        granted = self._granted(consumer)
        info = self.core.catalog.dataset(request.name)
        if info is None or request.name not in granted:
            raise PermissionDeniedError(
                f"no grant for dataset {request.name!r}", dataset=request.name
            )
        return convert.dataset(info, granted[request.name])


class BudgetServicer(b_grpc.BudgetServiceServicer):
    """privacy_gateway.v1.BudgetService."""

    SERVICE = "BudgetService"

    def __init__(self, core: QueryService) -> None:
        """Serve `core`."""
        self.core = core

    @_rpc
    def GetPrivacyBudget(
        self, request: b_pb.GetPrivacyBudgetRequest, context: grpc.ServicerContext
    ) -> b_pb.GetPrivacyBudgetResponse:
        """The caller's grants and what remains of them."""
        consumer = identify(self.core, context)
        statuses = []
        for g in self.core.policy.grants_of(consumer):
            if request.dataset and g.dataset != request.dataset:
                continue
            if self.core.governor is not None:  # issue-gov: nested, periodic
                statuses.append(self.core.governor.budget_status(GrantKey(g.consumer, g.dataset, g.purpose)))
                continue
            spent, _ = self.core.budget_response(g)
            statuses.append(convert.budget_status(g, spent))
        return b_pb.GetPrivacyBudgetResponse(consumer=consumer, grants=statuses)
