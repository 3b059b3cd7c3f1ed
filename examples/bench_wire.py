"""`python -m examples.bench_wire [--legacy-tree DIR] [--rounds N]`: the sandbox wire format, measured.

Contenders, each in its own worker process, interleaved round by round in one run (so machine noise hits
all alike), with the load average before and after:

* `msgspec`: the declared schema of `sandbox.protocol` (frozen msgspec Structs, tagged unions, strict
  JSON): what the sandbox uses.
* `protobuf`: the same messages as protobuf (the schema `PROTO` below, compiled at run time with
  grpc_tools), converted to and from the same in-process types by hand-written converters (`_PbCodec`),
  with the unknown-field check a strict decoder needs (protobuf keeps unknown fields silently).
* `legacy`: the hand-written JSON codec this replaced, run from a checkout of the commit before
  (`--legacy-tree`, e.g. `git archive 03f56d4 | tar -x -C /tmp/legacy`); skipped without it.

Workloads: a large plan (`ExecuteRequest`: a unit join with a public lookup, per-unit pre-aggregations in
semi-joins, a 5,000-value IN list, 200 comparisons, 40 CASE aggregates: about 12,000 nodes), a
100,000-claim verification request and its result, and a 5,000-row release. For each: encode (in-process
object -> frame bytes) and decode (bytes -> validated in-process object) medians, and the frame size.
Strictness: malformed frames each contender must refuse (unknown field, wrong type, unknown node, NaN).

`--e2e --legacy-tree DIR`: end-to-end RunQuery latency (real gateway over mTLS, real sandbox process, the
`examples.bench` harness) of this tree and the legacy tree, alternating worker processes round by round on
the same generated data (`--people`, default 20,000), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------
# Workloads (built with constructors that exist in the legacy tree and this one)
# ---------------------------------------------------------------------------------------------------


def build_plan() -> Any:
    """A large plan: joins, per-unit subqueries, a long IN list, many comparisons and CASE aggregates."""
    from sandbox.protocol.messages import (
        Aggregate,
        AggregateKind,
        Between,
        Binary,
        Case,
        Cast,
        Column,
        ExecuteRequest,
        Func,
        GroupKey,
        InList,
        InUnits,
        IsNull,
        Literal,
        OutputColumn,
        PublicJoin,
        QueryPlan,
        TableSource,
        Unary,
        UnitAggregate,
        UnitJoin,
        UnitOutput,
    )

    source = PublicJoin(UnitJoin(TableSource("residents", "r"), TableSource("social_insurance", "s"), "left"),
                        TableSource("regions", "g"), Column("region", "r"), "code")
    conds: list[Any] = [InList(Column("income", "r"), tuple(Literal(i * 37) for i in range(5000)))]
    for k in range(4):
        inner = UnitAggregate(TableSource("social_insurance", f"s{k}"),
                              Binary(">", Column("contribution", f"s{k}"), Literal(k * 100)),
                              (UnitOutput("total", "sum", Column("contribution", f"s{k}")),
                               UnitOutput("n", "count_star")), f"u{k}")
        conds.append(InUnits(inner, Binary(">", Column("total", f"u{k}"), Literal(1000 + k)), negated=k % 2 == 1))
    for k in range(200):
        conds.append(Binary("OR", Binary("<>", Binary("+", Column("birth_year", "r"), Literal(k)), Literal(2000)),
                            IsNull(Column("region", "r"), negated=True)))
    conds.append(Between(Column("birth_year", "r"), Literal(1930), Literal(2007)))
    while len(conds) > 1:  # a balanced AND tree (a chain this long would exceed the nesting limit)
        conds = [Binary("AND", *conds[i:i + 2]) if i + 1 < len(conds) else conds[i] for i in range(0, len(conds), 2)]
    where = conds[0]
    aggregates = [Aggregate(AggregateKind.COUNT)]
    for k in range(40):
        value = Case(((Binary(">", Column("income", "r"), Literal(k * 1000)),
                       Cast(Column("contribution", "s"), "float64", True)),
                      (Unary("NOT", Binary("=", Column("sex", "r"), Literal("F"))), Literal(k))), Literal(0))
        aggregates.append(Aggregate(AggregateKind.SUM, Func("CLAMP", (value, Literal(0), Literal(10_000))),
                                    1.0, 0.0, 10_000.0))
    regions = tuple(f"{r}0000" for r in range(11, 66))
    plan = QueryPlan(
        dataset="registry", table="residents", aggregates=tuple(aggregates),
        outputs=(OutputColumn("region", group_index=0),
                 *(OutputColumn(f"a{i}", aggregate_index=i) for i in range(len(aggregates)))),
        where=where, group_by=(GroupKey("region", Column("region", "r"), regions),), source=source,
    )
    return ExecuteRequest("bench-plan", plan, 1.0, 1e-6)


def count_nodes(obj: Any) -> int:
    """Plan nodes (expressions and sources) in an in-process object."""
    if isinstance(obj, tuple):
        return sum(count_nodes(x) for x in obj)
    slots = getattr(type(obj), "__struct_fields__", None) or getattr(type(obj), "__dataclass_fields__", None)
    if slots is None:
        return 0
    own = 1 if hasattr(type(obj), "__match_args__") and type(obj).__name__ in _NODE_NAMES else 0
    return own + sum(count_nodes(getattr(obj, f)) for f in slots)


_NODE_NAMES = {"Column", "Literal", "Unary", "Binary", "IsNull", "InList", "Between", "InUnits", "Case", "Cast",
               "Func", "TableSource", "UnitJoin", "PublicJoin", "UnitAggregate"}


def build_verify(n: int = 100_000) -> tuple[Any, Any]:
    """A verification batch of `n` claims (one integer and one string parameter) and its result."""
    from sandbox.protocol.verification import VerifyClaimsRequest, VerifyClaimsResult

    subjects = tuple(f"1101051949{i:08d}" for i in range(n))
    params = (("threshold", tuple((i % 5) * 1000 for i in range(n))),
              ("sex", tuple("F" if i % 2 else "M" for i in range(n))))
    request = VerifyClaimsRequest("bench-verify", "registry", "income_at_least", subjects, params)
    result = VerifyClaimsResult(tuple(i % 3 for i in range(n)), tuple(i % 4 - 1 for i in range(n)), n // 3, "v1")
    return request, result


def build_release(rows: int = 5000) -> Any:
    """A release of `rows` rows, two group keys and three noisy values each."""
    from sandbox.protocol.messages import ExecuteResult, NoisyValue, ReleaseCost, ReleaseRow

    return ExecuteResult(
        rows=tuple(ReleaseRow((f"{i % 55}0000", i % 2 == 0), tuple(
            NoisyValue(i * 3 + j, "discrete_laplace", 2.0, 2.83, i * 3 + j - 5.5, i * 3 + j + 5.5)
            for j in range(3))) for i in range(rows)),
        costs=(ReleaseCost(0, "count", "discrete_laplace", 1, 2.0, 0.5),),
        dataset_version="0123456789abcdef",
    )


# ---------------------------------------------------------------------------------------------------
# The protobuf contender: schema, converters, strict decoding
# ---------------------------------------------------------------------------------------------------

PROTO = """
syntax = "proto3";
package benchwire;
message Scalar { oneof v { bool null = 1; sint64 i = 2; double f = 3; string s = 4; bool b = 5; } }
message Column { string name = 1; optional string table = 2; }
message Unary { string op = 1; Expr operand = 2; }
message Binary { string op = 1; Expr l = 2; Expr r = 3; }
message IsNull { Expr operand = 1; bool negated = 2; }
message InList { Expr operand = 1; repeated Scalar values = 2; bool negated = 3; }
message Between { Expr operand = 1; Expr low = 2; Expr high = 3; bool negated = 4; }
message InUnits { Source source = 1; Expr where = 2; bool negated = 3; }
message When { Expr cond = 1; Expr value = 2; }
message Case { repeated When whens = 1; Expr else = 2; }
message Cast { Expr operand = 1; string to = 2; bool try = 3; }
message Func { string name = 1; repeated Expr args = 2; }
message Expr { oneof node { Column col = 1; Scalar lit = 2; Unary unary = 3; Binary bin = 4; IsNull isnull = 5;
  InList in = 6; Between between = 7; InUnits in_units = 8; Case case = 9; Cast cast = 10; Func func = 11; } }
