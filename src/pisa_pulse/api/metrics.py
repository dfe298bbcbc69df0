"""Prometheus metrics at `GET /metrics`: what an operator graphs and alerts on.

Per source, read from the capture's status at each scrape (so they cost nothing between scrapes):

    pisa_pulse_source_up{source,mode}            1 while streaming, polling or queried directly
    pisa_pulse_source_lag_seconds{source}        how far behind the source the charts are
    pisa_pulse_source_rows{source}               rows held for the source
    pisa_pulse_changes_applied_total{source}     row changes applied (stream, or rows a poll found)
    pisa_pulse_source_copies_total{source}       full copies (first start, lost slot)
    pisa_pulse_invalid_values{source,column}     rows held whose value in that column is invalid
    pisa_pulse_snapshot_age_seconds              age of the data the API serves

Per publish target (`[publish] to`, aws/), read from its publisher at each scrape:

    pisa_pulse_publish_writes_total{to}          items or objects written
    pisa_pulse_publish_deletes_total{to}         stale ones deleted
    pisa_pulse_publish_refused_total{to}         writes refused: the target held a newer version

When capture runs in a process of its own (`Snapshots.capture()` is not None):

    pisa_pulse_capture_up                        1 while that process is running
    pisa_pulse_capture_restarts_total            how often it was restarted

Measured as they happen:

    pisa_pulse_snapshot_build_seconds            copying the aggregates for the API (histogram)
    pisa_pulse_http_request_duration_seconds{route,status}   every request (histogram)
    pisa_pulse_rejected_hosts_total              requests refused for their Host header (api/guard.py)
    pisa_pulse_http_dropped_connections_total{reason}   connections closed by a limit (api/connections.py):
                                                 request_timeout, head_too_large, max_connections

The live route (api/live.py), from its hub at each scrape:

    pisa_pulse_live_streams                      streams open now
    pisa_pulse_live_streams_opened_total         streams opened
    pisa_pulse_live_streams_refused_total        streams refused with 503 (cap, route off, direct mode)
    pisa_pulse_live_events_total{type}           events sent: chart, fresh, heartbeat
    pisa_pulse_live_skipped_versions_total       snapshot versions a stream skipped: it was still writing

`route` is the route's path template with the chart name filled in (`/api/charts/escs`), so its
values are bounded; anything unrouted is `other`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pisa_pulse.api.charts import BY_NAME
from pisa_pulse.api.connections import DROP_REASONS, DROPPED
from pisa_pulse.capture.contract import HEALTHY

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Status = Callable[[], list[dict[str, Any]]]
Capture = Callable[[], dict[str, Any] | None]


class _Sources(Collector):
    """The per-source metrics, from `status()` at scrape time."""

    def __init__(self, status: Status, age: Callable[[], float | None], capture: Capture) -> None:
        self.status = status
        self.age = age
        self.capture = capture

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "pisa_pulse_source_up", "1 while the source is captured", labels=["source", "mode"]
        )
        lag = GaugeMetricFamily(
            "pisa_pulse_source_lag_seconds", "How far behind the source", labels=["source"]
        )
        rows = GaugeMetricFamily("pisa_pulse_source_rows", "Rows held for the source", labels=["source"])
        changes = CounterMetricFamily("pisa_pulse_changes_applied", "Row changes applied", labels=["source"])
        copies = CounterMetricFamily(
            "pisa_pulse_source_copies", "Full copies of the source", labels=["source"]
        )
        invalid = GaugeMetricFamily(
            "pisa_pulse_invalid_values", "Rows held whose value is invalid", labels=["source", "column"]
        )
        for s in self.status():
            name = s["source"]
            up.add_metric([name, str(s.get("mode", "direct"))], 1.0 if s["state"] in HEALTHY else 0.0)
            if s.get("lag_ms") is not None:
                lag.add_metric([name], s["lag_ms"] / 1000)
            if "rows" in s:
                rows.add_metric([name], s["rows"])
            changes.add_metric([name], s.get("changes", 0))
            copies.add_metric([name], s.get("copies", 0))
            for column, count in s.get("invalid", {}).items():
                invalid.add_metric([name, column], count)
        yield from (up, lag, rows, changes, copies, invalid)
        age = self.age()
        if age is not None:
            yield GaugeMetricFamily(
                "pisa_pulse_snapshot_age_seconds", "Age of the data the API serves", value=age
            )
        capture = self.capture()
        if capture is not None:
            running = capture.get("state") == "running"
            yield GaugeMetricFamily(
                "pisa_pulse_capture_up", "1 while the capture process runs", value=1.0 if running else 0.0
            )
            yield CounterMetricFamily(
                "pisa_pulse_capture_restarts",
                "Restarts of the capture process",
                value=capture.get("restarts", 0),
            )


class _Dropped(Collector):
    """Connections the HTTP protocol closed, by reason (counted there, per process)."""

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "pisa_pulse_http_dropped_connections",
            "Connections closed by a limit of the HTTP server",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], DROPPED[reason])
        yield dropped


class _Published(Collector):
    """Each publish target's counters, from its publisher at scrape time."""

    def __init__(self, published: Status) -> None:
        self.published = published

    def collect(self) -> Iterator[Metric]:
        statuses = self.published()
        for counter, text in (
            ("writes", "Items or objects written to a publish target"),
            ("deletes", "Stale items or objects deleted from a publish target"),
            ("refused", "Writes a publish target refused: it held a newer version"),
        ):
            family = CounterMetricFamily(f"pisa_pulse_publish_{counter}", text, labels=["to"])
            for status in statuses:
                family.add_metric([status["to"]], status[counter])
            yield family


class _Collected(Collector):
    """Metrics that something else collects (the live route's hub)."""

    def __init__(self, collected: Callable[[], Iterator[Metric]]) -> None:
        self.collected = collected

    def collect(self) -> Iterator[Metric]:
        return self.collected()


class Metrics:
    """One registry per app: the source and publish collectors, the snapshot and request histograms."""

    def __init__(
        self,
        status: Status,
        age: Callable[[], float | None],
        capture: Capture,
        published: Status = list,
        live: Callable[[], Iterator[Metric]] = lambda: iter(()),
    ) -> None:
        """`live`: the live route's metrics (`LiveHub.collect`)."""
        self.registry = CollectorRegistry()
        self.registry.register(_Sources(status, age, capture))
        self.registry.register(_Collected(live))
        self.registry.register(_Dropped())
        self.registry.register(_Published(published))
        self.snapshot_build = Histogram(
            "pisa_pulse_snapshot_build_seconds",
            "Copying the aggregates for the API",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.requests = Histogram(
            "pisa_pulse_http_request_duration_seconds",
            "HTTP requests, by route and status",
            ["route", "status"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )

        self.rejected_hosts = Counter(
            "pisa_pulse_rejected_hosts", "Requests refused for their Host header", registry=self.registry
        )

    def response(self) -> Response:
        """`GET /metrics` in the Prometheus text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)


class RequestTimer:
    """ASGI middleware observing every HTTP request's duration in `Metrics.requests`."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[Any]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = [r for r in routes if isinstance(r, Route)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(self._route(scope), str(status)).observe(
                time.perf_counter() - started
            )

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                chart = child.get("path_params", {}).get("chart")
                if chart is not None:
                    return BY_NAME[chart].path if chart in BY_NAME else "/api/charts/other"
                return route.path
        return "other"
