"""The API's endpoints: module-level handlers that read what they need from `request.app.state`.

`create_app` (app.py) puts one `ApiState` in `app.state.api`: the snapshots, the chart cache, the
clock, the metrics and what the index tells clients. Handlers raise `HttpError`s (exceptions.py); the
app's one exception handler answers them in the one error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from pisa_pulse import __version__
from pisa_pulse.api import charts
from pisa_pulse.api import settings as api_settings
from pisa_pulse.api.bodies import ChartCache, HeaderCache, QueryCache, Snapshot, not_modified
from pisa_pulse.api.exceptions import NotFound, Unauthorized
from pisa_pulse.api.guard import has_bearer
from pisa_pulse.api.live import LiveHub, open_stream
from pisa_pulse.api.metrics import Metrics
from pisa_pulse.api.openapi import openapi_document
from pisa_pulse.api.responses import json_response
from pisa_pulse.api.snapshots import Snapshots
from pisa_pulse.capture.contract import HEALTHY, healthy
from pisa_pulse.engine.aggregates import ARRIVAL_WINDOW_MINUTES
from pisa_pulse.history.query import SeriesRange, long_over_time, parse_asked
from pisa_pulse.history.recorder import Recorder
from pisa_pulse.pisa2018 import countries
from pisa_pulse.web import static_dir

# PISA codes that are no ISO 3166 country (a city, provinces, economies): they have no shape on a
# world map, whatever their PISA country id. Every other participant's id is its ISO 3166 number.
NOT_ISO = frozenset({"QAZ", "QCI", "TAP", "KSV"})


@dataclass
class ApiState:
    """What the handlers share, for one app."""

    snapshots: Snapshots
    clock: Callable[[], float]
    traffic: bool = False  # the traffic routes are on
    settings: api_settings.Settings | None = None  # echoed (without secrets) by /api/status
    publishers: list[Any] = field(default_factory=list)  # aws/publish.py's, when the settings publish
    cache: ChartCache = field(default_factory=ChartCache)
    queries: QueryCache = field(default_factory=QueryCache)
    headers: HeaderCache = field(default_factory=HeaderCache)
    metrics: Metrics = field(init=False)
    live: LiveHub = field(init=False)

    def __post_init__(self) -> None:
        server = self.settings.server if self.settings else api_settings.ServerSettings()
        self.live = LiveHub(server.max_streams)
        self.metrics = Metrics(
            self.snapshots.status, self.data_age, self.snapshots.capture, self.published, self.live.collect
        )

    def published(self) -> list[dict[str, Any]]:
        """What each publish target did (aws/publish.py); empty when the settings publish nowhere."""
        return [publisher.status() for publisher in self.publishers]

    def data_age(self) -> float | None:
        """Seconds since the data served was complete (None: not known yet)."""
        as_of = self.snapshots.data_as_of()
        return max(0.0, self.clock() - as_of) if as_of else None

    async def snapshot(self, columns: frozenset[str]) -> Snapshot:
        """The current snapshot (direct mode blocks on SQL: it runs off the event loop)."""
        if self.snapshots.mode == "direct":
            return await run_in_threadpool(self.snapshots.snapshot, columns)
        return self.snapshots.snapshot()


def state_of_app(app: Starlette) -> ApiState:
    """The app's `ApiState` (put there by `create_app`)."""
    api: ApiState = app.state.api
    return api


def state_of(request: Request) -> ApiState:
    """The `ApiState` of the app serving `request`."""
    return state_of_app(request.app)


def chart_named(name: str) -> charts.Chart:
    """The chart of a route's `{chart}`; NotFound naming the charts there are."""
    found = charts.BY_NAME.get(name)
    if found is None:
        raise NotFound(f"no chart {name!r}", f"the charts are {', '.join(charts.CHARTS)}")
    return found