message TableSource { string table = 1; string alias = 2; }
message UnitJoin { Source left = 1; TableSource right = 2; string kind = 3; }
message PublicJoin { Source left = 1; TableSource right = 2; Expr left_key = 3; string right_key = 4; string kind = 5; }
message UnitOutput { string name = 1; string kind = 2; Column column = 3; }
message UnitAggregate { Source input = 1; Expr where = 2; repeated UnitOutput outputs = 3; string alias = 4; }
message Source { oneof node { TableSource table = 1; UnitJoin unit_join = 2; PublicJoin public_join = 3;
  UnitAggregate unit_agg = 4; } }
message Aggregate { string kind = 1; Expr arg = 2; double weight = 3; optional double lower = 4;
  optional double upper = 5; optional double quantile = 6; optional double interval_share = 7; }
message GroupKey { string name = 1; Expr expr = 2; bool has_domain = 3; repeated Scalar domain = 4; }
message OutputColumn { string name = 1; optional int64 group_index = 2; optional int64 aggregate_index = 3; }
message QueryPlan { string dataset = 1; string table = 2; repeated Aggregate aggregates = 3;
  repeated OutputColumn outputs = 4; Expr where = 5; repeated GroupKey group_by = 6; Source source = 7;
  double selection_weight = 8; }
