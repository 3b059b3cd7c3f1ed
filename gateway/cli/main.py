"""`pgw`: serve the gateway, query it, show budgets and catalogs, make development certificates, run the demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import assets
from gateway.cli import audit as cli_governance
from gateway.cli.client import add_client_args, channel_for_args, reports_rpc_errors
from gateway.cli.jsonout import message_to_json
from gateway.cli.serve import DEV_DATA_PEOPLE, cmd_serve
from gateway.cli.tables import format_table

if TYPE_CHECKING:
    import grpc
    from privacy_gateway.v1 import common_pb2 as common_pb
    from privacy_gateway.v1 import query_service_pb2 as q_pb

def _channel(args: argparse.Namespace) -> grpc.Channel:
    return channel_for_args(args)


def _loss(args: argparse.Namespace) -> common_pb.PrivacyLoss:
    from privacy_gateway.v1 import common_pb2 as common_pb

    # zcdp grants: --rho instead of --epsilon
    return common_pb.PrivacyLoss(epsilon=args.epsilon or 0.0, delta=args.delta, rho=args.rho or 0.0)


def _cost_text(loss: common_pb.PrivacyLoss) -> str:
    """A cost or budget amount: epsilon, or for zCDP rho with its (epsilon, delta) equivalent."""
    if loss.rho:
        return f"rho {loss.rho:.6g} (= epsilon {loss.epsilon:.4f} at delta {loss.delta:g})"
    return f"epsilon {loss.epsilon:.4f}"


def _number(value: Any, integral: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if integral:
        return f"{round(value):,}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def format_cell(cell: q_pb.Cell, integral: bool = False) -> str:
    """A cell's value for humans (whole numbers for integers and counts)."""
    kind = cell.WhichOneof("value")
    value: Any = "NULL" if kind in (None, "null_value") else getattr(cell, kind)
    return _number(value, integral or (isinstance(value, int) and not isinstance(value, bool)))


def format_interval(cell: q_pb.Cell, integral: bool = False) -> str:
    """A noisy cell's 95% interval as ``[lower, upper]`` ("" for an exact cell)."""
    if not cell.HasField("confidence_interval"):
        return ""
    kind = cell.WhichOneof("value")
    whole = integral or kind == "int64_value"
    ci = cell.confidence_interval
    return f"[{_number(ci.lower, whole)}, {_number(ci.upper, whole)}]"


def print_answer(resp: q_pb.RunQueryResponse) -> None:
    """Print a RunQueryResponse as a table, then what this request charged (a replay or a cached answer is
    marked and charges nothing; a replay's original cost is shown apart) and the budget left."""
    header: list[str] = []
    for c in resp.columns:
        header += [c.name, f"{c.name} 95%"] if c.noisy else [c.name]
    counts = [c.aggregate.upper() == "COUNT" for c in resp.columns]
    rows = []
    for row in resp.rows:
        cells: list[str] = []
        for i, cell in enumerate(row.cells):
            cells.append(format_cell(cell, counts[i]))
            if resp.columns[i].noisy:
                cells.append(format_interval(cell, counts[i]))
        rows.append(cells)
    print(format_table(header, rows))
    mechs = {r.mechanism for r in resp.plan.releases}
    if resp.replayed:
        charge = (f"charged nothing now (replay of request {resp.request_id}, which cost "
                  f"{_cost_text(resp.privacy_cost)})")
    elif resp.cached:
        charge = "charged nothing (cached: an earlier release of the same query)"
    else:
        charge = f"charged {_cost_text(resp.privacy_cost)}"
    print(f"noise: {', '.join(sorted(mechs)) or '-'}; intervals are 95%; {charge}; "
          f"remaining {_cost_text(resp.budget.remaining)} of {_cost_text(resp.budget.budget)}")


def _read_sql(text: str) -> str:
    """The SQL argument: literal SQL, ``@FILE`` or ``-`` for standard input."""
    from pgw_client.errors import ClientSetupError

    if text == "-":
        return sys.stdin.read()
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ClientSetupError(f"{path}: cannot read the SQL file: {exc.strerror}") from exc
    return text


