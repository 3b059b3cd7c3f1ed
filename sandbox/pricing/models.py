"""Pricing of model training and evaluation: designs, sensitivities and OpenDP measurements.

Pure (OpenDP only, no data): the gateway calls it with the public catalog to quote and charge a request;
the sandbox calls the same functions with its own catalog and refuses to spend more than was charged.

Encoding (shared by every model release). Each feature column becomes one or more *terms* scaled into
[-1, 1] using only the catalog's declared bounds: a numeric column clamped to [L, U] maps to
z = (2x - (L + U)) / (U - L); a bool column to z in {0, 1}; a string column with a public domain to
indicators z = [x = v] for every domain value but the first (the reference level). The *groups* are the
columns: a numeric or bool column contributes |z| <= 1, a one-hot block contributes at most one non-zero
indicator, so for the vector u = (1, z_1, ..., z_d[, v]) with G groups (intercept and label included):
sum_i |u_i| <= G and sum_i u_i^2 <= G. Every value is then *quantized* to an integer q = round(u * 2^16)
(|q| <= 2^16 exactly), so all sums DuckDB computes are exact integer sums (HUGEINT) and the
sensitivities below hold exactly, with no floating-point slack.

Privacy unit and K: as for queries, each unit keeps at most K = max_rows_per_unit rows of the table, so
one unit changes any sum of per-row vectors by at most K times the per-row bound (triangle inequality).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import opendp.prelude as dp

from sandbox.errors import PlanRejectedError
from sandbox.plans import bounds
from sandbox.pricing import mechanisms
from sandbox.pricing.cap_rules import ReleaseLoss
from sandbox.protocol.catalog import ColumnInfo, DatasetInfo, TableInfo
from sandbox.protocol.models import ModelCost, ModelKind

dp.enable_features("contrib")

QUANT_BITS = 16
Q = 1 << QUANT_BITS  # quantization: q = round(u * Q)
MAX_FEATURES = 64
MAX_TERMS = 256
MAX_ITERATIONS = 1000
DEFAULT_LOGISTIC_ITERATIONS = 8  # Newton steps (each: one gradient and one Hessian release)
MAX_THRESHOLDS = 99
SCORE_BINS = 100  # logistic evaluation: score histogram bins per label
DISCRETE_GAUSSIAN = "discrete_gaussian"
COMPOSITION = "composition"


class ModelSpecError(PlanRejectedError):
    """A model request names columns or parameters the catalog cannot support (decided from the catalog)."""

    def __init__(self, message: str, reason: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata


@dataclass(frozen=True, slots=True)
class Term:
    """One model term: a scaled numeric or bool column, or one indicator of a domain column."""

    name: str  # "col" or "col=value"
    column: str
    kind: str  # "numeric" | "bool" | "indicator"
    lower: float = 0.0
    upper: float = 1.0
    value: str = ""

    def scale(self) -> tuple[float, float]:
        """(a, c) with z = a * x + c for x inside the bounds (indicators and bools: (1, 0))."""
        if self.kind != "numeric":
            return 1.0, 0.0
        width = self.upper - self.lower
        return 2.0 / width, -(self.lower + self.upper) / width


@dataclass(frozen=True, slots=True)
class Label:
    """The label column: numeric with bounds (linear, scaled like a term) or bool (logistic)."""

    column: str
    kind: str  # "numeric" | "bool"
    lower: float = 0.0
    upper: float = 1.0


@dataclass(frozen=True, slots=True)
class Design:
    """The encoded model: terms, label, and the bounds that drive every sensitivity."""

    table: str
    terms: tuple[Term, ...]
    label: Label
    groups: int  # G_x: 1 (intercept) + number of feature columns
    k: int  # max rows per unit

    @property
    def p(self) -> int:
        """Number of coefficients including the intercept."""
        return 1 + len(self.terms)

    def columns(self) -> tuple[str, ...]:
        """Every column the model reads (features and label)."""
        return (*dict.fromkeys(t.column for t in self.terms), self.label.column)


def _column(table: TableInfo, name: str, role: str) -> ColumnInfo:
    col = table.column(name)
    if col is None:
        raise ModelSpecError(f"unknown column {name!r}", "UNKNOWN_COLUMN", column=name)
    if col.grade == "identifier":
        raise ModelSpecError(
            f"column {name!r} is an identifier and cannot be a model {role}", "IDENTIFIER_COLUMN",
            column=name)
    return col


def _bounded(col: ColumnInfo) -> tuple[float, float]:
    if col.type not in ("int64", "float64") or col.lower is None or col.upper is None:
        raise ModelSpecError(f"column {col.name!r} has no declared numeric bounds", "UNBOUNDED_COLUMN",
                             column=col.name)
    if not col.upper > col.lower:
        raise ModelSpecError(f"column {col.name!r} has an empty range", "UNBOUNDED_COLUMN",
                             column=col.name)
    return float(col.lower), float(col.upper)


def feature_terms(col: ColumnInfo) -> tuple[Term, ...]:
    """The terms of one feature column."""
    if col.type == "bool":
        return (Term(col.name, col.name, "bool"),)
    if col.type == "string":
        values = [v for v in (col.domain or ()) if isinstance(v, str)]
        if len(values) < 2:
            raise ModelSpecError(
                f"column {col.name!r} has no public domain to one-hot encode", "UNBOUNDED_COLUMN",
                column=col.name)
        return tuple(Term(f"{col.name}={v}", col.name, "indicator", value=v) for v in values[1:])
    lo, hi = _bounded(col)
    return (Term(col.name, col.name, "numeric", lo, hi),)


def design(dataset: DatasetInfo, table_name: str, features: Sequence[str], label: str,
           kind: ModelKind) -> Design:
    """Encode a model over `table_name` from the public catalog.

    Raises:
        ModelSpecError: unknown table/column, identifier, unbounded column, bad label, duplicates.
    """
    table = dataset.table(table_name)
    if table is None:
        raise ModelSpecError(f"unknown table {table_name!r}", "UNKNOWN_TABLE", table=table_name)
    if not features:
        raise ModelSpecError("a model needs at least one feature", "MISSING_FIELD", field="features")
    if len(features) > MAX_FEATURES or len(set(features)) != len(features):
        raise ModelSpecError("features must be distinct (at most 64)", "INVALID_FEATURES",
                             field="features")
    terms: list[Term] = []
    for name in features:
        terms.extend(feature_terms(_column(table, name, "feature")))
    if len(terms) > MAX_TERMS:
        raise ModelSpecError("too many model terms", "INVALID_FEATURES", field="features")
    if label in features:
        raise ModelSpecError("the label cannot also be a feature", "INVALID_LABEL", field="label")
    lcol = _column(table, label, "label")
    if kind == "logistic":
        if lcol.type != "bool":
            raise ModelSpecError(f"logistic regression needs a bool label; {label!r} is {lcol.type}",
                                 "INVALID_LABEL", field="label")
        lab = Label(label, "bool")
    else:
        if lcol.type not in ("int64", "float64"):
            raise ModelSpecError(f"linear regression needs a numeric label; {label!r} is {lcol.type}",
                                 "INVALID_LABEL", field="label")
        lo, hi = _bounded(lcol)
        lab = Label(label, "numeric", lo, hi)
    return Design(table_name, tuple(terms), lab, 1 + len(features), table.max_rows_per_unit)


def eval_design(dataset: DatasetInfo, table_name: str, coefficients: Sequence[tuple[str, float]],
                label: str, kind: ModelKind) -> tuple[Design, tuple[float, ...]]:
    """The design of a consumer's model from its term names, with the coefficients in term order.

    Raises:
        ModelSpecError: as `design`, or a term that is not a term of its column (UNKNOWN_TERM).
    """
    table = dataset.table(table_name)
    if table is None:
        raise ModelSpecError(f"unknown table {table_name!r}", "UNKNOWN_TABLE", table=table_name)
    by_term = dict(coefficients)
    if len(by_term) != len(coefficients):
        raise ModelSpecError("duplicate coefficient term", "UNKNOWN_TERM", field="coefficients")
    columns = list(dict.fromkeys(t.split("=", 1)[0] for t, _ in coefficients))
    d = design(dataset, table_name, columns, label, kind)
    known = {t.name for t in d.terms}
    for term, _ in coefficients:
        if term not in known:
            raise ModelSpecError(f"{term!r} is not a model term of its column", "UNKNOWN_TERM",
                                 term=term)
    return d, tuple(by_term.get(t.name, 0.0) for t in d.terms)


# ---------------------------------------------------------------------------------------------------
# Linear regression: one discrete Laplace release of the upper triangle of sum_rows q q^T
# ---------------------------------------------------------------------------------------------------


def linear_sensitivity(d: Design) -> int:
    """L1 sensitivity of the quantized statistics vector (upper triangle of sum q q^T, q = Q*(1, z, v)).

    Per row: sum_{i<=j} |q_i q_j| = ((sum |q_i|)^2 + sum q_i^2) / 2 <= Q^2 (G^2 + G) / 2 with
    G = G_x + 1 groups (intercept, feature columns, label). One unit adds or removes at most K rows.
    """
    g = d.groups + 1
    return d.k * Q * Q * (g * g + g) // 2


def _i64(sens: int) -> int:
    """An integer sensitivity as OpenDP's i64 d_in, exactly, or a refusal (never rounded down)."""
    if sens > mechanisms.MAX_I64:
        raise ModelSpecError(f"the model's sensitivity {sens} exceeds 2^63 - 1; use fewer features or a "
                             "table with fewer rows per unit", "INVALID_FEATURES", field="features")
    return sens


