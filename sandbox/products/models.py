"""DP model training and evaluation inside the sandbox: SQL aggregates in DuckDB, noise with OpenDP.

Only noisy aggregates leave DuckDB and only post-processed DP outputs leave this module (coefficients,
metrics and costs; see `sandbox.protocol.models`). The designs, sensitivities and measurements are in
`sandbox.pricing.models` (shared with the gateway); the training is `sandbox.products.regression`, and what every
model computation shares (its SQL guard, term SQL, releases) `sandbox.products.model_sql`. This module checks
the features and label against the data owner's grade rules (`sandbox.plans.grades.check_model_grades`),
re-prices every request from the sandbox's own catalog and refuses it if it would spend more than the gateway
charged, then charges the data owner's cap (`Engine.charge_release`, with the request's loss in its own
definition: `model_pricing.owner_loss`), all before touching data; a request id is charged once, across all
products.

Algorithms and privacy arguments (docs/reference.md "Models" has the long form):

* Linear regression (noisy sufficient statistics). With q = round(2^16 (1, z, v)) per row (z the scaled
  features, v the scaled label), DuckDB computes the upper triangle of sum_rows q q^T (exact HUGEINT
  sums, one pass over the truncated table). One OpenDP discrete Laplace (i64 vector, l1_distance) at
  d_in = K 2^32 (G^2 + G) / 2 releases it; everything after that is post-processing: symmetrize, floor
  the eigenvalues of X'X, add the optional ridge, solve, map back to original units; RMSE and R^2 from
  the same noisy statistics; intervals by a parametric bootstrap of the (public) noise distribution.
* Logistic regression (noisy Newton / IRLS). A noisy count (discrete Gaussian), then T Newton steps from
  theta = 0: one DuckDB pass computes, at the current theta, sum_rows round(2^16 clip_C(g_row)) with
  g_row = (sigmoid(theta . z~) - y) z~ clipped per row to L2 norm C, and the upper triangle of
  sum_rows round(Q_H w z~ z~^T) with w = sigmoid (1 - sigmoid) <= 1/4; OpenDP's discrete Gaussian (i64
  vectors, l2_distance, zCDP) releases both at the same d_in = ceil(K (C 2^16 + sqrt(p)/2)) (Q_H is
  chosen so the Hessian's bound fits it). theta <- theta - H~^-1 g~ (eigenvalues of H~ floored) is
  post-processing. The 2T + 1 zCDP releases compose (adaptively) to the sum of their rho; OpenDP's
  make_composition + make_zCDP_to_approxDP + make_fix_delta give the charged (epsilon, delta). Newton is
  invariant to the scaling of the features, which plain gradient descent on the catalog-scaled features
  is not: a column whose values fill a small part of its declared range (income up to 2,000,000 yuan)
  made 30 gradient steps stop far from the optimum.
* Evaluation: pure-DP discrete Laplace releases of a count and bounded sums (linear), or of a
  100-bin x 2-label score histogram (logistic); every metric is post-processing of those.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sandbox.engine.engine import Engine
from sandbox.engine.storage import sql_table_name, table_ref
from sandbox.errors import PlanRejectedError
from sandbox.plans.grades import check_model_grades
from sandbox.plans.render import quote_ident
from sandbox.pricing import mechanisms
from sandbox.pricing import models as mp
from sandbox.products.model_sql import (
    BOOTSTRAP_DRAWS,
    exact_ints,
    interval,
    label_sql,
    laplace_release,
    quantize,
    raw_term_sql,
    run_model_select,
    scaled_label_sql,
    sql_number,
)
from sandbox.products.regression import train_linear, train_logistic
from sandbox.protocol.messages import ErrorReply, ReleaseCost
from sandbox.protocol.models import (
    ConfusionMatrix,
    Estimate,
    EvaluateRequest,
    EvaluateResult,
    ModelCost,
    TrainRequest,
    TrainResult,
)

__all__ = ["DEFAULT_ITERATIONS", "auc_from_histogram", "evaluate", "train"]

log = logging.getLogger("sandbox.products.models")

DEFAULT_ITERATIONS = mp.DEFAULT_LOGISTIC_ITERATIONS


def _context(engine: Engine, dataset: str, table: str) -> tuple[Any, str, str] | ErrorReply:
    info = engine.describe().dataset(dataset)
    ds = engine.catalog.dataset(dataset)
    if info is None or ds is None or ds.table(table) is None:
        return ErrorReply("rejected", "unknown dataset or table")
    return info, sql_table_name(dataset, table), info.version


def train(engine: Engine, req: TrainRequest) -> TrainResult | ErrorReply:
    """Fit the requested model, spending at most the authorised (epsilon, delta); the owner's cap is
    charged (and the request id recorded) before any data is touched."""
    ctx = _context(engine, req.dataset, req.table)
    if isinstance(ctx, ErrorReply):
        return ctx
    info, sql_table, version = ctx
    try:
        check_model_grades(info.table(req.table), req.features, req.label, engine.catalog.grades)
        d = mp.design(info, req.table, req.features, req.label, req.kind)
        iterations = req.iterations or DEFAULT_ITERATIONS
        costs = mp.price_train(d, req.kind, req.epsilon, req.delta, iterations, req.clip)
        eps, delta = mp.charged(costs)
        if not (eps <= req.epsilon and delta <= (req.delta if req.kind == "logistic" else 0.0)):
            raise PlanRejectedError("the model costs more than the authorised privacy loss")
    except PlanRejectedError as exc:
        return ErrorReply("rejected", str(exc))
    refused = engine.charge_release(req.request_id, req.dataset, "train", mp.owner_loss(costs))
    if refused is not None:
        return refused
    try:
        if req.kind == "linear":
            coefs, intercept, metrics = train_linear(engine, d, sql_table, costs[0], req.l2)
        else:
            coefs, intercept, metrics = train_logistic(engine, d, sql_table, costs, req, iterations)
    except Exception:
        log.exception("model request %s failed after touching data", req.request_id,
                      extra={"request_id": req.request_id})
        return ErrorReply("failed", "")
    return TrainResult(req.kind, coefs, intercept, metrics, costs, version)


def evaluate(engine: Engine, req: EvaluateRequest) -> EvaluateResult | ErrorReply:
    """DP metrics of the consumer's model, spending at most the authorised epsilon (charged on the owner's
    cap before any data is touched, like training)."""
    ctx = _context(engine, req.dataset, req.table)
    if isinstance(ctx, ErrorReply):
        return ctx
    info, sql_table, version = ctx
    try:
        columns = list(dict.fromkeys(term.split("=", 1)[0] for term, _ in req.coefficients))
        check_model_grades(info.table(req.table), columns, req.label, engine.catalog.grades)
        d, betas = mp.eval_design(info, req.table, req.coefficients, req.label, req.kind)
        if len(req.thresholds) > mp.MAX_THRESHOLDS:
            raise PlanRejectedError("too many thresholds")
        costs = mp.price_eval(d, req.kind, req.epsilon)
        if not mp.charged(costs)[0] <= req.epsilon:
            raise PlanRejectedError("the evaluation costs more than the authorised privacy loss")
    except PlanRejectedError as exc:
        return ErrorReply("rejected", str(exc))
    refused = engine.charge_release(req.request_id, req.dataset, "evaluate", mp.owner_loss(costs))
    if refused is not None:
        return refused
    try:
        confusion: tuple[ConfusionMatrix, ...] = ()
        if req.kind == "linear":
            metrics = _eval_linear(engine, d, sql_table, betas, req, costs)
        else:
            metrics, confusion = _eval_logistic(engine, d, sql_table, betas, req, costs[0])
    except Exception:
        log.exception("evaluation %s failed after touching data", req.request_id,
                      extra={"request_id": req.request_id})
        return ErrorReply("failed", "")
    return EvaluateResult(req.kind, metrics, confusion, costs, version)


# -- evaluation -----------------------------------------------------------------------------------------------


def _prediction_sql(d: mp.Design, betas: Sequence[float], intercept: float) -> str:
    parts = [sql_number(intercept)] + [f"{sql_number(b)} * {raw_term_sql(t)}"
                                       for t, b in zip(d.terms, betas, strict=True)]
    return "(" + " + ".join(parts) + ")"


def _eval_linear(engine: Engine, d: mp.Design, sql_table: str, betas: Sequence[float],
                 req: EvaluateRequest, costs: tuple[ModelCost, ...]) -> tuple[Estimate, ...]:
    bound = req.residual_bound or (d.label.upper - d.label.lower)
    col = quote_ident(d.label.column)
    y = f"least(greatest(CAST({col} AS DOUBLE), {sql_number(d.label.lower)}), {sql_number(d.label.upper)})"
    r = f"least(greatest(({y} - {_prediction_sql(d, betas, req.intercept)}) / {sql_number(bound)}, -1.0), 1.0)"
    qr, qv = quantize(r), quantize(scaled_label_sql(d.label))
    sql = (f"SELECT count(*), sum(CAST({qr} AS BIGINT) * {qr}), sum({qv}), sum(CAST({qv} AS BIGINT) * {qv}) "
           f"FROM {table_ref(sql_table)} WHERE {col} IS NOT NULL")
    exact = exact_ints(run_model_select(engine, sql)[0])
    noisy = np.array([laplace_release(c, [v])[0] for c, v in zip(costs, exact, strict=True)], dtype=float)
    del exact
    s_y = (d.label.upper - d.label.lower) / 2
    unq = np.array([1.0, mp.Q * mp.Q, mp.Q, mp.Q * mp.Q])
    scales = np.array([c.scale for c in costs]) / unq

    def metrics_of(v: np.ndarray[Any, Any]) -> tuple[float, float, float]:
        n = max(v[0], 1.0)
        sse = max(v[1], 0.0) * bound * bound
        tss = (v[3] - v[2] ** 2 / n) * s_y * s_y
        return n, math.sqrt(sse / n), (1 - sse / tss) if tss > 0 else float("nan")

    n, rmse, r2 = metrics_of(noisy / unq)
    rng = np.random.default_rng()
    boots = np.array([metrics_of(noisy / unq + rng.laplace(0.0, scales)) for _ in range(BOOTSTRAP_DRAWS)])
    hw = mechanisms.half_width(ReleaseCost(0, "count", costs[0].mechanism,
                                                      costs[0].sensitivity, costs[0].scale, costs[0].epsilon))
    return (
        Estimate("n", float(n), max(float(n) - hw, 0.0), float(n) + hw, "discrete laplace, OpenDP accuracy"),
        interval("rmse", rmse, boots[:, 1]),
        interval("r2", min(r2, 1.0) if math.isfinite(r2) else 0.0, boots[:, 2]),
    )


def auc_from_histogram(pos: np.ndarray[Any, Any], neg: np.ndarray[Any, Any]) -> float:
    """AUC (probability a positive scores above a negative, ties 1/2) from per-bin counts (ascending)."""
    pos, neg = np.maximum(pos, 0.0), np.maximum(neg, 0.0)
    p, n = pos.sum(), neg.sum()
    if p <= 0 or n <= 0:
        return 0.5
    below = np.cumsum(neg) - neg
    return float(np.clip((pos * (below + neg / 2)).sum() / (p * n), 0.0, 1.0))


def _eval_logistic(engine: Engine, d: mp.Design, sql_table: str, betas: Sequence[float],
                   req: EvaluateRequest, cost: ModelCost
                   ) -> tuple[tuple[Estimate, ...], tuple[ConfusionMatrix, ...]]:
    s = f"least(greatest({_prediction_sql(d, betas, req.intercept)}, -60.0), 60.0)"
    b = mp.SCORE_BINS
    bin_sql = f"least(CAST(floor({b} / (1.0 + exp(-({s})))) AS BIGINT), {b - 1})"
    label = label_sql(d.label)
    sql = (f"SELECT {bin_sql}, CAST({label} AS BIGINT), count(*) FROM {table_ref(sql_table)} "
           f"WHERE {quote_ident(d.label.column)} IS NOT NULL GROUP BY 1, 2")
    cells = [0] * (2 * b)  # [neg bins..., pos bins...]: every cell released, also empty ones
    for bin_, lab, cnt in run_model_select(engine, sql):
        if not (isinstance(bin_, int) and 0 <= bin_ < b and lab in (0, 1)):
            raise RuntimeError("histogram cell outside the declared bins")
        cells[lab * b + bin_] = int(cnt)
    noisy = np.array(laplace_release(cost, cells), dtype=float)
    del cells
    rng = np.random.default_rng()
    draws = [noisy + rng.laplace(0.0, cost.scale, size=noisy.shape) for _ in range(BOOTSTRAP_DRAWS)]

    def auc(v: np.ndarray[Any, Any]) -> float:
        return auc_from_histogram(v[b:], v[:b])

    def conf(v: np.ndarray[Any, Any], t: float) -> tuple[float, float, float, float]:
        k = min(math.ceil(t * b - 1e-9), b)  # score >= t  <=>  bin >= ceil(t * bins) (thresholds snap)
        neg, pos = np.maximum(v[:b], 0.0), np.maximum(v[b:], 0.0)
        return float(pos[k:].sum()), float(neg[k:].sum()), float(neg[:k].sum()), float(pos[:k].sum())

    pos_total = float(np.maximum(noisy[b:], 0).sum())
    n = float(np.maximum(noisy, 0).sum())
    metrics = (
        interval("auc", auc(noisy), np.array([auc(v) for v in draws])),
        interval("n", n, np.array([np.maximum(v, 0).sum() for v in draws])),
        interval("positives", pos_total, np.array([np.maximum(v[b:], 0).sum() for v in draws])),
    )
    confusion = []
    for t in req.thresholds:
        point = conf(noisy, t)
        boot = np.array([conf(v, t) for v in draws])
        tp, fp, tn, fn = (interval(nm, point[i], boot[:, i]) for i, nm in enumerate(("tp", "fp", "tn", "fn")))
        confusion.append(ConfusionMatrix(t, tp, fp, tn, fn))
    return metrics, tuple(confusion)
