"""The model boundary messages: what crosses the trust boundary for DP model training and evaluation.

In: `TrainRequest` (fit a linear or logistic regression) and `EvaluateRequest` (DP metrics of the
consumer's own model). Out: `TrainResult` and `EvaluateResult`, which can carry only DP outputs:
coefficients and metrics computed from noisy statistics, each `Estimate` with an optional interval,
and the OpenDP cost of every measurement (`ModelCost`). No type here can carry a row, a score or an
exact aggregate.

Wire format: the same tagged JSON frames as `sandbox.protocol.messages`, which dispatches the tags in
`MODEL_TAGS` here (strict: unknown keys and malformed numbers are refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias
from typing import Literal as TypingLiteral

from sandbox.protocol.messages import ProtocolError

ModelKind: TypeAlias = TypingLiteral["linear", "logistic"]
MODEL_KINDS: tuple[ModelKind, ...] = ("linear", "logistic")
MODEL_TAGS = frozenset({"train", "train_result", "evaluate", "evaluate_result"})


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number")
    return float(v)


@dataclass(frozen=True, slots=True)
class TrainRequest:
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


@dataclass(frozen=True, slots=True)
class Estimate:
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


@dataclass(frozen=True, slots=True)
class ModelCost:
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


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A fitted model: coefficients per term (original units), intercept, DP metrics and costs."""

    kind: ModelKind
    coefficients: tuple[Estimate, ...]
    intercept: Estimate
    metrics: tuple[Estimate, ...]
    costs: tuple[ModelCost, ...]
    dataset_version: str


@dataclass(frozen=True, slots=True)
class EvaluateRequest:
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


@dataclass(frozen=True, slots=True)
class ConfusionMatrix:
    """Noisy confusion counts at one score threshold (score >= threshold predicts positive)."""

    threshold: float
    tp: Estimate
    fp: Estimate
    tn: Estimate
    fn: Estimate


@dataclass(frozen=True, slots=True)
class EvaluateResult:
    """DP metrics of a consumer's model; never scores or residuals of individual rows."""

    kind: ModelKind
    metrics: tuple[Estimate, ...]
    confusion: tuple[ConfusionMatrix, ...]
    costs: tuple[ModelCost, ...]
    dataset_version: str


ModelMessage: TypeAlias = TrainRequest | TrainResult | EvaluateRequest | EvaluateResult

# ---------------------------------------------------------------------------------------------------
# JSON codec (strict)
# ---------------------------------------------------------------------------------------------------


def _keys(d: dict[str, Any], allowed: set[str]) -> None:
    extra = set(d) - allowed
    missing = allowed - set(d)
    if extra or missing:
        raise ProtocolError(f"unexpected keys {sorted(extra)} / missing keys {sorted(missing)}")


def _est_to_json(e: Estimate) -> list[Any]:
    return [e.name, e.value, e.ci_lower, e.ci_upper, e.note]


def _est_from_json(v: Any) -> Estimate:
    if not isinstance(v, list) or len(v) != 5:
        raise ProtocolError("estimate must be a list of 5")
    return Estimate(str(v[0]), v[1], v[2], v[3], str(v[4]))


def _cost_to_json(c: ModelCost) -> list[Any]:
    return [c.component, c.mechanism, c.sensitivity, c.scale, c.epsilon, c.delta, c.rho, c.count]


def _cost_from_json(v: Any) -> ModelCost:
    if not isinstance(v, list) or len(v) != 8:
        raise ProtocolError("cost must be a list of 8")
    if isinstance(v[7], bool) or not isinstance(v[7], int):
        raise ProtocolError("cost count must be an integer")
    sens, scale, eps, delta, rho = (_finite("cost", x) for x in v[2:7])
    return ModelCost(str(v[0]), str(v[1]), sens, scale, eps, delta, rho, v[7])


def _kind(v: Any) -> ModelKind:
    if v == "linear":
        return "linear"
    if v == "logistic":
        return "logistic"
    raise ProtocolError("unknown model kind")


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ProtocolError("expected a list of strings")
    return tuple(v)


