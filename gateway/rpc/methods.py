"""The access rule of every RPC the gateway serves, checked by the interceptor before any handler runs.

Every method of every service in `proto/` must have a rule here; the server refuses to start otherwise
(`check_rules_cover`), and a call to a method without a rule is refused with UNIMPLEMENTED. The rule says
which certificate identities may call the method:

- `roles`: the caller must be a member of the operator's policy with one of these roles, and neither it
  nor its organisation may be revoked. An empty set means any member (KeyService: the public key).
- `any_certificate`: any certificate of the CA will do, and the console's public listener calls it with no
  certificate at all (the health check: it reveals only up or down; the transparency report: the aggregate
  use of the datasets whose owners publish it). Such a call is audited only when it is refused.
- `product`: the method releases something derived from data (a query answer, a verification result, a
  model); it then walks the whole governed path (`gateway.path.governed`): grant, price, charge at every
  level, sandbox, receipt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from google.protobuf.descriptor import FileDescriptor
from privacy_gateway.v1 import (
    admin_service_pb2,
    audit_service_pb2,
    budget_service_pb2,
    catalog_service_pb2,
    model_service_pb2,
    query_service_pb2,
    receipt_pb2,
    verification_service_pb2,
)

from gateway.errors import ConfigError

__all__ = ["HEALTH", "PROTO_FILES", "REFLECTION", "RULES", "MethodRule", "check_rules_cover", "proto_methods"]

Product = Literal["query", "verification", "model"]

PROTO_FILES: tuple[FileDescriptor, ...] = (
    query_service_pb2.DESCRIPTOR, catalog_service_pb2.DESCRIPTOR, budget_service_pb2.DESCRIPTOR,
    receipt_pb2.DESCRIPTOR, admin_service_pb2.DESCRIPTOR, verification_service_pb2.DESCRIPTOR,
    model_service_pb2.DESCRIPTOR, audit_service_pb2.DESCRIPTOR,
)
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


@dataclass(frozen=True, slots=True)
class MethodRule:
    """Who may call one method, and whether it is a product release."""

    service: str  # short service name, e.g. "QueryService"
    method: str
    roles: frozenset[str] = frozenset()
    product: Product | None = None
    any_certificate: bool = False
    client_streaming: bool = False
    server_streaming: bool = False

    @property
    def path(self) -> str:
        """The HTTP/2 path gRPC routes on, e.g. `/privacy_gateway.v1.QueryService/RunQuery`."""
        package = "grpc.health.v1" if self.service == "Health" else (
            "grpc.reflection.v1alpha" if self.service == "ServerReflection" else "privacy_gateway.v1")
        return f"/{package}.{self.service}/{self.method}"


_CONSUMER = frozenset({"consumer"})
_OPERATOR = frozenset({"operator"})
_OWNER = frozenset({"data_owner"})
_AUDITOR = frozenset({"auditor"})
_ANY_MEMBER: frozenset[str] = frozenset()

# (service, method) -> (roles, product)
_ACCESS: dict[tuple[str, str], tuple[frozenset[str], Product | None]] = {
    ("QueryService", "RunQuery"): (_CONSUMER, "query"),
    ("QueryService", "ExplainQuery"): (_CONSUMER, None),
    ("CatalogService", "ListDatasets"): (_CONSUMER, None),
    ("CatalogService", "GetDataset"): (_CONSUMER, None),
    ("BudgetService", "GetPrivacyBudget"): (_CONSUMER, None),
    ("KeyService", "GetPublicKey"): (_ANY_MEMBER, None),
    ("VerificationService", "ListTemplates"): (_CONSUMER, None),
    ("VerificationService", "Verify"): (_CONSUMER, "verification"),
    ("VerificationService", "VerifyBatch"): (_CONSUMER, "verification"),
    ("ModelService", "TrainModel"): (_CONSUMER, "model"),
    ("ModelService", "EvaluateModel"): (_CONSUMER, "model"),
    ("AdminService", "ListOrganizations"): (_OPERATOR, None),
    ("AdminService", "AdjustGrant"): (_OPERATOR, None),
    ("AdminService", "RevokeMember"): (_OPERATOR, None),
    ("AdminService", "RevokeOrganization"): (_OPERATOR, None),
    ("AdminService", "ReloadPolicy"): (_OPERATOR, None),
    ("AdminService", "GetUsage"): (_OPERATOR, None),
    ("AdminService", "ListDatasetSpending"): (_OWNER, None),
    ("AdminService", "GetCapUsage"): (_OWNER | _OPERATOR, None),  # data owners: their own datasets only
    ("AdminService", "ReinstateMember"): (_OPERATOR, None),
    ("AdminService", "ReinstateOrganization"): (_OPERATOR, None),
    ("AdminService", "ListAlerts"): (_OPERATOR, None),
    ("AdminService", "AcknowledgeAlert"): (_OPERATOR, None),
    ("AuditService", "ListAuditEntries"): (_AUDITOR, None),
    ("AuditService", "VerifyAuditLog"): (_AUDITOR, None),
    ("AuditService", "ExportAuditLog"): (_AUDITOR, None),
    ("AuditService", "VerifyReceipt"): (_ANY_MEMBER, None),
    ("AuditService", "ListMyRequests"): (_CONSUMER, None),
    ("AuditService", "GetMyReceipt"): (_CONSUMER, None),
    ("AuditService", "GetTransparencyReport"): (_ANY_MEMBER, None),  # any certificate, or none (_PUBLIC)
}
# Methods any certificate of the CA may call (and the console's public listener without one).
_PUBLIC = frozenset({("AuditService", "GetTransparencyReport")})


def proto_methods(files: Iterable[FileDescriptor] = PROTO_FILES) -> list[tuple[str, str, bool, bool]]:
    """(service, method, client_streaming, server_streaming) of every RPC declared in `files`."""
    out = []
    for f in files:
        for service in f.services_by_name.values():
            for m in service.methods:
                out.append((service.name, m.name, m.client_streaming, m.server_streaming))
    return out


def _rules() -> dict[str, MethodRule]:
    rules: dict[str, MethodRule] = {}
    for service, method, cs, ss in proto_methods():
        access = _ACCESS.get((service, method))
        if access is None:
            continue
        rule = MethodRule(service, method, access[0], access[1], any_certificate=(service, method) in _PUBLIC,
                          client_streaming=cs, server_streaming=ss)
        rules[rule.path] = rule
    for rule in (
        MethodRule("Health", "Check", any_certificate=True),
        MethodRule("Health", "Watch", any_certificate=True, server_streaming=True),
        MethodRule("ServerReflection", "ServerReflectionInfo", _OPERATOR, client_streaming=True,
                   server_streaming=True),
    ):
        rules[rule.path] = rule
    return rules


RULES: Mapping[str, MethodRule] = _rules()


def check_rules_cover(files: Iterable[FileDescriptor] = PROTO_FILES) -> None:
    """Every RPC declared in `files` has an access rule.

    Raises:
        ConfigError: a method has no rule (add it to `_ACCESS` with its roles and product).
    """
    for service, method, _cs, _ss in proto_methods(files):
        if (service, method) not in _ACCESS:
            raise ConfigError("gateway/rpc/methods.py", f"{service}.{method}",
                              "has no access rule: every RPC must say who may call it")
