"""A query request as the query product reads it (from RunQuery or ExplainQuery), and what a request id binds."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["AccuracyRequest", "QueryRequest", "fingerprint", "query_request"]


@dataclass(frozen=True, slots=True)
class AccuracyRequest:
    """Accuracy-first: wanted 95% half-widths (one for every COUNT/SUM output, or per output name)."""

    half_width_95: float
    per_output: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A validated-at-the-boundary query request (from RunQuery or ExplainQuery).

    `epsilon` is NaN when the request carried no privacy loss (allowed only with `accuracy`).
    """

    consumer: str
    dataset: str
    sql: str
    purpose: str
    epsilon: float
    delta: float
    request_id: str = ""
    weights: tuple[tuple[str, float], ...] = ()
    accuracy: AccuracyRequest | None = None
    rho: float = 0.0  # zCDP grants: the request's rho (0 when not set)
    interval_shares: tuple[tuple[str, float], ...] = ()  # quantile output -> share of its loss on its interval


def fingerprint(req: QueryRequest) -> str:
    """What a request_id is bound to: a retry must repeat the same request."""
    accuracy = None if req.accuracy is None else [
        repr(req.accuracy.half_width_95), [[k, repr(v)] for k, v in req.accuracy.per_output]]
    body = json.dumps(
        [req.dataset, req.purpose, req.sql, repr(req.epsilon), repr(req.delta),
         [[k, repr(v)] for k, v in req.weights], accuracy] + ([repr(req.rho)] if req.rho else [])
        + ([[[k, repr(v)] for k, v in req.interval_shares]] if req.interval_shares else []),
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def query_request(consumer: str, req: Any, request_id: str = "") -> QueryRequest:
    """The validated-at-the-boundary form of a RunQuery/ExplainQuery request."""
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