class RawResponse(Response):
    """A response whose headers are given as raw pairs (the charts' hot path: no header building)."""

    def __init__(self, body: bytes, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.status_code = status
        self.background = None
        self.raw_headers = raw_headers


async def chart(request: Request) -> Response:
    """`GET /api/charts/{chart}`: the chart's JSON from the cache, or 304 for a known ETag. Parsed
    queries, bodies and headers all come from caches (bodies.py), so a poll builds nothing."""
    api = state_of(request)
    found = chart_named(request.path_params["chart"])
    now = api.clock()
    longest = longest_hours(api.snapshots.history)
    query = api.queries.parse(
        found, request.scope["query_string"], lambda: request.query_params, now, longest
    )
    snap = await api.snapshot(found.columns)
    body, etag = await chart_body(api, found, query, snap)
    headers = api.headers.headers(snap, etag, api.clock())
    if not_modified(etag, request.headers.get("if-none-match", "")):
        return RawResponse(b"", 304, headers)
    length = str(len(body)).encode()
    return RawResponse(
        body, 200, [*headers, (b"content-type", b"application/json"), (b"content-length", length)]
    )


async def chart_body(
    api: ApiState, found: charts.Chart, query: charts.Query, snap: Snapshot
) -> tuple[bytes, str]:
    """A chart's body and ETag in `snap`: from the chart cache, or past memory's week from the history."""
    history = api.snapshots.history
    hours = query.points if query.bucket == "hour" else query.points // 60
    if hours > charts.MAX_HOURS and history is not None:
        return await longer_than_memory(api, history, snap, query)
    return api.cache.chart(snap, found, query)


async def live(request: Request) -> Response:
    """`GET /api/live?charts=...`: every chart asked for, pushed as server-sent events (live.py)."""
    api = state_of(request)
    return open_stream(api, request, longest_hours(api.snapshots.history), chart_body)


def longest_hours(history: Recorder | None) -> int:
    """Chart 2's longest window: what memory holds, or with a history store its retention."""
    return charts.MAX_HOURS if history is None else max(charts.MAX_HOURS, history.longest_hours)


async def longer_than_memory(
    api: ApiState, history: Recorder, snap: Snapshot, query: charts.Query
) -> tuple[bytes, str]:
    """Chart 2 over more hours than memory keeps: the older ones from the history store (read at
    most once a minute per window length), the rest from the snapshot."""
    horizon = int(query.now // 60) - ARRIVAL_WINDOW_MINUTES
    width = 60 if query.bucket == "hour" else 1  # minutes per point
    first = (int(query.now // 60 // width) - query.points + 1) * width
    older = await run_in_threadpool(history.older_arrivals, first, horizon)
    key = ("longer than memory", query.points, query.bucket, int(query.now // 60 // width), horizon)
    return api.cache.get(snap, key, lambda: long_over_time(older, snap.aggregates, horizon, query))


async def history_chart(request: Request) -> Response:
    """`GET /api/history/{chart}?at=ISO-TIME`: the chart as it was shown at that minute; with
    `?from=ISO-TIME&to=ISO-TIME&step=1h` instead, that at every step from `from` to `to` (history/)."""
    api = state_of(request)
    found = chart_named(request.path_params["chart"])
    recorder = api.snapshots.history
    if recorder is None:
        raise NotFound("this server keeps no history", "set history.store in its settings (README, History)")
    asked = parse_asked(request.query_params)
    if isinstance(asked, SeriesRange):
        body = await run_in_threadpool(recorder.series, found, asked, request.query_params)
    else:
        body = await run_in_threadpool(recorder.chart_at, found, asked, request.query_params)
    return json_response(body)


async def status(request: Request) -> Response:
    """`GET /api/status`: the mode, the snapshot, every source, the capture process, the settings."""
    api = state_of(request)
    snap = await api.snapshot(frozenset())
    now = api.clock()
    body: dict[str, Any] = {
        "mode": api.snapshots.mode,
        "snapshot": {
            "version": snap.version,
            "as_of": snap.as_of or None,
            "age_ms": round((now - snap.as_of) * 1000) if snap.as_of else None,
            "submissions": snap.aggregates.count(),
        },
        "sources": api.snapshots.status(),
    }
    capture = api.snapshots.capture()
    if capture is not None:
        body["capture"] = capture
    if api.publishers:
        body["publish"] = api.published()
    if api.snapshots.history is not None:
        body["history"] = api.snapshots.history.status()
    if api.settings is not None:
        body["settings"] = api_settings.effective(api.settings)
    return json_response(body, headers={"Cache-Control": "no-cache"})


async def health(request: Request) -> Response:
    """`GET /api/health`: ok when every source serves up-to-date charts and capture runs; else 503."""
    api = state_of(request)
    states = [s["state"] for s in api.snapshots.status()]
    capture = api.snapshots.capture()
    ok = healthy(states) and (capture is None or capture.get("state") == "running")
    body: dict[str, Any] = {
        "status": "ok" if ok else "degraded",
        "sources": len(states),
        "healthy": sum(s in HEALTHY for s in states),
    }
    if capture is not None:
        body["capture"] = capture.get("state")
    return json_response(body, 200 if ok else 503)


async def openapi(request: Request) -> Response:
    """`GET /api/openapi.json`."""
    api = state_of(request)
    longest = longest_hours(api.snapshots.history)
    return json_response(openapi_document(__version__, traffic=api.traffic, longest_hours=longest))


def index_body(traffic: bool, live: bool = False) -> dict[str, Any]:
    """What `/api` says: every chart (as `/api/charts`), every country (as `/api/countries`) and the
    other routes; the dashboard builds itself from this one answer. `live`: the live route takes
    streams here (the dashboard opens one only then, and polls otherwise)."""
    body: dict[str, Any] = {
        "name": "pisa-pulse",
        "version": __version__,
        **chart_index_body(),
        **countries_body(),
        "status": "/api/status",
        "health": "/api/health",
        "openapi": "/api/openapi.json",
        "metrics": "/metrics",
    }
    if live:
        body["live"] = "/api/live"
    if traffic:
        body["traffic"] = "/api/traffic"  # the dashboard shows its traffic panel only then
    return body


async def index(request: Request) -> Response:
    """`GET /api`: the index, charts included (the dashboard asks for nothing else to build itself)."""
    api = state_of(request)
    return json_response(index_body(api.traffic, api.live.offered(api.snapshots.mode)))


def chart_index_body() -> dict[str, Any]:
    """Every chart's name, path, title, description, contract, parameters and columns."""
    return {"charts": [c.describe() for c in charts.REGISTRY]}


async def chart_index(request: Request) -> Response:
    """`GET /api/charts`."""
    return json_response(chart_index_body())


def countries_body() -> dict[str, Any]:
    """The 79 PISA 2018 participants: code, name, and ISO 3166 number (null: none; not on a map)."""
    return {
        "countries": [
            {"code": c.code, "name": c.name, "iso": None if c.code in NOT_ISO else f"{c.cntryid:03d}"}
            for c in countries().values()
        ]
    }


async def country_list(request: Request) -> Response:
    """`GET /api/countries`."""
    return json_response(countries_body())


async def metrics(request: Request) -> Response:
    """`GET /metrics` in the Prometheus text format (with `server.metrics_token_env`: for its token)."""
    state = state_of(request)
    token = state.settings.server.metrics_token if state.settings else None
    if token is not None and not has_bearer(request, token.reveal()):
        raise Unauthorized("missing or wrong token; send Authorization: Bearer <server.metrics_token_env's>")
    return state.metrics.response()


async def dashboard(request: Request) -> Response:
    """`GET /`: the dashboard's page."""
    return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})