def to_json(msg: ModelMessage) -> dict[str, Any]:
    """Serialize a model message to a tagged JSON-compatible dict."""
    match msg:
        case TrainRequest():
            return {
                "type": "train", "request_id": msg.request_id, "dataset": msg.dataset,
                "table": msg.table, "kind": msg.kind, "features": list(msg.features),
                "label": msg.label, "epsilon": msg.epsilon, "delta": msg.delta,
                "iterations": msg.iterations, "learning_rate": msg.learning_rate,
                "clip": msg.clip, "l2": msg.l2,
            }
        case TrainResult():
            return {
                "type": "train_result", "kind": msg.kind,
                "coefficients": [_est_to_json(e) for e in msg.coefficients],
                "intercept": _est_to_json(msg.intercept),
                "metrics": [_est_to_json(e) for e in msg.metrics],
                "costs": [_cost_to_json(c) for c in msg.costs],
                "dataset_version": msg.dataset_version,
            }
        case EvaluateRequest():
            return {
                "type": "evaluate", "request_id": msg.request_id, "dataset": msg.dataset,
                "table": msg.table, "kind": msg.kind,
                "coefficients": [[t, v] for t, v in msg.coefficients],
                "intercept": msg.intercept, "label": msg.label, "epsilon": msg.epsilon,
                "thresholds": list(msg.thresholds), "residual_bound": msg.residual_bound,
            }
        case EvaluateResult():
            return {
                "type": "evaluate_result", "kind": msg.kind,
                "metrics": [_est_to_json(e) for e in msg.metrics],
                "confusion": [
                    [m.threshold, *(_est_to_json(e) for e in (m.tp, m.fp, m.tn, m.fn))]
                    for m in msg.confusion
                ],
                "costs": [_cost_to_json(c) for c in msg.costs],
                "dataset_version": msg.dataset_version,
            }
    raise ProtocolError(f"not a model message: {type(msg).__name__}")


def from_json(d: dict[str, Any]) -> ModelMessage:
    """Deserialize and validate a model message (its "type" is one of MODEL_TAGS)."""
    t = d.get("type")
    try:
        if t == "train":
            _keys(d, {"type", "request_id", "dataset", "table", "kind", "features", "label",
                      "epsilon", "delta", "iterations", "learning_rate", "clip", "l2"})
            return TrainRequest(
                str(d["request_id"]), str(d["dataset"]), str(d["table"]), _kind(d["kind"]),
                _str_list(d["features"]), str(d["label"]), _finite("epsilon", d["epsilon"]),
                _finite("delta", d["delta"]), d["iterations"], _finite("learning_rate", d["learning_rate"]),
                _finite("clip", d["clip"]), _finite("l2", d["l2"]),
            )
        if t == "train_result":
            _keys(d, {"type", "kind", "coefficients", "intercept", "metrics", "costs", "dataset_version"})
            return TrainResult(
                _kind(d["kind"]), tuple(_est_from_json(e) for e in d["coefficients"]),
                _est_from_json(d["intercept"]), tuple(_est_from_json(e) for e in d["metrics"]),
                tuple(_cost_from_json(c) for c in d["costs"]), str(d["dataset_version"]),
            )
        if t == "evaluate":
            _keys(d, {"type", "request_id", "dataset", "table", "kind", "coefficients", "intercept",
                      "label", "epsilon", "thresholds", "residual_bound"})
            coefs = d["coefficients"]
            if not isinstance(coefs, list) or not all(isinstance(c, list) and len(c) == 2 for c in coefs):
                raise ProtocolError("coefficients must be [term, value] pairs")
            return EvaluateRequest(
                str(d["request_id"]), str(d["dataset"]), str(d["table"]), _kind(d["kind"]),
                tuple((str(c[0]), _finite("coefficient", c[1])) for c in coefs),
                _finite("intercept", d["intercept"]), str(d["label"]), _finite("epsilon", d["epsilon"]),
                tuple(_finite("threshold", x) for x in d["thresholds"]),
                _finite("residual_bound", d["residual_bound"]),
            )
        if t == "evaluate_result":
            _keys(d, {"type", "kind", "metrics", "confusion", "costs", "dataset_version"})
            confusion = []
            for m in d["confusion"]:
                if not isinstance(m, list) or len(m) != 5:
                    raise ProtocolError("confusion matrix must be a list of 5")
                confusion.append(ConfusionMatrix(_finite("threshold", m[0]),
                                                 *(_est_from_json(e) for e in m[1:])))
            return EvaluateResult(
                _kind(d["kind"]), tuple(_est_from_json(e) for e in d["metrics"]), tuple(confusion),
                tuple(_cost_from_json(c) for c in d["costs"]), str(d["dataset_version"]),
            )
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {t!r} message: {exc}") from exc
    raise ProtocolError(f"unknown model message type {t!r}")
