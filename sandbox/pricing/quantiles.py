"""DP quantiles with an honest 95% value interval: the point release and the certified ladder interval.

A quantile aggregate (MEDIAN, QUANTILE_CONT/DISC, PERCENTILE_*, MIN = alpha 0, MAX = alpha 1) is two
releases per cell, composed sequentially (the costs add: epsilon under pure DP, rho under zCDP):

1. **Point** (component "quantile", share 1 - f of the aggregate's epsilon): OpenDP's
   `make_quantile_score_candidates` >> `make_noisy_max(negate=True)` over the candidate grid
   c_0 = L < ... < c_{m-1} = U (`sandbox.plans.compile.quantile_candidates`), on the values snapped to the
   nearest candidate. It returns a candidate index p.
2. **Interval** (component "interval", share f, default `DEFAULT_INTERVAL_SHARE`): noisy counts of the
   cells of a *ladder* of boundaries around p (`ladder`), one vector discrete Laplace release
   (`make_laplace` on i64 with `l1_distance`, d_in = K: every row lies in exactly one ladder cell, so
   one unit moves the count vector by at most K in L1). The ends of the interval are the ladder
   boundaries the noisy counts *certify* (`certified_interval`).

Why not three quantile releases at shifted ranks? The exponential mechanism only guarantees that its
output's score is close to the *best achievable* score on the grid. When many values share one grid
bucket (a point mass: zeros, values clamped at a bound, integer data with few distinct values) no
candidate has a rank near the shifted target, and the "lower" release can land above the true
quantile far more often than 2.5% of the time (a unit test shows such a data set). Counting, unlike
selection, has a data-independent error, so the interval here is certified by counts.

The argument (next to `certified_interval`). Let x_(1) <= ... <= x_(n) be the cell's values after
contribution bounding and clamping, and let the truth be the alpha-quantile in the sense of DuckDB's
QUANTILE_CONT (linear interpolation at position alpha (n - 1)); it lies in [x_(r_lo), x_(r_hi)] with
r_lo = floor(alpha (n-1)) + 1 and r_hi = ceil(alpha (n-1)) + 1 (QUANTILE_DISC, MEDIAN, MIN = x_(1) and
MAX = x_(n) lie there too). For a grid boundary b (between candidate b-1 and b) let P_b be the number
of values whose snapped index is below b, and Q_b = P_b - alpha n = (1 - alpha) P_b - alpha (n - P_b).
Because P_b is an integer,

    P_b >= r_lo  <=>  Q_b > -alpha        and        P_b >= r_hi  <=>  Q_b >= 1 - alpha,

so no count n is needed: Q_b is a fixed linear combination of the ladder cells' counts, and its noisy
version Qhat_b = Q_b + E_b has noise E_b = (1 - alpha) * (sum of the noises of the cells below b)
- alpha * (sum of those above), a weighted sum of independent discrete Laplace variables. Its tail
margin t_b (P(E_b < -t_b) = P(E_b > t_b) <= 2.5%) comes from the Chernoff bound with the exact moment
generating function of the discrete Laplace distribution (`rank_margin`).

* Lower end: walk the ladder boundaries upwards while Qhat_b <= -alpha - t_b; the last boundary
  passed gives the lower end (none: L). Let b0 be the first ladder boundary with Q_b0 > -alpha (fixed
  by the data and p). The lower end is wrong only if the walk passed b0, i.e. Qhat_b0 <= -alpha - t_b0
  < Q_b0 - t_b0, i.e. E_b0 < -t_b0: probability <= 2.5%. One fixed boundary, so no union bound over
  the ladder is needed.
* Upper end: symmetrically, walk downwards while Qhat_b >= 1 - alpha + t_b; wrong only if
  E_b1 > t_b1 at the last boundary b1 with Q_b1 < 1 - alpha: probability <= 2.5%.
* Both hold with probability >= 95% (union bound), whatever p is: the ladder depends on the data only
  through the point release, whose randomness is independent of the counts' noise, so the bound holds
  conditionally on p and hence overall.

Grid resolution. On an integer grid (every integer of [L, U] a candidate, integer values) snapping is
the identity: P_b < r_lo means x_(r_lo) >= c_b, and P_b >= r_hi means x_(r_hi) <= c_(b-1). On a float
grid a value is within half a step of its candidate, so the ends are moved out by one grid step:
x_(r_lo) > c_(b-1) and x_(r_hi) < c_b.

The point is then clamped into the interval (post-processing; it only helps, since the interval holds
the truth with probability >= 95%). With f = 0 (the consumer's opt-out, `interval_shares`) there is no
interval release and the interval is [L, U], as for any release without assumptions on the data.

Privacy: both releases are OpenDP measurements on the contribution-bounded, clamped, snapped values
(snapping and cutting into ladder cells are row-by-row maps, which do not increase the symmetric
distance K between neighbouring data sets); the charge is the sum of their maps at d_in = K
(`composed_measurement` builds the same composition in OpenDP for the tests). Per cell, the releases
are on disjoint rows and every map is linear in the number of rows changed, so one charge covers all
cells. Definition-agnostic: nothing here depends on pure DP except the margin, chosen by the interval
release's mechanism (`margin`): the discrete Laplace Chernoff bound now, the discrete Gaussian's
subgaussian bound for a zCDP release of the same ladder counts (L2 sensitivity K); any other mechanism
is refused rather than given a wrong margin.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import opendp.prelude as dp

dp.enable_features("contrib")

INTERVAL = "interval"  # component name of the interval release
DISCRETE_LAPLACE = "discrete_laplace"  # the interval release's noise under pure DP (mechanisms.DISCRETE_LAPLACE)
DISCRETE_GAUSSIAN = "discrete_gaussian"  # its noise on zCDP grants (priced by sandbox.pricing.zcdp)
# Share of a quantile aggregate's loss spent on its interval by default. In simulation (docs/reference.md) 0.7
# narrowed the interval by ~20% but made the point ~4x worse, and 0.3 widened the interval ~2x.
DEFAULT_INTERVAL_SHARE = 0.5
# Each end of the interval may be wrong with probability at most this (union bound: 5% in all).
TAIL = 0.025
# Ladder offsets (in grid steps) from the point's bucket: the neighbouring steps, then doubling, so 12
# boundaries per side span the largest grid (1024 candidates) and the ladder has <= 25 cells. (A denser
# ~1.5x ladder with 43 cells gave no narrower intervals in simulation: its finer resolution is paid for
# by a ~30% larger margin, since every cell's noise enters every boundary's count.)
LADDER_OFFSETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MAX_LADDER_CELLS = 2 * len(LADDER_OFFSETS) + 1


def ladder(point: int, m: int) -> tuple[int, ...]:
    """Sorted boundaries (in 1..m-1) around the point's bucket `point` on a grid of `m` candidates.

    Boundary b separates candidate indices < b from those >= b. Below the point: b = point - d; above:
    b = point + 1 + d, for d in `LADDER_OFFSETS`. Depends only on the (released) point and the public
    grid size.
    """
    out = set()
    for d in LADDER_OFFSETS:
        for b in (point - d, point + 1 + d):
            if 1 <= b <= m - 1:
                out.add(b)
    return tuple(sorted(out))


def ladder_counts(counts: Sequence[int], boundaries: Sequence[int]) -> list[int]:
    """Exact counts of the ladder cells [0, b_1), [b_1, b_2), ..., [b_k, m) from per-candidate counts."""
    edges = [0, *boundaries, len(counts)]
    return [sum(counts[a:b]) for a, b in itertools.pairwise(edges)]


def _log_mgf(x: float, scale: float) -> float:
    """log E[exp(x Z)] of the discrete Laplace Z with P(z) proportional to exp(-|z| / scale), |x| < 1/scale.

    E[e^{xZ}] = (1 - q)^2 / ((1 - q e^x)(1 - q e^-x)) with q = e^{-1/scale}; written with expm1 so it is
    accurate for large scales.
    """
    if x == 0.0:
        return 0.0
    inv = 1.0 / scale
    return (
        2.0 * math.log(-math.expm1(-inv))
        - math.log(-math.expm1(abs(x) - inv))
        - math.log(-math.expm1(-abs(x) - inv))
    )


@functools.lru_cache(maxsize=4096)
def rank_margin(scale: float, below: int, above: int, alpha: float, tail: float = TAIL) -> float:
    """A t with P(E > t) <= tail (and, by symmetry, P(E < -t) <= tail) for E = (1 - alpha) * (sum of
    `below` noises) - alpha * (sum of `above` noises), each an independent discrete Laplace at `scale`.

    Chernoff: P(E > t) <= exp(-x t) * prod E[e^{x w Z}] for every x > 0, so
    t = min over x of (log-MGF of E at x + ln(1/tail)) / x. The function of x is unimodal (its
    derivative's sign is that of x K'(x) - K(x) - c, which increases), so a golden-section search finds
    the minimum; the returned t is the value at the point found (a valid bound at any x), nudged up by
    1e-9 relative for rounding.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError("scale must be finite and positive")
    a, b = 1.0 - alpha, alpha
    w = max(a if below else 0.0, b if above else 0.0)
    if w == 0.0:
        return 0.0
    c = math.log(1.0 / tail)
    hi = 1.0 / (scale * w)  # the MGF is finite for x < hi

    def f(u: float) -> float:
        x = u * hi
        k = (below * _log_mgf(x * a, scale) if below else 0.0) + (above * _log_mgf(x * b, scale) if above else 0.0)
        return (k + c) / x

    lo_u, hi_u = 1e-9, 1.0 - 1e-12
    g = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi_u - g * (hi_u - lo_u), lo_u + g * (hi_u - lo_u)
    f1, f2 = f(x1), f(x2)
    for _ in range(200):
        if f1 <= f2:
            hi_u, x2, f2 = x2, x1, f1
            x1 = hi_u - g * (hi_u - lo_u)
            f1 = f(x1)
        else:
            lo_u, x1, f1 = x1, x2, f2
            x2 = lo_u + g * (hi_u - lo_u)
            f2 = f(x2)
        if hi_u - lo_u < 1e-12:
            break
    return min(f1, f2) * (1.0 + 1e-9)


