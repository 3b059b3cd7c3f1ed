"""DP model training and evaluation inside the sandbox: SQL aggregates in DuckDB, noise with OpenDP.

Only noisy aggregates leave DuckDB and only post-processed DP outputs leave this module (coefficients,
metrics and costs; see `sandbox.protocol.models`). The designs, sensitivities and measurements are in
`sandbox.pricing.models` (shared with the gateway); this module checks the features and label against the
data owner's grade rules (`sandbox.plans.grades.check_model_grades`), re-prices every request from the sandbox's
own catalog and refuses it if it would spend more than the gateway charged, then charges the data owner's
cap (`Engine.charge_release`, with the request's loss in its own definition: `model_pricing.owner_loss`), all
before touching data; a request id is charged once, across all products.

Algorithms and privacy arguments (README "Models" has the long form):

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

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import opendp.prelude as dp

from sandbox.engine.engine import Engine
from sandbox.engine.guard import single_select_node
from sandbox.engine.storage import is_loaded_table, sql_table_name, table_ref
from sandbox.errors import PlanRejectedError
from sandbox.plans.compile import quote_ident, render_literal
from sandbox.plans.grades import check_model_grades
from sandbox.pricing import mechanisms
from sandbox.pricing import models as mp
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

log = logging.getLogger("sandbox.products.models")

DEFAULT_ITERATIONS = mp.DEFAULT_LOGISTIC_ITERATIONS
BOOTSTRAP_DRAWS = 200
I64_LIMIT = 2**62  # exact sums are clamped into i64 before noise (1-Lipschitz per coordinate)
_BOOT_NOTE = "parametric bootstrap of the DP noise (approximate; noise only, not sampling error)"

# ---------------------------------------------------------------------------------------------------
# Guarded execution (defence in depth, like sandbox.engine.guard, with the few extra functions models need)
# ---------------------------------------------------------------------------------------------------

_FUNCTIONS = frozenset(
    {"count_star", "count", "sum", "least", "greatest", "exp", "round", "sqrt", "abs", "floor",
     "+", "-", "*", "/"}
)
_CLASSES = frozenset(
    {"COLUMN_REF", "CONSTANT", "FUNCTION", "CAST", "COMPARISON", "CONJUNCTION", "OPERATOR", "CASE",
     "TYPE"}
)
_OPERATORS = frozenset({"OPERATOR_COALESCE", "OPERATOR_NOT", "OPERATOR_IS_NULL",
                        "OPERATOR_IS_NOT_NULL"})
_NODE_KEYS = frozenset(
    {"type", "cte_map", "select_list", "from_table", "where_clause", "group_expressions",
     "group_sets", "aggregate_handling", "query_location", "query_location_length"}
)


_TABLE_KEYS = frozenset(
    {"type", "table_name", "schema_name", "catalog_name", "qualified_name", "query_location",
     "query_location_length"}
)
_SUBQUERY_KEYS = frozenset({"type", "alias", "subquery", "query_location", "query_location_length"})


def _refuse(why: str) -> PlanRejectedError:
    return PlanRejectedError(f"refused by the model SQL guard: {why}")


def check_model_select(con: duckdb.DuckDBPyConnection, sql: str, tables: frozenset[str]) -> None:
    """Refuse `sql` unless it is one aggregate SELECT over one loaded table with allowed functions."""
    _check_node(single_select_node(con, sql, _refuse), tables, 0)


def _check_node(node: Any, tables: frozenset[str], depth: int) -> None:
    """A SELECT over one loaded table, or over a derived table (a nested SELECT, at most 4 deep)."""
    if not isinstance(node, dict) or node.get("type") != "SELECT_NODE" or not set(node) <= _NODE_KEYS:
        raise _refuse("unsupported query shape")
    if node.get("cte_map", {}) not in ({}, {"map": []}):
        raise _refuse("common table expressions")
    src = node.get("from_table", {})
    if src.get("type") == "SUBQUERY" and depth < 4 and set(src) <= _SUBQUERY_KEYS:
        _check_node(src.get("subquery", {}).get("node"), tables, depth + 1)
    elif src.get("type") != "BASE_TABLE" or not is_loaded_table(src, tables) or set(src) - _TABLE_KEYS:
        raise _refuse("the source must be one loaded table")
    for key in ("select_list", "where_clause", "group_expressions"):
        _walk(node.get(key), 0)


def _walk(e: Any, depth: int) -> None:
    if depth > 2000:
        raise _refuse("expression too deep")
    if isinstance(e, list):
        for x in e:
            _walk(x, depth + 1)
        return
    if not isinstance(e, dict):
        return
    cls = e.get("class")
    if cls is not None:
        if cls not in _CLASSES:
            raise _refuse(f"expression class {cls}")
        if cls == "FUNCTION" and (e.get("function_name") not in _FUNCTIONS or e.get("distinct")):
            raise _refuse(f"function {e.get('function_name')!r}")
        if cls == "OPERATOR" and e.get("type") not in _OPERATORS:
            raise _refuse(f"operator {e.get('type')}")
        if cls == "TYPE" and e.get("type_name") not in ("DOUBLE", "BIGINT"):
            raise _refuse("cast target")
        if cls == "COLUMN_REF" and len(e.get("column_names", ())) != 1:
            raise _refuse("qualified column reference")
    for k, v in e.items():
        if k != "qualified_name":
            _walk(v, depth + 1)


def run_model_select(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    """Run one model SELECT through the engine's guarded, deadline-interrupted runner."""
    tables = frozenset(engine.row_counts)
    return engine.run_guarded(sql, lambda cur: check_model_select(cur, sql, tables))