message ExecuteRequest { string request_id = 1; QueryPlan plan = 2; double epsilon = 3; double delta = 4;
  double rho = 5; }
message Param { string name = 1; repeated sint64 ints = 2; repeated string strings = 3;
  repeated double floats = 4; repeated Scalar mixed = 5; }
message VerifyClaimsRequest { string request_id = 1; string dataset = 2; string template = 3;
  repeated string subjects = 4; repeated Param params = 5; }
message VerifyClaimsResult { repeated int32 outcomes = 1; repeated sint32 bands = 2; int64 not_found = 3;
  string dataset_version = 4; repeated int64 capped = 5; }
message NoisyValue { Scalar value = 1; string mechanism = 2; double scale = 3; double stddev = 4;
  double ci_lower = 5; double ci_upper = 6; }
message ReleaseRow { repeated Scalar keys = 1; repeated NoisyValue values = 2; }
message ReleaseCost { int64 aggregate_index = 1; string component = 2; string mechanism = 3; Scalar sensitivity = 4;
  double scale = 5; double epsilon = 6; double delta = 7; int64 threshold = 8; double rho = 9; }
message ExecuteResult { repeated ReleaseRow rows = 1; repeated ReleaseCost costs = 2; string dataset_version = 3; }
"""


def compile_proto(out: Path) -> Any:
    """Compile `PROTO` into `out` and import the generated module."""
    from grpc_tools import protoc

    (out / "benchwire.proto").write_text(PROTO)
    code = protoc.main(["protoc", f"-I{out}", f"--python_out={out}", str(out / "benchwire.proto")])
    if code:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, str(out))
    import benchwire_pb2  # type: ignore[import-not-found]

    return benchwire_pb2


class StrictnessError(ValueError):
    """A protobuf frame with unknown fields (the strict decoder's refusal)."""


class _PbCodec:
    """Hand-written converters between the in-process types and the protobuf messages."""

    def __init__(self, pb: Any) -> None:
        import sandbox.protocol.messages as m
        from sandbox.protocol import verification as v

        self.pb, self.m, self.v = pb, m, v

    # -- scalars
    def scalar(self, x: Any, out: Any) -> None:
        if x is None:
            out.null = True
        elif isinstance(x, bool):
            out.b = x
        elif isinstance(x, int):
            out.i = x
        elif isinstance(x, float):
            out.f = x
        else:
            out.s = x

    @staticmethod
    def unscalar(s: Any) -> Any:
        which = s.WhichOneof("v")
        if which is None:
            raise ValueError("empty scalar")
        return None if which == "null" else getattr(s, which)

    # -- expressions and sources
    def expr(self, e: Any, out: Any) -> None:
        m = self.m
        if isinstance(e, m.Column):
            out.col.name = e.name
            if e.table is not None:
                out.col.table = e.table
        elif isinstance(e, m.Literal):
            self.scalar(e.value, out.lit)
        elif isinstance(e, m.Unary):
            out.unary.op = e.op
            self.expr(e.operand, out.unary.operand)
        elif isinstance(e, m.Binary):
            out.bin.op = e.op
            self.expr(e.left, out.bin.l)
            self.expr(e.right, out.bin.r)
        elif isinstance(e, m.IsNull):
            self.expr(e.operand, out.isnull.operand)
            out.isnull.negated = e.negated
        elif isinstance(e, m.InList):
            self.expr(e.operand, getattr(out, "in").operand)
            for lit in e.values:
                self.scalar(lit.value, getattr(out, "in").values.add())
            getattr(out, "in").negated = e.negated
        elif isinstance(e, m.Between):
            self.expr(e.operand, out.between.operand)
            self.expr(e.low, out.between.low)
            self.expr(e.high, out.between.high)
            out.between.negated = e.negated
        elif isinstance(e, m.InUnits):
            self.source(e.source, out.in_units.source)
            if e.where is not None:
                self.expr(e.where, out.in_units.where)
            out.in_units.negated = e.negated
        elif isinstance(e, m.Case):
            for c, val in e.whens:
                w = out.case.whens.add()
                self.expr(c, w.cond)
                self.expr(val, w.value)
            if e.else_ is not None:
                self.expr(e.else_, getattr(out.case, "else"))
            else:
                out.case.SetInParent()
        elif isinstance(e, m.Cast):
            self.expr(e.operand, out.cast.operand)
            out.cast.to = e.to
            setattr(out.cast, "try", e.try_cast)
        elif isinstance(e, m.Func):
            out.func.name = e.name
            for a in e.args:
                self.expr(a, out.func.args.add())
        else:
            raise ValueError(f"not an expression: {type(e).__name__}")

    def unexpr(self, p: Any) -> Any:
        m = self.m
        which = p.WhichOneof("node")
        if which == "col":
            return m.Column(p.col.name, p.col.table if p.col.HasField("table") else None)
        if which == "lit":
            return m.Literal(self.unscalar(p.lit))
        if which == "unary":
            return m.Unary(p.unary.op, self.unexpr(p.unary.operand))
        if which == "bin":
            return m.Binary(p.bin.op, self.unexpr(p.bin.l), self.unexpr(p.bin.r))
        if which == "isnull":
            return m.IsNull(self.unexpr(p.isnull.operand), p.isnull.negated)
        if which == "in":
            node = getattr(p, "in")
            return m.InList(self.unexpr(node.operand), tuple(m.Literal(self.unscalar(s)) for s in node.values),
                            node.negated)
        if which == "between":
            b = p.between
            return m.Between(self.unexpr(b.operand), self.unexpr(b.low), self.unexpr(b.high), b.negated)
        if which == "in_units":
            u = p.in_units
            return m.InUnits(self.unsource(u.source), self.unexpr(u.where) if u.HasField("where") else None,
                             u.negated)
        if which == "case":
            c = p.case
            return m.Case(tuple((self.unexpr(w.cond), self.unexpr(w.value)) for w in c.whens),
                          self.unexpr(getattr(c, "else")) if c.HasField("else") else None)
        if which == "cast":
            return m.Cast(self.unexpr(p.cast.operand), p.cast.to, getattr(p.cast, "try"))
        if which == "func":
            return m.Func(p.func.name, tuple(self.unexpr(a) for a in p.func.args))
        raise ValueError("unknown expression node")

    def source(self, s: Any, out: Any) -> None:
        m = self.m
        if isinstance(s, m.TableSource):
            out.table.table, out.table.alias = s.table, s.alias
        elif isinstance(s, m.UnitJoin):
            self.source(s.left, out.unit_join.left)
            out.unit_join.right.table, out.unit_join.right.alias = s.right.table, s.right.alias
            out.unit_join.kind = s.kind
        elif isinstance(s, m.PublicJoin):
            j = out.public_join
            self.source(s.left, j.left)
            j.right.table, j.right.alias = s.right.table, s.right.alias
            self.expr(s.left_key, j.left_key)
            j.right_key, j.kind = s.right_key, s.kind
        elif isinstance(s, m.UnitAggregate):
            a = out.unit_agg
            self.source(s.input, a.input)
            if s.where is not None:
                self.expr(s.where, a.where)
            for o in s.outputs:
                po = a.outputs.add()
                po.name, po.kind = o.name, o.kind
                if o.column is not None:
                    po.column.name = o.column.name
                    if o.column.table is not None:
                        po.column.table = o.column.table
            a.alias = s.alias
        else:
            raise ValueError(f"not a source: {type(s).__name__}")

    def unsource(self, p: Any) -> Any:
        m = self.m
        which = p.WhichOneof("node")
        if which == "table":
            return m.TableSource(p.table.table, p.table.alias)
        if which == "unit_join":
            j = p.unit_join
            return m.UnitJoin(self.unsource(j.left), m.TableSource(j.right.table, j.right.alias), j.kind)
        if which == "public_join":
            j = p.public_join
            return m.PublicJoin(self.unsource(j.left), m.TableSource(j.right.table, j.right.alias),
                                self.unexpr(j.left_key), j.right_key, j.kind)
        if which == "unit_agg":
            a = p.unit_agg
            outputs = tuple(m.UnitOutput(o.name, o.kind, m.Column(o.column.name, o.column.table
                                         if o.column.HasField("table") else None)
                                         if o.HasField("column") else None) for o in a.outputs)
            return m.UnitAggregate(self.unsource(a.input), self.unexpr(a.where) if a.HasField("where") else None,
                                   outputs, a.alias)
        raise ValueError("unknown source node")

    # -- messages
    def encode_execute(self, req: Any) -> bytes:
        pb, p = self.pb, req.plan
        out = pb.ExecuteRequest(request_id=req.request_id, epsilon=req.epsilon, delta=req.delta, rho=req.rho)
        plan = out.plan
        plan.dataset, plan.table, plan.selection_weight = p.dataset, p.table, p.selection_weight
        for a in p.aggregates:
            pa = plan.aggregates.add()
            pa.kind, pa.weight = a.kind.value, a.weight
            if a.arg is not None:
                self.expr(a.arg, pa.arg)
            for name in ("lower", "upper", "quantile", "interval_share"):
                if getattr(a, name) is not None:
                    setattr(pa, name, getattr(a, name))
        for o in p.outputs:
            po = plan.outputs.add()
            po.name = o.name
            if o.group_index is not None:
                po.group_index = o.group_index
            if o.aggregate_index is not None:
                po.aggregate_index = o.aggregate_index
        if p.where is not None:
            self.expr(p.where, plan.where)
        for g in p.group_by:
            pg = plan.group_by.add()
            pg.name = g.name
            self.expr(g.expr, pg.expr)
            pg.has_domain = g.domain is not None
            for v in g.domain or ():
                self.scalar(v, pg.domain.add())
        if p.source is not None:
            self.source(p.source, plan.source)
        data: bytes = out.SerializeToString()
        return data

    def decode_execute(self, body: bytes) -> Any:
        m = self.m
        out = self.pb.ExecuteRequest.FromString(body)
        _check_unknown(out)
        p = out.plan
        aggregates = tuple(m.Aggregate(
            m.AggregateKind(a.kind), self.unexpr(a.arg) if a.HasField("arg") else None, a.weight,
            *(getattr(a, n) if a.HasField(n) else None for n in ("lower", "upper", "quantile", "interval_share")))
            for a in p.aggregates)
        outputs = tuple(m.OutputColumn(o.name, o.group_index if o.HasField("group_index") else None,
                                       o.aggregate_index if o.HasField("aggregate_index") else None)
                        for o in p.outputs)
        group_by = tuple(m.GroupKey(g.name, self.unexpr(g.expr),
                                    tuple(self.unscalar(s) for s in g.domain) if g.has_domain else None)
                         for g in p.group_by)
        plan = m.QueryPlan(p.dataset, p.table, aggregates, outputs,
                           self.unexpr(p.where) if p.HasField("where") else None, group_by,
                           self.unsource(p.source) if p.HasField("source") else None, p.selection_weight)
        return m.ExecuteRequest(out.request_id, plan, out.epsilon, out.delta, out.rho)

    def encode_verify(self, req: Any) -> bytes:
        out = self.pb.VerifyClaimsRequest(request_id=req.request_id, dataset=req.dataset, template=req.template)
        out.subjects.extend(req.subjects)
        for name, values in req.params:
            param = out.params.add()
            param.name = name
            kinds = {type(x) for x in values}
            if kinds == {int}:
                param.ints.extend(values)
            elif kinds == {str}:
                param.strings.extend(values)
            elif kinds == {float}:
                param.floats.extend(values)
            else:
                for x in values:
                    self.scalar(x, param.mixed.add())
        data: bytes = out.SerializeToString()
        return data

    def decode_verify(self, body: bytes) -> Any:
        out = self.pb.VerifyClaimsRequest.FromString(body)
        _check_unknown(out)
        params = []
        for param in out.params:
            columns = [c for c in (param.ints, param.strings, param.floats) if len(c)]
            if len(columns) + bool(len(param.mixed)) != 1:
                raise ValueError("a parameter needs exactly one column")
            values = tuple(columns[0]) if columns else tuple(self.unscalar(s) for s in param.mixed)
            params.append((param.name, values))
        return self.v.VerifyClaimsRequest(out.request_id, out.dataset, out.template, tuple(out.subjects),
                                          tuple(params))

    def encode_result(self, res: Any) -> bytes:
        out = self.pb.VerifyClaimsResult(not_found=res.not_found, dataset_version=res.dataset_version)
        out.outcomes.extend(res.outcomes)
        out.bands.extend(res.bands)
        out.capped.extend(res.capped)
        data: bytes = out.SerializeToString()
        return data

    def decode_result(self, body: bytes) -> Any:
        out = self.pb.VerifyClaimsResult.FromString(body)
        _check_unknown(out)
        return self.v.VerifyClaimsResult(tuple(out.outcomes), tuple(out.bands), out.not_found, out.dataset_version,
                                         tuple(out.capped))

    def encode_release(self, res: Any) -> bytes:
        out = self.pb.ExecuteResult(dataset_version=res.dataset_version)
        for r in res.rows:
            row = out.rows.add()
            for k in r.keys:
                self.scalar(k, row.keys.add())
            for v in r.values:
                pv = row.values.add()
                self.scalar(v.value, pv.value)
                pv.mechanism, pv.scale, pv.stddev, pv.ci_lower, pv.ci_upper = (
                    v.mechanism, v.scale, v.stddev, v.ci_lower, v.ci_upper)
        for c in res.costs:
            pc = out.costs.add()
            pc.aggregate_index, pc.component, pc.mechanism = c.aggregate_index, c.component, c.mechanism
            self.scalar(c.sensitivity, pc.sensitivity)
            pc.scale, pc.epsilon, pc.delta, pc.threshold, pc.rho = c.scale, c.epsilon, c.delta, c.threshold, c.rho
        data: bytes = out.SerializeToString()
        return data

    def decode_release(self, body: bytes) -> Any:
        m = self.m
        out = self.pb.ExecuteResult.FromString(body)
        _check_unknown(out)
        rows = tuple(m.ReleaseRow(tuple(self.unscalar(k) for k in r.keys), tuple(
            m.NoisyValue(self.unscalar(v.value), v.mechanism, v.scale, v.stddev, v.ci_lower, v.ci_upper)
            for v in r.values)) for r in out.rows)
        costs = tuple(m.ReleaseCost(c.aggregate_index, c.component, c.mechanism, self.unscalar(c.sensitivity),
                                    c.scale, c.epsilon, c.delta, c.threshold, c.rho) for c in out.costs)
        return m.ExecuteResult(rows, costs, out.dataset_version)


def _check_unknown(msg: Any) -> None:
    """Refuse a message holding unknown fields anywhere (protobuf keeps them silently otherwise)."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.unknown_fields import UnknownFieldSet

    if len(UnknownFieldSet(msg)):
        raise StrictnessError(f"unknown fields in {msg.DESCRIPTOR.name}")
    for fd, value in msg.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in (value if fd.is_repeated else (value,)):
                _check_unknown(item)


# ---------------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------------


def _median_s(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _codec(contender: str, tmp: Path) -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """Per workload: (encode in-process -> body bytes, decode body bytes -> in-process)."""
    if contender == "protobuf":
        c = _PbCodec(compile_proto(tmp))
        return {"plan": (c.encode_execute, c.decode_execute), "verify_request": (c.encode_verify, c.decode_verify),
                "verify_result": (c.encode_result, c.decode_result),
                "release": (c.encode_release, c.decode_release)}
    import sandbox.protocol.messages as m

    def encode(msg: Any) -> bytes:
        frame: bytes = m.encode_frame(msg)
        return frame[4:]

    if contender == "legacy":
        return dict.fromkeys(("plan", "verify_request", "verify_result", "release"), (encode, m.decode_body))
    return {"plan": (encode, m.decode_request), "verify_request": (encode, m.decode_request),
            "verify_result": (encode, m.decode_reply), "release": (encode, m.decode_reply)}


def _probes(contender: str, codecs: dict[str, Any], plan_req: Any) -> dict[str, str]:
    """Malformed frames: 'refused' (an error the server maps to bad_request) or what happened instead."""
    enc, dec = codecs["plan"]
    body = enc(plan_req)
    cases: dict[str, bytes] = {}
    if contender == "protobuf":
        from google.protobuf.internal import encoder

        def field(number: int, wire: int, payload: bytes) -> bytes:
            tag: bytes = encoder._VarintBytes((number << 3) | wire)  # type: ignore[attr-defined]
            return tag + payload

        cases["unknown top-level field"] = body + field(99, 0, b"\x01")
        cases["epsilon as a string (wrong wire type)"] = body + field(3, 2, b"\x031.0")
        cases["request_id as a number"] = body + field(1, 0, b"\x07")
        cases["epsilon as a varint"] = body + field(3, 0, b"\x01")
        cases["request_id holding an embedded message (same wire type)"] = body + field(1, 2, b"\x02\x08\x01")
        cases["truncated"] = body[:-3]
    else:
        d = json.loads(body)

        def mutate(fn: Callable[[dict[str, Any]], None]) -> bytes:
            x = json.loads(body)
            fn(x)
            return json.dumps(x).encode()
        cases["unknown top-level field"] = mutate(lambda x: x.update(extra=1))
        cases["unknown field in a nested aggregate"] = mutate(lambda x: x["plan"]["aggregates"][0].update(exact=1))
        cases["epsilon as a string"] = mutate(lambda x: x.update(epsilon="1.0"))
        cases["epsilon as a boolean"] = mutate(lambda x: x.update(epsilon=True))
        cases["request_id as a number"] = mutate(lambda x: x.update(request_id=7))
        cases["group_index as a float"] = mutate(lambda x: x["plan"]["outputs"][0].update(group_index=0.5))
        cases["join kind as a number"] = mutate(lambda x: x["plan"]["source"]["left"].update(kind=1))
        cases["unknown node type"] = mutate(lambda x: x["plan"].update(where={"t": "subquery", "sql": "SELECT 1"}))
        cases["NaN epsilon"] = json.dumps(d).replace('"epsilon": 1.0', '"epsilon": NaN').encode()
        cases["truncated"] = body[:-3]
    out = {}
    for name, frame in cases.items():
        try:
            dec(frame)
            out[name] = "ACCEPTED"
        except RecursionError:
            out[name] = "crashed (RecursionError)"
        except Exception as exc:  # every refusal counts; its type is shown
            out[name] = f"refused ({type(exc).__name__})"
    return out


def worker(contender: str, reps: int) -> dict[str, Any]:
    """Time every workload with one contender; returns sizes, medians (ms) and the strictness probes."""
    with tempfile.TemporaryDirectory() as tmp:
        codecs = _codec(contender, Path(tmp))
        plan = build_plan()
        verify, result = build_verify()
        workloads = {"plan": plan, "verify_request": verify, "verify_result": result, "release": build_release()}
        out: dict[str, Any] = {"contender": contender, "plan_nodes": count_nodes(plan.plan)}
        for name, obj in workloads.items():
            enc, dec = codecs[name]
            body = enc(obj)
            back = dec(body)
            assert back == obj, f"{contender} {name}: round trip changed the message"
            n = reps if name in ("plan", "release") else max(3, reps // 3)
            out[name] = {"bytes": len(body), "encode_ms": _median_s(lambda: enc(obj), n) * 1e3,  # noqa: B023
                         "decode_ms": _median_s(lambda: dec(body), n) * 1e3}  # noqa: B023
        out["probes"] = _probes(contender, codecs, plan)
        return out


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


E2E_QUERIES = ("count", "avg_by_region", "count_by_region_name", "median", "join", "preagg")


def e2e_worker(data_dir: Path, reps: int) -> dict[str, list[float]]:
    """RunQuery latencies (seconds) per query through the tree this process runs from."""
    from examples import bench

    queries = [q for q in bench.WORKLOAD if q.id in E2E_QUERIES]
    with tempfile.TemporaryDirectory(prefix="pgw-wire-") as tmp:
        gw = bench.GatewaySystem(data_dir, Path(tmp), 2)
        try:
            out: dict[str, list[float]] = {q.id: [] for q in queries}
            for _ in range(3):  # warm-up
                for q in queries:
                    gw.run(q)
            for _ in range(reps):
                for q in queries:
                    outcome = gw.run(q)
                    assert outcome.seconds is not None, (q.id, outcome.unsupported)
                    out[q.id].append(outcome.seconds)
        finally:
            gw.close()
    return out


def e2e(args: argparse.Namespace) -> None:
    """Alternate end-to-end workers of the legacy tree and this tree; print medians side by side."""
    from examples.bench import ensure_data

    data_dir, _ = ensure_data(args.people, 7)
    trees = {"legacy": args.legacy_tree, "msgspec": ROOT}
    load_before = os.getloadavg()
    lat: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=str(tree))
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--e2e-worker", str(data_dir),
                                   "--reps", str(args.reps)], cwd=tree, env=env, capture_output=True, text=True,
                                  check=True)
            for q, xs in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                lat[name].setdefault(q, []).extend(xs)
    load_after = os.getloadavg()
    print(f"RunQuery end to end, {args.people:,} people, {args.rounds} rounds x {args.reps} requests per query "
          f"and tree; load average before {load_before[0]:.2f} {load_before[1]:.2f}, after {load_after[0]:.2f} "
          f"{load_after[1]:.2f}")
    print("| query | legacy median ms | msgspec median ms | ratio |")
    print("|---|---:|---:|---:|")
    for q in E2E_QUERIES:
        a, b = statistics.median(lat["legacy"][q]) * 1e3, statistics.median(lat["msgspec"][q]) * 1e3
        print(f"| {q} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "latency_s": lat}))


def main(argv: list[str] | None = None) -> None:
    """Run every contender `--rounds` times, interleaved, and print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--legacy-tree", type=Path, help="checkout of the commit with the hand-written JSON codec")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--e2e", action="store_true", help="end-to-end RunQuery latency, legacy tree vs this tree")
    ap.add_argument("--e2e-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--people", type=int, default=20_000)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.reps)))
        return
    if args.e2e_worker:
        print(json.dumps(e2e_worker(args.e2e_worker, args.reps)))
        return
    if args.e2e:
        if not args.legacy_tree:
            ap.error("--e2e needs --legacy-tree")
        e2e(args)
        return
    contenders = ["msgspec", "protobuf"] + (["legacy"] if args.legacy_tree else [])
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for _ in range(args.rounds):
        for c in contenders:
            tree = args.legacy_tree if c == "legacy" else ROOT
            env = dict(os.environ, PYTHONPATH=str(tree))
            script = str(Path(__file__).resolve())
            proc = subprocess.run([sys.executable, script, "--worker", c, "--reps", str(args.reps)],
                                  cwd=tree, env=env, capture_output=True, text=True, check=True)
            runs[c].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, after {load_after[0]:.2f} "
          f"{load_after[1]:.2f}; {args.rounds} rounds x {args.reps} repetitions; plan nodes "
          f"{runs['msgspec'][0]['plan_nodes']}")
    print("| workload | contender | frame bytes | encode ms (median) | decode ms (median) |")
    print("|---|---|---:|---:|---:|")
    for name in ("plan", "verify_request", "verify_result", "release"):
        for c in contenders:
            enc = statistics.median(r[name]["encode_ms"] for r in runs[c])
            dec = statistics.median(r[name]["decode_ms"] for r in runs[c])
            print(f"| {name} | {c} | {runs[c][0][name]['bytes']:,} | {enc:.2f} | {dec:.2f} |")
    print("\nstrictness (a malformed ExecuteRequest frame):")
    for c in contenders:
        for probe, outcome in runs[c][0]["probes"].items():
            print(f"  {c:9s} {probe}: {outcome}")
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "runs": runs},
                                        indent=1))


if __name__ == "__main__":
    main()
