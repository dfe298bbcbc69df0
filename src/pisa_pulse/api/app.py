"""The ASGI app: `create_app` wires the routes (handlers.py), the middleware and the lifespan.

`create_app(snapshots)` builds the one app; its lifespan starts and stops the snapshots' background
work (the pipeline). A chart's JSON is serialized once per snapshot version and request shape (chart,
countries, window) and kept as bytes with its ETag, so a poll costs a dictionary lookup whatever the
number of rows; `If-None-Match` with the current ETag answers 304 (handlers.py, responses.py).

Every error, on every route, has one shape: `{"error": {"status": 400, "message": "..."}}`, made by
the one exception handler below from an `HttpError` (exceptions.py), from starlette's own 404 and 405,
or, for anything else, a 500 that says no more than that.
The API only reads, unless started with the traffic controls (api/traffic.py), which need a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from pisa_pulse.api import handlers
from pisa_pulse.api.exceptions import HttpError
from pisa_pulse.api.guard import Guard, allowed_names
from pisa_pulse.api.metrics import RequestTimer
from pisa_pulse.api.responses import error_response
from pisa_pulse.api.settings import ServerSettings, Settings
from pisa_pulse.api.snapshots import Snapshots
from pisa_pulse.web import static_dir


class _RevalidatedStaticFiles(StaticFiles):
    """The dashboard's files, revalidated on each load (their names carry no version)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def routes() -> list[BaseRoute]:
    """Every route but the traffic controls (the OpenAPI document lists the same)."""
    return [
        Route("/", handlers.dashboard, methods=["GET"]),
        Route("/api", handlers.index, methods=["GET"]),
        Mount("/static", _RevalidatedStaticFiles(directory=static_dir()), name="static"),
        Route("/api/charts", handlers.chart_index, methods=["GET"]),
        Route("/api/charts/{chart}", handlers.chart, methods=["GET"]),
        Route("/api/live", handlers.live, methods=["GET"]),
        Route("/api/history/{chart}", handlers.history_chart, methods=["GET"]),
        Route("/api/countries", handlers.country_list, methods=["GET"]),
        Route("/api/status", handlers.status, methods=["GET"]),
        Route("/api/health", handlers.health, methods=["GET"]),
        Route("/api/openapi.json", handlers.openapi, methods=["GET"]),
        Route("/metrics", handlers.metrics, methods=["GET"]),
    ]


async def on_error(request: Request, exc: Exception) -> Response:
    """The one error shape, for every exception a request meets."""
    if isinstance(exc, HttpError):
        return error_response(exc.status, str(exc))
    if isinstance(exc, HTTPException):
        response = error_response(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response
    # (starlette re-raises it after this answer, so the server logs it with its traceback)
    return error_response(500, "internal error; the server log has the details")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the snapshots' background work, and the publishing when the settings ask for it; stop
    them (the snapshots off the event loop) at shutdown."""
    api = handlers.state_of_app(app)
    snapshots = api.snapshots
    api.live.bind(asyncio.get_running_loop())
    snapshots.on_change = api.live.notify
    snapshots.start()
    publishing = None
    if api.settings is not None and api.settings.publish_to:
        from pisa_pulse.aws.publish import publish_every, publisher_of  # boto3: only when publishing

        api.publishers = [publisher_of(url) for url in api.settings.publish_to]
        interval = api.settings.publish_interval
        publishing = asyncio.create_task(
            publish_every(api.publishers, snapshots.snapshot, interval, snapshots.may_publish)
        )
    try:
        yield
    finally:
        if publishing is not None:
            publishing.cancel()
        await run_in_threadpool(snapshots.stop)


def create_app(
    snapshots: Snapshots,
    clock: Callable[[], float] = time.time,
    traffic_routes: list[Route] | None = None,
    settings: Settings | None = None,
) -> Starlette:
    """The API over one source of snapshots; `traffic_routes` (api/traffic.py) only when enabled;
    `settings`: what `/api/status` echoes (without secrets), the Host names allowed and the origins
    the dashboard may poll (the defaults when None)."""
    state = handlers.ApiState(snapshots, clock, traffic=bool(traffic_routes), settings=settings)
    snapshots.observe_build = state.metrics.snapshot_build.observe
    served = [*routes(), *(traffic_routes or [])]
    server = settings.server if settings else ServerSettings()
    middleware = [
        Middleware(RequestTimer, metrics=state.metrics, routes=served),
        Middleware(
            Guard,
            allowed=allowed_names(server.allowed_hosts, server.host),
            chart_origins=server.chart_origins,
            on_rejected=state.metrics.rejected_hosts.inc,
        ),
    ]
    app = Starlette(
        routes=served,
        middleware=middleware,
        exception_handlers={HTTPException: on_error, HttpError: on_error, Exception: on_error},
        lifespan=lifespan,
    )
    app.state.api = state
    return app
