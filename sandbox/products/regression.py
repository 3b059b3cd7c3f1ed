"""Training in the sandbox: DP linear regression (noisy sufficient statistics) and DP logistic regression (noisy
Newton steps); the algorithms and their privacy arguments are in `sandbox.products.models`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sandbox.engine.engine import Engine
from sandbox.engine.storage import table_ref
from sandbox.plans.render import quote_ident
from sandbox.pricing import mechanisms
from sandbox.pricing import models as mp
from sandbox.products.model_sql import (
    BOOTSTRAP_DRAWS,
    I64_LIMIT,
    exact_ints,
    gaussian_accuracy,
    gaussian_release,
    interval,
    label_sql,
    laplace_release,
    quantize,
    run_model_select,
    scaled_label_sql,
    scaled_term_sql,
    sql_number,
)
from sandbox.protocol.messages import ReleaseCost
from sandbox.protocol.models import Estimate, ModelCost, TrainRequest

__all__ = [
    "exact_gradient",
    "exact_linear_statistics",
    "exact_step",
    "gradient_sql",
    "linear_statistics_sql",
    "newton_direction",
    "solve_linear",
    "step_sql",
    "to_original_units",
    "train_linear",
    "train_logistic",
]


# -- linear regression --------------------------------------------------------------------------------------


def linear_statistics_sql(d: mp.Design, sql_table: str) -> str:
    """One pass: the upper triangle of sum_rows q q^T, q = (2^16, q(z_1..z_d), q(v)), exact integers."""
    inner = [quantize(scaled_term_sql(t)) for t in d.terms] + [quantize(scaled_label_sql(d.label))]
    cols = ", ".join(f"{e} AS q{i + 1}" for i, e in enumerate(inner))
    names = [str(mp.Q)] + [f"q{i + 1}" for i in range(len(inner))]
    items = [f"sum(CAST({names[i]} AS BIGINT) * {names[j]})"
             for i in range(len(names)) for j in range(i, len(names))]
    return (f"SELECT {', '.join(items)} FROM (SELECT {cols} FROM {table_ref(sql_table)} "
            f"WHERE {quote_ident(d.label.column)} IS NOT NULL) AS s")


def exact_linear_statistics(engine: Engine, d: mp.Design, sql_table: str) -> list[int]:
    """The exact quantized statistics (never leave the sandbox; tests use them for sensitivity checks)."""
    rows = run_model_select(engine, linear_statistics_sql(d, sql_table))
    return exact_ints(rows[0])


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


def train_linear(engine: Engine, d: mp.Design, sql_table: str, cost: ModelCost, l2: float
                  ) -> tuple[tuple[Estimate, ...], Estimate, tuple[Estimate, ...]]:
    exact = exact_linear_statistics(engine, d, sql_table)
    noisy = np.array(laplace_release(cost, exact), dtype=float) / (mp.Q * mp.Q)
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
    coef_est = tuple(interval(t.name, c, bc[:, j]) for j, (t, c) in enumerate(zip(d.terms, coefs, strict=True)))
    n_hw = float(mechanisms.half_width(
        ReleaseCost(0, "count", cost.mechanism, cost.sensitivity, cost.scale, cost.epsilon)
    )) / (mp.Q * mp.Q)
    metrics = (
        Estimate("n", n, max(n - n_hw, 0.0), n + n_hw, "discrete laplace, OpenDP accuracy"),
        interval("rmse", rmse * s_y, np.array(boot_rmse)),
        interval("r2", r2, np.array(boot_r2)),
    )
    return coef_est, interval("intercept", intercept, np.array(boot_i)), metrics


# -- logistic regression ------------------------------------------------------------------------------------


def _step_levels(d: mp.Design, sql_table: str, theta: Sequence[float], clip: float) -> tuple[str, list[str]]:
    """The per-row derived table of a Newton step and the names of z~ = (1, z): columns z1..zd, the
    residual e = sigmoid - y, the clip factor f = min(1, C / (|e| ||z~||_2)) and the weight
    w = sigmoid (1 - sigmoid). Each row's scaled terms are computed once."""
    zs = ", ".join(f"{scaled_term_sql(t)} AS z{i + 1}" for i, t in enumerate(d.terms))
    names = ["1.0"] + [f"z{i + 1}" for i in range(len(d.terms))]
    znames = ", ".join(names[1:])
    score = " + ".join(f"{sql_number(float(th))} * {z}" for th, z in zip(theta, names, strict=True))
    score = f"least(greatest({score}, -60.0), 60.0)"
    level1 = (f"SELECT {zs}, {label_sql(d.label)} AS y FROM {table_ref(sql_table)} "
              f"WHERE {quote_ident(d.label.column)} IS NOT NULL")
    level2 = f"SELECT {znames}, y, 1.0 / (1.0 + exp(-({score}))) AS sg FROM ({level1}) AS s1"
    level3 = f"SELECT {znames}, sg - y AS e, sg * (1.0 - sg) AS w FROM ({level2}) AS s2"
    norm = f"abs(e) * sqrt({' + '.join(f'{z} * {z}' for z in names)})"
    level4 = (f"SELECT {znames}, e, w, least(1.0, {sql_number(clip)} / greatest({norm}, 1e-12)) AS f "
              f"FROM ({level3}) AS s3")
    return level4, names