# ---------------------------------------------------------------------------------------------------
# SQL for terms (all identifiers quoted, all literals rendered by type)
# ---------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError("non-finite literal")
    return f"CAST({x!r} AS DOUBLE)"


def raw_term_sql(t: mp.Term) -> str:
    """The term in original units, clamped to the declared bounds (NULL -> the midpoint / 0)."""
    col = quote_ident(t.column)
    if t.kind == "bool":
        return f"(CASE WHEN {col} THEN 1.0 ELSE 0.0 END)"
    if t.kind == "indicator":
        return f"(CASE WHEN {col} = {render_literal(t.value)} THEN 1.0 ELSE 0.0 END)"
    mid = (t.lower + t.upper) / 2
    return (f"least(greatest(COALESCE(CAST({col} AS DOUBLE), {_num(mid)}), {_num(t.lower)}), "
            f"{_num(t.upper)})")


def scaled_term_sql(t: mp.Term) -> str:
    """The term scaled into [-1, 1] (z = a x + c)."""
    if t.kind != "numeric":
        return raw_term_sql(t)
    a, c = t.scale()
    return f"({_num(a)} * {raw_term_sql(t)} + {_num(c)})"


def _quantize(expr: str) -> str:
    """round(expr * 2^16) as BIGINT, clamped to [-2^16, 2^16] (expr is in [-1, 1] up to rounding)."""
    return f"least(greatest(CAST(round(({expr}) * {mp.Q}) AS BIGINT), {-mp.Q}), {mp.Q})"


def _scaled_label_sql(label: mp.Label) -> str:
    col = quote_ident(label.column)
    width = label.upper - label.lower
    clamped = f"least(greatest(CAST({col} AS DOUBLE), {_num(label.lower)}), {_num(label.upper)})"
    return f"({_num(2 / width)} * {clamped} + {_num(-(label.lower + label.upper) / width)})"


def _label_sql(label: mp.Label) -> str:
    return f"(CASE WHEN {quote_ident(label.column)} THEN 1.0 ELSE 0.0 END)"


def _exact_ints(row: Sequence[Any]) -> list[int]:
    out = []
    for v in row:
        if v is None:
            v = 0  # SUM over no rows
        if isinstance(v, bool) or not isinstance(v, int):
            raise RuntimeError("non-integer exact aggregate")
        out.append(max(-I64_LIMIT, min(I64_LIMIT, v)))
    return out


def _laplace_release(cost: ModelCost, exact: list[int]) -> list[int]:
    meas = mechanisms.make_measurement(True, cost.scale)
    return [int(v) for v in meas(exact)]


def _gaussian_release(scale: float, exact: list[int]) -> list[int]:
    return [int(v) for v in mp.gaussian_measurement(scale)(exact)]


@functools.lru_cache(maxsize=256)
def _gaussian_accuracy(scale: float) -> float:
    """OpenDP's 95% accuracy of a discrete Gaussian (about 1 s at the scales of a logistic fit; the same
    scale recurs for the same design and privacy loss, so it is cached)."""
    return float(dp.discrete_gaussian_scale_to_accuracy(scale, mechanisms.ALPHA))


