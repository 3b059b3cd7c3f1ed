"""The sandbox wire protocol: round trips of every message, strict decoding, stable cache keys."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import msgspec
import pytest

from sandbox.owner_caps import OwnerCap, SubjectCap
from sandbox.pricing.cap_rules import CapSums
from sandbox.pricing.periods import Period
from sandbox.protocol.messages import (
    MAX_FRAME_BYTES,
    REPLIES,
    REQUESTS,
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
    InUnits,
    IsNull,
    Literal,
    Message,
    NoisyValue,
    OutputColumn,
    ProtocolError,
    PublicJoin,
    QueryPlan,
    ReleaseCost,
    ReleaseRow,
    ShutdownReply,
    ShutdownRequest,
    TableInfo,
    TableSource,
    Unary,
    UnitAggregate,
    UnitJoin,
    UnitOutput,
    decode_body,
    decode_reply,
    decode_request,
    encode_frame,
    plan_from_json,
    plan_to_json,
)
from sandbox.protocol.models import (
    ConfusionMatrix,
    Estimate,
    EvaluateRequest,
    EvaluateResult,
    ModelCost,
    TrainRequest,
    TrainResult,
)
from sandbox.protocol.owner import CapUsage, CapUsageReply, CapUsageRequest, ReloadRequest
from sandbox.protocol.verification import (
    DescribeTemplatesRequest,
    ParamSpec,
    TemplateInfo,
    TemplatesInfo,
    VerifyClaimsRequest,
    VerifyClaimsResult,
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


def _join_plan() -> QueryPlan:
    """Every FROM node: a unit join, a public lookup join, a per-unit pre-aggregation and a semi-join."""
    source = PublicJoin(
        UnitJoin(TableSource("residents", "r"), TableSource("social_insurance", "s"), "left"),
        TableSource("regions", "g"), Column("region", "r"), "code",
    )
    per_unit = UnitAggregate(TableSource("social_insurance", "s2"), Binary(">", Column("contribution", "s2"),
                             Literal(0)), (UnitOutput("total", "sum", Column("contribution", "s2")),
                                           UnitOutput("n", "count_star")), "u")
    return QueryPlan(
        dataset="registry", table="residents",
        aggregates=(Aggregate(AggregateKind.COUNT),),
        outputs=(OutputColumn("n", aggregate_index=0),),
        where=InUnits(per_unit, Binary(">", Column("total", "u"), Literal(10)), negated=True),
        source=source,
    )


def _frame_body(msg: Message) -> bytes:
    frame = encode_frame(msg)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


def _body(msg: Message) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(_frame_body(msg))
    return body


CAP = OwnerCap("epsilon", 10.0, 1e-5, Period("calendar", "month"), 1e-7, 100.0, 1e-4)
EST = Estimate("x", 1.5, 0.5, 2.5, "laplace")
COST = ModelCost("gram", "gaussian", 1.0, 2.0, 0.0, 0.0, 0.01, 3)

REQUEST_EXAMPLES: list[Message] = [
    ExecuteRequest("req-1", _plan(), 0.5),
    ExecuteRequest("req-2", _join_plan(), 0.0, 1e-6, 0.25),
    TrainRequest("t", "registry", "residents", "logistic", ("income", "sex"), "employed", 1.0, 1e-6, 5, 1.0,
                 2.0, 0.1),
    EvaluateRequest("e", "registry", "residents", "linear", (("income", 0.5),), 1.0, "income", 1.0, (0.5,), 3.0),
    VerifyClaimsRequest("v", "registry", "income_at_least", ("11010519491231002X",),
                        (("threshold", (5000,)), ("note", (None,)))),
    DescribeTemplatesRequest(),
    DescribeRequest(),
    ReloadRequest(),
    CapUsageRequest(("registry",)),
    HealthRequest(),
    ShutdownRequest(),
]

REPLY_EXAMPLES: list[Message] = [
    ExecuteResult(
        rows=(
            ReleaseRow(
                keys=("110000", True, None, 3, 2.5),
                values=(NoisyValue(12, "discrete_laplace", 2.0, 2.8, 5.0, 19.0),),
            ),
        ),
        costs=(ReleaseCost(0, "count", "discrete_laplace", 1.0, 2.0, 0.5),
               ReleaseCost(0, "sum", "discrete_laplace", 2**60 + 1, 2.0, 0.5, 0.0, 7, 0.0)),
        dataset_version="0123456789abcdef",
    ),
    TrainResult("linear", (EST,), EST, (EST, Estimate("r2", 0.5)), (COST,), "v1"),
    EvaluateResult("logistic", (EST,), (ConfusionMatrix(0.5, EST, EST, EST, EST),), (COST,), "v1"),
    VerifyClaimsResult((0, 1, 2), (-1, 0, 3), 1, "v1", (4, 7)),
    TemplatesInfo(
        (TemplateInfo("registry", "income_at_least", "d", "resident_id",
                      (ParamSpec("threshold", "int64", ladder=(1000, 5000)),
                       ParamSpec("sex", "string", allowed=("F", "M")),
                       ParamSpec("note", "string", max_length=20)),
                      ("low", "high"), False, True),),
        (("registry", "v1"),),
    ),
    CatalogInfo(
        max_cells=5_000,
        grades=(("sensitive", ("aggregate",)),),
        datasets=(
            DatasetInfo(
                name="registry",
                privacy_unit="person_id",
                version="v",
                caps=CAP,
                subject_caps=(SubjectCap("income_at_least", 3, "day"),),
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
                    TableInfo("regions", (ColumnInfo("code", "string", "public"),), 0, True, "code"),
                ),
            ),
        )
    ),
    CapUsageReply((CapUsage("registry", CAP, 1.0, 2.0, CapSums(1, 2, 3, 4, 5, 6), CapSums()),
                   CapUsage("other", None, None, None, CapSums(), CapSums())), 3.5),
    HealthReply(serving=True, locked_down=True, pid=42),
    ShutdownReply(True),
    ErrorReply("rejected", "unknown column 'x'"),
    ErrorReply("failed"),
]


def test_examples_cover_every_message_type() -> None:
    """The round trips below exercise every request and every reply type of the registry."""
    assert {type(m) for m in REQUEST_EXAMPLES} == set(REQUESTS)
    assert {type(m) for m in REPLY_EXAMPLES} == set(REPLIES)
    assert not set(REQUESTS) & set(REPLIES)


@pytest.mark.parametrize("msg", REQUEST_EXAMPLES + REPLY_EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    """Every message type survives encode_frame/decode_body unchanged."""
    assert decode_body(_frame_body(msg)) == msg


@pytest.mark.parametrize("msg", REQUEST_EXAMPLES, ids=lambda m: type(m).__name__)
def test_requests_are_not_replies(msg: Message) -> None:
    """The sandbox decodes requests only, the gateway replies only: each side refuses the other's types."""
    assert decode_request(_frame_body(msg)) == msg
    with pytest.raises(ProtocolError):
        decode_reply(_frame_body(msg))


