"""Pure conversions from domain values (plans, releases, grants, catalog) to the v1 protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence

from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.budgets.ledger import PrivacyLoss
from gateway.policy.model import Grant
from gateway.products.common import privacy_loss
from sandbox.plans.compile import quantile_candidates
from sandbox.plans.relation import key as relation_key
from sandbox.plans.relation import plan_relation
from sandbox.pricing import mechanisms
from sandbox.protocol.messages import (
    AggregateKind,
    Column,
    ColumnInfo,
    DatasetInfo,
    ExecuteResult,
    NoisyValue,
    QueryPlan,
    ReleaseCost,
    Scalar,
)

_COLUMN_TYPES = {
    "int64": common_pb.COLUMN_TYPE_INT64,
    "float64": common_pb.COLUMN_TYPE_DOUBLE,
    "string": common_pb.COLUMN_TYPE_STRING,
    "bool": common_pb.COLUMN_TYPE_BOOL,
}


def budget_status(grant: Grant, spent: PrivacyLoss) -> common_pb.BudgetStatus:
    """A grant and what it has spent -> BudgetStatus."""
    return common_pb.BudgetStatus(
        dataset=grant.dataset,
        purpose=grant.purpose,
        budget=common_pb.PrivacyLoss(epsilon=grant.epsilon, delta=grant.delta),
        spent=privacy_loss(spent),
        remaining=common_pb.PrivacyLoss(
            epsilon=max(grant.epsilon - spent.epsilon, 0.0),
            delta=max(grant.delta - spent.delta, 0.0),
        ),
        max_per_query=common_pb.PrivacyLoss(epsilon=grant.max_epsilon_per_query, delta=0.0),
        privacy_definition=grant.privacy_definition,
    )


def _aggregate_name(kind: AggregateKind) -> str:
    return {
        "count": "count",
        "count_column": "count",
        "count_distinct_unit": "count_distinct",
    }.get(kind.value, kind.value)


def plan_info(
    plan: QueryPlan, dataset: DatasetInfo, costs: Sequence[ReleaseCost]
) -> q_pb.QueryPlanInfo:
    """The plan facts shown by ExplainQuery and RunQuery."""
    rel = plan_relation(plan, dataset)
    names = {o.aggregate_index: o.name for o in plan.outputs if o.aggregate_index is not None}
    rows = mechanisms.plan_cells(plan, 0)
    mode = "public_domain" if plan.group_by else "none"
    if plan.partition_selection:
        mode = "partition_selection"  # rows 0: the released keys are known only after the run
    # the threshold of the release that selects the keys (a separate one, or one of the plan's counts)
    threshold = next((c.threshold for c in costs if c.mechanism in mechanisms.THRESHOLD_MECHANISMS), 0)
    return q_pb.QueryPlanInfo(
        table=plan.table,
        group_by=[
            relation_key(g.expr) if isinstance(g.expr, Column) else g.name for g in plan.group_by
        ],
        group_by_mode=mode,
        row_count=rows,
        max_rows_per_unit=rel.k,
        privacy_unit=dataset.privacy_unit,
        threshold=threshold,
        tables=list(rel.tables),
        releases=[
            q_pb.ReleaseCost(
                # aggregates used only by HAVING / ORDER BY are released and charged but not
                # shown; partition selection (index -1) releases the group keys
                output=names.get(
                    c.aggregate_index,
                    "group_keys" if c.aggregate_index < 0 else f"hidden_{c.aggregate_index}",
                ),
                component=c.component,
                mechanism=c.mechanism,
                sensitivity=c.sensitivity,
                scale=c.scale,
                privacy_loss=common_pb.PrivacyLoss(epsilon=c.epsilon, delta=c.delta, rho=c.rho),
                half_width_95=mechanisms.half_width(c),
            )
            for c in costs
        ],
    )


def _scalar_cell(value: Scalar) -> q_pb.Cell:
    if value is None:
        return q_pb.Cell(null_value=True)
    if isinstance(value, bool):
        return q_pb.Cell(bool_value=value)
    if isinstance(value, int):
        return q_pb.Cell(int64_value=value)
    if isinstance(value, float):
        return q_pb.Cell(double_value=value)
    return q_pb.Cell(string_value=value)


def _noisy_cell(v: NoisyValue) -> q_pb.Cell:
    cell = (
        q_pb.Cell(int64_value=v.value)
        if isinstance(v.value, int)
        else q_pb.Cell(double_value=v.value)
    )
    cell.noise.CopyFrom(q_pb.NoiseInfo(mechanism=v.mechanism, scale=v.scale, stddev=v.stddev))
    cell.confidence_interval.CopyFrom(
        q_pb.ConfidenceInterval(
            lower=v.ci_lower, upper=v.ci_upper, level=mechanisms.CONFIDENCE_LEVEL
        )
    )
    return cell


def _output_type(plan: QueryPlan, dataset: DatasetInfo, index: int) -> int:
    table = plan_relation(plan, dataset)
    out = plan.outputs[index]
    if out.group_index is not None:
        key = plan.group_by[out.group_index]
        if isinstance(key.expr, Column):
            col = table.column(relation_key(key.expr))
            assert col is not None
            return _COLUMN_TYPES[col.type]
        values = key.domain or ()
        if all(isinstance(v, bool) for v in values):
            return common_pb.COLUMN_TYPE_BOOL
        if all(isinstance(v, str) for v in values):
            return common_pb.COLUMN_TYPE_STRING
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return common_pb.COLUMN_TYPE_INT64
        return common_pb.COLUMN_TYPE_DOUBLE
    assert out.aggregate_index is not None
    agg = plan.aggregates[out.aggregate_index]
    if agg.kind in (
        AggregateKind.COUNT, AggregateKind.COUNT_COLUMN, AggregateKind.COUNT_DISTINCT_UNIT
    ):
        return common_pb.COLUMN_TYPE_INT64
    if agg.kind in (AggregateKind.SUM, AggregateKind.QUANTILE):
        lo, hi, integer = mechanisms.aggregate_bounds(agg, table)
        if agg.kind is AggregateKind.QUANTILE:
            cands = quantile_candidates(lo, hi, integer)
            integer = len(cands) > 1 and cands[1] - cands[0] == 1.0 and cands[0].is_integer()
        return common_pb.COLUMN_TYPE_INT64 if integer else common_pb.COLUMN_TYPE_DOUBLE
    return common_pb.COLUMN_TYPE_DOUBLE


def answer(
    plan: QueryPlan, dataset: DatasetInfo, result: ExecuteResult
) -> tuple[list[q_pb.ResultColumn], list[q_pb.Row]]:
    """The sandbox's noisy rows -> answer columns and rows, in select-list order."""
    columns = []
    for i, out in enumerate(plan.outputs):
        agg = "" if out.aggregate_index is None else _aggregate_name(
            plan.aggregates[out.aggregate_index].kind
        )
        columns.append(
            q_pb.ResultColumn(
                name=out.name,
                type=_output_type(plan, dataset, i),  # type: ignore[arg-type]
                noisy=out.aggregate_index is not None,
                aggregate=agg,
            )
        )
    rows = []
    for r in result.rows:
        cells = []
        for out in plan.outputs:
            if out.group_index is not None:
                cells.append(_scalar_cell(r.keys[out.group_index]))
            else:
                assert out.aggregate_index is not None
                cells.append(_noisy_cell(r.values[out.aggregate_index]))
        rows.append(q_pb.Row(cells=cells))
    return columns, rows


