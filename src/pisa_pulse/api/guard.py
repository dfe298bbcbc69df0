"""What guards the API on a real network: the Host check, CORS on the chart routes only, and the
headers every answer carries.

- **Host check.** A request whose Host header (without its port) is not in `server.allowed_hosts`
  (loopback names by default) or the address `serve` listens on gets a 400 that names the setting,
  and is counted (`pisa_pulse_rejected_hosts_total`). A web page the user opens elsewhere cannot
  then reach a server on loopback through a DNS name it controls (DNS rebinding).
- **CORS on the chart routes only.** Chart data is public: any page may read `/api`, `/api/charts`,
  `/api/charts/<name>`, `/api/live`, `/api/countries` and `/api/openapi.json`
  (`Access-Control-Allow-Origin: *`, GET, `If-None-Match`). `/api/status`, `/api/health` and
  `/metrics` (source names, hosts, failure reasons) answer no CORS headers, so only the dashboard
  served here (same origin) reads them.
- **Headers.** `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and a
  Content-Security-Policy the dashboard satisfies: scripts, styles, images and fonts from this server
  only; connections to this server and to `server.chart_origins` (the other servers an operator lets
  the dashboard's endpoint settings poll); no frames, plugins, forms or base URL. Inline style
  attributes stay allowed (ECharts writes its tooltips' styles inline); inline scripts do not.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pisa_pulse.api.bodies import DATA_HEADERS, host_name
from pisa_pulse.api.responses import error_response

CORS_PATHS = frozenset({"/api", "/api/charts", "/api/live", "/api/countries", "/api/openapi.json"})
CORS_PREFIX = "/api/charts/"
UNSPECIFIED = frozenset({"0.0.0.0", "::", ""})  # listening on every address names none of them


def has_bearer(request: Request, token: str) -> bool:
    """The request sends `Authorization: Bearer <token>` (compared in constant time)."""
    sent = request.headers.get("authorization", "")
    return sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].encode(), token.encode())


def allowed_names(allowed_hosts: tuple[str, ...], listening: str | None) -> frozenset[str] | None:
    """The Host names to accept (None: any), from the setting and the address serve listens on."""
    if "*" in allowed_hosts:
        return None
    names = {host_name(h) for h in allowed_hosts}
    if listening is not None and listening not in UNSPECIFIED:
        names.add(host_name(f"[{listening}]" if ":" in listening else listening))
    return frozenset(names)


def content_security_policy(chart_origins: tuple[str, ...]) -> str:
    """The dashboard's CSP: everything from this server; connections also to `chart_origins`."""
    connect = " ".join(("'self'", *chart_origins))
    return (
        f"default-src 'self'; connect-src {connect}; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    )


class Guard:
    """ASGI middleware: the Host check, then CORS where it applies, then the headers on every answer."""

    def __init__(
        self,
        app: ASGIApp,
        allowed: frozenset[str] | None,
        chart_origins: tuple[str, ...],
        on_rejected: Callable[[], None],
    ) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=["*"],
            allow_methods=["GET"],
            allow_headers=["If-None-Match"],  # other sites' dashboards may revalidate by hand
            expose_headers=list(DATA_HEADERS),
        )
        self.allowed = allowed
        self.on_rejected = on_rejected
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", content_security_policy(chart_origins).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
        if self.allowed is not None and host_name(host) not in self.allowed:
            self.on_rejected()
            shown = host[:100] or "(none)"
            message = (
                f"Host {shown} is not served here; add its name to server.allowed_hosts in the settings "
                "file (the names a proxy, CDN or API Gateway uses)"
            )
            await error_response(400, message)(scope, receive, with_headers)
            return
        path = scope["path"]
        target = self.cors if path in CORS_PATHS or path.startswith(CORS_PREFIX) else self.app
        await target(scope, receive, with_headers)
