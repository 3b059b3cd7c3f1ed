"""The consumer's split of a quantile output's epsilon between its point estimate and its 95% interval."""

from __future__ import annotations

import math

from msgspec.structs import replace

from gateway.errors import InvalidArgumentError
from sandbox.protocol.messages import AggregateKind, QueryPlan


def apply_interval_shares(plan: QueryPlan, shares: tuple[tuple[str, float], ...]) -> QueryPlan:
    """Set the interval share of each named quantile output (MEDIAN, QUANTILE*, PERCENTILE*, MIN, MAX).

    The share is the fraction in [0, 1) of the output's epsilon spent on its interval release
    (`sandbox.pricing.quantiles`); outputs not named keep the default. 0 opts out: all of the output's epsilon
    goes to the point and its interval is the declared bounds. Decided from the request only.

    Raises:
        InvalidArgumentError: reason INVALID_INTERVAL_SHARE, if a name is not a quantile output of the
            query or a share is not a finite number in [0, 1).
    """
    if not shares:
        return plan
    outputs = {o.name: o.aggregate_index for o in plan.outputs if o.aggregate_index is not None}
    new = list(plan.aggregates)
    for name, share in shares:
        index = outputs.get(name)
        if index is None or plan.aggregates[index].kind is not AggregateKind.QUANTILE:
            raise InvalidArgumentError(
                f"interval_shares: {name!r} is not a MEDIAN, QUANTILE, PERCENTILE, MIN or MAX output "
                "of the query",
                reason="INVALID_INTERVAL_SHARE", field="interval_shares", output=name)
        if not (math.isfinite(share) and 0.0 <= share < 1.0):
            raise InvalidArgumentError(
                f"interval_shares: the share of {name!r} must be a number in [0, 1), got {share!r}",
                reason="INVALID_INTERVAL_SHARE", field="interval_shares", output=name)
        new[index] = replace(new[index], interval_share=float(share))
    return replace(plan, aggregates=tuple(new))