@reports_rpc_errors
def cmd_query(args: argparse.Namespace) -> int:
    """RunQuery or ExplainQuery."""
    from privacy_gateway.v1 import query_service_pb2 as q_pb
    from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

    shares = _option_map(args.interval_share)
    if shares is None:
        print("--interval-share must be OUTPUT=F with F a number", file=sys.stderr)
        return 2
    weights = _option_map(args.weight)
    if weights is None:
        print("--weight must be OUTPUT=W with W a number", file=sys.stderr)
        return 2
    if args.epsilon is None and args.rho is None and args.accuracy is None:
        print("say what to spend: --epsilon, --rho (zcdp grants) or --accuracy (a 95% half-width)", file=sys.stderr)
        return 2
    sql = _read_sql(args.sql)
    accuracy = q_pb.AccuracyTarget(half_width_95=args.accuracy) if args.accuracy else None
    stub = q_grpc.QueryServiceStub(_channel(args))
    if args.command == "explain":
        ex = stub.ExplainQuery(q_pb.ExplainQueryRequest(
            dataset=args.dataset, sql=sql, privacy_loss=_loss(args), purpose=args.purpose,
            interval_shares=shares, weights=weights, accuracy=accuracy))
        print(message_to_json(ex) if args.json else _explain_text(ex))
        return 0
    import uuid

    resp = stub.RunQuery(q_pb.RunQueryRequest(
        dataset=args.dataset, sql=sql, privacy_loss=_loss(args), purpose=args.purpose,
        request_id=args.request_id or str(uuid.uuid4()), interval_shares=shares, weights=weights,
        accuracy=accuracy))
    if args.receipt_out and resp.HasField("receipt"):
        from pgw_client.receipts import Receipt

        Receipt.from_proto(resp.receipt).save(args.receipt_out)
    if args.json:
        import json

        from pgw_client.results import result_from_proto

        print(json.dumps(result_from_proto(resp).to_json_obj(), indent=2, ensure_ascii=False))
    else:
        print_answer(resp)
        if args.receipt_out:
            print(f"receipt written to {args.receipt_out} (pgw receipt verify {args.receipt_out})")
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


def _half_width_unit(r: q_pb.ReleaseCost) -> str:
    """The unit of a release's ±95%: a quantile's selection is bounded in rank-score units and its interval's
    ends in rows of rank; a count in rows; a sum or other component in its own units."""
    if r.mechanism.startswith("noisy_max"):
        return "rank score"
    if r.component == "interval":
        return "rows of rank"
    if r.component in ("count", "group_keys"):
        return "rows"
    return f"the {r.component}'s units"


def _explain_text(ex: q_pb.ExplainQueryResponse) -> str:
    rows = [[r.output, r.component, r.mechanism, f"{r.sensitivity:g}", f"{r.scale:.4g}",
             f"rho {r.privacy_loss.rho:.6g}" if r.privacy_loss.rho else f"{r.privacy_loss.epsilon:.6f}",
             f"{r.half_width_95:.4g}", _half_width_unit(r)] for r in ex.plan.releases]
    table = format_table(
        ["output", "component", "mechanism", "sensitivity", "scale", "epsilon", "±95%", "±95% in"], rows)
    per_unit = (f"at most {ex.plan.max_rows_per_unit} row(s) per {ex.plan.privacy_unit}"
                if ex.plan.max_rows_per_unit else "a public table")
    return (f"table {ex.plan.table}, group by {list(ex.plan.group_by) or '-'} "
            f"({ex.plan.group_by_mode}), {ex.plan.row_count} row(s), {per_unit}\n{table}\n"
            f"total {_cost_text(ex.privacy_cost)}; remaining "
            f"{_cost_text(ex.budget.remaining)}; affordable: {ex.affordable}")


@reports_rpc_errors
def cmd_budget(args: argparse.Namespace) -> int:
    """GetPrivacyBudget."""
    from privacy_gateway.v1 import budget_service_pb2 as b_pb
    from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc

    stub = b_grpc.BudgetServiceStub(_channel(args))
    resp = stub.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(dataset=args.dataset or ""))
    if args.json:
        print(message_to_json(resp))
        return 0
    print(f"consumer {resp.consumer}")
    print(format_table(
        ["dataset", "purpose", "definition", "budget ε", "spent ε", "remaining ε", "max ε/query",
         "budget rho", "spent rho", "remaining rho", "δ", "refreshes"],
        [[g.dataset, g.purpose, g.privacy_definition, f"{g.budget.epsilon:g}",
          f"{g.spent.epsilon:.4f}", f"{g.remaining.epsilon:.4f}", f"{g.max_per_query.epsilon:g}",
          *([f"{g.budget.rho:g}", f"{g.spent.rho:.6g}", f"{g.remaining.rho:.6g}", f"{g.budget.delta:g}"]
            if g.privacy_definition == "zcdp" else ["-", "-", "-", f"{g.budget.delta:g}"]),
          g.refreshes_at or "-"]
         for g in resp.grants]))
    if any(g.privacy_definition == "zcdp" for g in resp.grants):
        print("zcdp grants: ε is OpenDP's (ε, δ) conversion of the total rho at the grant's δ")
    return 0


