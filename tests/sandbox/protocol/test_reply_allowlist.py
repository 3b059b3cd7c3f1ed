"""No reply of the sandbox can carry a row or an exact value: every field reachable from a reply type is
one that has been reviewed as safe to leave the sandbox process.

The test walks the declared schema itself (`msgspec.inspect` over every type of
`sandbox.protocol.messages.REPLIES`, recursively through every record a field can hold) and compares each
field, with its declared type, against `ALLOWED`. A field added to any record a reply can reach, a field
whose type changes, or a new record type fails here until it is reviewed into the allowlist. No field may
be untyped (`Any`), a mapping or raw bytes: each would let an arbitrary payload through.

Why each class of field may leave the sandbox:

* Noisy releases: a `NoisyValue` is computed inside the sandbox with OpenDP noise; its mechanism, scale,
  standard deviation and 95% interval are functions of the noise parameters and the noisy value only
  (post-processing), never of the exact aggregate.
* Group keys: each key is a value of a public domain the owner declared (or the plan computed from it), or
  a value released by OpenDP partition selection (Laplace threshold), which is differentially private.
* Costs: the OpenDP privacy maps of the measurements (sensitivity, scale, epsilon, delta, rho, threshold)
  depend only on the plan, the catalog's public bounds and the authorised loss, not on the data.
* Data versions: an opaque identifier of the loaded data the owner publishes so releases can be tied to a
  version; it says when the data changed, nothing about rows.
* Public catalog facts: names, types, grades, declared bounds and domains, row caps per unit, template
  descriptions and parameters: all written by the data owner in the catalog file, none read from the data.
* The owner's settings and cap usage: caps are public settings; the cap ledger's sums are functions of the
  charges of requests (what was authorised), not of the data.
* Verification outcomes: one MATCH / NO_MATCH / NOT_FOUND and a coarse band index per claim, which is the
  product the owner's template allows; `capped` lists claim indices the per-subject cap refused (a function
  of request counts); `not_found` counts the answered claims whose subject is absent, for the gateway's
  enumeration alerts only (never forwarded), about the consumer's own claims.
* Model estimates: coefficients and metrics computed from noisy sufficient statistics (DP by
  post-processing), each with an interval from the noise model; never a score or residual of a row.
* Errors: a kind and a message that by principle 6 depend only on the query and the policy (refusals
  before touching data) or are uniform (`failed`).
* Process facts: serving, lock-down state, pids and whether the sandbox is orphaned or accepted a shutdown.
"""

from __future__ import annotations

import msgspec.inspect as mi

from sandbox.protocol.messages import REPLIES

