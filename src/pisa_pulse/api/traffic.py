"""Traffic controls through the API: the only routes that change data, off unless asked for.

`serve --traffic-control` (and `demo`, which owns its traffic) adds

    GET  /api/traffic          the running traffic's rate, state and counts
    POST /api/traffic          {"rate": 500} | {"action": "pause"} | {"action": "resume"}
    POST /api/traffic/empty    {"country": "alb"}: empties that country's database (through the traffic)

Each needs `Authorization: Bearer <token>`. The token is random per start and written to
`<data-dir>/api-token` (mode 0600), never printed or logged; without the switch the routes do not
exist (404) and the dashboard shows no controls. The routes forward to the traffic's own loopback
control endpoint (`sources/control.py`), which runs in the traffic's process (`pisa-pulse traffic`,
which `demo` starts as a child): emptying a source happens there too, so this module and what it
imports need neither psycopg2 nor numpy, and the HTTP process never connects to a source to change it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pisa_pulse.api.bodies import json_bytes
from pisa_pulse.api.guard import has_bearer
from pisa_pulse.api.responses import error_response
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import write_private
from pisa_pulse.sources import control

TOKEN_FILE = "api-token"
Handler = Callable[[Request], Awaitable[Response]]
_NO_TOKEN = "missing or wrong token; send Authorization: Bearer <the token in the data dir's api-token>"


def new_token(data_dir: Path) -> str:
    """A fresh token, written to `<data-dir>/api-token` readable by this user only."""
    token = secrets.token_urlsafe(24)
    write_private(data_dir / TOKEN_FILE, token + "\n")
    return token


def _reply(body: dict[str, Any]) -> Response:
    return Response(json_bytes(body), media_type="application/json")


def traffic_routes(data_dir: Path, token: str) -> list[Route]:
    """The three routes, bound to one data dir and token."""

    async def body_of(request: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def with_token(handler: Handler) -> Handler:
        async def checked(request: Request) -> Response:
            if not has_bearer(request, token):
                return error_response(401, _NO_TOKEN)
            return await handler(request)

        return checked

    async def status(request: Request) -> Response:
        try:
            return _reply(await run_in_threadpool(control.send, data_dir, "status"))
        except PisaPulseError as exc:
            return error_response(503, str(exc))

    async def steer(request: Request) -> Response:
        body = await body_of(request)
        if body is None:
            return error_response(
                400, 'the body is not a JSON object; send {"rate": 500} or {"action": "pause"}'
            )
        if "rate" in body:
            rate = body["rate"]
            if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1_000_000:
                return error_response(400, "rate must be a number from 0 to 1000000 (operations per second)")
            action, payload = "rate", {"rate": float(rate)}
        elif body.get("action") in ("pause", "resume"):
            action, payload = str(body["action"]), {}
        else:
            return error_response(400, 'send {"rate": R} or {"action": "pause"} or {"action": "resume"}')
        try:
            return _reply(await run_in_threadpool(control.send, data_dir, action, payload))
        except PisaPulseError as exc:
            return error_response(503, str(exc))

    async def empty(request: Request) -> Response:
        body = await body_of(request)
        country = body.get("country") if body else None
        if not isinstance(country, str) or not country.isalpha() or len(country) != 3:
            return error_response(400, 'send {"country": "alb"}: the code of one of the sources')
        try:
            emptied = await run_in_threadpool(control.send, data_dir, "empty", {"country": country.lower()})
        except control.TrafficRefused as exc:
            return error_response(400, str(exc))
        except PisaPulseError as exc:
            return error_response(503, str(exc))
        return _reply(emptied)

    return [
        Route("/api/traffic", with_token(status), methods=["GET"]),
        Route("/api/traffic", with_token(steer), methods=["POST"]),
        Route("/api/traffic/empty", with_token(empty), methods=["POST"]),
    ]
