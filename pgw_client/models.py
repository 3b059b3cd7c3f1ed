"""DP models as Python values: a trained model's coefficients with their 95% intervals, its metrics, charge and
receipt; an evaluation's DP metrics and confusion matrices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgw_client.receipts import Receipt
from pgw_client.results import Budget, PrivacyLoss

__all__ = ["Confusion", "Estimate", "Evaluation", "Model", "evaluation_from_proto", "model_from_proto"]

_KINDS = {1: "linear", 2: "logistic"}


@dataclass(frozen=True, slots=True)
class Estimate:
    """One released number of a model: its value and, when the gateway gives one, its 95% interval."""

    name: str
    value: float
    lower: float | None
    upper: float | None
    note: str = ""

    @classmethod
    def from_proto(cls, e: Any) -> Estimate:
        """From a ``privacy_gateway.v1.Estimate``."""
        return cls(e.name, e.value, e.ci_lower if e.has_interval else None, e.ci_upper if e.has_interval else None,
                   e.note)


@dataclass(frozen=True, slots=True)
class Model:
    """A DP model the gateway trained: ``coefficients`` by term, the ``intercept``, fit ``metrics``, what this
    request charged (zero for a replay), the budget after it and the signed receipt."""

    kind: str
    coefficients: dict[str, Estimate]
    intercept: Estimate
    metrics: dict[str, Estimate]
    charged: PrivacyLoss
    original_cost: PrivacyLoss
    replayed: bool
    request_id: str
    budget: Budget
    receipt: Receipt | None

    def predict(self, row: dict[str, float]) -> float:
        """The linear predictor ``intercept + sum(coefficient * value)`` for one row of feature values by term
        (a logistic model's log-odds)."""
        return self.intercept.value + sum(c.value * float(row[term]) for term, c in self.coefficients.items())


def model_from_proto(resp: Any) -> Model:
    """A `Model` from a ``TrainModelResponse``."""
    cost = PrivacyLoss.from_proto(resp.privacy_cost)
    kind = _KINDS.get(int(resp.kind), "unspecified")
    return Model(kind, {e.name: Estimate.from_proto(e) for e in resp.coefficients}, Estimate.from_proto(resp.intercept),
                 {e.name: Estimate.from_proto(e) for e in resp.metrics}, PrivacyLoss() if resp.replayed else cost,
                 cost, resp.replayed, resp.request_id, Budget.from_proto(resp.budget),
                 Receipt.from_proto(resp.receipt) if resp.HasField("receipt") else None)


@dataclass(frozen=True, slots=True)
class Confusion:
    """A logistic model's noisy confusion matrix at one score threshold (score >= threshold is positive)."""

    threshold: float
    tp: Estimate
    fp: Estimate
    tn: Estimate
    fn: Estimate


@dataclass(frozen=True, slots=True)
class Evaluation:
    """DP metrics of a model on the data the gateway guards: ``metrics`` by name (linear: n, rmse, r2; logistic:
    auc, n, positives), a logistic model's ``confusion`` matrices, what this request charged (zero for a
    replay), the original cost, the budget after it and the signed receipt."""

    kind: str
    metrics: dict[str, Estimate]
    confusion: tuple[Confusion, ...]
    charged: PrivacyLoss
    original_cost: PrivacyLoss
    replayed: bool
    request_id: str
    budget: Budget
    receipt: Receipt | None


def evaluation_from_proto(resp: Any) -> Evaluation:
    """An `Evaluation` from an ``EvaluateModelResponse``."""
    cost = PrivacyLoss.from_proto(resp.privacy_cost)
    confusion = tuple(Confusion(m.threshold, Estimate.from_proto(m.tp), Estimate.from_proto(m.fp),
                                Estimate.from_proto(m.tn), Estimate.from_proto(m.fn)) for m in resp.confusion)
    return Evaluation(_KINDS.get(int(resp.kind), "unspecified"), {e.name: Estimate.from_proto(e) for e in resp.metrics},
                      confusion, PrivacyLoss() if resp.replayed else cost, cost, resp.replayed, resp.request_id,
                      Budget.from_proto(resp.budget),
                      Receipt.from_proto(resp.receipt) if resp.HasField("receipt") else None)
