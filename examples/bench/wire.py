"""`python -m examples.bench.wire [--legacy-tree DIR] [--rounds N]`: the sandbox wire format, measured.

Contenders, each in its own worker process, interleaved round by round in one run (so machine noise hits
all alike), with the load average before and after:

* `msgspec`: the declared schema of `sandbox.protocol` (frozen msgspec Structs, tagged unions, strict
  JSON): what the sandbox uses.
* `protobuf`: the same messages as protobuf (the schema `PROTO` below, compiled at run time with
  grpc_tools), converted to and from the same in-process types by hand-written converters (`wire_protobuf.py`),
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

ROOT = Path(__file__).resolve().parent.parent.parent


def _protobuf_contender() -> Any:
    """`wire_protobuf.py` next to this file, loaded by path (a worker may run with a legacy tree on its path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_wire_protobuf", Path(__file__).with_name("wire_protobuf.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

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
        pbc = _protobuf_contender()
        c = pbc.PbCodec(pbc.compile_proto(tmp))
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
    try:  # this tree: the bench package
        from examples.bench.queries import WORKLOAD
        from examples.bench.systems import GatewaySystem
    except ImportError:  # a tree from before the package: one module
        from examples.bench import WORKLOAD, GatewaySystem  # type: ignore[attr-defined,no-redef]

    queries = [q for q in WORKLOAD if q.id in E2E_QUERIES]
    with tempfile.TemporaryDirectory(prefix="pgw-wire-") as tmp:
        gw = GatewaySystem(data_dir, Path(tmp), 2)
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
    from examples.bench.common import ensure_data

    data_dir, _ = ensure_data(args.people, 7)
    trees = {"legacy": args.legacy_tree, "msgspec": ROOT}
    load_before = os.getloadavg()
    lat: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'gen' / 'python'}")
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
            env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'gen' / 'python'}")
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
