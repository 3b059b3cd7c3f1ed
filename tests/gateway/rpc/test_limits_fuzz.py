"""Every request field's limit, fuzzed through the real server (mTLS, real sandbox, ledger and audit log).

For every field of every request message (enumerated from the proto descriptors, `gateway.rpc.limits`), values
over its limit -- too long, too many entries, a key too long, a number out of range, NaN, infinite, an
undeclared enum value -- get INVALID_ARGUMENT naming the field, with small trailing metadata, nothing
charged and an audit entry that holds no more than the bounds. Oversized requests leave the state files
bounded, and a body that cannot be decoded is refused and audited like any other refusal.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from privacy_gateway.v1 import admin_service_pb2 as a_pb
from privacy_gateway.v1 import admin_service_pb2_grpc as a_grpc
from privacy_gateway.v1 import audit_service_pb2 as au_pb
from privacy_gateway.v1 import audit_service_pb2_grpc as au_grpc
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.cli.client import error_details
from gateway.exampledata.identifiers import resident_id_check_char
from gateway.identity import certs
from gateway.rpc import limits
from gateway.rpc.methods import PROTO_FILES
from gateway.rpc.server import Gateway, start_gateway
from tests.helpers import Env

pytestmark = pytest.mark.integration

POLICY = """
schema = "privacy_gateway.operator.v2"

[organizations.bank]
name = "Bank"
[organizations.bank.members.analyst]
roles = ["consumer"]
[organizations.ops]
name = "Ops"
[organizations.ops.members.ops-admin]
roles = ["operator"]
[organizations.bureau]
name = "Bureau"
datasets = ["registry"]
[organizations.bureau.members.steward]
roles = ["data_owner"]
[organizations.audit]
name = "Audit"
[organizations.audit.members.auditor]
roles = ["auditor"]

[purposes.credit]
use_class = "public_welfare"
[purposes.kyc]
use_class = "public_welfare"

[[grants]]
organization = "bank"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 1000.0
delta = 0.0
max_epsilon_per_query = 10.0
period = "month"

