"""The HTTP API: six chart endpoints served from memory, status, health and the OpenAPI document.

`create_app(snapshots)` builds the one ASGI app; its lifespan starts and stops the snapshots' background
work (the pipeline). A chart's JSON is serialized once per snapshot version and request shape (chart,
countries, window) and kept as bytes with its ETag, so a poll costs a dictionary lookup whatever the
number of rows; `If-None-Match` with the current ETag answers 304. Every response says which snapshot
it comes from and how old its data is:

    ETag: "<hash of the body>"    X-Snapshot-Version: 1234
    X-Data-As-Of: 2026-11-28T12:00:00.120Z    X-Data-Age-Ms: 35

Every error, on every route, has one shape: `{"error": {"status": 400, "message": "..."}}`.
The API only reads, unless started with the traffic controls (api/traffic.py), which need a token.
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from pisa_pulse import __version__
from pisa_pulse.api import charts
from pisa_pulse.api.metrics import Metrics, RequestTimer
from pisa_pulse.api.openapi import openapi_document
from pisa_pulse.api.snapshots import Snapshot, Snapshots
from pisa_pulse.web import static_dir

CACHE_ENTRIES = 4096  # distinct (chart, countries, window) shapes kept per snapshot
DATA_HEADERS = ("ETag", "X-Snapshot-Version", "X-Data-As-Of", "X-Data-Age-Ms")


def json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


HEALTHY = ("streaming", "polling", "direct")  # source states in which the charts are up to date


def error_response(status: int, message: str) -> Response:
    """The one error shape."""
    return Response(
        json_bytes({"error": {"status": status, "message": message}}), status, media_type="application/json"
    )


class _RevalidatedStaticFiles(StaticFiles):
    """The dashboard's files, revalidated on each load (their names carry no version)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


class ChartCache:
    """Serialized chart bodies of the current snapshot version, with their ETags."""

    def __init__(self) -> None:
        self.version = -1
        self.entries: OrderedDict[tuple[Any, ...], tuple[bytes, str]] = OrderedDict()

    def get(
        self, snap: Snapshot, key: tuple[Any, ...], build: Callable[[], dict[str, Any]]
    ) -> tuple[bytes, str]:
        if snap.version != self.version:
            self.entries = OrderedDict()
            self.version = snap.version
        found = self.entries.get(key)
        if found is None:
            body = json_bytes(build())
            found = (body, f'"{zlib.crc32(body):08x}{len(body):x}"')
            self.entries[key] = found
            if len(self.entries) > CACHE_ENTRIES:
                self.entries.popitem(last=False)
        return found


def create_app(
    snapshots: Snapshots, clock: Callable[[], float] = time.time, traffic_routes: list[Route] | None = None
) -> Starlette:
    """The API over one source of snapshots; `traffic_routes` (api/traffic.py) only when enabled."""
    cache = ChartCache()
    direct = snapshots.mode == "direct"

    def data_age() -> float | None:
        as_of = snapshots.data_as_of()
        return max(0.0, clock() - as_of) if as_of else None

    metrics = Metrics(snapshots.status, data_age)
    snapshots.observe_build = metrics.snapshot_build.observe

    async def current(columns: frozenset[str]) -> Snapshot:
        # Direct mode blocks on SQL: keep it off the event loop.
        return await run_in_threadpool(snapshots.snapshot, columns) if direct else snapshots.snapshot()

    def data_headers(snap: Snapshot, etag: str) -> dict[str, str]:
        now = clock()
        as_of = (
            datetime.fromtimestamp(snap.as_of, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        return {
            "ETag": etag,
            "X-Snapshot-Version": str(snap.version),
            "X-Data-As-Of": as_of if snap.as_of else "unknown",
            "X-Data-Age-Ms": str(max(0, round((now - snap.as_of) * 1000))) if snap.as_of else "unknown",
            "Cache-Control": "no-cache",
        }

    async def chart(request: Request) -> Response:
        name = request.path_params["chart"]
        if name not in charts.CHARTS:
            return error_response(404, f"no chart {name!r}; the charts are {', '.join(charts.CHARTS)}")
        q = request.query_params
        try:
            countries = charts.parse_countries(q.get("countries")) if name in charts.PER_COUNTRY else None
            bucket = charts.parse_bucket(q.get("bucket"))
            points = charts.parse_window(q.get("hours"), bucket)
        except charts.BadRequest as exc:
            return error_response(400, str(exc))
        snap = await current(charts.COLUMNS[name])
        now = clock()
        slot = int(now // (3600 if bucket == "hour" else 60)) if name == "submissions-over-time" else 0
        key = (name, countries, points, bucket, slot)
        body, etag = cache.get(
            snap,
            key,
            lambda: charts.build(
                name, snap.aggregates, countries=countries, now=now, points=points, bucket=bucket
            ),
        )
        headers = data_headers(snap, etag)
        sent = {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}
        if etag in sent or "*" in sent:
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type="application/json")

    async def status(request: Request) -> Response:
        snap = await current(frozenset())
        now = clock()
        body = {
            "mode": snapshots.mode,
            "snapshot": {
                "version": snap.version,
                "as_of": snap.as_of or None,
                "age_ms": round((now - snap.as_of) * 1000) if snap.as_of else None,
                "submissions": snap.aggregates.count(),
            },
            "sources": snapshots.status(),
        }
        return Response(
            json_bytes(body), media_type="application/json", headers={"Cache-Control": "no-cache"}
        )

    async def health(request: Request) -> Response:
        states = [s["state"] for s in snapshots.status()]
        ok = bool(states) and all(s in HEALTHY for s in states)
        body = {
            "status": "ok" if ok else "degraded",
            "sources": len(states),
            "healthy": sum(s in HEALTHY for s in states),
        }
        return Response(json_bytes(body), 200 if ok else 503, media_type="application/json")

    async def openapi(request: Request) -> Response:
        doc = openapi_document(__version__, traffic=bool(traffic_routes))
        return Response(json_bytes(doc), media_type="application/json")

    async def index(request: Request) -> Response:
        links = {name: f"/api/charts/{name}" for name in charts.CHARTS}
        body = {
            "name": "pisa-pulse",
            "version": __version__,
            "charts": links,
            "status": "/api/status",
            "health": "/api/health",
            "openapi": "/api/openapi.json",
        }
        if traffic_routes:
            body["traffic"] = "/api/traffic"  # the dashboard shows its traffic panel only then
        return Response(json_bytes(body), media_type="application/json")

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error_response(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_response(500, "internal error; the server log has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        snapshots.start()
        try:
            yield
        finally:
            await run_in_threadpool(snapshots.stop)

    async def dashboard(request: Request) -> Response:
        return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", dashboard, methods=["GET"]),
        Route("/api", index, methods=["GET"]),
        Mount("/static", _RevalidatedStaticFiles(directory=static_dir()), name="static"),
        Route("/api/charts/{chart}", chart, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        *(traffic_routes or []),
    ]
    middleware = [
        Middleware(RequestTimer, metrics=metrics, routes=routes),
        Middleware(
            CORSMiddleware,
            allow_origins=["*"],
            allow_methods=["GET"],
            allow_headers=["If-None-Match"],  # other sites' dashboards may revalidate by hand
            expose_headers=list(DATA_HEADERS),
        ),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: on_http_error, Exception: on_error},
        lifespan=lifespan,
    )