def gaussian_margin(scale: float, below: int, above: int, alpha: float, tail: float = TAIL) -> float:
    """`rank_margin` for discrete Gaussian noise (OpenDP's `make_gaussian` on integers, sigma = `scale`),
    for a zCDP version of the interval release: the discrete Gaussian is sigma-subgaussian
    (E[e^{xZ}] <= e^{x^2 sigma^2 / 2}; Canonne, Kamath & Steinke 2020), so E is subgaussian with
    variance proxy sigma^2 * sum(w^2) and t = sigma * sqrt(2 * sum(w^2) * ln(1/tail))."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError("scale must be finite and positive")
    w2 = below * (1.0 - alpha) ** 2 + above * alpha**2
    return scale * math.sqrt(2.0 * w2 * math.log(1.0 / tail)) * (1.0 + 1e-9)


def margin(mechanism: str, scale: float, below: int, above: int, alpha: float, tail: float = TAIL) -> float:
    """The one-sided `tail` margin of Qhat_b for the noise of `mechanism` (see `certified_interval`).

    Raises:
        ValueError: no tail bound is known here for `mechanism` (an interval must never be computed
            with another distribution's margin).
    """
    if mechanism == DISCRETE_LAPLACE:
        return rank_margin(scale, below, above, alpha, tail)
    if mechanism == DISCRETE_GAUSSIAN:
        return gaussian_margin(scale, below, above, alpha, tail)
    raise ValueError(f"no interval margin for mechanism {mechanism!r}")


def worst_margin(scale: float, tail: float = TAIL, mechanism: str = DISCRETE_LAPLACE) -> float:
    """An upper bound on every margin of a ladder (<= MAX_LADDER_CELLS cells, any alpha): all weights
    are at most 1 in absolute value, so the margin of the plain sum of all cells bounds them."""
    return margin(mechanism, scale, MAX_LADDER_CELLS, 0, 0.0, tail)


def certified_interval(
    noisy: Sequence[int | float],
    boundaries: Sequence[int],
    alpha: float,
    scale: float,
    candidates: Sequence[float],
    integer_grid: bool,
    mechanism: str = "discrete_laplace",
) -> tuple[float, float]:
    """The 95% interval [lo, hi] for the alpha-quantile from the noisy ladder counts (post-processing).

    `noisy[i]` is the noisy count of ladder cell i (cells are cut at `boundaries`, see `ladder`), drawn by
    `mechanism` at `scale` (the margins depend on the noise distribution: `margin`). See the module
    docstring for why the truth is inside with probability >= 95%.
    """
    k = len(boundaries)
    if len(noisy) != k + 1:
        raise ValueError("one noisy count per ladder cell is needed")
    total = math.fsum(float(v) for v in noisy)
    below = 0.0
    q = []  # Qhat at each boundary: (1 - alpha) * below - alpha * above
    for i in range(k):
        below += float(noisy[i])
        q.append((1.0 - alpha) * below - alpha * (total - below))
    m = len(candidates)
    lo, hi = float(candidates[0]), float(candidates[-1])
    for i in range(k):  # upwards while the boundary is certified below the quantile
        t = margin(mechanism, scale, i + 1, k - i, alpha)
        if not q[i] <= -alpha - t:
            break
        b = boundaries[i]
        lo = float(candidates[b if integer_grid else b - 1])
    for i in range(k - 1, -1, -1):  # downwards while the boundary is certified above it
        t = margin(mechanism, scale, i + 1, k - i, alpha)
        if not q[i] >= 1.0 - alpha + t:
            break
        b = boundaries[i]
        hi = float(candidates[b - 1 if integer_grid else min(b, m - 1)])
    if lo > hi:  # only when an end is already wrong; widening keeps whatever truth is covered
        lo, hi = hi, lo
    return lo, hi


def score_measurement(candidates: Sequence[float], alpha: float, scale: float) -> dp.Measurement:
    """The point release as one OpenDP chain on raw values (vector of floats, symmetric distance)."""
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    t = dp.t.make_quantile_score_candidates(*space, list(candidates), alpha)
    return t >> dp.m.make_noisy_max(t.output_domain, t.output_metric, dp.max_divergence(), scale=scale, negate=True)


def ladder_measurement(edges: Sequence[float], scale: float) -> dp.Measurement:
    """The interval release as one OpenDP chain on raw values: `make_find_bin` (cell index of each
    value, cut at `edges`) >> `make_count_by_categories` >> `make_laplace` (discrete, i64)."""
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    bins = dp.t.make_find_bin(*space, edges=list(edges))
    counts = dp.t.make_count_by_categories(
        bins.output_domain, bins.output_metric, categories=list(range(len(edges) + 1)),
        null_category=False, MO=dp.L1Distance[int], TOA="i64",
    )
    chain = bins >> counts
    return chain >> dp.m.make_laplace(chain.output_domain, chain.output_metric, scale=scale)


def composed_measurement(
    candidates: Sequence[float], alpha: float, point_scale: float, interval_scale: float, edges: Sequence[float]
) -> dp.Measurement:
    """OpenDP's composition of the two releases of one quantile (for one fixed ladder `edges`).

    The engine runs the same two measurements on counts computed in DuckDB; its charge must equal this
    composition's map at d_in = K (a unit test checks it). The ladder is chosen from the point release;
    `adaptive_composition` is the adaptive form of the same accounting.
    """
    return dp.c.make_composition(
        [score_measurement(candidates, alpha, point_scale), ladder_measurement(edges, interval_scale)]
    )


def adaptive_composition(k: int, point_epsilon: float, interval_epsilon: float) -> dp.Measurement:
    """OpenDP's adaptive composition with the two charged epsilons as budgets, at d_in = k. Queried
    first with the point measurement and then with the ladder measurement built from its output, it
    refuses any measurement whose map exceeds its budget; its own map(k) is the total charge."""
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    return dp.c.make_adaptive_composition(
        *space, dp.max_divergence(), d_in=k, d_mids=[point_epsilon, interval_epsilon]
    )