@reports_rpc_errors
def cmd_datasets(args: argparse.Namespace) -> int:
    """ListDatasets: each dataset, table and column with its description, bounds and domain."""
    from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
    from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
    from privacy_gateway.v1 import common_pb2 as common_pb

    stub = cat_grpc.CatalogServiceStub(_channel(args))
    resp = stub.ListDatasets(cat_pb.ListDatasetsRequest())
    if args.json:
        print(message_to_json(resp))
        return 0
    for d in resp.datasets:
        print(f"dataset {d.name}: {d.description or '-'}")
        print(f"  privacy unit {d.privacy_unit}, version {d.version}, owner {d.owner or '-'}, "
              f"purposes: {', '.join(d.purposes) or '-'}")
        for t in d.tables:
            per = (f"at most {t.max_rows_per_unit} row(s) per {d.privacy_unit}" if t.max_rows_per_unit
                   else "public lookup table")
            print(f"  table {t.name} ({per})")
            rows = []
            for c in t.columns:
                bounds = f"[{c.lower:g}, {c.upper:g}]" if c.has_bounds else ""
                domain = ", ".join(c.domain[:6]) + (f", ... ({len(c.domain)})" if len(c.domain) > 6 else "")
                rows.append([c.name, common_pb.ColumnType.Name(c.type)[12:].lower(), c.grade, bounds,
                             domain, c.description])
            print("    " + format_table(["column", "type", "grade", "bounds", "domain", "description"],
                                        rows).replace("\n", "\n    "))
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    """Create (or with --renew re-issue expiring) development certificates, and show each one's expiry."""
    from datetime import UTC, datetime

    from cryptography import x509

    from gateway.identity import certs

    out = Path(args.out)
    if args.owner:
        hosts = tuple(args.host or ["localhost", "127.0.0.1"])
        written = certs.write_owner_pki(out, gateways=args.client, sandbox_hosts=hosts)
    else:
        written = certs.write_dev_pki(out, clients=args.client, server_hosts=("localhost", "127.0.0.1", *args.host),
                                      renew_within_days=args.renew_days if args.renew else None)
    now = datetime.now(UTC)
    rows = []
    for name, path in sorted(written.items()):
        if name.endswith(".crt"):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            left = (cert.not_valid_after_utc - now).days
            state = "EXPIRED" if left < 0 else f"{left} days left"
            rows.append([name, str(path), f"{cert.not_valid_after_utc:%Y-%m-%d}", state])
        else:
            rows.append([name, str(path), "", ""])
    print(format_table(["file", "path", "expires", ""], rows))
    return 0


def cmd_check_policy(args: argparse.Namespace) -> int:
    """Validate the operator policy and the data owner's catalog files, and the catalog's data files (each
    exists, is Parquet, has every declared column with a readable type); 2 if anything is wrong."""
    from gateway.cli.datacheck import data_file_problems
    from gateway.policy.policy import load_policy
    from sandbox.catalog import load_catalog

    policy = load_policy(Path(args.policy))
    data_dir = args.data_dir or os.environ.get("PRIVACY_GATEWAY_DATA_DIR")  # the serve setting of the same name
    catalog = load_catalog(Path(args.catalog), Path(data_dir) if data_dir else assets.data_dir_for(Path(args.catalog)))
    gov = policy.governance  # counted as `pgw admin reload` counts the same file
    counts = (f"{gov.schema}: {len(gov.organizations)} organisations, {len(gov.grants)} grants" if gov is not None
              else f"{len(policy.consumers)} consumers, {len(policy.grants)} grants")
    print(f"{args.policy}: ok ({counts})")
    if args.no_data:
        print(f"{args.catalog}: ok ({len(catalog.datasets)} datasets; data files not checked)")
        return 0
    problems = data_file_problems(catalog)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems and not data_dir and Path(args.catalog).resolve() == assets.catalog_file().resolve():
        print(f"the example catalog's data is generated, not shipped: pgw example-data (writes "
              f"{catalog.data_dir}), or pgw serve --dev", file=sys.stderr)
    if problems:
        return 2
    tables = sum(len(d.tables) for d in catalog.datasets)
    print(f"{args.catalog}: ok ({len(catalog.datasets)} datasets; {tables} data files in {catalog.data_dir} "
          "have every declared column)")
    return 0


