"""`pgw`: serve the gateway, query it, show budgets and catalogs, make development certificates, run the demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.cli import audit as cli_governance
from gateway.cli.client import ClientIdentity, reports_rpc_errors, secure_channel
from gateway.cli.tables import format_table
from gateway.errors import ConfigError
from gateway.settings import ROOT, load_settings

DEFAULT_TARGET = "127.0.0.1:50051"
DEV_DATA_PEOPLE = 20_000
DATA_FILES = ("residents.parquet", "enterprises.parquet", "social_insurance.parquet", "regions.parquet")


def _ensure_dev_assets(settings_tls: Path, policy_path: Path, data_dir: Path | None) -> None:
    """--dev: development certificates for every consumer in the policy, and example data if missing."""
    from gateway.identity import certs
    from gateway.policy.policy import load_policy

    policy = load_policy(policy_path)
    certs.write_dev_pki(settings_tls, clients=policy.identities)  # issue-gov: operators too
    target = data_dir or ROOT / "examples" / "data"
    if not all((target / f).exists() for f in DATA_FILES):
        from examples.generate_data import generate

        print(f">> generating example data ({DEV_DATA_PEOPLE} people) in {target}", flush=True)
        generate(target, DEV_DATA_PEOPLE)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run sandbox + gateway until SIGINT/SIGTERM."""
    from gateway.console import start_console
    from gateway.rpc.server import start_gateway

    overrides = {
        "listen": args.listen, "policy": args.policy, "catalog": args.catalog,
        "data_dir": args.data_dir, "state_dir": args.state_dir, "tls_dir": args.tls_dir,
        "query_timeout_ms": args.query_timeout_ms, "metrics_port": args.metrics_port,
        "log_format": args.log_format, "console_listen": args.console_listen,
        "console_public_listen": args.console_public_listen,
    }
    settings = load_settings({k: v for k, v in overrides.items() if v is not None})
    if settings.log_format == "json":
        from gateway.release.logs import install_json_logging

        install_json_logging()
    if args.dev:
        _ensure_dev_assets(settings.tls_dir, settings.policy, settings.data_dir)
    gateway = start_gateway(settings)
    try:
        start_console(gateway, settings)
    except BaseException:
        gateway.stop()
        raise
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # issue-gov: SIGHUP re-reads the policy file (atomic; a broken file is logged and changes nothing)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=gateway.reload_policy).start())
    # Handlers are installed before "ready" is printed (a signal right after it must not kill the process).
    print(f"gateway ready port={gateway.port} pid={os.getpid()}", flush=True)
    print(f"  clients: pgw query --target 127.0.0.1:{gateway.port} --tls-dir {settings.tls_dir} "
          f"--as <consumer> ...", flush=True)
    # Wake up regularly: the kernel may deliver a signal to one of gRPC's threads, and Python then runs its
    # handler only when the main thread next executes bytecode, which a plain stop.wait() never does (a
    # SIGHUP reload was seen to wait 20 s and more on a loaded machine).
    while not stop.wait(0.2):
        pass
    print("stopping", flush=True)
    gateway.stop()
    return 0


def _channel(args: argparse.Namespace) -> grpc.Channel:
    tls_dir = Path(args.tls_dir) if args.tls_dir else load_settings().tls_dir
    return secure_channel(args.target, ClientIdentity.in_dir(tls_dir, args.identity))


def _loss(args: argparse.Namespace) -> common_pb.PrivacyLoss:
    # zcdp grants: --rho instead of --epsilon
    return common_pb.PrivacyLoss(epsilon=args.epsilon or 0.0, delta=args.delta, rho=args.rho or 0.0)


def _cost_text(loss: common_pb.PrivacyLoss) -> str:
    """A cost or budget amount: epsilon, or for zCDP rho with its (epsilon, delta) equivalent."""
    if loss.rho:
        return f"rho {loss.rho:.6g} (= epsilon {loss.epsilon:.4f} at delta {loss.delta:g})"
    return f"epsilon {loss.epsilon:.4f}"


def format_cell(cell: q_pb.Cell) -> str:
    """A cell for humans: the value, and for noisy values the 95% interval."""
    kind = cell.WhichOneof("value")
    value: Any = "NULL" if kind == "null_value" else getattr(cell, kind or "null_value")
    if isinstance(value, float):
        value = f"{value:,.2f}"
    elif isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:,}"
    if cell.HasField("confidence_interval"):
        ci = cell.confidence_interval
        return f"{value}  [{ci.lower:,.2f}, {ci.upper:,.2f}]"
    return str(value)


def print_answer(resp: q_pb.RunQueryResponse) -> None:
    """Print a RunQueryResponse as a table with costs and budget."""
    header = [c.name for c in resp.columns]
    rows = [[format_cell(cell) for cell in row.cells] for row in resp.rows]
    print(format_table(header, rows))
    mechs = {r.mechanism for r in resp.plan.releases}
    print(f"noise: {', '.join(sorted(mechs))}; intervals are 95%; "
          f"charged {_cost_text(resp.privacy_cost)}"
          f"{' (replayed, not charged again)' if resp.replayed else ''}; "
          f"remaining {_cost_text(resp.budget.remaining)} of {_cost_text(resp.budget.budget)}")