ALLOWED: dict[str, set[str]] = {
    "noisy releases": {
        "ExecuteResult.rows: tuple[ReleaseRow, ...]",
        "ReleaseRow.values: tuple[NoisyValue, ...]",
        "NoisyValue.value: float | int",
        "NoisyValue.mechanism: str",
        "NoisyValue.scale: float",
        "NoisyValue.stddev: float",
        "NoisyValue.ci_lower: float",
        "NoisyValue.ci_upper: float",
    },
    "group keys": {
        "ReleaseRow.keys: tuple[int | float | str | bool | None, ...]",
    },
    "costs": {
        "ExecuteResult.costs: tuple[ReleaseCost, ...]",
        "ReleaseCost.aggregate_index: int",
        "ReleaseCost.component: str",
        "ReleaseCost.mechanism: str",
        "ReleaseCost.sensitivity: int | float",
        "ReleaseCost.scale: float",
        "ReleaseCost.epsilon: float",
        "ReleaseCost.delta: float",
        "ReleaseCost.threshold: int",
        "ReleaseCost.rho: float",
        "TrainResult.costs: tuple[ModelCost, ...]",
        "EvaluateResult.costs: tuple[ModelCost, ...]",
        "ModelCost.component: str",
        "ModelCost.mechanism: str",
        "ModelCost.sensitivity: float",
        "ModelCost.scale: float",
        "ModelCost.epsilon: float",
        "ModelCost.delta: float",
        "ModelCost.rho: float",
        "ModelCost.count: int",
    },
    "data versions": {
        "ExecuteResult.dataset_version: str",
        "TrainResult.dataset_version: str",
        "EvaluateResult.dataset_version: str",
        "VerifyClaimsResult.dataset_version: str",
        "TemplatesInfo.versions: tuple[tuple[str, str], ...]",
        "DatasetInfo.version: str",
    },
    "public catalog facts": {
        "CatalogInfo.datasets: tuple[DatasetInfo, ...]",
        "CatalogInfo.grades: tuple[tuple[str, tuple[str, ...]], ...]",
        "CatalogInfo.max_cells: int",
        "DatasetInfo.name: str",
        "DatasetInfo.privacy_unit: str",
        "DatasetInfo.tables: tuple[TableInfo, ...]",
        "DatasetInfo.description: str",
        "DatasetInfo.owner: str",
        "DatasetInfo.published: bool",  # the owner's transparency setting, from the catalog file
        "TableInfo.name: str",
        "TableInfo.columns: tuple[ColumnInfo, ...]",
        "TableInfo.max_rows_per_unit: int",
        "TableInfo.public: bool",
        "TableInfo.unique_key: str | None",
        "ColumnInfo.name: str",
        "ColumnInfo.type: Literal['bool', 'float64', 'int64', 'string']",
        "ColumnInfo.grade: Literal['identifier', 'internal', 'public', 'sensitive']",
        "ColumnInfo.lower: int | float | None",
        "ColumnInfo.upper: int | float | None",
        "ColumnInfo.domain: tuple[int | float | str | bool | None, ...] | None",
        "ColumnInfo.description: str",
        "TemplatesInfo.templates: tuple[TemplateInfo, ...]",
        "TemplateInfo.dataset: str",
        "TemplateInfo.name: str",
        "TemplateInfo.description: str",
        "TemplateInfo.subject_format: Literal['credit_code', 'resident_id']",
        "TemplateInfo.parameters: tuple[ParamSpec, ...]",
        "TemplateInfo.band_labels: tuple[str, ...]",
        "TemplateInfo.not_found_as_no_match: bool",
        "TemplateInfo.requires_case_reference: bool",
        "ParamSpec.name: str",
        "ParamSpec.type: Literal['bool', 'float64', 'int64', 'string']",
        "ParamSpec.allowed: tuple[int | float | str | bool | None, ...] | None",
        "ParamSpec.ladder: tuple[int | float, ...] | None",
        "ParamSpec.max_length: int | None",
        "ParamSpec.description: str",
    },
    "the owner's settings and cap usage": {
        "DatasetInfo.caps: OwnerCap | None",
        "DatasetInfo.subject_caps: tuple[SubjectCap, ...]",
        "OwnerCap.measure: Literal['epsilon', 'rho']",
        "OwnerCap.amount: float",
        "OwnerCap.delta: float",
        "OwnerCap.period: Period",
        "OwnerCap.conversion_delta: float | None",
        "OwnerCap.lifetime_amount: float | None",
        "OwnerCap.lifetime_delta: float | None",
        "Period.kind: Literal['calendar', 'lifetime', 'rolling']",
        "Period.unit: str",
        "Period.window_days: int",
        "SubjectCap.template: str",
        "SubjectCap.max_checks: int",
        "SubjectCap.period: str",
        "CapUsageReply.usages: tuple[CapUsage, ...]",
        "CapUsageReply.at: float",
        "CapUsage.dataset: str",
        "CapUsage.cap: OwnerCap | None",
        "CapUsage.period_start: float | None",
        "CapUsage.period_end: float | None",
        "CapUsage.period: CapSums",
        "CapUsage.lifetime: CapSums",
        "CapSums.epsilon_units: int",
        "CapSums.delta_units: int",
        "CapSums.rho_units: int",
        "CapSums.rho_delta_units: int",
        "CapSums.no_epsilon: int",
        "CapSums.no_rho: int",
    },
    "verification outcomes": {
        "VerifyClaimsResult.outcomes: tuple[int, ...]",
        "VerifyClaimsResult.bands: tuple[int, ...]",
        "VerifyClaimsResult.not_found: int",
        "VerifyClaimsResult.capped: tuple[int, ...]",
    },
    "model estimates": {
        "TrainResult.kind: Literal['linear', 'logistic']",
        "TrainResult.coefficients: tuple[Estimate, ...]",
        "TrainResult.intercept: Estimate",
        "TrainResult.metrics: tuple[Estimate, ...]",
        "EvaluateResult.kind: Literal['linear', 'logistic']",
        "EvaluateResult.metrics: tuple[Estimate, ...]",
        "EvaluateResult.confusion: tuple[ConfusionMatrix, ...]",
        "ConfusionMatrix.threshold: float",
        "ConfusionMatrix.tp: Estimate",
        "ConfusionMatrix.fp: Estimate",
        "ConfusionMatrix.tn: Estimate",
        "ConfusionMatrix.fn: Estimate",
        "Estimate.name: str",
        "Estimate.value: float",
        "Estimate.ci_lower: float | None",
        "Estimate.ci_upper: float | None",
        "Estimate.note: str",
    },
    "errors": {
        "ErrorReply.kind: Literal['bad_request', 'failed', 'rejected']",
        "ErrorReply.message: str",
    },
    "process facts": {
        "HealthReply.serving: bool",
        "HealthReply.locked_down: bool",
        "HealthReply.pid: int",
        "HealthReply.parent_pid: int",
        "HealthReply.orphaned: bool",
        "ShutdownReply.accepted: bool",
    },
}