@pytest.mark.parametrize("msg", REPLY_EXAMPLES, ids=lambda m: type(m).__name__)
def test_replies_are_not_requests(msg: Message) -> None:
    """A reply type sent to the sandbox is refused."""
    assert decode_reply(_frame_body(msg)) == msg
    with pytest.raises(ProtocolError):
        decode_request(_frame_body(msg))


def test_plan_round_trip_keeps_tree() -> None:
    """plan_to_json/plan_from_json reproduce the exact expression tree, every node type included."""
    for plan in (_plan(), _join_plan()):
        assert plan_from_json(json.loads(json.dumps(plan_to_json(plan)))) == plan


# SHA-256 (first 16 hex digits) of `json.dumps(plan_to_json(plan), sort_keys=True)` as the first version of
# the protocol wrote it, for corpus queries that between them use every node type. The release cache is keyed
# by this form (gateway.products.query.cache), so a change here would orphan every cached release.
CACHE_KEY_FORMS = {
    "aggregate_max.sql": "d5ca1558419204e8",
    "aggregate_median.sql": "16d1baae8130ca2a",
    "aggregate_quantile_cont.sql": "b9dd43e8bd046e9f",
    "aggregate_stddev.sql": "3b858806de6c4211",
    "all_four_aggregates.sql": "112b1259be3544f7",
    "and_chain_within_node_limit.sql": "6f5cfb3124c6b95e",
    "cast_function.sql": "944d9402412e9ace",
    "count_case.sql": "59c126c7140bc27c",
    "count_expression.sql": "3912cea4a8fb996a",
    "cte_alias.sql": "71ac7693220563ec",
    "cte_join.sql": "f31da00516a17acc",
    "exists_correlated.sql": "5b11cdc022619685",
    "expr_unary_minus.sql": "e01d7b385f0a480f",
    "group_domain_narrowed_by_where.sql": "3dc1b3ae7bfd31da",
    "lookup_join_filter.sql": "2471bd59084c4133",
    "try_cast.sql": "3259338906a11a03",
    "where_between.sql": "0862f87882401699",
}


def _digest(plan: QueryPlan) -> str:
    return hashlib.sha256(json.dumps(plan_to_json(plan), sort_keys=True).encode()).hexdigest()[:16]


