"""The model boundary messages: what crosses the trust boundary for DP model training and evaluation.

In: `TrainRequest` (fit a linear or logistic regression) and `EvaluateRequest` (DP metrics of the
consumer's own model). Out: `TrainResult` and `EvaluateResult`, which can carry only DP outputs:
coefficients and metrics computed from noisy statistics, each `Estimate` with an optional interval,
and the OpenDP cost of every measurement (`ModelCost`). No type here can carry a row, a score or an
exact aggregate.

Each type is a record of the declared wire schema (`sandbox.protocol.base`); the messages are envelopes
listed in `sandbox.protocol.messages`.
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias
from typing import Literal as TypingLiteral

from sandbox.protocol.base import Envelope, Strict

ModelKind: TypeAlias = TypingLiteral["linear", "logistic"]
MODEL_KINDS: tuple[ModelKind, ...] = ("linear", "logistic")


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number")
    return float(v)


class TrainRequest(Envelope, frozen=True, tag="train"):
    """Fit a model on `table` of `dataset`, spending at most (`epsilon`, `delta`) (already charged).

    `features` are catalog column names (bounded numeric, bool, or string columns with a public
    domain, one-hot encoded); `label` is a bounded numeric column (linear) or a bool column (logistic).
    `iterations` (Newton steps; 0: the default), `learning_rate` (the step multiplier; 0: 1), `clip` (0: the
    analytic bound) and `l2` apply
    to logistic regression; `l2` is also the ridge added to X'X for linear regression.
    """

    request_id: str
    dataset: str
    table: str
    kind: ModelKind
    features: tuple[str, ...]
    label: str
    epsilon: float
    delta: float = 0.0
    iterations: int = 0
    learning_rate: float = 0.0
    clip: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}")
        for name in ("epsilon", "delta", "learning_rate", "clip", "l2"):
            if _finite(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must not be negative")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError("iterations must be a non-negative integer")


class Estimate(Strict, frozen=True):
    """One released number (a coefficient or a metric): value, and a 95% interval when computable."""

    name: str
    value: float
    ci_lower: float | None = None
    ci_upper: float | None = None
    note: str = ""  # how the interval was obtained (e.g. "laplace", "parametric bootstrap")

    def __post_init__(self) -> None:
        _finite("Estimate.value", self.value)
        if (self.ci_lower is None) != (self.ci_upper is None):
            raise ValueError("an interval needs both ends")
        if self.ci_lower is not None:
            _finite("Estimate.ci_lower", self.ci_lower)
            _finite("Estimate.ci_upper", self.ci_upper)


class ModelCost(Strict, frozen=True):
    """One measurement (or the composition) and its OpenDP privacy map.

    Pure-DP parts have `epsilon` (delta 0, rho 0). zCDP parts have `rho` (their own map) and epsilon 0;
    the part named "composition" carries the (epsilon, delta) the composed zCDP releases convert to,
    which is what is charged.
    """

    component: str
    mechanism: str
    sensitivity: float
    scale: float
    epsilon: float
    delta: float = 0.0
    rho: float = 0.0
    count: int = 1  # how many times this measurement ran (e.g. T gradient releases)

    def __post_init__(self) -> None:
        for name in ("sensitivity", "scale", "epsilon", "delta", "rho"):
            if _finite(name, getattr(self, name)) < 0:
                raise ValueError(f"ModelCost.{name} must not be negative")


class TrainResult(Envelope, frozen=True, tag="train_result"):
    """A fitted model: coefficients per term (original units), intercept, DP metrics and costs."""

    kind: ModelKind
    coefficients: tuple[Estimate, ...]
    intercept: Estimate
    metrics: tuple[Estimate, ...]
    costs: tuple[ModelCost, ...]
    dataset_version: str


class EvaluateRequest(Envelope, frozen=True, tag="evaluate"):
    """DP metrics of the consumer's model on `table`.

    `coefficients` are (term, value) pairs in original units, terms named like the training terms
    (`col`, or `col=value` for one indicator of a domain column); `thresholds` (logistic) are score
    thresholds in [0, 1] for confusion matrices; `residual_bound` (linear) clamps residuals, 0 means
    the label's range.
    """

    request_id: str
    dataset: str
    table: str
    kind: ModelKind
    coefficients: tuple[tuple[str, float], ...]
    intercept: float
    label: str
    epsilon: float
    thresholds: tuple[float, ...] = ()
    residual_bound: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}")
        _finite("intercept", self.intercept)
        _finite("epsilon", self.epsilon)
        if _finite("residual_bound", self.residual_bound) < 0:
            raise ValueError("residual_bound must not be negative")
        for term, v in self.coefficients:
            if not isinstance(term, str):
                raise ValueError("coefficient terms must be strings")
            _finite("coefficient", v)
        for t in self.thresholds:
            if not 0 <= _finite("threshold", t) <= 1:
                raise ValueError("thresholds must lie in [0, 1]")


class ConfusionMatrix(Strict, frozen=True):
    """Noisy confusion counts at one score threshold (score >= threshold predicts positive)."""

    threshold: float
    tp: Estimate
    fp: Estimate
    tn: Estimate
    fn: Estimate


class EvaluateResult(Envelope, frozen=True, tag="evaluate_result"):
    """DP metrics of a consumer's model; never scores or residuals of individual rows."""

    kind: ModelKind
    metrics: tuple[Estimate, ...]
    confusion: tuple[ConfusionMatrix, ...]
    costs: tuple[ModelCost, ...]
    dataset_version: str


ModelMessage: TypeAlias = TrainRequest | TrainResult | EvaluateRequest | EvaluateResult