def price_linear(d: Design, epsilon: float) -> tuple[ModelCost, ...]:
    """The one measurement of linear training: OpenDP discrete Laplace on i64 vectors, l1_distance.

    Its cost is OpenDP's map at d_in = `linear_sensitivity` (the exact int), calibrated to be at most
    `epsilon`. The cost's `sensitivity` (shown to the consumer) is that int as a float rounded up.
    """
    sens = _i64(linear_sensitivity(d))
    scale, eps = mechanisms.calibrate(True, sens, epsilon)
    return (ModelCost("sufficient_statistics", mechanisms.DISCRETE_LAPLACE, bounds.float_up(sens), scale,
                      eps),)


# ---------------------------------------------------------------------------------------------------
# Logistic regression: 2T + 1 discrete Gaussian releases (noisy count, T gradient sums, T Hessian sums)
# ---------------------------------------------------------------------------------------------------


def clip_bound(d: Design, clip: float) -> float:
    """The per-row L2 clip C: the requested clip, at most the analytic bound sqrt(G_x).

    A row's logistic gradient is (sigmoid(theta . z~) - y) z~ with |sigmoid - y| <= 1 and
    ||z~||_2^2 <= G_x (z~ = (1, z)), so its norm never exceeds sqrt(G_x): clipping above it is a no-op.
    """
    analytic = math.sqrt(d.groups)
    return analytic if clip <= 0 else min(clip, analytic)


