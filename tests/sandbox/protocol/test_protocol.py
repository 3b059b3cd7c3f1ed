"""The sandbox wire protocol: round trips and strict decoding."""

from __future__ import annotations

import json
import struct

import pytest

from sandbox.protocol.messages import (
    MAX_FRAME_BYTES,
    Aggregate,
    AggregateKind,
    Between,
    Binary,
    Case,
    Cast,
    CatalogInfo,
    Column,
    ColumnInfo,
    DatasetInfo,
    DescribeRequest,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    Func,
    GroupKey,
    HealthReply,
    HealthRequest,
    InList,
    IsNull,
    Literal,
    Message,
    NoisyValue,
    OutputColumn,
    ProtocolError,
    QueryPlan,
    ReleaseCost,
    ReleaseRow,
    TableInfo,
    Unary,
    decode_body,
    encode_frame,
    from_json,
    plan_from_json,
    plan_to_json,
    to_json,
)


def _plan() -> QueryPlan:
    where = Binary(
        "AND",
        Binary(">", Binary("+", Column("income"), Literal(1.5)), Unary("-", Literal(3))),
        Binary(
            "OR",
            InList(Column("sex"), (Literal("F"), Literal("it's")), negated=True),
            Binary(
                "AND",
                IsNull(Column("region"), negated=True),
                Between(Column("birth_year"), Literal(1950), Literal(1990)),
            ),
        ),
    )
    return QueryPlan(
        dataset="registry",
        table="residents",
        aggregates=(
            Aggregate(AggregateKind.COUNT),
            Aggregate(AggregateKind.AVG, Column("income"), 2.0, 0.0, 2e6),
            Aggregate(AggregateKind.COUNT_COLUMN, Column("employed")),
            Aggregate(AggregateKind.QUANTILE, Func("CLAMP", (Column("income"), Literal(0), Literal(10))),
                      1.0, 0.0, 10.0, 0.25),
            Aggregate(AggregateKind.SUM, Case(((Binary(">", Column("income"), Literal(1)),
                      Cast(Column("employed"), "int64", True)),), Literal(0)), 1.0, 0.0, 1.0),
            Aggregate(AggregateKind.COUNT_DISTINCT_UNIT),
        ),
        outputs=(OutputColumn("region", group_index=0), OutputColumn("n", aggregate_index=0)),
        where=Unary("NOT", where),
        group_by=(GroupKey("region", Column("region"), ("a", "b")),),
    )


def _frame_body(msg: Message) -> bytes:
    frame = encode_frame(msg)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