def cmd_example_data(args: argparse.Namespace) -> int:
    """Generate the synthetic example registry (deterministic for a seed) as Parquet files."""
    from gateway.exampledata.generate import generate

    out = Path(args.out)
    print(f"generating the example registry ({args.people:,} people, seed {args.seed}) in {out}", flush=True)
    for name, rows in generate(out, args.people, seed=args.seed).items():
        print(f"  {name}: {rows:,} rows")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (see gateway/cli/demo.py)."""
    from gateway.cli.demo import run_demo

    return run_demo()


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


EXIT_CODES = """exit status:
  0   success (a receipt: valid)
  1   the gateway refused or failed the request; a receipt is invalid
  2   usage or local setup: a bad option, a missing or unusable file (certificate, policy, catalog, receipt)
  70  an internal error (a bug: please report it with the output of --debug)
  130 interrupted"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privacy-gateway")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Version(argparse.Action):
    """--version, resolved only when asked (importlib.metadata costs time at every start)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"pgw {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The pgw argument parser."""
    p = argparse.ArgumentParser(prog="pgw", description=__doc__, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version)
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run sandbox + gateway in the foreground")
    s.add_argument("--listen")
    s.add_argument("--policy")
    s.add_argument("--catalog")
    s.add_argument("--data-dir")
    s.add_argument("--state-dir")
    s.add_argument("--storage-url", help="postgresql://... URL of storage shared by replicas (default: SQLite in "
                                         "the state directory)")
    s.add_argument("--tls-dir")
    s.add_argument("--query-timeout-ms")
    s.add_argument("--metrics-port", help="serve Prometheus /metrics on this loopback port")
    s.add_argument("--log-format", choices=["text", "json"])
    s.add_argument("--console-listen", help="host:port of the web console (client certificates required)")
    s.add_argument("--console-public-listen", help="host:port of the public transparency page (no certificate)")
    s.add_argument("--sandbox-address",
                   help="host:port of the sandbox on the data owner's host (mutual TLS; no local sandbox is started)")
    s.add_argument("--sandbox-tls-ca", help="the data owner's CA certificate (trusted for the sandbox)")
    s.add_argument("--sandbox-tls-cert", help="this gateway's client certificate from the owner's CA")
    s.add_argument("--sandbox-tls-key", help="the key of --sandbox-tls-cert")
    s.add_argument("--dev", action="store_true",
                   help="create development certificates and example data if missing")
    s.add_argument("--workers", type=_positive_int, default=1,
                   help="gateway processes serving the port (one sandbox serves them all; default 1)")
    s.set_defaults(func=cmd_serve)

    for name in ("query", "explain"):
        q = sub.add_parser(name, help=f"{'run' if name == 'query' else 'explain'} a DP SQL query")
        add_client_args(q, help_json=("print the answer as plain JSON (rows with value, _lower, _upper, _std; "
                                      "charged, cached, replayed, receipt)" if name == "query"
                                      else "print the plan as JSON"))
        q.add_argument("--dataset", required=True)
        q.add_argument("--purpose", required=True)
        loss = q.add_mutually_exclusive_group()
        loss.add_argument("--epsilon", type=float, help="pure and approximate DP grants")
        loss.add_argument("--rho", type=float, help="zcdp grants: zero-concentrated DP")
        q.add_argument("--accuracy", type=float, metavar="HALF_WIDTH",
                       help="instead of --epsilon: the 95%% half-width every output should have (the gateway "
                            "prices it)")
        q.add_argument("--delta", type=float, default=0.0)
        q.add_argument("--interval-share", action="append", default=[], metavar="OUTPUT=F",
                       help="share F in [0, 1) of a quantile output's epsilon spent on its 95%% interval "
                            "(default 0.5; 0 puts all on the point); repeatable")
        q.add_argument("--weight", action="append", default=[], metavar="OUTPUT=W",
                       help="weight W of an output in the split of epsilon (default 1 each; group_keys "
                            "weights the selection of private group keys); repeatable")
        if name == "query":
            q.add_argument("--request-id", help="idempotency key: the same id replays the answer, no new charge")
            q.add_argument("--receipt-out", metavar="FILE", help="write the signed receipt here "
                                                                 "(pgw receipt verify FILE)")
        q.add_argument("sql", help="the SQL, @FILE to read it from a file, or - for standard input")
        q.set_defaults(func=cmd_query)

    b = sub.add_parser("budget", help="show grants and remaining budget")
    add_client_args(b, help_json="print JSON instead of a table")
    b.add_argument("--dataset")
    b.set_defaults(func=cmd_budget)

    d = sub.add_parser("datasets", help="list the datasets, tables and columns you may use")
    add_client_args(d, help_json="print JSON instead of a table")
    d.set_defaults(func=cmd_datasets)

    c = sub.add_parser("certs", help="create development certificates, show their expiry, renew them")
    c.add_argument("--out", required=True)
    c.add_argument("--client", action="append", default=[],
                   help="client name (repeatable); with --owner: a gateway's name")
    c.add_argument("--host", action="append", default=[],
                   help="a name or address the server is reached by besides localhost and 127.0.0.1 "
                        "(repeatable); with --owner: the sandbox's names and addresses (default localhost, "
                        "127.0.0.1)")
    c.add_argument("--owner", action="store_true",
                   help="the data owner's PKI for the gateway-sandbox link over TCP: ca.crt/key, "
                        "sandbox.crt/key, a client pair per gateway (see docs/deployment.md)")
    c.add_argument("--renew", action="store_true",
                   help="re-issue the server and client certificates that expire within --renew-days")
    c.add_argument("--renew-days", type=int, default=30, help="with --renew (default 30)")
    c.set_defaults(func=cmd_certs)

    k = sub.add_parser("check-policy", help="validate the policy and catalog files")
    k.add_argument("--policy", default=str(assets.policy_file()), help="default: the shipped example")
    k.add_argument("--catalog", default=str(assets.catalog_file()), help="default: the shipped example")
    k.add_argument("--data-dir", help="where the catalog's files are (default: $PRIVACY_GATEWAY_DATA_DIR, "
                                         "then the catalog's data_dir; the shipped example catalog's data is where "
                                         "pgw example-data writes it)")
    k.add_argument("--no-data", action="store_true", help="check the files' syntax only, not the data files")
    k.set_defaults(func=cmd_check_policy)

    from gateway.cli import models as cli_models  # pgw train / pgw evaluate
    cli_models.register(sub)

    x = sub.add_parser("example-data", help="generate the synthetic registry the example catalog describes")
    x.add_argument("--out", default=str(assets.example_data_dir()),
                   help=f"the directory (default: where the example catalog looks, {assets.example_data_dir()})")
    x.add_argument("--people", type=_positive_int, default=DEV_DATA_PEOPLE,
                   help=f"residents to generate (default {DEV_DATA_PEOPLE:,}; 10,000,000 for a benchmark)")
    x.add_argument("--seed", type=int, default=7)
    x.set_defaults(func=cmd_example_data)

    m = sub.add_parser("demo", help="the end-to-end demo (what `make demo` runs)")
    m.set_defaults(func=cmd_demo)
    cli_governance.register(sub)

    from gateway.cli import admin as cli_admin  # `pgw admin ...`
    cli_admin.register(sub)

    from gateway.cli import verify as cli_verify  # verify, verify-batch, templates, verify-receipt

    cli_verify.register(sub)
    return p


