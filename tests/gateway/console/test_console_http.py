"""The console over plain HTTPS (no browser): the TLS identity, CSRF refusals, security headers, and the
entry point's parity with gRPC (the same governance, one audit entry per call)."""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.parse
from pathlib import Path

import grpc
import pytest
from privacy_gateway.v1 import admin_service_pb2 as a_pb
from privacy_gateway.v1 import admin_service_pb2_grpc as a_grpc

from gateway.console.app import CSP
from gateway.errors import GatewayError
from tests.gateway.console.conftest import ConsoleEnv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _conn(e: ConsoleEnv, who: str | None, *, public: bool = False) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(e.tls / "ca.crt"))
    ctx.check_hostname = False
    if who is not None:
        ctx.load_cert_chain(str(e.tls / f"{who}.crt"), str(e.tls / f"{who}.key"))
    assert e.gw.console is not None
    port = e.gw.console.public_port if public else e.gw.console.port
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)


def _get(e: ConsoleEnv, who: str | None, path: str, headers: dict[str, str] | None = None,
         *, public: bool = False) -> tuple[int, dict[str, str], str]:
    c = _conn(e, who, public=public)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def _post(e: ConsoleEnv, who: str, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
          ) -> tuple[int, str]:
    c = _conn(e, who)
    c.request("POST", path, urllib.parse.urlencode(fields),
              {"content-type": "application/x-www-form-urlencoded", **(headers or {})})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body


def _token(e: ConsoleEnv, who: str) -> str:
    _, _, body = _get(e, who, "/")
    m = re.search(r'name="csrf_token" value="([^"]+)"', _get(e, who, "/operator/alerts")[2]) if who == "ops-admin" \
        else None
    if m is None:
        m = re.search(r'name="csrf_token" value="([^"]+)"', _get(e, who, "/auditor/receipt")[2])
    assert m is not None, body
    return m.group(1)


def _revoked(e: ConsoleEnv, who: str) -> bool:
    with e.channel("ops-admin") as ch:
        orgs = a_grpc.AdminServiceStub(ch).ListOrganizations(a_pb.ListOrganizationsRequest(), timeout=30)
    return any(m.revoked for o in orgs.organizations for m in o.members if m.identity == who)


def test_security_headers_on_every_response(console_env: ConsoleEnv) -> None:
    """A strict CSP (no inline script or style), nosniff, no framing, no referrer, no caching of pages; and
    no inline script, style element or style attribute in any page."""
    for who, path, public in (("analyst", "/analyst/datasets", False), ("ops-admin", "/operator/organizations", False),
                              ("analyst", "/operator/organizations", False), (None, "/", True)):
        status, headers, body = _get(console_env, who, path, public=public)
        assert status in (200, 403)
        assert headers["content-security-policy"] == CSP
        assert "default-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "same-origin" and headers["cache-control"] == "no-store"
        assert "<script" not in body and "<style" not in body and " style=" not in body


def test_post_without_or_with_a_foreign_csrf_token_is_refused_before_any_rpc(console_env: ConsoleEnv) -> None:
    """Revoke forms: no token, another identity's token, a forged token, or a foreign Origin: 403
    CSRF_TOKEN_INVALID and the member stays active (no RPC ran: the audit log did not grow)."""
    e = console_env
    assert e.gw.oversight is not None
    mine = _token(e, "ops-admin")
    theirs = _token(e, "auditor")
    issued, _, mac = mine.partition(".")
    forged = f"{issued}.{'0' * len(mac)}"
    before = e.gw.oversight.audit.last_seq()
    for fields, headers in (({}, {}), ({"csrf_token": theirs}, {}), ({"csrf_token": forged}, {}),
                            ({"csrf_token": mine}, {"origin": "https://evil.example"})):
        status, body = _post(e, "ops-admin", "/operator/confirm/revoke-member",
                             {"subject": "planner", "reason": "x", **fields}, headers)
        assert status == 403 and "CSRF_TOKEN_INVALID" in body
    assert e.gw.oversight.audit.last_seq() == before
    assert not _revoked(e, "planner")
    status, _ = _post(e, "ops-admin", "/operator/confirm/revoke-member",
                      {"subject": "planner", "reason": "test", "csrf_token": mine})
    assert status == 303 and _revoked(e, "planner")
    status, _ = _post(e, "ops-admin", "/operator/confirm/reinstate-member",
                      {"subject": "planner", "reason": "test", "csrf_token": mine})
    assert status == 303 and not _revoked(e, "planner")