def sqrt_up(n: int) -> Fraction:
    """An exact rational at or above sqrt(n): the root itself for a perfect square, else the float just
    above math.sqrt (which is correctly rounded, so within half an ulp of the root)."""
    root = math.isqrt(n)
    if root * root == n:
        return Fraction(root)
    return Fraction(math.nextafter(math.sqrt(n), math.inf))


def logistic_sensitivity(d: Design, clip: float) -> int:
    """L2 sensitivity (integer, rounded up) of one quantized clipped gradient sum: the d_in of every
    logistic release.

    Per row the clipped gradient g has ||g||_2 <= C; quantized q_j = round(Q g_j) differs from Q g_j by
    at most 1/2 per coordinate, so ||q||_2 <= C Q + sqrt(p) / 2. K rows per unit: times K. Computed in
    exact rational arithmetic (sqrt rounded up) before the ceiling, so no float product rounds it down.
    """
    c = clip_bound(d, clip)
    return math.ceil(d.k * (Fraction(c) * Q + sqrt_up(d.p) / 2))


def count_multiplier(d: Design, clip: float) -> int:
    """m such that the count release sum_rows m (per-unit change K*m) fits the same d_in as a gradient."""
    return max(1, logistic_sensitivity(d, clip) // d.k)


def hessian_entries(d: Design) -> int:
    """The upper triangle of the p x p Hessian: p (p + 1) / 2 entries."""
    return d.p * (d.p + 1) // 2


def hessian_quantization(d: Design, clip: float) -> int:
    """Q_H: the Hessian's entries are quantized as round(Q_H w z~_i z~_j), with Q_H chosen so that one
    unit moves the quantized upper triangle by at most the gradient's d_in in L2.

    Per row w = sigmoid (1 - sigmoid) <= 1/4 and the upper triangle of w z~ z~^T has L2 norm at most its
    Frobenius norm w ||z~||_2^2 <= G_x / 4; quantization adds at most 1/2 per entry, so a row moves the
    quantized sum by at most Q_H G_x / 4 + sqrt(m) / 2 (m entries), a unit by K times that. The largest
    integer Q_H keeping K (Q_H G_x / 4 + sqrt(m) / 2) <= d_in is used (about 2^17 with the default clip),
    so the Hessian release is the same OpenDP measurement at the same d_in as a gradient release.

    Raises:
        ModelSpecError: the clip is so small that no Q_H >= 16 fits (the Hessian would be too coarse).
    """
    sens = logistic_sensitivity(d, clip)
    root = sqrt_up(hessian_entries(d))  # exact rational arithmetic below: the bound holds exactly
    q = math.floor((Fraction(sens, d.k) - root / 2) * 4 / d.groups)
    while q > 0 and d.k * (q * Fraction(d.groups, 4) + root / 2) > sens:
        q -= 1
    if q < 16:
        raise ModelSpecError("clip is too small for the Hessian release", "INVALID_MODEL_PARAMETER",
                             field="clip")
    return q


def gaussian_measurement(scale: float) -> dp.Measurement:
    """OpenDP discrete Gaussian on i64 vectors under l2_distance (zCDP): map(d) = d^2 / (2 scale^2)."""
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64")
    return dp.m.make_gaussian(*space, scale=scale)


def logistic_releases(iterations: int) -> int:
    """Releases of a logistic fit with T Newton steps: the count, then a gradient and a Hessian per step."""
    return 2 * iterations + 1


def logistic_chain(scale: float, releases: int, delta: float) -> dp.Measurement:
    """The accounting measurement: make_composition of `releases` Gaussians (all at the same d_in),
    converted with make_zCDP_to_approxDP and make_fix_delta at `delta`. Its map at d_in is the charged
    (epsilon, delta).

    The releases are adaptive (each step's gradient and Hessian are taken at the model the earlier noisy
    releases produced); zCDP composes adaptively with the same sum of rho (Bun & Steinke 2016, Lemma
    2.3), which is what OpenDP's composition map computes for these measurements.
    """
    m = gaussian_measurement(scale)
    comp = dp.c.make_composition([m] * releases)
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(comp), delta)