def test_canonical_form_is_stable() -> None:
    """The canonical JSON of the corpus plans is byte for byte the first version's (cache keys survive)."""
    from gateway.products.query.sql.analyze import analyze
    from tests.corpus.test_corpus import ACCEPT, REGISTRY

    files = {p.name: p for p in ACCEPT}
    for name, digest in CACHE_KEY_FORMS.items():
        assert _digest(analyze(files[name].read_text(encoding="utf-8"), REGISTRY)) == digest, name
    plan = analyze(files["aggregate_median.sql"].read_text(encoding="utf-8"), REGISTRY)
    plan = msgspec.structs.replace(plan, selection_weight=2.0, aggregates=tuple(
        msgspec.structs.replace(a, interval_share=0.25) for a in plan.aggregates))
    assert _digest(plan) == "f97d91776d429dfa"


def test_selection_weight_round_trips_and_is_validated() -> None:
    """A plan's selection weight survives the wire; absent means 1 (older plans and cache keys unchanged);
    NaN, zero, negative and null are refused."""
    plan = msgspec.structs.replace(_plan(), selection_weight=3.0)
    assert plan_from_json(json.loads(json.dumps(plan_to_json(plan)))) == plan
    assert "selection_weight" not in plan_to_json(_plan())
    for bad in (float("nan"), 0.0, -1.0, None, "2"):
        d = plan_to_json(_plan())
        d["selection_weight"] = bad
        with pytest.raises(ProtocolError):
            plan_from_json(d)


def _execute_body() -> dict[str, Any]:
    return _body(ExecuteRequest("r", _plan(), 1.0))


def _refused(body: dict[str, Any] | bytes, match: str | None = None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ProtocolError, match=match):
        decode_request(raw)


def test_unknown_expression_node_refused() -> None:
    """An expression node type outside the closed set is refused."""
    d = _execute_body()
    d["plan"]["where"] = {"t": "subquery", "sql": "SELECT 1"}
    _refused(d, "subquery")
    d = plan_to_json(_plan())
    d["where"] = {"t": "subquery", "sql": "SELECT 1"}
    with pytest.raises(ProtocolError, match="subquery"):
        plan_from_json(d)


def test_unknown_fields_refused() -> None:
    """Extra fields in a plan, an expression node, a nested record or a message are refused."""
    d = _execute_body()
    d["plan"]["sql"] = "SELECT * FROM residents"
    _refused(d, "unknown field `sql`")
    d = _execute_body()
    d["plan"]["where"] = {"t": "col", "name": "income", "raw": "income; DROP"}
    _refused(d, "unknown field `raw`")
    d = _execute_body()
    d["plan"]["aggregates"][0]["exact"] = True
    _refused(d, "unknown field `exact`")
    d = _execute_body()
    d["extra"] = 1
    _refused(d, "unknown field `extra`")
    d = _body(HealthRequest())
    d["x"] = 1
    _refused(d, "unknown field")


def test_unknown_fields_refused_in_replies() -> None:
    """The gateway refuses a reply with a field the schema does not declare, at any depth."""
    d = _body(REPLY_EXAMPLES[0])
    d["rows"][0]["exact"] = [12]
    with pytest.raises(ProtocolError, match="unknown field `exact`"):
        decode_reply(json.dumps(d).encode())
    d = _body(REPLY_EXAMPLES[0])
    d["rows"][0]["values"][0].append(12)  # a noisy value is an array in field order: no extra element either
    with pytest.raises(ProtocolError, match="length"):
        decode_reply(json.dumps(d).encode())
    d = _body(next(m for m in REPLY_EXAMPLES if isinstance(m, CatalogInfo)))
    d["datasets"][0]["caps"]["period"]["secret"] = 1
    with pytest.raises(ProtocolError, match="unknown field `secret`"):
        decode_reply(json.dumps(d).encode())


@pytest.mark.parametrize(("path", "bad"), [
    (("epsilon",), True), (("epsilon",), "1.0"), (("epsilon",), None), (("request_id",), 7),
    (("plan", "aggregates", 0, "weight"), "1"), (("plan", "outputs", 0, "group_index"), 0.5),
    (("plan", "outputs", 0, "group_index"), True), (("plan", "where", "negated"), "false"),
    (("plan", "group_by", 0, "domain"), "a"), (("plan", "aggregates", 0, "kind"), "exact_sum"),
    (("plan", "aggregates"), {}), (("plan",), []),
])
def test_wrong_types_refused(path: tuple[str | int, ...], bad: Any) -> None:
    """A value of the wrong type anywhere in a request is refused (never coerced)."""
    d = _execute_body()
    node: Any = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    _refused(d)