def test_identity_comes_only_from_the_certificate(console_env: ConsoleEnv) -> None:
    """Headers that claim another identity change nothing: the page is the certificate's."""
    status, _, body = _get(console_env, "analyst", "/operator/organizations",
                           {"x-forwarded-user": "ops-admin", "x-ssl-client-cn": "ops-admin",
                            "cookie": "identity=ops-admin"})
    assert status == 403 and 'id="identity">analyst<' in body


def test_no_client_certificate_gets_only_the_public_page(console_env: ConsoleEnv) -> None:
    """The console's handshake needs a certificate of the CA; the public listener serves the transparency
    page and its JSON to anyone and nothing else (404); another CA's certificate is refused too."""
    e = console_env
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _get(e, None, "/transparency")
    for path, code in (("/", 200), ("/transparency", 200), ("/transparency.json", 200), ("/analyst/datasets", 404),
                       ("/operator/organizations", 404), ("/auditor/log", 404), ("/owner", 404)):
        assert _get(e, None, path, public=True)[0] == code, path
    _, headers, body = _get(e, None, "/transparency.json", public=True)
    assert headers["content-type"].startswith("application/json") and '"registry"' in body


def test_outsider_with_a_ca_certificate_is_unauthenticated(console_env: ConsoleEnv) -> None:
    """A certificate of the CA whose name is in no policy: the pages' RPCs answer UNAUTHENTICATED (401)."""
    status, _, body = _get(console_env, "outsider", "/analyst/datasets")
    assert status == 401 and "UNKNOWN_IDENTITY" in body


def test_local_calls_govern_like_grpc(console_env: ConsoleEnv) -> None:
    """`LocalCalls` gives the same answer and refusal as gRPC, each with one audit entry of the same RPC."""
    e = console_env
    local = e.gw.local
    assert local is not None and e.gw.oversight is not None
    audit = e.gw.oversight.audit
    seq = audit.last_seq()
    via_local = local.call("AdminService/ListAlerts", a_pb.ListAlertsRequest(limit=5), "ops-admin")
    with e.channel("ops-admin") as ch:
        via_grpc = a_grpc.AdminServiceStub(ch).ListAlerts(a_pb.ListAlertsRequest(limit=5), timeout=30)
    assert via_local == via_grpc
    with pytest.raises(GatewayError) as info:
        local.call("AdminService/ListAlerts", a_pb.ListAlertsRequest(), "analyst")
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    with pytest.raises(GatewayError) as info:
        local.call("AdminService/ListAlerts", a_pb.ListAlertsRequest(limit=5000), "ops-admin")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT  # the request limits run too
    with pytest.raises(GatewayError) as info:
        local.call("AdminService/ListAlerts", a_pb.ListAlertsRequest(), None)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    entries = audit.page(0, 5)[::-1]
    assert [(x.seq, x.consumer, x.rpc.rpartition("/")[2], x.status_code) for x in entries] == [
        (seq + 1, "ops-admin", "ListAlerts", "OK"), (seq + 2, "ops-admin", "ListAlerts", "OK"),
        (seq + 3, "analyst", "ListAlerts", "PERMISSION_DENIED"),
        (seq + 4, "ops-admin", "ListAlerts", "INVALID_ARGUMENT"),
        (seq + 5, "", "ListAlerts", "UNAUTHENTICATED")]


def test_unacknowledged_alerts_are_in_the_metrics(console_env: ConsoleEnv) -> None:
    """`pgw_alerts_unacknowledged` is the state database's count."""
    e = console_env
    assert e.gw.oversight is not None and e.gw.governor is not None
    text = e.gw.oversight.metrics.render()
    m = re.search(r"^pgw_alerts_unacknowledged (\d+)$", text, re.M)
    assert m is not None and int(m.group(1)) == e.gw.governor.state.unacknowledged_alerts()


def test_templates_and_static_are_package_data() -> None:
    """The templates and the stylesheet ship inside the package (no CDN)."""
    here = Path(__file__).resolve().parents[3] / "gateway" / "console"
    assert (here / "static" / "console.css").is_file() and list((here / "templates").glob("*.html"))