def _rho_to_epsilon(rho: float, delta: float) -> float:
    """OpenDP's zCDP -> (epsilon, delta) conversion of a total rho (via a unit Gaussian at d_in)."""
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    m = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(dp.m.make_gaussian(*space, scale=1.0)), delta)
    e, _ = m.map(math.sqrt(2 * rho))  # type: ignore[no-untyped-call]
    return float(e)


def calibrate_logistic(sens: int, releases: int, epsilon: float, delta: float) -> tuple[float, float]:
    """The scale of the `releases` Gaussians for a total of at most (epsilon, delta); returns (scale, epsilon).

    Deterministic, so gateway and sandbox find the same scale: bisect the total rho whose conversion
    is epsilon (OpenDP's conversion, on a unit Gaussian), derive the scale from
    rho = releases d^2 / (2 scale^2), then check the real chain's map and nudge the scale up until it fits.
    """
    lo, hi = 0.0, epsilon  # rho <= epsilon always converts to more than epsilon... bracket it
    while _rho_to_epsilon(hi, delta) <= epsilon:
        hi *= 2
        if hi > 1e12:
            raise PlanRejectedError("could not calibrate the noise scale")
    for _ in range(60):
        mid = (lo + hi) / 2
        if _rho_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    if lo <= 0:
        raise PlanRejectedError("epsilon too small for this delta")
    scale = sens * math.sqrt(releases / (2 * lo))
    for _ in range(64):
        e, _ = logistic_chain(scale, releases, delta).map(sens)  # type: ignore[no-untyped-call]
        if float(e) <= epsilon:
            return scale, float(e)
        scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    raise PlanRejectedError("could not calibrate the noise scale")  # pragma: no cover