@reports_rpc_errors
def cmd_query(args: argparse.Namespace) -> int:
    """RunQuery or ExplainQuery."""
    shares = _option_map(args.interval_share)
    if shares is None:
        print("--interval-share must be OUTPUT=F with F a number", file=sys.stderr)
        return 2
    weights = _option_map(args.weight)
    if weights is None:
        print("--weight must be OUTPUT=W with W a number", file=sys.stderr)
        return 2
    stub = q_grpc.QueryServiceStub(_channel(args))
    if args.command == "explain":
        ex = stub.ExplainQuery(q_pb.ExplainQueryRequest(
            dataset=args.dataset, sql=args.sql, privacy_loss=_loss(args), purpose=args.purpose,
            interval_shares=shares, weights=weights))
        print(json_format.MessageToJson(ex) if args.json else _explain_text(ex))
        return 0
    resp = stub.RunQuery(q_pb.RunQueryRequest(
        dataset=args.dataset, sql=args.sql, privacy_loss=_loss(args), purpose=args.purpose,
        request_id=args.request_id or "", interval_shares=shares, weights=weights))
    if args.json:
        print(json_format.MessageToJson(resp))
    else:
        print_answer(resp)
    return 0


def _option_map(items: list[str]) -> dict[str, float] | None:
    """`--interval-share OUTPUT=F` (or `--weight OUTPUT=W`) options as a map (None if one is malformed;
    the gateway checks the numbers)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            out[name] = float(value)
        except ValueError:
            return None
        if not sep or not name:
            return None
    return out


def _explain_text(ex: q_pb.ExplainQueryResponse) -> str:
    rows = [[r.output, r.component, r.mechanism, f"{r.sensitivity:g}", f"{r.scale:.4g}",
             f"rho {r.privacy_loss.rho:.6g}" if r.privacy_loss.rho else f"{r.privacy_loss.epsilon:.6f}",
             f"{r.half_width_95:.4g}"] for r in ex.plan.releases]
    table = format_table(
        ["output", "component", "mechanism", "sensitivity", "scale", "epsilon", "±95%"], rows)
    return (f"table {ex.plan.table}, group by {list(ex.plan.group_by) or '-'} "
            f"({ex.plan.group_by_mode}), {ex.plan.row_count} row(s), at most "
            f"{ex.plan.max_rows_per_unit} row(s) per {ex.plan.privacy_unit}\n{table}\n"
            f"total {_cost_text(ex.privacy_cost)}; remaining "
            f"{_cost_text(ex.budget.remaining)}; affordable: {ex.affordable}")


@reports_rpc_errors
def cmd_budget(args: argparse.Namespace) -> int:
    """GetPrivacyBudget."""
    stub = b_grpc.BudgetServiceStub(_channel(args))
    resp = stub.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(dataset=args.dataset or ""))
    if args.json:
        print(json_format.MessageToJson(resp))
        return 0
    print(f"consumer {resp.consumer}")
    print(format_table(
        ["dataset", "purpose", "definition", "budget ε", "spent ε", "remaining ε", "max ε/query",
         "budget rho", "spent rho", "remaining rho", "δ"],
        [[g.dataset, g.purpose, g.privacy_definition, f"{g.budget.epsilon:g}",
          f"{g.spent.epsilon:.4f}", f"{g.remaining.epsilon:.4f}", f"{g.max_per_query.epsilon:g}",
          *([f"{g.budget.rho:g}", f"{g.spent.rho:.6g}", f"{g.remaining.rho:.6g}", f"{g.budget.delta:g}"]
            if g.privacy_definition == "zcdp" else ["-", "-", "-", f"{g.budget.delta:g}"])]
         for g in resp.grants]))
    if any(g.privacy_definition == "zcdp" for g in resp.grants):
        print("zcdp grants: ε is OpenDP's (ε, δ) conversion of the total rho at the grant's δ")
    return 0


@reports_rpc_errors
def cmd_datasets(args: argparse.Namespace) -> int:
    """ListDatasets."""
    stub = cat_grpc.CatalogServiceStub(_channel(args))
    resp = stub.ListDatasets(cat_pb.ListDatasetsRequest())
    if args.json:
        print(json_format.MessageToJson(resp))
        return 0
    for d in resp.datasets:
        print(f"dataset {d.name} (unit: {d.privacy_unit}, version {d.version}, "
              f"purposes: {', '.join(d.purposes)})")
        for t in d.tables:
            print(f"  table {t.name} (at most {t.max_rows_per_unit} row(s) per unit)")
            for c in t.columns:
                extra = f"[{c.lower:g}, {c.upper:g}]" if c.has_bounds else ""
                if c.domain:
                    extra += f" domain of {len(c.domain)}"
                print(f"    {c.name:<22} {common_pb.ColumnType.Name(c.type)[12:].lower():<7} "
                      f"{c.grade:<11} {extra}")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    """Create a development CA, a server certificate and client certificates."""
    from gateway.identity import certs

    out = Path(args.out)
    written = certs.write_dev_pki(out, clients=args.client, server_hosts=tuple(args.host))
    for name, path in sorted(written.items()):
        print(f"{name}: {path}")
    return 0


def cmd_check_policy(args: argparse.Namespace) -> int:
    """Validate the operator policy and the data owner's catalog files."""
    from gateway.policy.policy import load_policy
    from sandbox.catalog import load_catalog

    policy = load_policy(Path(args.policy))
    catalog = load_catalog(Path(args.catalog))
    print(f"{args.policy}: ok ({len(policy.consumers)} consumers, {len(policy.grants)} grants)")
    print(f"{args.catalog}: ok ({len(catalog.datasets)} datasets)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (see gateway/cli/demo.py)."""
    from gateway.cli.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    """The pgw argument parser."""
    p = argparse.ArgumentParser(prog="pgw", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run sandbox + gateway in the foreground")
    s.add_argument("--listen")
    s.add_argument("--policy")
    s.add_argument("--catalog")
    s.add_argument("--data-dir")
    s.add_argument("--state-dir")
    s.add_argument("--tls-dir")
    s.add_argument("--query-timeout-ms")
    s.add_argument("--metrics-port", help="serve Prometheus /metrics on this loopback port")
    s.add_argument("--log-format", choices=["text", "json"])
    s.add_argument("--console-listen", help="host:port of the web console (client certificates required)")
    s.add_argument("--console-public-listen", help="host:port of the public transparency page (no certificate)")
    s.add_argument("--dev", action="store_true",
                   help="create development certificates and example data if missing")
    s.set_defaults(func=cmd_serve)

    def client_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--target", default=DEFAULT_TARGET)
        sp.add_argument("--tls-dir", help="directory with ca.crt and <identity>.crt/.key")
        sp.add_argument("--as", dest="identity", required=True, help="client certificate name")
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table")

    for name in ("query", "explain"):
        q = sub.add_parser(name, help=f"{'run' if name == 'query' else 'explain'} a DP SQL query")
        client_args(q)
        q.add_argument("--dataset", required=True)
        q.add_argument("--purpose", required=True)
        loss = q.add_mutually_exclusive_group(required=True)
        loss.add_argument("--epsilon", type=float, help="pure and approximate DP grants")
        loss.add_argument("--rho", type=float, help="zcdp grants: zero-concentrated DP")
        q.add_argument("--delta", type=float, default=0.0)
        q.add_argument("--interval-share", action="append", default=[], metavar="OUTPUT=F",
                       help="share F in [0, 1) of a quantile output's epsilon spent on its 95%% interval "
                            "(default 0.5; 0 puts all on the point); repeatable")
        q.add_argument("--weight", action="append", default=[], metavar="OUTPUT=W",
                       help="weight W of an output in the split of epsilon (default 1 each; group_keys "
                            "weights the selection of private group keys); repeatable")
        if name == "query":
            q.add_argument("--request-id")
        q.add_argument("sql")
        q.set_defaults(func=cmd_query)

    b = sub.add_parser("budget", help="show grants and remaining budget")
    client_args(b)
    b.add_argument("--dataset")
    b.set_defaults(func=cmd_budget)

    d = sub.add_parser("datasets", help="list the datasets and columns you may use")
    client_args(d)
    d.set_defaults(func=cmd_datasets)

    c = sub.add_parser("certs", help="create a development CA, server and client certificates")
    c.add_argument("--out", required=True)
    c.add_argument("--client", action="append", default=[], help="client name (repeatable)")
    c.add_argument("--host", action="append", default=["localhost", "127.0.0.1"])
    c.set_defaults(func=cmd_certs)

    k = sub.add_parser("check-policy", help="validate the policy and catalog files")
    k.add_argument("--policy", default=str(ROOT / "policies" / "operator.toml"))
    k.add_argument("--catalog", default=str(ROOT / "policies" / "catalog.toml"))
    k.set_defaults(func=cmd_check_policy)

    from gateway.cli import models as cli_models  # pgw train / pgw evaluate
    cli_models.register(sub)

    m = sub.add_parser("demo", help="the end-to-end demo (what `make demo` runs)")
    m.set_defaults(func=cmd_demo)
    cli_governance.register(sub)

    from gateway.cli import admin as cli_admin  # issue-gov: `pgw admin ...`
    cli_admin.register(sub)

    from gateway.cli import verify as cli_verify  # verify, verify-batch, templates, verify-receipt

    cli_verify.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pgw` and `python -m gateway`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