[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "credit"
table = "residents"
features = ["birth_year", "employed"]
labels = ["income"]
max_epsilon_per_request = 10.0

[verification]
period = "day"
max_checks_per_consumer_per_period = 1000000

[[verification_grants]]
consumer = "analyst"
dataset = "registry"
template = "identity_match"
purpose = "kyc"
max_checks_per_period = 1000000
max_checks_per_subject_per_period = 1000
"""
IDENTITIES = ["analyst", "ops-admin", "steward", "auditor"]


@dataclass
class Bounded:
    """A gateway with the policy above, and where its state lives."""

    gw: Gateway
    root: Path
    tls: Path
    state: Path

    def channel(self, name: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.tls / "ca.crt").read_bytes(),
            private_key=(self.tls / f"{name}.key").read_bytes(),
            certificate_chain=(self.tls / f"{name}.crt").read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.gw.port}", creds,
                                   options=[("grpc.max_send_message_length", 8 * 2**20)])

    def state_bytes(self) -> int:
        """Every file of the state directory (databases, WAL files, keys)."""
        return sum(f.stat().st_size for f in self.state.rglob("*") if f.is_file())

    def charges(self) -> tuple[int, int]:
        """(privacy charges in the ledger, verification checks charged)."""
        with sqlite3.connect(self.gw.ledger.path) as con:
            (ledger,) = con.execute("SELECT count(*) FROM charges").fetchone()
        with sqlite3.connect(self.state / "verification.sqlite3") as con:
            (checks,) = con.execute("SELECT coalesce(sum(n), 0) FROM consumer_counts").fetchone()
        return int(ledger), int(checks)


@pytest.fixture(scope="module")
def bounded(env: Env) -> Iterator[Bounded]:
    root = Path(tempfile.mkdtemp(prefix="pgw-lim-"))
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=IDENTITIES)
    policy = root / "operator.toml"
    policy.write_text(POLICY)
    state = root / "state"
    gw = start_gateway(replace(env.settings, policy=policy, state_dir=state, tls_dir=tls,
                               sandbox_socket=state / "sandbox.sock"))
    yield Bounded(gw, root, tls, state)
    gw.stop()
    shutil.rmtree(root, ignore_errors=True)


# -- a valid request for every method (the fuzz changes one field of it) ---------------------------------

SUBJECT = "11010119900307451"
SUBJECT += resident_id_check_char(SUBJECT)


def _claim() -> v_pb.Claim:
    return v_pb.Claim(subject=SUBJECT, parameters={"name": v_pb.ParamValue(string_value="Li Lei")})


BASE: dict[str, tuple[str, Callable[[grpc.Channel], Any], Callable[[], Message]]] = {
    "RunQuery": ("analyst", lambda ch: q_grpc.QueryServiceStub(ch).RunQuery, lambda: q_pb.RunQueryRequest(
        dataset="registry", sql="SELECT COUNT(*) FROM residents", purpose="credit",
        request_id=uuid.uuid4().hex, privacy_loss=common_pb.PrivacyLoss(epsilon=1.0))),
    "ExplainQuery": ("analyst", lambda ch: q_grpc.QueryServiceStub(ch).ExplainQuery,
                     lambda: q_pb.ExplainQueryRequest(dataset="registry", sql="SELECT COUNT(*) FROM residents",
                                                      purpose="credit",
                                                      privacy_loss=common_pb.PrivacyLoss(epsilon=1.0))),
    "GetDataset": ("analyst", lambda ch: cat_grpc.CatalogServiceStub(ch).GetDataset,
                   lambda: cat_pb.GetDatasetRequest(name="registry")),
    "GetPrivacyBudget": ("analyst", lambda ch: b_grpc.BudgetServiceStub(ch).GetPrivacyBudget,
                         lambda: b_pb.GetPrivacyBudgetRequest(dataset="registry")),
    "AdjustGrant": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).AdjustGrant,
                    lambda: a_pb.AdjustGrantRequest(organization="bank", dataset="registry", purpose="credit")),
    "RevokeMember": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).RevokeMember,
                     lambda: a_pb.RevokeMemberRequest(identity="nobody", reason="test")),
    "RevokeOrganization": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).RevokeOrganization,
                           lambda: a_pb.RevokeOrganizationRequest(organization="nobody", reason="test")),
    "GetUsage": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).GetUsage, a_pb.GetUsageRequest),
    "ListDatasetSpending": ("steward", lambda ch: a_grpc.AdminServiceStub(ch).ListDatasetSpending,
                            lambda: a_pb.ListDatasetSpendingRequest(dataset="registry")),
    "ReinstateMember": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).ReinstateMember,
                        lambda: a_pb.ReinstateMemberRequest(identity="nobody", reason="test")),
    "ReinstateOrganization": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).ReinstateOrganization,
                              lambda: a_pb.ReinstateOrganizationRequest(organization="nobody", reason="test")),
    "ListAlerts": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).ListAlerts,
                   lambda: a_pb.ListAlertsRequest(limit=10)),
    "AcknowledgeAlert": ("ops-admin", lambda ch: a_grpc.AdminServiceStub(ch).AcknowledgeAlert,
                         lambda: a_pb.AcknowledgeAlertRequest(id=1, note="test")),
    "ListAuditEntries": ("auditor", lambda ch: au_grpc.AuditServiceStub(ch).ListAuditEntries,
                         lambda: au_pb.ListAuditEntriesRequest(page_size=5, consumer="analyst")),
    "VerifyAuditLog": ("auditor", lambda ch: au_grpc.AuditServiceStub(ch).VerifyAuditLog,
                       au_pb.VerifyAuditLogRequest),
    "ExportAuditLog": ("auditor", lambda ch: au_grpc.AuditServiceStub(ch).ExportAuditLog,
                       lambda: au_pb.ExportAuditLogRequest(from_seq=1, max_entries=5)),
    "VerifyReceipt": ("auditor", lambda ch: au_grpc.AuditServiceStub(ch).VerifyReceipt,
                      lambda: au_pb.VerifyReceiptRequest(receipt_json="{}")),
    "ListMyRequests": ("analyst", lambda ch: au_grpc.AuditServiceStub(ch).ListMyRequests,
                       lambda: au_pb.ListMyRequestsRequest(page_size=5)),
    "GetMyReceipt": ("analyst", lambda ch: au_grpc.AuditServiceStub(ch).GetMyReceipt,
                     lambda: au_pb.GetMyReceiptRequest(request_id="none")),
    "GetCapUsage": ("steward", lambda ch: a_grpc.AdminServiceStub(ch).GetCapUsage,
                    lambda: a_pb.GetCapUsageRequest(dataset="registry")),
    "Verify": ("analyst", lambda ch: v_grpc.VerificationServiceStub(ch).Verify, lambda: v_pb.VerifyRequest(
        dataset="registry", template="identity_match", purpose="kyc", subject=SUBJECT,
        parameters={"name": v_pb.ParamValue(string_value="Li Lei")})),
    "VerifyBatch": ("analyst", lambda ch: lambda chunk: list(v_grpc.VerificationServiceStub(ch).VerifyBatch(
        iter([chunk]))), lambda: v_pb.VerifyBatchRequest(
        dataset="registry", template="identity_match", purpose="kyc", claims=[_claim()])),
    "TrainModel": ("analyst", lambda ch: m_grpc.ModelServiceStub(ch).TrainModel, lambda: m_pb.TrainModelRequest(
        dataset="registry", purpose="credit", table="residents", features=["birth_year"], label="income",
        kind=m_pb.MODEL_KIND_LINEAR, privacy_loss=common_pb.PrivacyLoss(epsilon=1.0))),
    "EvaluateModel": ("analyst", lambda ch: m_grpc.ModelServiceStub(ch).EvaluateModel,
                      lambda: m_pb.EvaluateModelRequest(
                          dataset="registry", purpose="credit", table="residents", label="income",
                          kind=m_pb.MODEL_KIND_LINEAR, privacy_loss=common_pb.PrivacyLoss(epsilon=1.0),
                          coefficients=[m_pb.Coefficient(term="birth_year", value=1.0)])),
}


def _methods_with_fields() -> list[str]:
    out = []
    for f in PROTO_FILES:
        for service in f.services_by_name.values():
            out += [m.name for m in service.methods if m.input_type.fields]
    return out


def test_every_method_with_fields_has_a_base_request() -> None:
    """The fuzz covers every method whose request has fields (a new one fails here until added)."""
    assert sorted(_methods_with_fields()) == sorted(BASE)


# -- the fields and how to break them --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One field of one method's request: its attribute path from the request, descriptor and limit."""

    method: str
    path: tuple[str, ...]  # attribute names; "0" selects the first element of a repeated message field
    fd: FieldDescriptor

    @property
    def limit(self) -> limits.Limit:
        return limits.LIMITS[self.fd.full_name.removeprefix("privacy_gateway.v1.")]

    @property
    def shown(self) -> str:
        """How the refusal names the field (the walker's path)."""
        out = ""
        for p in self.path:
            out += f"[{p}]" if p == "0" else (f".{p}" if out else p)
        return out

    def __repr__(self) -> str:
        return f"{self.method}:{self.shown}"


def _targets() -> list[Target]:
    out: list[Target] = []

    def walk(method: str, message: Message, prefix: tuple[str, ...]) -> None:
        for fd in message.DESCRIPTOR.fields:
            path = (*prefix, fd.name)
            out.append(Target(method, path, fd))
            is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
            if fd.message_type is not None and not is_map:
                value = getattr(message, fd.name)
                if fd.is_repeated:
                    if len(value):
                        walk(method, value[0], (*path, "0"))
                else:
                    walk(method, value, path)

    for method, (_, _, base) in BASE.items():
        walk(method, base(), ())
    return out


TARGETS = _targets()
_CHARS = st.characters(blacklist_categories=("Cs",))  # any code point UTF-8 can carry


def _long_text(n: int) -> st.SearchStrategy[str]:
    """Text of n characters and a little more: a random head and a repeated random character."""
    return st.builds(lambda head, fill, extra: (head + fill * (n + extra))[: n + extra] if fill else head,
                     st.text(_CHARS, max_size=16), _CHARS, st.integers(1, 300))


def _out_of_range(limit: limits.Limit, integer: bool) -> st.SearchStrategy[float]:
    low = -math.inf if limit.low is None else limit.low
    high = math.inf if limit.high is None else limit.high
    options: list[st.SearchStrategy[float]] = []
    if integer:
        options.append(st.integers(int(high) + 1, 2**31 - 1) if math.isfinite(high) else st.nothing())
        options.append(st.integers(-(2**31), int(low) - 1) if math.isfinite(low) else st.nothing())
        return st.one_of(options)
    options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    if math.isfinite(high):
        options.append(st.just(high) if limit.high_open else st.floats(min_value=high, exclude_min=True,
                                                                       allow_infinity=False))
    if math.isfinite(low):
        options.append(st.floats(max_value=low, exclude_max=True, allow_infinity=False))
    return st.one_of(options)


Breaking = st.SearchStrategy[tuple[Callable[[Message], None], str, str]]


def _breaking(t: Target) -> list[Breaking]:
    """Strategies of (change the request, expected reason, expected field prefix) for values over `t`'s
    limit (none for a field without one: a bool, a nested message, an "any" number)."""
    lim, fd = t.limit, t.fd
    is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
    integer = fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64)
    options: list[Breaking] = []

    def on(change: Callable[[Any, str], None]) -> Callable[[Message], None]:
        def apply(request: Message) -> None:
            holder: Any = request
            for p in t.path[:-1]:
                holder = holder[0] if p == "0" else getattr(holder, p)
            change(holder, t.path[-1])
        return apply

    if is_map:
        value_fd = fd.message_type.fields_by_name["value"]
        is_params = value_fd.message_type is not None

        def put(holder: Any, name: str, key: str, value: Any) -> None:
            m = getattr(holder, name)
            if is_params:
                m[key].CopyFrom(v_pb.ParamValue(string_value=value) if isinstance(value, str) else value)
            else:
                m[key] = value

        some = v_pb.ParamValue(bool_value=True) if is_params else 1.0
        if lim.items is not None:
            options.append(st.integers(1, 40).map(lambda extra: (
                on(lambda h, n: [put(h, n, f"k{i}", some) for i in range(lim.items + extra)]),
                "FIELD_TOO_LONG", t.shown)))
        if lim.key_chars is not None:
            options.append(_long_text(lim.key_chars).map(lambda key: (
                on(lambda h, n: put(h, n, key, some)), "FIELD_TOO_LONG", t.shown)))
        if is_params:
            options.append(_long_text(limits.PARAM_STRING_CHARS).map(lambda text: (
                on(lambda h, n: put(h, n, "name", text)), "FIELD_TOO_LONG", f"{t.shown}[name].string_value")))
        elif lim.low is not None or lim.high is not None:
            options.append(_out_of_range(lim, False).map(lambda x: (
                on(lambda h, n: put(h, n, "k", x)), lim.reason, f"{t.shown}[k]")))
    elif fd.is_repeated:
        element: Any = (m_pb.Coefficient(term="birth_year") if fd.message_type is m_pb.Coefficient.DESCRIPTOR
                        else _claim() if fd.message_type is v_pb.Claim.DESCRIPTOR
                        else "birth_year" if fd.type == FieldDescriptor.TYPE_STRING else 0.5)
        if lim.items is not None and lim.items < 1000:
            options.append(st.integers(1, 40).map(lambda extra: (
                on(lambda h, n: getattr(h, n).extend([element] * (lim.items + extra))), "FIELD_TOO_LONG",
                t.shown)))
        if fd.type == FieldDescriptor.TYPE_STRING and lim.chars is not None:
            options.append(_long_text(lim.chars).map(lambda text: (
                on(lambda h, n: getattr(h, n).append(text)), "FIELD_TOO_LONG", t.shown)))
        if fd.type == FieldDescriptor.TYPE_DOUBLE:
            options.append(_out_of_range(lim, False).map(lambda x: (
                on(lambda h, n: getattr(h, n).append(x)), lim.reason, t.shown)))
    elif fd.type == FieldDescriptor.TYPE_STRING and lim.chars is not None:
        options.append(_long_text(lim.chars).map(lambda text: (
            on(lambda h, n: setattr(h, n, text)), "FIELD_TOO_LONG", t.shown)))
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        options.append(st.integers(len(fd.enum_type.values), 10_000).map(lambda x: (
            on(lambda h, n: setattr(h, n, x)), "FIELD_OUT_OF_RANGE", t.shown)))
    elif lim.low is not None or lim.high is not None:
        options.append(_out_of_range(lim, integer).map(lambda x: (
            on(lambda h, n: setattr(h, n, x)), lim.reason, t.shown)))
    return options