MESSAGES: list[Message] = [
    ExecuteRequest("req-1", _plan(), 0.5),
    ExecuteResult(
        rows=(
            ReleaseRow(
                keys=("110000", True, None, 3, 2.5),
                values=(NoisyValue(12, "discrete_laplace", 2.0, 2.8, 5.0, 19.0),),
            ),
        ),
        costs=(ReleaseCost(0, "count", "discrete_laplace", 1.0, 2.0, 0.5),),
        dataset_version="0123456789abcdef",
    ),
    ErrorReply("rejected", "unknown column 'x'"),
    ErrorReply("failed"),
    DescribeRequest(),
    HealthRequest(),
    HealthReply(serving=True, locked_down=True, pid=42),
    CatalogInfo(
        max_cells=5_000,
        datasets=(
            DatasetInfo(
                name="registry",
                privacy_unit="person_id",
                version="v",
                tables=(
                    TableInfo(
                        name="residents",
                        max_rows_per_unit=1,
                        columns=(
                            ColumnInfo("person_id", "int64", "identifier"),
                            ColumnInfo("income", "int64", "sensitive", 0, 2_000_000),
                            ColumnInfo("sex", "string", "public", domain=("F", "M")),
                            ColumnInfo("employed", "bool", "internal", domain=(False, True)),
                        ),
                    ),
                ),
            ),
        )
    ),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    """Every message type survives encode_frame/decode_body unchanged."""
    assert decode_body(_frame_body(msg)) == msg


def test_plan_round_trip_keeps_tree() -> None:
    """plan_to_json/plan_from_json reproduce the exact expression tree."""
    plan = _plan()
    assert plan_from_json(json.loads(json.dumps(plan_to_json(plan)))) == plan


def test_selection_weight_round_trips_and_is_validated() -> None:
    """A plan's selection weight survives the wire; absent means 1 (older plans and cache keys unchanged);
    NaN, zero, negative and null are refused."""
    import dataclasses

    plan = dataclasses.replace(_plan(), selection_weight=3.0)
    assert plan_from_json(json.loads(json.dumps(plan_to_json(plan)))) == plan
    assert "selection_weight" not in plan_to_json(_plan())
    for bad in (float("nan"), 0.0, -1.0, None, "2"):
        d = plan_to_json(_plan())
        d["selection_weight"] = bad
        with pytest.raises(ProtocolError):
            plan_from_json(d)


def test_unknown_expression_node_refused() -> None:
    """An expression node type outside the closed set is refused."""
    d = plan_to_json(_plan())
    d["where"] = {"t": "subquery", "sql": "SELECT 1"}
    with pytest.raises(ProtocolError, match="unknown expression node"):
        plan_from_json(d)


def test_unknown_keys_refused() -> None:
    """Extra keys in a plan, an expression node or a message are refused."""
    d = plan_to_json(_plan())
    d["sql"] = "SELECT * FROM residents"
    with pytest.raises(ProtocolError, match="unexpected keys"):
        plan_from_json(d)
    d = plan_to_json(_plan())
    d["where"] = {"t": "col", "name": "income", "raw": "income; DROP"}
    with pytest.raises(ProtocolError, match="unexpected keys"):
        plan_from_json(d)
    msg = to_json(ExecuteRequest("r", _plan(), 1.0))
    msg["extra"] = 1
    with pytest.raises(ProtocolError):
        from_json(msg)


@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_refused(const: str) -> None:
    """NaN and infinities in a frame are refused wherever they appear."""
    body = json.dumps(to_json(ExecuteRequest("r", _plan(), 1.0))).replace('"epsilon": 1.0', f'"epsilon": {const}')
    assert const in body
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_body(body.encode())


def test_bad_literals_and_ops_refused() -> None:
    """Non-scalar literals and unknown operators are refused."""
    d = plan_to_json(_plan())
    d["where"] = {"t": "lit", "value": [1, 2]}
    with pytest.raises(ProtocolError):
        plan_from_json(d)
    one = {"t": "lit", "value": 1}
    d["where"] = {"t": "bin", "op": "||", "l": one, "r": one}
    with pytest.raises(ProtocolError):
        plan_from_json(d)


def test_deep_nesting_refused() -> None:
    """Expressions nested deeper than the decoder's limit are refused."""
    node: dict[str, object] = {"t": "col", "name": "income"}
    for _ in range(100):
        node = {"t": "unary", "op": "-", "operand": node}
    d = plan_to_json(_plan())
    d["where"] = node
    with pytest.raises(ProtocolError, match="too deeply"):
        plan_from_json(d)


def test_garbage_and_unknown_types_refused() -> None:
    """Non-JSON bodies, non-objects and unknown message types are refused."""
    for body in (b"\xff\xfe", b"not json", b"[1,2]", b'{"type":"shell","cmd":"id"}'):
        with pytest.raises(ProtocolError):
            decode_body(body)


def test_epsilon_must_be_a_number() -> None:
    """A boolean or string epsilon is refused."""
    d = to_json(ExecuteRequest("r", _plan(), 1.0))
    for bad in (True, "1.0", None):
        d["epsilon"] = bad
        with pytest.raises(ProtocolError):
            from_json(d)


def test_max_frame_constant_is_sane() -> None:
    """The frame limit fits the 4-byte length prefix."""
    assert 0 < MAX_FRAME_BYTES < 2**32
