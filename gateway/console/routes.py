"""The console's two applications assembled from every role's pages (`app.py` holds what the pages share)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from gateway.console import analyst, auditor, operators, owner, public_page
from gateway.console.app import ASGI, Console, SecurityHeaders, routes
from gateway.rpc.local import LocalCalls

__all__ = ["console_app", "public_app"]


def console_app(local: LocalCalls, roles_of: Callable[[str], frozenset[str]], *, public: bool = False) -> ASGI:
    """The console (client certificate required at the TLS layer): every role's pages and the public page."""
    console = Console(local, roles_of)
    table = [("/", home, ["GET"]), *analyst.ROUTES, *operators.ROUTES, *owner.ROUTES, *auditor.ROUTES,
             *public_page.ROUTES]
    app = Starlette(routes=routes(console, table, public=False))
    return SecurityHeaders(app)


def public_app(local: LocalCalls) -> ASGI:
    """The public listener: the transparency page and its JSON twin, nothing else."""
    console = Console(local, lambda identity: frozenset())
    table = [("/", public_page.page, ["GET"]), *public_page.ROUTES]
    app = Starlette(routes=routes(console, table, public=True))
    return SecurityHeaders(app)


ROLE_PAGES = (("consumer", "/analyst/datasets", "Analyst"), ("operator", "/operator/organizations", "Operator"),
              ("data_owner", "/owner", "Data owner"), ("auditor", "/auditor/log", "Auditor"))


async def home(console: Console, request: Request) -> Response:
    """Who the certificate says you are, and your roles' pages."""
    identity = console.identity(request) or ""
    roles = console.roles_of(identity)
    pages = [(label, href) for role, href, label in ROLE_PAGES if role in roles]
    return console.page(request, "home.html", {"title": "Console", "pages": pages})