def _column_schema(c: ColumnInfo) -> cat_pb.ColumnSchema:
    has_bounds = c.lower is not None and c.upper is not None
    return cat_pb.ColumnSchema(
        name=c.name,
        type=_COLUMN_TYPES[c.type],
        grade=c.grade,
        has_bounds=has_bounds,
        lower=c.lower if c.lower is not None else 0.0,
        upper=c.upper if c.upper is not None else 0.0,
        domain=[] if c.domain is None else [_render(v) for v in c.domain],
        description=c.description,
        groupable=c.grade != "identifier" and c.domain is not None,
        summable=c.grade != "identifier" and has_bounds and c.type in ("int64", "float64"),
    )


def _render(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "NULL" if v is None else str(v)


def dataset(d: DatasetInfo, purposes: Sequence[str]) -> cat_pb.Dataset:
    """A dataset's public description -> proto."""
    return cat_pb.Dataset(
        name=d.name,
        description=d.description,
        owner=d.owner,
        privacy_unit=d.privacy_unit,
        version=d.version,
        purposes=sorted(purposes),
        tables=[
            cat_pb.Table(
                name=t.name,
                max_rows_per_unit=t.max_rows_per_unit,
                columns=[_column_schema(c) for c in t.columns],
            )
            for t in d.tables
        ],
    )
