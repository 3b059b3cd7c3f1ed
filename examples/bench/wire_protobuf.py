"""The protobuf contender of the wire benchmark (`wire.py`): the same boundary messages as a protobuf schema
compiled at run time with grpc_tools, hand-written converters to and from the in-process types, and the
unknown-field check a strict decoder needs (protobuf keeps unknown fields silently).

Loaded by `wire.py` from its own directory, so the benchmark's workers also run from a legacy checkout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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


class PbCodec:
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