def _interval(name: str, value: float, draws: np.ndarray[Any, Any], note: str = _BOOT_NOTE) -> Estimate:
    finite = draws[np.isfinite(draws)]
    if not math.isfinite(value):
        value = 0.0
    if finite.size < len(draws) * 0.9:
        return Estimate(name, float(value), note="no interval: unstable under the noise")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return Estimate(name, float(value), float(lo), float(hi), note)


# ---------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------


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
            coefs, intercept, metrics = _train_linear(engine, d, sql_table, costs[0], req.l2)
        else:
            coefs, intercept, metrics = _train_logistic(engine, d, sql_table, costs, req, iterations)
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


# ---------------------------------------------------------------------------------------------------
# Linear regression
# ---------------------------------------------------------------------------------------------------


def linear_statistics_sql(d: mp.Design, sql_table: str) -> str:
    """One pass: the upper triangle of sum_rows q q^T, q = (2^16, q(z_1..z_d), q(v)), exact integers."""
    inner = [_quantize(scaled_term_sql(t)) for t in d.terms] + [_quantize(_scaled_label_sql(d.label))]
    cols = ", ".join(f"{e} AS q{i + 1}" for i, e in enumerate(inner))
    names = [str(mp.Q)] + [f"q{i + 1}" for i in range(len(inner))]
    items = [f"sum(CAST({names[i]} AS BIGINT) * {names[j]})"
             for i in range(len(names)) for j in range(i, len(names))]
    return (f"SELECT {', '.join(items)} FROM (SELECT {cols} FROM {table_ref(sql_table)} "
            f"WHERE {quote_ident(d.label.column)} IS NOT NULL) AS s")


def exact_linear_statistics(engine: Engine, d: mp.Design, sql_table: str) -> list[int]:
    """The exact quantized statistics (never leave the sandbox; tests use them for sensitivity checks)."""
    rows = run_model_select(engine, linear_statistics_sql(d, sql_table))
    return _exact_ints(rows[0])