def _quantize_by(expr: str, q: int) -> str:
    """round(expr * q) as BIGINT, clamped to [-q, q] (expr is in [-1, 1])."""
    return f"least(greatest(CAST(round(({expr}) * {q}) AS BIGINT), {-q}), {q})"


def gradient_sql(d: mp.Design, sql_table: str, theta: Sequence[float], clip: float) -> str:
    """One pass: sum_rows round(2^16 * clip_C((sigmoid(theta . z~) - y) z~)), exact integers."""
    rows, names = _step_levels(d, sql_table, theta, clip)
    items = [f"sum({quantize(f'e * f * {z}')})" for z in names]
    return f"SELECT {', '.join(items)} FROM ({rows}) AS s4"


def step_sql(d: mp.Design, sql_table: str, theta: Sequence[float], clip: float, qh: int) -> str:
    """One pass for a Newton step: the p gradient sums of `gradient_sql`, then the p (p + 1) / 2 sums
    round(Q_H w z~_i z~_j), i <= j (the upper triangle of the Hessian, row-major), exact integers."""
    rows, names = _step_levels(d, sql_table, theta, clip)
    items = [f"sum({quantize(f'e * f * {z}')})" for z in names]
    items += [f"sum({_quantize_by(f'w * {a} * {b}', qh)})"
              for i, a in enumerate(names) for b in names[i:]]
    return f"SELECT {', '.join(items)} FROM ({rows}) AS s4"


def exact_gradient(engine: Engine, d: mp.Design, sql_table: str, theta: Sequence[float], clip: float
                   ) -> list[int]:
    """Exact quantized clipped gradient sum (stays in the sandbox; tests check its sensitivity)."""
    return exact_ints(run_model_select(engine, gradient_sql(d, sql_table, theta, clip))[0])


def exact_step(engine: Engine, d: mp.Design, sql_table: str, theta: Sequence[float], clip: float, qh: int
               ) -> tuple[list[int], list[int]]:
    """Exact quantized (gradient, Hessian upper triangle) at theta (stays in the sandbox; tests check
    their sensitivities)."""
    row = exact_ints(run_model_select(engine, step_sql(d, sql_table, theta, clip, qh))[0])
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


def train_logistic(engine: Engine, d: mp.Design, sql_table: str, costs: tuple[ModelCost, ...],
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
    exact_n = exact_ints(run_model_select(engine, count_sql)[0])
    noisy_count = gaussian_release(scale, [min(exact_n[0] * mult, I64_LIMIT)])[0]
    del exact_n
    n = max(noisy_count / mult, 1.0)
    step = req.learning_rate or 1.0
    floor = 0.5 * math.sqrt(d.p) * scale / qh  # the Hessian noise's sd is scale / Q_H per entry
    ridge = np.array([0.0] + [req.l2 * n] * (d.p - 1))  # l2 on the mean loss, times n on the sums
    theta = np.zeros(d.p)
    grad = np.zeros(d.p)
    for _ in range(iterations):
        exact_g, exact_h = exact_step(engine, d, sql_table, theta.tolist(), clip, qh)
        noisy_g = np.array(gaussian_release(scale, exact_g), dtype=float) / mp.Q
        noisy_h = np.array(gaussian_release(scale, exact_h), dtype=float) / qh
        del exact_g, exact_h
        grad = noisy_g + ridge * theta
        hess = noisy_h.copy()
        hess[[i * d.p - i * (i - 1) // 2 for i in range(d.p)]] += ridge  # the diagonal of the upper triangle
        moved = theta - step * newton_direction(grad, hess, d.p, floor)
        if not np.all(np.isfinite(moved)):
            break
        theta = moved
    coefs, intercept = to_original_units(theta.tolist(), d, False)
    hw = gaussian_accuracy(scale) / mult
    metrics = (
        Estimate("n", n, max(n - hw, 0.0), n + hw, "discrete gaussian, OpenDP accuracy"),
        Estimate("final_gradient_norm", float(np.linalg.norm(grad / n)), note="post-processing, no interval"),
    )
    coef_est = tuple(Estimate(t.name, c, note="no interval") for t, c in zip(d.terms, coefs, strict=True))
    return coef_est, Estimate("intercept", intercept, note="no interval"), metrics
