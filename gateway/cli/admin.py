"""`pgw admin ...` (orgs, grants, adjust, revoke, reinstate, alerts, ack, reload, usage, spending, caps):
the AdminService from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.client import add_client_args, channel_for_args, reports_rpc_errors
from gateway.cli.jsonout import message_to_json
from gateway.cli.lazy import lazy_module
from gateway.cli.tables import format_table

if TYPE_CHECKING:
    from privacy_gateway.v1 import admin_service_pb2 as a_pb
    from privacy_gateway.v1 import admin_service_pb2_grpc as a_grpc
else:
    a_pb = lazy_module("privacy_gateway.v1.admin_service_pb2")
    a_grpc = lazy_module("privacy_gateway.v1.admin_service_pb2_grpc")

__all__ = ["register"]



def _stub(args: argparse.Namespace) -> Any:
    return a_grpc.AdminServiceStub(channel_for_args(args))


@reports_rpc_errors
def _run(args: argparse.Namespace) -> int:
    return int(args.admin_func(args, _stub(args)))


def _amount(loss: Any, fmt: str) -> str:
    """An epsilon, or for a zCDP grant its rho (the accounted quantity) marked as such."""
    return f"rho {loss.rho:{fmt}}" if loss.rho else f"{loss.epsilon:{fmt}}"


def _grant_rows(orgs: Any) -> list[list[str]]:
    rows = []
    for o in orgs:
        for g in o.grants:
            b = g.budget
            rows.append([o.id, g.dataset, g.purpose, g.use_class, b.period, _amount(b.budget, "g"),
                         _amount(b.spent, ".4f"), _amount(b.remaining, ".4f"), _amount(b.max_per_query, "g"),
                         b.refreshes_at or "-", "yes" if g.adjusted else ""])
            rows += [[f"  {m.member}", "", "", "", "", _amount(m.budget, "g"), _amount(m.spent, ".4f"),
                      _amount(m.remaining, ".4f"), "", "", ""] for m in g.members]
    return rows


def cmd_orgs(args: argparse.Namespace, stub: Any) -> int:
    """Organisations, members and roles."""
    resp = stub.ListOrganizations(a_pb.ListOrganizationsRequest())
    if args.json:
        print(message_to_json(resp))
        return 0
    rows = [[o.id, o.name, m.identity, ",".join(m.roles), "REVOKED" if m.revoked else ""]
            for o in resp.organizations for m in o.members]
    print(format_table(["organization", "name", "member", "roles", "status"], rows))
    return 0


def cmd_grants(args: argparse.Namespace, stub: Any) -> int:
    """Grants with spent and remaining this period."""
    resp = stub.ListOrganizations(a_pb.ListOrganizationsRequest())
    if args.json:
        print(message_to_json(resp))
        return 0
    print(format_table(["organization", "dataset", "purpose", "use", "period", "budget ε", "spent ε", "remaining ε",
                  "max ε/query", "refreshes at", "adjusted"], _grant_rows(resp.organizations)))
    if any(g.budget.budget.rho for o in resp.organizations for g in o.grants):
        print("rho: a zcdp grant, accounted in rho (--json shows its (epsilon, delta) conversion)")
    return 0


def cmd_adjust(args: argparse.Namespace, stub: Any) -> int:
    """AdjustGrant."""
    req = a_pb.AdjustGrantRequest(organization=args.organization, dataset=args.dataset, purpose=args.purpose,
                                  clear=args.clear)
    for name in ("epsilon", "delta", "max_epsilon_per_query", "rho", "max_rho_per_query"):
        if getattr(args, name) is not None:
            setattr(req, name, getattr(args, name))
    resp = stub.AdjustGrant(req)
    done = "cleared" if args.clear else "adjusted"
    print(message_to_json(resp) if args.json else f"{done}:\n" + format_table(
        ["organization", "dataset", "purpose", "use", "period", "budget ε", "spent ε", "remaining ε",
         "max ε/query", "refreshes at", "adjusted"], _grant_rows([_Org(args.organization, [resp.grant])])))
    return 0


class _Org:
    def __init__(self, id_: str, grants: list[Any]) -> None:
        self.id, self.grants = id_, grants


def cmd_revoke(args: argparse.Namespace, stub: Any) -> int:
    """RevokeMember or RevokeOrganization."""
    if args.organization:
        stub.RevokeOrganization(a_pb.RevokeOrganizationRequest(organization=args.organization, reason=args.reason))
        print(f"revoked organisation {args.organization}")
    else:
        stub.RevokeMember(a_pb.RevokeMemberRequest(identity=args.member, reason=args.reason))
        print(f"revoked member {args.member}")
    return 0


def cmd_reinstate(args: argparse.Namespace, stub: Any) -> int:
    """ReinstateMember or ReinstateOrganization: undo a revocation."""
    if args.organization:
        resp = stub.ReinstateOrganization(a_pb.ReinstateOrganizationRequest(organization=args.organization,
                                                                            reason=args.reason))
        who = f"organisation {args.organization}"
    else:
        resp = stub.ReinstateMember(a_pb.ReinstateMemberRequest(identity=args.member, reason=args.reason))
        who = f"member {args.member}"
    print(f"reinstated {who}" if resp.was_revoked else f"{who} was not revoked; nothing changed")
    return 0


def cmd_alerts(args: argparse.Namespace, stub: Any) -> int:
    """ListAlerts: the oversight alerts, newest first (unacknowledged only unless --all)."""
    resp = stub.ListAlerts(a_pb.ListAlertsRequest(include_acknowledged=args.all, limit=args.limit))
    if args.json:
        print(message_to_json(resp))
        return 0
    print(format_table(["id", "time", "rule", "subject", "detail", "acknowledged"],
                       [[str(a.id), a.time, a.rule, a.subject, a.detail,
                         f"{a.acknowledged_by} {a.acknowledged_at}".strip() or "-"] for a in resp.alerts]))
    print(f"{resp.unacknowledged} unacknowledged")
    return 0


def cmd_ack(args: argparse.Namespace, stub: Any) -> int:
    """AcknowledgeAlert."""
    resp = stub.AcknowledgeAlert(a_pb.AcknowledgeAlertRequest(id=args.id, note=args.note))
    if args.json:
        print(message_to_json(resp))
    else:
        print(f"acknowledged alert {resp.alert.id} ({resp.alert.rule}) as {resp.alert.acknowledged_by}")
    return 0


def cmd_reload(args: argparse.Namespace, stub: Any) -> int:
    """ReloadPolicy (and the data owner's settings from the sandbox)."""
    resp = stub.ReloadPolicy(a_pb.ReloadPolicyRequest())
    if args.json:
        print(message_to_json(resp))
        return 0
    print(f"reloaded {resp.source} ({resp.schema}): {resp.organizations} organisations, {resp.grants} grants")
    print(f"data owner's settings: {resp.owner_settings_message}" if resp.owner_settings_reloaded else
          f"data owner's settings NOT reloaded: {resp.owner_settings_message}")
    for line in resp.adjusted_grants:
        print(f"warning: a stored adjustment applies instead of the file: {line} "
              "(pgw admin adjust --clear ... to let the file apply)")
    return 0


def _cap_amount(measure: str, a: Any) -> str:
    return f"rho {a.rho:.6g} delta {a.delta:.3g}" if measure == "rho" else f"{a.epsilon:.6g} delta {a.delta:.3g}"


def _cap_rows(datasets: Any) -> list[list[str]]:
    rows = []
    for d in datasets:
        m = d.measure or "epsilon"
        cap = (_cap_amount(m, d.per_period) + f" per {d.period}") if d.capped else "no cap"
        if d.HasField("conversion_delta"):
            cap += f" (conversion_delta {d.conversion_delta:.3g})"
        for side, s in (("sandbox", d.sandbox), ("gateway", d.gateway)):
            if not s.available:
                rows.append([d.dataset, cap, side, "-", "-", "-", "-", s.error])
                continue
            life_left = _cap_amount(m, s.lifetime_remaining) if s.HasField("lifetime_remaining") else "-"
            note = "uncounted release in window" if s.period_uncounted or s.lifetime_uncounted else ""
            rows.append([d.dataset, cap, side, _cap_amount(m, s.period_spent),
                         _cap_amount(m, s.period_remaining) if d.capped else "-",
                         _cap_amount(m, s.lifetime_spent), life_left, note])
            cap = ""
    return rows


def cmd_caps(args: argparse.Namespace, stub: Any) -> int:
    """GetCapUsage (data owners: their datasets; operators: all)."""
    resp = stub.GetCapUsage(a_pb.GetCapUsageRequest(dataset=args.dataset or ""))
    if args.json:
        print(message_to_json(resp))
        return 0
    print(f"cap usage at {resp.at} (sandbox: the data owner's own ledger; gateway: its mirror)")
    print(format_table(["dataset", "cap", "ledger", "spent this period", "remaining this period", "spent lifetime",
                  "remaining lifetime", "note"], _cap_rows(resp.datasets)))
    return 0


def cmd_usage(args: argparse.Namespace, stub: Any) -> int:
    """GetUsage as a table, JSON or CSV."""
    resp = stub.GetUsage(a_pb.GetUsageRequest(period_start=args.start or "", period_end=args.end or ""))
    if args.json:
        print(resp.json)
        return 0
    if args.csv:
        sys.stdout.write(resp.csv)
        return 0
    report = json.loads(resp.json)
    print(f"usage {report['period_start']} .. {report['period_end']}")
    cols = ["organization", "member", "purpose", "use_class", "dataset", "requests", "request_units",
            "epsilon", "currency", "price"]
    print(format_table(cols, [[str(r[c]) for c in cols] for r in report["rows"]]))
    owners = ["data_owner", "currency", "requests", "epsilon", "proceeds", "share"]
    print(format_table(owners, [[str(r[c]) for c in owners] for r in report["data_owners"]]))
    return 0


def cmd_spending(args: argparse.Namespace, stub: Any) -> int:
    """ListDatasetSpending (data owners)."""
    resp = stub.ListDatasetSpending(a_pb.ListDatasetSpendingRequest(
        dataset=args.dataset or "", period_start=args.start or "", period_end=args.end or ""))
    if args.json:
        print(message_to_json(resp))
        return 0
    print(format_table(["time", "organization", "member", "purpose", "dataset", "outcome", "reason", "epsilon"],
                 [[e.time, e.organization, e.member, e.purpose, e.dataset, e.outcome, e.reason,
                   f"{e.epsilon:.4f}"] for e in resp.entries]))
    return 0


def register(subparsers: Any) -> None:
    """Add `admin` and its subcommands to pgw's subparsers."""
    admin = subparsers.add_parser("admin", help="operator and data-owner administration (AdminService)")
    admin.set_defaults(func=_run)
    sub = admin.add_subparsers(dest="admin_command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_client_args(p)
        return p

    common(sub.add_parser("orgs", help="organisations, members, roles")).set_defaults(admin_func=cmd_orgs)
    common(sub.add_parser("grants", help="grants: spent and remaining this period")).set_defaults(
        admin_func=cmd_grants)
    a = common(sub.add_parser("adjust", help="change a grant's budget or per-query maximum"))
    a.add_argument("--organization", required=True)
    a.add_argument("--dataset", required=True)
    a.add_argument("--purpose", required=True)
    a.add_argument("--epsilon", type=float)
    a.add_argument("--delta", type=float)
    a.add_argument("--max-epsilon-per-query", dest="max_epsilon_per_query", type=float)
    a.add_argument("--rho", type=float, help="zcdp grants: the new rho budget")
    a.add_argument("--max-rho-per-query", dest="max_rho_per_query", type=float)
    a.add_argument("--clear", action="store_true",
                   help="remove the stored adjustment: the policy file's numbers apply again")
    a.set_defaults(admin_func=cmd_adjust)
    r = common(sub.add_parser("revoke", help="revoke a member or an organisation"))
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--member")
    who.add_argument("--organization")
    r.add_argument("--reason", default="")
    r.set_defaults(admin_func=cmd_revoke)
    ri = common(sub.add_parser("reinstate", help="undo the revocation of a member or an organisation"))
    who = ri.add_mutually_exclusive_group(required=True)
    who.add_argument("--member")
    who.add_argument("--organization")
    ri.add_argument("--reason", default="")
    ri.set_defaults(admin_func=cmd_reinstate)
    al = common(sub.add_parser("alerts", help="oversight alerts (unacknowledged; --all for every one)"))
    al.add_argument("--all", action="store_true")
    al.add_argument("--limit", type=int, default=100)
    al.set_defaults(admin_func=cmd_alerts)
    ak = common(sub.add_parser("ack", help="acknowledge an alert"))
    ak.add_argument("id", type=int)
    ak.add_argument("--note", default="")
    ak.set_defaults(admin_func=cmd_ack)
    common(sub.add_parser("reload", help="re-read the policy file")).set_defaults(admin_func=cmd_reload)
    u = common(sub.add_parser("usage", help="usage report (default: this calendar month)"))
    u.add_argument("--start", help="RFC 3339")
    u.add_argument("--end", help="RFC 3339 (exclusive)")
    u.add_argument("--csv", action="store_true", help="print CSV rows")
    u.set_defaults(admin_func=cmd_usage)
    s = common(sub.add_parser("spending", help="data owners: every request on your datasets"))
    s.add_argument("--dataset")
    s.add_argument("--start")
    s.add_argument("--end")
    s.set_defaults(admin_func=cmd_spending)
    c = common(sub.add_parser("caps", help="data owners and operators: each cap, spent and remaining"))
    c.add_argument("--dataset", help="one dataset (default: every one you may see)")
    c.set_defaults(admin_func=cmd_caps)