def _triangle_to_matrix(vec: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    m = np.zeros((size, size))
    iu = np.triu_indices(size)
    m[iu] = vec
    return m + np.triu(m, 1).T


def solve_linear(stats: np.ndarray[Any, Any], d: mp.Design, noise_sd: float, l2: float
                 ) -> tuple[np.ndarray[Any, Any], float, float, float]:
    """Post-processing of the (noisy) dequantized statistics: (w, n, rmse_v, r2) in scaled units.

    X'X is symmetrized (by construction), its eigenvalues are floored at 2 sqrt(p) * noise_sd (the
    typical spectral norm of the noise matrix) so it stays positive definite, and `l2 * n` is added to
    the diagonal of the non-intercept terms (ridge).
    """
    size = d.p + 1
    m = _triangle_to_matrix(stats, size)
    xtx, xty, yty = m[: d.p, : d.p], m[: d.p, d.p], m[d.p, d.p]
    n = max(float(xtx[0, 0]), 1.0)
    vals, vecs = np.linalg.eigh(xtx)
    floor = max(2.0 * math.sqrt(d.p) * noise_sd, 1e-9 * n)
    a = (vecs * np.maximum(vals, floor)) @ vecs.T
    if l2 > 0:
        a = a + l2 * n * np.diag([0.0] + [1.0] * (d.p - 1))
    w = np.linalg.solve(a, xty)
    rss = float(yty - 2 * w @ xty + w @ xtx @ w)
    tss = float(yty - xty[0] ** 2 / n)
    rmse = math.sqrt(max(rss, 0.0) / n)
    r2 = 1.0 - rss / tss if tss > 0 else float("nan")
    return w, n, rmse, min(r2, 1.0)


def to_original_units(w: Sequence[float], d: mp.Design, label_scaled: bool) -> tuple[list[float], float]:
    """Coefficients per term and intercept in original units from scaled-space weights (w[0] intercept)."""
    coefs, intercept = [], float(w[0])
    for t, wj in zip(d.terms, w[1:], strict=True):
        a, c = t.scale()
        coefs.append(float(wj) * a)
        intercept += float(wj) * c
    if label_scaled:
        s_y, m_y = (d.label.upper - d.label.lower) / 2, (d.label.upper + d.label.lower) / 2
        coefs = [s_y * b for b in coefs]
        intercept = s_y * intercept + m_y
    return coefs, intercept


def _train_linear(engine: Engine, d: mp.Design, sql_table: str, cost: ModelCost, l2: float
                  ) -> tuple[tuple[Estimate, ...], Estimate, tuple[Estimate, ...]]:
    exact = exact_linear_statistics(engine, d, sql_table)
    noisy = np.array(_laplace_release(cost, exact), dtype=float) / (mp.Q * mp.Q)
    del exact
    noise_scale = cost.scale / (mp.Q * mp.Q)  # Laplace scale of each dequantized entry
    noise_sd = math.sqrt(2) * noise_scale
    w, n, rmse, r2 = solve_linear(noisy, d, noise_sd, l2)
    coefs, intercept = to_original_units(w.tolist(), d, True)
    s_y = (d.label.upper - d.label.lower) / 2
    rng = np.random.default_rng()
    boot_c, boot_i, boot_rmse, boot_r2 = [], [], [], []
    for _ in range(BOOTSTRAP_DRAWS):
        draw = noisy + rng.laplace(0.0, noise_scale, size=noisy.shape)
        try:
            wb, _, rb, r2b = solve_linear(draw, d, noise_sd, l2)
        except np.linalg.LinAlgError:
            continue
        cb, ib = to_original_units(wb.tolist(), d, True)
        boot_c.append(cb)
        boot_i.append(ib)
        boot_rmse.append(rb * s_y)
        boot_r2.append(r2b)
    bc = np.array(boot_c)
    coef_est = tuple(_interval(t.name, c, bc[:, j]) for j, (t, c) in enumerate(zip(d.terms, coefs, strict=True)))
    n_hw = float(mechanisms.half_width(
        ReleaseCost(0, "count", cost.mechanism, cost.sensitivity, cost.scale, cost.epsilon)
    )) / (mp.Q * mp.Q)
    metrics = (
        Estimate("n", n, max(n - n_hw, 0.0), n + n_hw, "discrete laplace, OpenDP accuracy"),
        _interval("rmse", rmse * s_y, np.array(boot_rmse)),
        _interval("r2", r2, np.array(boot_r2)),
    )
    return coef_est, _interval("intercept", intercept, np.array(boot_i)), metrics


# ---------------------------------------------------------------------------------------------------
# Logistic regression
# ---------------------------------------------------------------------------------------------------


def _step_levels(d: mp.Design, sql_table: str, theta: Sequence[float], clip: float) -> tuple[str, list[str]]:
    """The per-row derived table of a Newton step and the names of z~ = (1, z): columns z1..zd, the
    residual e = sigmoid - y, the clip factor f = min(1, C / (|e| ||z~||_2)) and the weight
    w = sigmoid (1 - sigmoid). Each row's scaled terms are computed once."""
    zs = ", ".join(f"{scaled_term_sql(t)} AS z{i + 1}" for i, t in enumerate(d.terms))
    names = ["1.0"] + [f"z{i + 1}" for i in range(len(d.terms))]
    znames = ", ".join(names[1:])
    score = " + ".join(f"{_num(float(th))} * {z}" for th, z in zip(theta, names, strict=True))
    score = f"least(greatest({score}, -60.0), 60.0)"
    level1 = (f"SELECT {zs}, {_label_sql(d.label)} AS y FROM {table_ref(sql_table)} "
              f"WHERE {quote_ident(d.label.column)} IS NOT NULL")
    level2 = f"SELECT {znames}, y, 1.0 / (1.0 + exp(-({score}))) AS sg FROM ({level1}) AS s1"
    level3 = f"SELECT {znames}, sg - y AS e, sg * (1.0 - sg) AS w FROM ({level2}) AS s2"
    norm = f"abs(e) * sqrt({' + '.join(f'{z} * {z}' for z in names)})"
    level4 = (f"SELECT {znames}, e, w, least(1.0, {_num(clip)} / greatest({norm}, 1e-12)) AS f "
              f"FROM ({level3}) AS s3")
    return level4, names


def _quantize_by(expr: str, q: int) -> str:
    """round(expr * q) as BIGINT, clamped to [-q, q] (expr is in [-1, 1])."""
    return f"least(greatest(CAST(round(({expr}) * {q}) AS BIGINT), {-q}), {q})"


def gradient_sql(d: mp.Design, sql_table: str, theta: Sequence[float], clip: float) -> str:
    """One pass: sum_rows round(2^16 * clip_C((sigmoid(theta . z~) - y) z~)), exact integers."""
    rows, names = _step_levels(d, sql_table, theta, clip)
    items = [f"sum({_quantize(f'e * f * {z}')})" for z in names]
    return f"SELECT {', '.join(items)} FROM ({rows}) AS s4"


def step_sql(d: mp.Design, sql_table: str, theta: Sequence[float], clip: float, qh: int) -> str:
    """One pass for a Newton step: the p gradient sums of `gradient_sql`, then the p (p + 1) / 2 sums
    round(Q_H w z~_i z~_j), i <= j (the upper triangle of the Hessian, row-major), exact integers."""
    rows, names = _step_levels(d, sql_table, theta, clip)
    items = [f"sum({_quantize(f'e * f * {z}')})" for z in names]
    items += [f"sum({_quantize_by(f'w * {a} * {b}', qh)})"
              for i, a in enumerate(names) for b in names[i:]]
    return f"SELECT {', '.join(items)} FROM ({rows}) AS s4"


def exact_gradient(engine: Engine, d: mp.Design, sql_table: str, theta: Sequence[float], clip: float
                   ) -> list[int]:
    """Exact quantized clipped gradient sum (stays in the sandbox; tests check its sensitivity)."""
    return _exact_ints(run_model_select(engine, gradient_sql(d, sql_table, theta, clip))[0])


def exact_step(engine: Engine, d: mp.Design, sql_table: str, theta: Sequence[float], clip: float, qh: int
               ) -> tuple[list[int], list[int]]:
    """Exact quantized (gradient, Hessian upper triangle) at theta (stays in the sandbox; tests check
    their sensitivities)."""
    row = _exact_ints(run_model_select(engine, step_sql(d, sql_table, theta, clip, qh))[0])
    return row[:d.p], row[d.p:]


def newton_direction(grad: np.ndarray[Any, Any], hess_upper: np.ndarray[Any, Any], p: int, floor: float
                     ) -> np.ndarray[Any, Any]:
    """H^-1 g with the symmetrized noisy Hessian's eigenvalues floored at `floor` (post-processing).

    Noise can make small eigenvalues tiny or negative (a step along them would explode); the floor is
    half the typical spectral size of the noise matrix (about sqrt(p) sigma_H), which keeps every step
    bounded while barely touching well-determined directions. Flooring changes the preconditioner only:
    the iteration's fixed point is still where the (noisy) gradient vanishes.
    """
    h = np.zeros((p, p))
    h[np.triu_indices(p)] = hess_upper
    h = h + np.triu(h, 1).T
    w, v = np.linalg.eigh(h)
    w = np.maximum(w, floor)
    direction: np.ndarray[Any, Any] = v @ ((v.T @ grad) / w)
    return direction


def _train_logistic(engine: Engine, d: mp.Design, sql_table: str, costs: tuple[ModelCost, ...],
                    req: TrainRequest, iterations: int
                    ) -> tuple[tuple[Estimate, ...], Estimate, tuple[Estimate, ...]]:
    """Noisy Newton (IRLS) on the unpenalised (or l2-penalised) mean log-loss in the scaled space.

    Privacy: the privacy unit is the dataset's unit, with at most K rows. 2T + 1 releases, all the same
    OpenDP measurement (`mp.gaussian_measurement(scale)`, discrete Gaussian, zCDP) at the same d_in =
    `mp.logistic_sensitivity` (one unit moves each released integer vector by at most d_in in L2): the
    count sum_rows m (moves by K m <= d_in), per step the clipped quantized gradient sum (`gradient_sql`)
    and the quantized Hessian upper triangle (`mp.hessian_quantization` gives the bound). The steps are
    adaptive; zCDP composes adaptively to the sum of the rho (OpenDP's make_composition map), converted to
    the charged (epsilon, delta) by make_zCDP_to_approxDP and make_fix_delta (`mp.logistic_chain`).
    Everything else (symmetrizing, the eigenvalue floor, the ridge, the step, the mapping back to
    original units) is post-processing of the noisy releases and the public catalog.
    """
    scale = costs[0].scale
    clip = mp.clip_bound(d, req.clip)
    mult = mp.count_multiplier(d, req.clip)
    qh = mp.hessian_quantization(d, req.clip)
    count_sql = (f"SELECT count(*) FROM {table_ref(sql_table)} "
                 f"WHERE {quote_ident(d.label.column)} IS NOT NULL")
    exact_n = _exact_ints(run_model_select(engine, count_sql)[0])
    noisy_count = _gaussian_release(scale, [min(exact_n[0] * mult, I64_LIMIT)])[0]
    del exact_n
    n = max(noisy_count / mult, 1.0)
    step = req.learning_rate or 1.0
    floor = 0.5 * math.sqrt(d.p) * scale / qh  # the Hessian noise's sd is scale / Q_H per entry
    ridge = np.array([0.0] + [req.l2 * n] * (d.p - 1))  # l2 on the mean loss, times n on the sums
    theta = np.zeros(d.p)
    grad = np.zeros(d.p)
    for _ in range(iterations):
        exact_g, exact_h = exact_step(engine, d, sql_table, theta.tolist(), clip, qh)
        noisy_g = np.array(_gaussian_release(scale, exact_g), dtype=float) / mp.Q
        noisy_h = np.array(_gaussian_release(scale, exact_h), dtype=float) / qh
        del exact_g, exact_h
        grad = noisy_g + ridge * theta
        hess = noisy_h.copy()
        hess[[i * d.p - i * (i - 1) // 2 for i in range(d.p)]] += ridge  # the diagonal of the upper triangle
        moved = theta - step * newton_direction(grad, hess, d.p, floor)
        if not np.all(np.isfinite(moved)):
            break
        theta = moved
    coefs, intercept = to_original_units(theta.tolist(), d, False)
    hw = _gaussian_accuracy(scale) / mult
    metrics = (
        Estimate("n", n, max(n - hw, 0.0), n + hw, "discrete gaussian, OpenDP accuracy"),
        Estimate("final_gradient_norm", float(np.linalg.norm(grad / n)), note="post-processing, no interval"),
    )
    coef_est = tuple(Estimate(t.name, c, note="no interval") for t, c in zip(d.terms, coefs, strict=True))
    return coef_est, Estimate("intercept", intercept, note="no interval"), metrics


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


def _prediction_sql(d: mp.Design, betas: Sequence[float], intercept: float) -> str:
    parts = [_num(intercept)] + [f"{_num(b)} * {raw_term_sql(t)}" for t, b in zip(d.terms, betas, strict=True)]
    return "(" + " + ".join(parts) + ")"


def _eval_linear(engine: Engine, d: mp.Design, sql_table: str, betas: Sequence[float],
                 req: EvaluateRequest, costs: tuple[ModelCost, ...]) -> tuple[Estimate, ...]:
    bound = req.residual_bound or (d.label.upper - d.label.lower)
    col = quote_ident(d.label.column)
    y = f"least(greatest(CAST({col} AS DOUBLE), {_num(d.label.lower)}), {_num(d.label.upper)})"
    r = f"least(greatest(({y} - {_prediction_sql(d, betas, req.intercept)}) / {_num(bound)}, -1.0), 1.0)"
    qr, qv = _quantize(r), _quantize(_scaled_label_sql(d.label))
    sql = (f"SELECT count(*), sum(CAST({qr} AS BIGINT) * {qr}), sum({qv}), sum(CAST({qv} AS BIGINT) * {qv}) "
           f"FROM {table_ref(sql_table)} WHERE {col} IS NOT NULL")
    exact = _exact_ints(run_model_select(engine, sql)[0])
    noisy = np.array([_laplace_release(c, [v])[0] for c, v in zip(costs, exact, strict=True)], dtype=float)
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
        _interval("rmse", rmse, boots[:, 1]),
        _interval("r2", min(r2, 1.0) if math.isfinite(r2) else 0.0, boots[:, 2]),
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
    label = _label_sql(d.label)
    sql = (f"SELECT {bin_sql}, CAST({label} AS BIGINT), count(*) FROM {table_ref(sql_table)} "
           f"WHERE {quote_ident(d.label.column)} IS NOT NULL GROUP BY 1, 2")
    cells = [0] * (2 * b)  # [neg bins..., pos bins...]: every cell released, also empty ones
    for bin_, lab, cnt in run_model_select(engine, sql):
        if not (isinstance(bin_, int) and 0 <= bin_ < b and lab in (0, 1)):
            raise RuntimeError("histogram cell outside the declared bins")
        cells[lab * b + bin_] = int(cnt)
    noisy = np.array(_laplace_release(cost, cells), dtype=float)
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
        _interval("auc", auc(noisy), np.array([auc(v) for v in draws])),
        _interval("n", n, np.array([np.maximum(v, 0).sum() for v in draws])),
        _interval("positives", pos_total, np.array([np.maximum(v[b:], 0).sum() for v in draws])),
    )
    confusion = []
    for t in req.thresholds:
        point = conf(noisy, t)
        boot = np.array([conf(v, t) for v in draws])
        tp, fp, tn, fn = (_interval(nm, point[i], boot[:, i]) for i, nm in enumerate(("tp", "fp", "tn", "fn")))
        confusion.append(ConfusionMatrix(t, tp, fp, tn, fn))
    return metrics, tuple(confusion)
