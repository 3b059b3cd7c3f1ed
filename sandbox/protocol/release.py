"""What a query releases: noisy values with their noise description, public group keys, and costs.

The sandbox answers an `ExecuteRequest` with an `ExecuteResult`: per output row the public group keys
and, per aggregate, a `NoisyValue` (noisy value, mechanism, scale, standard deviation, 95% interval),
plus the OpenDP cost of every measurement. The exact aggregates never leave the sandbox process; no type
here can carry them (`tests/sandbox/protocol/test_reply_allowlist.py` checks every reply field).
"""

from __future__ import annotations

import math

from sandbox.protocol.base import Envelope, Strict
from sandbox.protocol.plan import Scalar, finite_scalars

__all__ = ["ExecuteResult", "NoisyValue", "ReleaseCost", "ReleaseRow"]

_NUMBERS = ("value", "scale", "stddev", "ci_lower", "ci_upper")


class NoisyValue(Strict, frozen=True, array_like=True):
    """One released value with its noise description and a 95% confidence interval (on the wire: an
    array in field order, the bulk of a large release)."""

    value: float | int
    mechanism: str
    scale: float
    stddev: float
    ci_lower: float
    ci_upper: float

    def __post_init__(self) -> None:
        numbers = (self.value, self.scale, self.stddev, self.ci_lower, self.ci_upper)
        for v in numbers:
            # the common case (a float) first: this runs for every value of a release
            if (v.__class__ is not float and (isinstance(v, bool) or not isinstance(v, int | float))) or (
                    not math.isfinite(v)):
                name = next(n for n, w in zip(_NUMBERS, numbers, strict=True) if w is v)
                raise ValueError(f"NoisyValue.{name} must be a finite number")


class ReleaseRow(Strict, frozen=True):
    """One answer row: public group keys (from the declared domain or DP partition selection) and one
    noisy value per aggregate."""

    keys: tuple[Scalar, ...]
    values: tuple[NoisyValue, ...]

    def __post_init__(self) -> None:
        if not finite_scalars(self.keys):
            raise ValueError("group keys must be finite")


class ReleaseCost(Strict, frozen=True):
    """What one measurement of the plan cost, from its OpenDP privacy map."""

    aggregate_index: int
    component: str  # "count" or "sum"
    mechanism: str
    sensitivity: int | float  # the d_in: an exact int for the integer mechanisms (may exceed 2^53)
    scale: float
    epsilon: float
    delta: float = 0.0
    threshold: int = 0  # partition selection ("select" component): the release threshold
    rho: float = 0.0  # zCDP grants: the measurement's rho (its `epsilon` is then 0)


class ExecuteResult(Envelope, frozen=True, tag="result"):
    """The sandbox's answer: noisy rows and the cost of every measurement that produced them."""

    rows: tuple[ReleaseRow, ...]
    costs: tuple[ReleaseCost, ...]
    dataset_version: str
