"""How a query's privacy loss is shared out: the caller's per-output weights, accuracy targets solved into
epsilons (or rho), and pricing refusals that are the caller's to fix."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import opendp.prelude as dp
from msgspec.structs import replace

from gateway.errors import GatewayInternalError, InvalidArgumentError, InvalidQueryError
from gateway.products.common import MIN_EPSILON, MIN_RHO
from gateway.products.query.request import AccuracyRequest
from sandbox.errors import PlanRejectedError
from sandbox.pricing import mechanisms, zcdp
from sandbox.protocol.messages import AggregateKind, DatasetInfo, QueryPlan

__all__ = ["SELECTION_OUTPUT", "apply_weights", "priced", "solve_for_accuracy"]


def _output_aggregates(plan: QueryPlan) -> dict[str, int]:
    return {o.name: o.aggregate_index for o in plan.outputs if o.aggregate_index is not None}


SELECTION_OUTPUT = "group_keys"  # the name the plan gives partition selection's release


def apply_weights(plan: QueryPlan, weights: tuple[tuple[str, float], ...]) -> QueryPlan:
    """Set each aggregate's epsilon weight from the caller's per-output weights (default 1).

    `group_keys` (unless an output has that name) weights DP partition selection of private group keys:
    more of the epsilon on selection lowers its threshold, so more (smaller) groups are released.

    Raises:
        InvalidArgumentError: a weight names no aggregate output (nor `group_keys` of a query that
            selects its keys), or is not finite and positive.
    """
    if not weights:
        return plan
    outputs = _output_aggregates(plan)
    new = list(plan.aggregates)
    selection_weight = plan.selection_weight
    for name, weight in weights:
        selection = name == SELECTION_OUTPUT and name not in outputs
        if name not in outputs and not (selection and plan.partition_selection):
            known = "an aggregate output of the query" + (
                " (it weights the selection of private group keys, and this query has none)"
                if name == SELECTION_OUTPUT else "")
            raise InvalidArgumentError(
                f"weights: {name!r} is not {known}",
                reason="INVALID_WEIGHTS", field="weights", output=name)
        if not (math.isfinite(weight) and weight > 0):
            raise InvalidArgumentError(
                f"weights: the weight of {name!r} must be finite and positive, got {weight!r}",
                reason="INVALID_WEIGHTS", field="weights", output=name)
        if selection:
            selection_weight = weight
        else:
            new[outputs[name]] = replace(new[outputs[name]], weight=weight)
    return replace(plan, aggregates=tuple(new), selection_weight=selection_weight)


def solve_for_accuracy(
    plan: QueryPlan, dataset: DatasetInfo, accuracy: AccuracyRequest, *, zcdp_grant: bool = False
) -> tuple[QueryPlan, float]:
    """The plan re-weighted, and the total epsilon, that give every COUNT/SUM its target half-width.

    For a component with L1 sensitivity d and target half-width a, OpenDP's accuracy function gives the
    scale s (`accuracy_to_discrete_laplacian_scale` / `accuracy_to_laplacian_scale`, alpha = 0.05), and
    epsilon = d / s. The plan's weights become these epsilons, so `mechanisms.price` at their sum
    calibrates each component to (up to float rounding) exactly scale s. With `zcdp_grant` the noise is
    Gaussian: s from `accuracy_to_discrete_gaussian_scale` / `accuracy_to_gaussian_scale` (via
    `sandbox.pricing.zcdp.accuracy_to_scale`) and the total returned is rho = sum of d^2 / (2 s^2).

    Raises:
        InvalidArgumentError: a target is not finite and positive, names no output, is narrower than any
            noise scale can give, or needs less than the minimum epsilon (rho); or an aggregate has no
            closed-form accuracy (AVG and other derived values: ask with an epsilon instead).
    """
    targets = dict(accuracy.per_output)
    outputs = _output_aggregates(plan)
    for name, value in [("half_width_95", accuracy.half_width_95), *targets.items()]:
        if not (math.isfinite(value) and value > 0) and not (name == "half_width_95" and targets):
            raise InvalidArgumentError(
                f"accuracy: {name} must be finite and positive, got {value!r}",
                reason="INVALID_ACCURACY_TARGET", field="accuracy")
        if name != "half_width_95" and name not in outputs:
            raise InvalidArgumentError(
                f"accuracy: {name!r} is not an aggregate output of the query",
                reason="INVALID_ACCURACY_TARGET", field="accuracy", output=name)
    wanted: dict[int, float] = {}
    for name, index in outputs.items():
        target = targets.get(name, accuracy.half_width_95)
        if math.isfinite(target) and target > 0:
            wanted[index] = min(target, wanted.get(index, math.inf))
    if plan.partition_selection:
        raise InvalidArgumentError(
            "accuracy targets are not available when group keys are chosen by partition "
            "selection; ask with an epsilon instead",
            reason="ACCURACY_TARGET_UNSUPPORTED", field="accuracy")
    epsilons: dict[int, float] = {}
    for c in priced(plan, lambda: mechanisms.components(plan, dataset)):
        agg = plan.aggregates[c.aggregate_index]
        if agg.kind not in (AggregateKind.COUNT, AggregateKind.COUNT_COLUMN, AggregateKind.SUM):
            raise InvalidArgumentError(
                "accuracy targets apply to COUNT and SUM outputs; ask for "
                f"{agg.kind.value.upper()} with an epsilon instead",
                reason="ACCURACY_TARGET_UNSUPPORTED", field="accuracy")
        if c.aggregate_index not in wanted:
            raise InvalidArgumentError(
                "accuracy: every aggregate output needs a target",
                reason="INVALID_ACCURACY_TARGET", field="accuracy")
        target = wanted[c.aggregate_index]
        try:
            if zcdp_grant:  # a hair below OpenDP's scale, so calibration's upward nudges stay within the target
                scale = zcdp.accuracy_to_scale(c.integer, target) * (1 - 1e-9)
                cost = c.l2**2 / (2 * scale**2) if scale > 0 else math.inf
            else:
                scale = mechanisms.accuracy_to_scale(c.integer, target)
                cost = c.sensitivity / scale if scale > 0 else math.inf
        except (PlanRejectedError, ArithmeticError, ValueError, dp.OpenDPException):
            cost = math.inf  # no noise scale gives so narrow an interval
        if not math.isfinite(cost):
            raise InvalidArgumentError(
                f"accuracy: a half-width of {target!r} is narrower than any noise scale can give",
                reason="INVALID_ACCURACY_TARGET", field="accuracy", halfWidth=repr(target))
        epsilons[c.aggregate_index] = epsilons.get(c.aggregate_index, 0.0) + cost
    aggregates = tuple(replace(a, weight=epsilons[i]) for i, a in enumerate(plan.aggregates))
    total = math.fsum(epsilons.values())
    least, name = (MIN_RHO, "rho") if zcdp_grant else (MIN_EPSILON, "epsilon")
    if not total >= least:  # so wide a target would be answered at a privacy loss below the minimum
        raise InvalidArgumentError(
            f"the accuracy target needs {name} {total:.3g}, below the minimum {least:g}: ask for a narrower "
            "half-width",
            reason="INVALID_ACCURACY_TARGET", field="accuracy", **{f"required{name.capitalize()}": repr(total)})
    return replace(plan, aggregates=aggregates), total


_T = TypeVar("_T")


def priced(plan: QueryPlan, price: Callable[[], _T]) -> _T:
    """Run a pricing function. A delta too small for partition selection, a privacy loss whose share for some
    output gives no finite noise scale (a tiny epsilon, extreme weights or interval shares), and an integer
    sensitivity beyond OpenDP's i64 (UNBOUNDED_EXPRESSION) are the caller's errors; any other refusal at this
    point is ours (the plan was already validated)."""
    try:
        return price()
    except mechanisms.SensitivityTooLargeError as exc:  # decided from the plan and the catalog
        raise InvalidQueryError(str(exc), reason="UNBOUNDED_EXPRESSION",
                                construct="AGGREGATE_ARGUMENT") from exc
    except PlanRejectedError as exc:
        if plan.partition_selection and "delta" in str(exc):
            raise InvalidArgumentError(
                "privacy_loss.delta is too small for partition selection",
                reason="INVALID_PRIVACY_LOSS",
                field="privacy_loss.delta",
            ) from exc
        if any(word in str(exc) for word in ("scale", "epsilon must", "rho must")):
            raise InvalidArgumentError(
                "the privacy loss cannot be priced: the share of some output gives no finite noise scale; "
                "raise the privacy loss or make the weights and interval shares less extreme",
                reason="INVALID_PRIVACY_LOSS",
                field="privacy_loss",
            ) from exc
        raise GatewayInternalError("the query could not be priced") from exc  # our bug