BREAKABLE = [t for t in TARGETS if _breaking(t)]


def test_every_field_with_a_limit_is_fuzzed() -> None:
    """Every field whose limit can be broken is a fuzz target (bools, nested messages and "any" numbers
    have nothing to break)."""
    broken = {t.fd.full_name for t in BREAKABLE}
    if any(t.fd.full_name.endswith(".parameters") for t in BREAKABLE):  # their values' strings are broken too
        broken.add("privacy_gateway.v1.ParamValue.string_value")
    broken.add("privacy_gateway.v1.VerifyBatchRequest.claims")  # test_a_batch_over_100000_claims_...
    for fd in limits.request_fields():
        lim = limits.LIMITS[fd.full_name.removeprefix("privacy_gateway.v1.")]
        if lim.chars or lim.items or lim.key_chars or lim.low is not None or fd.type == FieldDescriptor.TYPE_ENUM:
            assert fd.full_name in broken, fd.full_name


def _refused(bounded: Bounded, method: str, request: Message) -> grpc.RpcError:
    identity, stub, _ = BASE[method]
    ch = bounded.channel(identity)
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub(ch)(request, timeout=30) if method != "VerifyBatch" else stub(ch)(request)
        return info.value
    finally:
        ch.close()


@pytest.mark.parametrize("target", BREAKABLE, ids=repr)
@settings(max_examples=6, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_a_field_over_its_limit_is_refused_naming_it(bounded: Bounded, target: Target, data: st.DataObject
                                                     ) -> None:
    """INVALID_ARGUMENT with the field named, its limit and size (or value) in the metadata; small trailing
    metadata and message; nothing charged; one audit entry whose texts are all within the bounds."""
    change, reason, field = data.draw(st.one_of(_breaking(target)))
    request = BASE[target.method][2]()
    change(request)
    audit = bounded.gw.oversight.audit if bounded.gw.oversight else None
    assert audit is not None
    before, charged = len(audit.entries()), bounded.charges()
    error = _refused(bounded, target.method, request)
    d = error_details(error)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), d
    assert d.metadata["field"].startswith(field), (d.metadata, field)
    assert "limit" in d.metadata and ("size" in d.metadata or "value" in d.metadata)
    status = rpc_status.from_call(error)
    assert status is not None and len(status.SerializeToString()) < 2048 and len(d.message) <= 1024
    assert bounded.charges() == charged
    entries = audit.entries()[before:]
    assert [(e.outcome, e.reason) for e in entries] == [("refused", reason)]
    e = entries[0]
    assert max(len(e.request_id), len(e.dataset), len(e.purpose), len(e.query)) <= limits.NAME_CHARS