@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_numbers_refused(const: str) -> None:
    """NaN and infinities in a frame are refused wherever they appear."""
    body = json.dumps(_execute_body()).replace('"epsilon": 1.0', f'"epsilon": {const}')
    assert const in body
    _refused(body.encode())


def test_bad_literals_and_ops_refused() -> None:
    """Non-scalar literals and unknown operators are refused."""
    d = _execute_body()
    d["plan"]["where"] = {"t": "lit", "value": [1, 2]}
    _refused(d)
    one = {"t": "lit", "value": 1}
    d["plan"]["where"] = {"t": "bin", "op": "||", "l": one, "r": one}
    _refused(d, "unknown binary operator")


def test_join_right_side_must_be_a_table() -> None:
    """The right side of a join is a table by the schema: a nested join there is refused."""
    d = _body(ExecuteRequest("r", _join_plan(), 1.0))
    d["plan"]["source"]["left"]["right"] = json.loads(json.dumps(d["plan"]["source"]["left"]))
    _refused(d)


def test_deep_nesting_refused() -> None:
    """Expressions nested deeper than the plan's limit are refused, and absurd depths cannot crash the
    decoder (the interpreter's recursion limit becomes a refusal)."""
    for depth in (100, 100_000):
        node = '{"t":"unary","op":"-","operand":' * depth + '{"t":"col","name":"income"}' + "}" * depth
        d = _execute_body()
        d["plan"]["where"] = "WHERE"
        _refused(json.dumps(d).replace('"WHERE"', node).encode())
    d = _execute_body()
    nested: dict[str, Any] = {"t": "col", "name": "income"}
    for _ in range(100):
        nested = {"t": "unary", "op": "-", "operand": nested}
    d["plan"]["where"] = nested
    _refused(d, "too deeply")
    plan = plan_to_json(_plan())
    plan["where"] = nested
    with pytest.raises(ProtocolError, match="too deeply"):
        plan_from_json(plan)


def test_garbage_and_unknown_types_refused() -> None:
    """Non-JSON bodies, non-objects and unknown message types are refused."""
    for body in (b"\xff\xfe", b"not json", b"[1,2]", b'{"type":"shell","cmd":"id"}', b"", b'{"epsilon":1}'):
        with pytest.raises(ProtocolError):
            decode_body(body)


def test_message_checks_run_while_decoding() -> None:
    """A message's own invariants hold for decoded messages too: an aggregate without its bounds, a batch
    with a parameter of the wrong length and an unknown outcome are refused."""
    d = _execute_body()
    d["plan"]["aggregates"][1]["lower"] = None
    _refused(d, "bounded aggregates")
    v = _body(REQUEST_EXAMPLES[4])
    v["params"][0][1] = [1, 2]
    _refused(v, "one value per claim")
    r = _body(VerifyClaimsResult((0,), (0,), 0, "v"))
    r["outcomes"] = [7]
    with pytest.raises(ProtocolError, match="unknown outcome"):
        decode_reply(json.dumps(r).encode())


def test_oversized_frame_refused_on_encode() -> None:
    """A message whose body would exceed MAX_FRAME_BYTES is refused before it is sent."""
    big = ErrorReply("failed", "x" * (MAX_FRAME_BYTES + 1))
    with pytest.raises(ProtocolError, match="too large"):
        encode_frame(big)


def test_max_frame_constant_is_sane() -> None:
    """The frame limit fits the 4-byte length prefix."""
    assert 0 < MAX_FRAME_BYTES < 2**32


def test_non_finite_values_cannot_turn_into_nulls() -> None:
    """JSON has no NaN: the records whose scalars are not otherwise checked refuse non-finite floats when
    built, so a NaN can never reach the other side as a null (a NULL group key, a missing domain value)."""
    with pytest.raises(ValueError, match="finite"):
        ReleaseRow((float("nan"),), ())
    with pytest.raises(ValueError, match="finite"):
        GroupKey("k", Column("income"), (1.0, float("inf")))
    with pytest.raises(ValueError, match="finite"):
        NoisyValue(float("nan"), "laplace", 1.0, 1.0, 0.0, 1.0)


def test_number_subclasses_encode_as_numbers() -> None:
    """A numpy float (a float subclass) in a reply encodes as the plain number it is."""
    import numpy as np

    msg = ExecuteResult((ReleaseRow(("a",), (NoisyValue(np.float64(1.5), "laplace", 1.0, 1.0, 0.5, 2.5),)),),
                        (), "v")
    assert decode_reply(_frame_body(msg)) == msg