def price_logistic(d: Design, epsilon: float, delta: float, iterations: int, clip: float
                   ) -> tuple[ModelCost, ...]:
    """Costs of logistic training: the count, T gradient sums, T Hessian sums (each its own rho) and the
    composition of all 2T + 1.

    Raises:
        PlanRejectedError: delta not in (0, 1), iterations out of range, a clip too small, or no usable scale.
    """
    if not 0 < delta < 1:
        raise ModelSpecError("logistic regression (Gaussian noise) needs 0 < delta < 1",
                             "INVALID_PRIVACY_LOSS", field="privacy_loss.delta")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ModelSpecError(f"iterations must be in [1, {MAX_ITERATIONS}]", "INVALID_MODEL_PARAMETER",
                             field="iterations")
    sens = _i64(logistic_sensitivity(d, clip))
    hessian_quantization(d, clip)  # refuses a clip too small for the Hessian before anything is charged
    releases = logistic_releases(iterations)
    scale, eps = calibrate_logistic(sens, releases, epsilon, delta)
    rho = float(gaussian_measurement(scale).map(sens))  # type: ignore[no-untyped-call]
    comp = dp.c.make_composition([gaussian_measurement(scale)] * releases)
    rho_total = float(comp.map(sens))  # type: ignore[no-untyped-call]
    shown = bounds.float_up(sens)
    return (
        ModelCost("count", DISCRETE_GAUSSIAN, shown, scale, 0.0, 0.0, rho, 1),
        ModelCost("gradient", DISCRETE_GAUSSIAN, shown, scale, 0.0, 0.0, rho, iterations),
        ModelCost("hessian", DISCRETE_GAUSSIAN, shown, scale, 0.0, 0.0, rho, iterations),
        ModelCost(COMPOSITION, "zCDP->approxDP", shown, scale, eps, delta, rho_total, releases),
    )


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------

EVAL_LINEAR_PARTS = ("count", "sum_sq_residual", "sum_label", "sum_sq_label")


def eval_linear_sensitivities(d: Design) -> tuple[int, ...]:
    """L1 sensitivities of the four linear-evaluation releases: count K; sum q_r^2 K Q^2 (residual
    clamped to the bound, scaled to [-1, 1]); sum q_v K Q; sum q_v^2 K Q^2 (label scaled to [-1, 1])."""
    return (d.k, d.k * Q * Q, d.k * Q, d.k * Q * Q)


def price_eval(d: Design, kind: ModelKind, epsilon: float) -> tuple[ModelCost, ...]:
    """Costs of an evaluation (pure DP, discrete Laplace, basic composition).

    Linear: four releases with epsilon/4 each. Logistic: one histogram of SCORE_BINS score bins x 2
    labels; each row falls in exactly one cell, so its L1 sensitivity is K.
    """
    if kind == "logistic":
        scale, eps = mechanisms.calibrate(True, _i64(d.k), epsilon)
        return (ModelCost("score_histogram", mechanisms.DISCRETE_LAPLACE, bounds.float_up(d.k), scale,
                          eps),)
    out = []
    for name, sens in zip(EVAL_LINEAR_PARTS, eval_linear_sensitivities(d), strict=True):
        scale, eps = mechanisms.calibrate(True, _i64(sens), epsilon / 4)
        out.append(ModelCost(name, mechanisms.DISCRETE_LAPLACE, bounds.float_up(sens), scale, eps))
    return tuple(out)


def charged(costs: Sequence[ModelCost]) -> tuple[float, float]:
    """The (epsilon, delta) to charge: the composition's, or the sum of pure-DP parts."""
    for c in costs:
        if c.component == COMPOSITION:
            return c.epsilon, c.delta
    return math.fsum(c.epsilon for c in costs), 0.0


def owner_loss(costs: Sequence[ModelCost]) -> ReleaseLoss:
    """A model request's loss in its own definition, for the data owner's cap (`sandbox.pricing.cap_rules`): logistic
    training is accounted in zCDP (the composed rho of its 2T + 1 Gaussian releases, OpenDP's
    make_composition map, no selection delta); linear training and every evaluation are pure DP (the sum
    of their discrete Laplace epsilons)."""
    for c in costs:
        if c.component == COMPOSITION:
            return ReleaseLoss("zcdp", 0.0, 0.0, c.rho)
    return ReleaseLoss.of(charged(costs)[0], 0.0, 0.0)


def price_train(d: Design, kind: ModelKind, epsilon: float, delta: float, iterations: int,
                clip: float) -> tuple[ModelCost, ...]:
    """Costs of a training request."""
    if kind == "linear":
        return price_linear(d, epsilon)
    return price_logistic(d, epsilon, delta, iterations, clip)