# Declared types a reply field may be built from; anything else (Any, dict, bytes, datetime, ...) could
# carry an arbitrary payload and is refused whatever the allowlist says.
_LEAVES = {mi.IntType: "int", mi.FloatType: "float", mi.StrType: "str", mi.BoolType: "bool", mi.NoneType: "None"}


def _render(t: mi.Type) -> str:
    """The declared type as text; fails on a type outside the closed set reply fields may use."""
    if isinstance(t, mi.StructType):
        return t.cls.__name__
    if isinstance(t, mi.UnionType):
        return " | ".join(_render(u) for u in t.types)
    if isinstance(t, mi.VarTupleType):
        return f"tuple[{_render(t.item_type)}, ...]"
    if isinstance(t, mi.TupleType):
        return f"tuple[{', '.join(_render(u) for u in t.item_types)}]"
    if isinstance(t, mi.LiteralType):
        return "Literal[" + ", ".join(repr(v) for v in t.values) + "]"
    leaf = _LEAVES.get(type(t))
    assert leaf is not None, f"a reply field has type {type(t).__name__}, which can carry anything"
    return leaf


def _records(t: mi.Type, found: dict[type, mi.StructType]) -> None:
    """Every record type reachable from `t`."""
    if isinstance(t, mi.StructType):
        if t.cls in found:
            return
        found[t.cls] = t
        for f in t.fields:
            _records(f.type, found)
    elif isinstance(t, mi.UnionType | mi.TupleType):
        for u in t.types if isinstance(t, mi.UnionType) else t.item_types:
            _records(u, found)
    elif isinstance(t, mi.VarTupleType):
        _records(t.item_type, found)


def _reply_fields() -> set[str]:
    found: dict[type, mi.StructType] = {}
    for reply in REPLIES:
        _records(mi.type_info(reply), found)
    names = [cls.__name__ for cls in found]
    assert len(names) == len(set(names)), "two reachable records share a name"
    return {f"{cls.__name__}.{f.name}: {_render(f.type)}" for cls, t in found.items() for f in t.fields}


def test_every_reply_field_is_reviewed() -> None:
    """Each field reachable from a reply, with its declared type, is in the reviewed allowlist."""
    reviewed = set().union(*ALLOWED.values())
    unreviewed = _reply_fields() - reviewed
    assert not unreviewed, f"reply fields not reviewed as safe to leave the sandbox: {sorted(unreviewed)}"


def test_allowlist_has_no_stale_entries() -> None:
    """Every allowlist entry is still a reply field (a removed or retyped field is taken out of the list)."""
    reviewed = set().union(*ALLOWED.values())
    assert reviewed - _reply_fields() == set()
    assert sum(len(v) for v in ALLOWED.values()) == len(reviewed), "an entry is listed under two classes"


def test_walk_sees_nested_records() -> None:
    """The walk reaches records nested in optional fields, tuples and other records (so a new field deep
    inside, e.g. in the owner's cap period, is seen)."""
    fields = _reply_fields()
    assert "Period.window_days: int" in fields
    assert "NoisyValue.ci_upper: float" in fields
    assert "ConfusionMatrix.tp: Estimate" in fields