def _huge(n: int) -> str:
    return "\u00e9" * (n // 2)  # two UTF-8 bytes each


def test_oversized_requests_leave_the_state_bounded(bounded: Bounded) -> None:
    """25 refused requests of about 3.9 MB each (SQL, dataset, purpose, request id; subjects; claims) grow
    the state files by less than 1% of what they carried (before: 0.34 MB -> 132 MB)."""
    before, charged = bounded.state_bytes(), bounded.charges()
    sent = 0
    for i in range(25):
        if i % 3 == 0:
            method, request = "RunQuery", q_pb.RunQueryRequest(
                dataset=_huge(900_000), purpose=_huge(900_000), request_id=_huge(900_000),
                sql="SELECT COUNT(*) FROM residents WHERE sex = '" + _huge(1_000_000) + "'",
                privacy_loss=common_pb.PrivacyLoss(epsilon=1.0))
        elif i % 3 == 1:
            method, request = "Verify", v_pb.VerifyRequest(
                dataset="registry", template="identity_match", purpose="kyc", subject=_huge(1_800_000),
                case_reference=_huge(1_800_000))
        else:
            method, request = "VerifyBatch", v_pb.VerifyBatchRequest(
                dataset="registry", template="identity_match", purpose="kyc",
                claims=[_claim(), v_pb.Claim(subject=_huge(3_600_000))])
        sent += request.ByteSize()
        d = error_details(_refused(bounded, method, request))
        assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG")
    grown = bounded.state_bytes() - before
    assert sent > 90_000_000 and grown < sent / 100, (sent, grown)
    assert bounded.charges() == charged


def test_a_dataset_name_of_5000_characters_is_refused_not_exhausted(bounded: Bounded) -> None:
    """An oversized name once came back in the error metadata and pushed it past gRPC's limit, turning
    PERMISSION_DENIED into RESOURCE_EXHAUSTED; now it is INVALID_ARGUMENT and the name is not echoed."""
    for method, field in (("GetDataset", "name"), ("RunQuery", "dataset"), ("GetPrivacyBudget", "dataset")):
        request = BASE[method][2]()
        setattr(request, field, "d" * 5000)
        error = _refused(bounded, method, request)
        d = error_details(error)
        assert (d.code, d.reason, d.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG",
                                                           field)
        assert "ddd" not in d.message and d.metadata["size"] == "5000"


def test_a_name_within_its_limit_is_echoed_within_bounds(bounded: Bounded) -> None:
    """A 128-character unknown dataset is PERMISSION_DENIED as before (the limit is not the refusal)."""
    request = BASE["RunQuery"][2]()
    request.dataset = "d" * limits.NAME_CHARS
    d = error_details(_refused(bounded, "RunQuery", request))
    assert (d.code, d.reason) == (grpc.StatusCode.PERMISSION_DENIED, "DATASET_ACCESS_DENIED")


@pytest.mark.parametrize("method", ["RunQuery", "Verify", "GetUsage", "GetPrivacyBudget"])
def test_a_body_that_cannot_be_decoded_is_refused_and_audited(bounded: Bounded, method: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Bytes that are no protobuf message: INVALID_ARGUMENT (MALFORMED_MESSAGE), one audit entry, and no
    traceback in the log (grpc itself answered UNKNOWN, unaudited, with a traceback per call)."""
    identity, _, base = BASE[method]
    service = {"RunQuery": "QueryService", "Verify": "VerificationService", "GetUsage": "AdminService",
               "GetPrivacyBudget": "BudgetService"}[method]
    audit = bounded.gw.oversight.audit if bounded.gw.oversight else None
    assert audit is not None
    before = len(audit.entries())
    ch = bounded.channel(identity)
    raw = ch.unary_unary(f"/privacy_gateway.v1.{service}/{method}", request_serializer=lambda b: b,
                         response_deserializer=lambda b: b)
    with caplog.at_level("DEBUG"), pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff\x0f" + b"\x00" * 100, timeout=30)
    ch.close()
    d = error_details(info.value)
    assert (d.code, d.reason, d.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE",
                                                       "request")
    entries = audit.entries()[before:]
    assert [(e.consumer, e.outcome, e.reason) for e in entries] == [(identity, "refused", "MALFORMED_MESSAGE")]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert [r.getMessage() for r in caplog.records if method in r.getMessage()] == [
        f"rpc {service}/{method} refused"]
    del base


def test_a_malformed_message_in_a_batch_stream_is_refused(bounded: Bounded) -> None:
    """The second message of a VerifyBatch stream cannot be decoded: INVALID_ARGUMENT, nothing charged."""
    charged = bounded.charges()
    ch = bounded.channel("analyst")
    raw = ch.stream_stream("/privacy_gateway.v1.VerificationService/VerifyBatch",
                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
    first = BASE["VerifyBatch"][2]().SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        list(raw(iter([first, b"\xff\xff\xff"]), timeout=30))
    ch.close()
    d = error_details(info.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE")
    assert bounded.charges() == charged


def test_a_batch_over_100000_claims_in_several_messages_is_refused(bounded: Bounded) -> None:
    """Each message within its own limit, the whole batch over it: BATCH_TOO_LARGE, nothing charged."""
    charged = bounded.charges()
    head = v_pb.VerifyBatchRequest(dataset="registry", template="identity_match", purpose="kyc")
    claims = [v_pb.Claim(subject="1")] * 50_001
    ch = bounded.channel("analyst")
    with pytest.raises(grpc.RpcError) as info:
        list(v_grpc.VerificationServiceStub(ch).VerifyBatch(
            iter([head, v_pb.VerifyBatchRequest(claims=claims), v_pb.VerifyBatchRequest(claims=claims)]),
            timeout=60))
    ch.close()
    d = error_details(info.value)
    assert (d.code, d.reason, d.metadata["size"]) == (grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE",
                                                      "100002")
    assert bounded.charges() == charged


def test_a_batch_is_answered_after_a_header_only_message(bounded: Bounded) -> None:
    """A header-only first message, an empty one in the middle: the claims are answered; a batch with
    no claims at all is INVALID_BATCH."""
    head = v_pb.VerifyBatchRequest(dataset="registry", template="identity_match", purpose="kyc")
    ch = bounded.channel("analyst")
    stub = v_grpc.VerificationServiceStub(ch)
    results = [r for resp in stub.VerifyBatch(iter([head, v_pb.VerifyBatchRequest(claims=[_claim()]),
                                                     v_pb.VerifyBatchRequest()]), timeout=30)
               for r in resp.results]
    assert [r.status for r in results] == [v_pb.CLAIM_STATUS_OK]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.VerifyBatch(iter([head, v_pb.VerifyBatchRequest()]), timeout=30))
    ch.close()
    d = error_details(info.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BATCH")