def _missing_file_message(exc: OSError) -> str:
    name = exc.filename or "a file"
    what = {2: "no such file or directory", 13: "permission denied", 21: "is a directory"}.get(
        exc.errno or 0, exc.strerror or str(exc))
    return f"{name}: {what}; check the path given on the command line or in the settings"


def report_failure(exc: BaseException, args: argparse.Namespace | None) -> tuple[str, int]:
    """The one line and exit status for a failure that reached the top (see EXIT_CODES)."""
    from pgw_client.errors import ClientError, ClientSetupError, GatewayError, ReceiptError
    from sandbox.errors import ConfigError

    if isinstance(exc, ConfigError):
        return f"configuration error: {exc}", 2
    if isinstance(exc, ClientSetupError | ReceiptError):
        return f"error: {exc}", 2
    if isinstance(exc, GatewayError):
        return str(exc), 1
    if isinstance(exc, ClientError):
        return f"error: {exc}", 2
    if isinstance(exc, OSError) and exc.filename:
        return f"error: {_missing_file_message(exc)}", 2
    if type(exc).__name__ == "SandboxStartError":
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return (f"the sandbox did not start: {lines[-1] if lines else exc}; fix what it names (pgw check-policy "
                "checks the policy and catalog) or see the log above"), 2
    if "grpc" in sys.modules:
        import grpc

        from gateway.cli.client import describe_error

        if isinstance(exc, grpc.RpcError):
            return describe_error(exc, getattr(args, "target", None)), 1
    return (f"internal error: {type(exc).__name__}: {exc} (a bug; run again with --debug for the traceback "
            "and report it)"), 70


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pgw` and `python -m gateway`: every failure is one line on stderr (see EXIT_CODES)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    args.argv = raw[raw.index("serve") + 1:] if args.command == "serve" else []  # `--workers` passes them on
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:
        if args.debug or os.environ.get("PGW_DEBUG"):
            raise
        message, status = report_failure(exc, args)
        print(message, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
