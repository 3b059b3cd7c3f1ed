"""Pricing and noise under pure and approximate DP: the front door of `sandbox.pricing`.

The gateway calls `price` with the public catalog to quote and charge a plan; the sandbox calls the same
function with its own catalog, refuses the plan if the cost exceeds what the gateway authorised, and then
releases the exact aggregates it computed with the measurements the costs describe. The cost charged is
always the OpenDP privacy map of the measurement that produces the release, never a formula of ours.

The work is split by meaning:

* `sandbox.pricing.components`: the privacy model and a plan's measurements before pricing
  (sensitivities, the cells a unit reaches, shares, which count selects private keys);
* `sandbox.pricing.measurements`: the OpenDP measurements and their calibration;
* `sandbox.pricing.releases`: the noise added inside the sandbox, and intervals, averages and
  variances as post-processing;
* `sandbox.pricing.zcdp`: the same plan priced in rho with the Gaussian family.

This module prices (`price`, `total_epsilon`, `total_delta`) and re-exports the names callers use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sandbox.plans.bounds import float_up as float_up  # the rounding of float sensitivities
from sandbox.pricing.components import SELECT as SELECT
from sandbox.pricing.components import Component as Component
from sandbox.pricing.components import aggregate_bounds as aggregate_bounds
from sandbox.pricing.components import calibrate_quantile as calibrate_quantile
from sandbox.pricing.components import centred_sensitivity as centred_sensitivity
from sandbox.pricing.components import components as components
from sandbox.pricing.components import is_integer_sum as is_integer_sum
from sandbox.pricing.components import plan_cells as plan_cells
from sandbox.pricing.components import sum_sensitivity as sum_sensitivity
from sandbox.pricing.measurements import ALPHA as ALPHA
from sandbox.pricing.measurements import CONFIDENCE_LEVEL as CONFIDENCE_LEVEL
from sandbox.pricing.measurements import DISCRETE_GAUSSIAN as DISCRETE_GAUSSIAN
from sandbox.pricing.measurements import DISCRETE_LAPLACE as DISCRETE_LAPLACE
from sandbox.pricing.measurements import GAUSSIAN as GAUSSIAN
from sandbox.pricing.measurements import GAUSSIAN_MECHANISMS as GAUSSIAN_MECHANISMS
from sandbox.pricing.measurements import GAUSSIAN_THRESHOLD as GAUSSIAN_THRESHOLD
from sandbox.pricing.measurements import INTEGER_MECHANISMS as INTEGER_MECHANISMS
from sandbox.pricing.measurements import LAPLACE as LAPLACE
from sandbox.pricing.measurements import LAPLACE_THRESHOLD as LAPLACE_THRESHOLD
from sandbox.pricing.measurements import MAX_I64 as MAX_I64
from sandbox.pricing.measurements import MAX_THRESHOLD as MAX_THRESHOLD
from sandbox.pricing.measurements import NOISY_MAX as NOISY_MAX
from sandbox.pricing.measurements import NOISY_MAX_ZCDP as NOISY_MAX_ZCDP
from sandbox.pricing.measurements import THRESHOLD_MARGIN as THRESHOLD_MARGIN
from sandbox.pricing.measurements import THRESHOLD_MECHANISMS as THRESHOLD_MECHANISMS
from sandbox.pricing.measurements import KeyBound as KeyBound
from sandbox.pricing.measurements import SensitivityTooLargeError as SensitivityTooLargeError
from sandbox.pricing.measurements import accuracy_to_scale as accuracy_to_scale
from sandbox.pricing.measurements import alpha_fraction as alpha_fraction
from sandbox.pricing.measurements import calibrate as calibrate
from sandbox.pricing.measurements import calibrate_threshold as calibrate_threshold
from sandbox.pricing.measurements import d_in as d_in
from sandbox.pricing.measurements import integer_sensitivity as integer_sensitivity
from sandbox.pricing.measurements import make_measurement as make_measurement
from sandbox.pricing.measurements import make_threshold as make_threshold
from sandbox.pricing.measurements import mechanism_name as mechanism_name
from sandbox.pricing.measurements import noisy_max_measurement as noisy_max_measurement
from sandbox.pricing.measurements import quantile_measurement as quantile_measurement
from sandbox.pricing.measurements import quantile_scores as quantile_scores
from sandbox.pricing.measurements import score_transformation as score_transformation
from sandbox.pricing.measurements import smallest_true as smallest_true
from sandbox.pricing.measurements import threshold_space as threshold_space
from sandbox.pricing.releases import EXACT_DISCRETE_GAUSSIAN_SCALE as EXACT_DISCRETE_GAUSSIAN_SCALE
from sandbox.pricing.releases import MAX_EXACT_INT as MAX_EXACT_INT
from sandbox.pricing.releases import discrete_gaussian_accuracy as discrete_gaussian_accuracy
from sandbox.pricing.releases import half_width as half_width
from sandbox.pricing.releases import noisy_average as noisy_average
from sandbox.pricing.releases import noisy_count_or_sum as noisy_count_or_sum
from sandbox.pricing.releases import noisy_variance as noisy_variance
from sandbox.pricing.releases import quantile_rank_accuracy as quantile_rank_accuracy
from sandbox.pricing.releases import quantile_releaser as quantile_releaser
from sandbox.pricing.releases import release_quantile as release_quantile
from sandbox.pricing.releases import release_threshold as release_threshold
from sandbox.pricing.releases import release_vector as release_vector
from sandbox.pricing.releases import stddev as stddev
from sandbox.protocol.catalog import DatasetInfo
from sandbox.protocol.plan import QueryPlan
from sandbox.protocol.release import ReleaseCost as ReleaseCost


def price(
    plan: QueryPlan, dataset: DatasetInfo, epsilon: float, delta: float = 0.0
) -> tuple[ReleaseCost, ...]:
    """Calibrate every measurement of `plan` for a total of at most (`epsilon`, `delta`).

    Privacy: the returned `epsilon` (and `delta`) of each cost is `measurement.map(d_in)` with d_in from
    `components`; their sum is the query's privacy loss under basic composition. Only partition selection
    spends delta (all of it): the component that carries `keys` is priced as OpenDP's Laplace threshold
    mechanism at d_in = `keys` = (l0, l1, linf), with the smallest threshold whose map's delta fits, and
    runs one above it (`THRESHOLD_MARGIN`).
    """
    out: list[ReleaseCost] = []
    for c in components(plan, dataset):
        if c.keys is not None:
            scale, threshold, eps, dlt = calibrate_threshold(c.keys, epsilon * c.share, delta)
            out.append(ReleaseCost(c.aggregate_index, c.component, LAPLACE_THRESHOLD, c.sensitivity, scale,
                                   eps, dlt, threshold))
            continue
        if c.component == "quantile":
            scale, cost = calibrate_quantile(c, epsilon * c.share)
            mechanism = NOISY_MAX
        else:
            scale, cost = calibrate(c.integer, c.sensitivity, epsilon * c.share)
            mechanism = mechanism_name(c.integer)
        out.append(ReleaseCost(c.aggregate_index, c.component, mechanism, c.sensitivity, scale, cost))
    return tuple(out)


def total_epsilon(costs: Sequence[ReleaseCost]) -> float:
    """Sequential composition of pure-DP releases: the sum of their epsilons."""
    return math.fsum(c.epsilon for c in costs)


def total_delta(costs: Sequence[ReleaseCost]) -> float:
    """Basic composition of approximate-DP releases: the sum of their deltas."""
    return math.fsum(c.delta for c in costs)
