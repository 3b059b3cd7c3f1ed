"""The console's Starlette apps: identity from the TLS layer, CSRF tokens, security headers, rendering.

* Identity: the common name of the client certificate the TLS handshake verified against the gateway's CA
  (`gateway.console.server` puts it in the ASGI TLS extension); never a header, cookie or form field.
* Every figure on every page comes from a gateway RPC called through `LocalCalls.invoke` as that identity,
  so the page gets exactly what the same gRPC call would: the same role checks, revocation, limits and
  one audit entry per call. A refusal renders as an error page with the RPC's reason.
* Every state-changing form carries a synchronizer token bound to the identity (HMAC-SHA256 under a key made
  at start, with the time it was issued; valid for `CSRF_TTL_S`); a POST without a valid token is refused
  before any RPC runs. A POST whose Origin is not this console is refused too.
* Every response carries a strict Content-Security-Policy (`default-src 'self'`, no inline script or
  style: the pages have no script at all, and charts are SVG coloured by the stylesheet) and the other
  security headers (`SECURITY_HEADERS`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import grpc
import jinja2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.x509.oid import NameOID
from google.protobuf.message import Message
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.console import charts
from gateway.errors import GatewayError
from gateway.rpc.local import LocalCalls

__all__ = ["ASGI", "CSP", "SECURITY_HEADERS", "Console", "SecurityHeaders", "identity_of", "routes"]

HERE = Path(__file__).resolve().parent
CSRF_TTL_S = 8 * 3600
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no referrer leaves the console; a form POST keeps its Origin
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)
# gRPC status -> HTTP status of the error page
_HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
         grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
         grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 409,
         grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.UNAVAILABLE: 503}

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def identity_of(scope: Scope) -> str | None:
    """The verified client certificate's single UTF-8 common name, from the ASGI TLS extension (None: no
    certificate, or not exactly one common name)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        cert = x509.load_pem_x509_certificate(str(chain[0]).encode("ascii"))
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response; `no-store` on every page but the static files."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in dict(SECURITY_HEADERS)]
                headers += list(SECURITY_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class Console:
    """What the pages share: the local calls, the templates, the CSRF key, the caller's roles for navigation."""

    def __init__(self, local: LocalCalls, roles_of: Callable[[str], frozenset[str]]) -> None:
        """Call the gateway through `local`; `roles_of(identity)` only chooses which links the menu shows (every
        page's RPC checks the role itself)."""
        self.local = local
        self.roles_of = roles_of
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
        self.templates = Jinja2Templates(env=env)
        self.templates.env.globals["fmt"] = charts.fmt
        self._key = os.urandom(32)

    # -- identity and calls -------------------------------------------------------------------------

    @staticmethod
    def identity(request: Request) -> str | None:
        """The caller's verified certificate name (None on the public listener)."""
        return identity_of(request.scope)

    async def call(self, request: Request, method: str, message: Message) -> Any:
        """`method` as the caller, through the governed entry point.

        Raises:
            GatewayError: the RPC's refusal (rendered by `error_page`).
        """
        return await self.local.invoke(method, message, self.identity(request))

    # -- CSRF ----------------------------------------------------------------------------------------------

    def _mac(self, identity: str, issued: int) -> bytes:
        h = hmac.HMAC(self._key, hashes.SHA256())
        h.update(f"{identity}\n{issued}".encode())
        return h.finalize()

    def csrf_token(self, identity: str) -> str:
        """A token bound to `identity`, valid for `CSRF_TTL_S`."""
        issued = int(time.time())
        return f"{issued}.{self._mac(identity, issued).hex()}"

    def csrf_ok(self, request: Request, form: FormData) -> bool:
        """The form's token was issued to this identity by this process within `CSRF_TTL_S`, and the request's
        Origin (when the browser sends one) is this console."""
        identity = self.identity(request)
        origin = request.headers.get("origin")
        if identity is None or (origin is not None and origin != f"https://{request.headers.get('host', '')}"):
            return False
        token = form.get("csrf_token")
        if not isinstance(token, str) or "." not in token:
            return False
        issued_text, _, mac_hex = token.partition(".")
        try:
            issued = int(issued_text)
            mac = bytes.fromhex(mac_hex)
        except ValueError:
            return False
        if not 0 <= time.time() - issued <= CSRF_TTL_S:
            return False
        h = hmac.HMAC(self._key, hashes.SHA256())
        h.update(f"{identity}\n{issued}".encode())
        try:
            h.verify(mac)
        except InvalidSignature:
            return False
        return True

    async def form(self, request: Request) -> FormData | Response:
        """The POSTed form once its CSRF token checks out; else the refusal page (no RPC runs)."""
        form = await request.form(max_files=1, max_fields=40, max_part_size=256 * 1024)
        if not self.csrf_ok(request, form):
            return self.page(request, "error.html", {
                "title": "Request refused", "code": "PERMISSION_DENIED", "reason": "CSRF_TOKEN_INVALID",
                "message": "The form's security token is missing, expired or not yours. Reload the page and "
                           "submit it again."}, status=403)
        return form

    # -- rendering -----------------------------------------------------------------------------------------

    def page(self, request: Request, template: str, context: dict[str, Any], *, status: int = 200) -> Response:
        """Render `template` with the navigation for the caller's roles and a fresh CSRF token."""
        identity = self.identity(request)
        roles = self.roles_of(identity) if identity else frozenset()
        base = {"identity": identity, "roles": sorted(roles), "public": identity is None,
                "csrf_token": self.csrf_token(identity) if identity else "", "path": request.url.path}
        return self.templates.TemplateResponse(request, template, {**base, **context}, status_code=status)

    def error_page(self, request: Request, error: GatewayError) -> Response:
        """The RPC's refusal as a page: the same code, reason and message the gRPC client would get."""
        return self.page(request, "error.html", {
            "title": "Refused" if error.code in _HTTP else "Error", "code": error.code.name,
            "reason": error.reason, "message": error.message}, status=_HTTP.get(error.code, 500))


def _guarded(console: Console, handler: Callable[[Console, Request], Awaitable[Response]], *, public: bool
             ) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if not public and console.identity(request) is None:
            return console.page(request, "error.html", {
                "title": "Certificate required", "code": "UNAUTHENTICATED", "reason": "CERTIFICATE_REQUIRED",
                "message": "This page needs a client certificate of the gateway's CA."}, status=401)
        try:
            response: Response = await handler(console, request)
            return response
        except GatewayError as exc:
            return console.error_page(request, exc)

    return endpoint


def routes(console: Console, table: list[tuple[str, Any, list[str]]], *, public: bool) -> list[BaseRoute]:
    routes: list[BaseRoute] = [Route(path, _guarded(console, handler, public=public), methods=methods)
                               for path, handler, methods in table]
    routes.append(Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"))
    return routes


def new_request_id() -> str:
    """A request id for a form that charges, so submitting it twice replays instead of charging twice."""
    return "console-" + secrets.token_hex(12)


def html(text: str, status: int = 200) -> Response:
    """A plain HTML response (tests, redirects)."""
    return HTMLResponse(text, status_code=status)
