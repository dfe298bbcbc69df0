"""The Lambda function behind API Gateway: the charts from the DynamoDB table `serve` publishes to.

`handle(event, context)` takes API Gateway's HTTP API events (payload 2.0) and REST API events
(payload 1.0) and answers `GET /api/charts/{chart}` with the same bodies, `?countries=` rules, ETag,
304 and error shape as `serve` (the rendering is `serve`'s own: api/charts.py and api/bodies.py),
and `GET /api/health` from the published as-of time. Every other route answers 404 in the error
shape, so the dashboard falls back to polling where a route is missing. A malformed event answers
400, never a stack trace.

The guard of `serve` (api/guard.py) applies here too, for API Gateway's host names: the Host header
must be the API's own domain name (the event's `requestContext.domainName`) or one of
`PISA_PULSE_ALLOWED_HOSTS` (comma-separated, for a custom domain or a CDN; `*` for any), or the answer is
400 naming that variable; chart answers carry CORS headers for any origin (and answer a preflight),
`/api/health` none; every answer carries `nosniff`, `no-referrer` and a Content-Security-Policy that
allows nothing (JSON only). API Gateway's own CORS configuration (deploy/template.yaml) says the same.

A container keeps the items it read for `ITEM_TTL_S` (at most one read per key per second, however
many polls it answers) and the chart bodies of the version it holds. The table comes from
`PISA_PULSE_TABLE`; credentials, region and endpoint from the standard AWS chain. Logs are JSON
lines (CloudWatch). Imports neither numpy nor psycopg2.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from pisa_pulse.api import charts
from pisa_pulse.api.bodies import (
    DATA_HEADERS,
    ChartCache,
    Snapshot,
    data_headers,
    error_body,
    host_name,
    json_bytes,
    not_modified,
)
from pisa_pulse.api.exceptions import BadRequest, HttpError, MethodNotAllowed, NotFound
from pisa_pulse.aws import table

log = logging.getLogger("pisa_pulse.aws")

ITEM_TTL_S = 1.0
HEALTHY_AGE_S = 10.0  # /api/health: data older than this is degraded (serve publishes every second)
BATCH = 100  # keys per BatchGetItem
SNAPSHOTS_KEPT = 8  # decoded snapshots per container: the sums, and a few chart 2 windows
JSON = "application/json"
ALLOWED_HOSTS_ENV = "PISA_PULSE_ALLOWED_HOSTS"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": ", ".join(DATA_HEADERS)}
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD",
    "Access-Control-Allow-Headers": "If-None-Match",
    "Access-Control-Max-Age": "600",
}


class BadEvent(Exception):
    """The event is not an API Gateway request this handler understands."""


class Items:
    """The table's items as this container last read them, each at most `ITEM_TTL_S` old."""

    def __init__(self, name: str, client: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.client, self.clock = name, client, clock
        self.held: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self.reads = 0  # keys read from DynamoDB

    def get(self, keys: list[str]) -> list[dict[str, Any]]:
        """The items of `keys` that exist, read again where older than `ITEM_TTL_S`."""
        now = self.clock()
        stale = [k for k in keys if k not in self.held or now - self.held[k][0] >= ITEM_TTL_S]
        for start in range(0, len(stale), BATCH):
            self._read(stale[start : start + BATCH], now)
        return [item for k in keys if (item := self.held[k][1]) is not None]

    def _read(self, keys: list[str], now: float) -> None:
        wanted: dict[str, Any] = {self.name: {"Keys": [{"key": {"S": k}} for k in keys]}}
        found: dict[str, dict[str, Any]] = {}
        while wanted:
            answer = self.client.batch_get_item(RequestItems=wanted)
            for item in answer.get("Responses", {}).get(self.name, []):
                found[item["key"]["S"]] = item
            wanted = answer.get("UnprocessedKeys") or {}
        self.reads += len(keys)
        for key in keys:
            self.held[key] = (now, found.get(key))


def from_table(items: Items) -> Callable[[frozenset[str], range], Snapshot]:
    """Snapshots of the published aggregates: the sums, and the minutes of the hours a chart shows.
    Each is decoded once per version of the items it comes from (a cache hit then costs a lookup:
    decoding was 78 % of one, profiled), for the last `SNAPSHOTS_KEPT` windows asked."""
    decoded: OrderedDict[tuple[tuple[str, str], ...], Snapshot] = OrderedDict()

    def snapshot(columns: frozenset[str], hours: range) -> Snapshot:
        found = items.get([table.SUMS, *(table.hour_key(h) for h in hours)])
        key = tuple((item["key"]["S"], item["version"]["N"]) for item in found)
        held = decoded.get(key)
        if held is None:
            agg, as_of, version = table.aggregates_of(found)
            held = decoded[key] = Snapshot(version, agg, as_of)
            if len(decoded) > SNAPSHOTS_KEPT:
                decoded.popitem(last=False)
        else:
            decoded.move_to_end(key)
        return held

    return snapshot


class Charts:
    """What one container serves: charts rendered as `serve` renders them, from `snapshot(columns,
    hours)`: the chart's columns, and the hours of arrival minutes it shows."""

    def __init__(
        self, snapshot: Callable[[frozenset[str], range], Snapshot], clock: Callable[[], float] = time.time
    ) -> None:
        self.snapshot, self.clock = snapshot, clock
        self.cache = ChartCache()

    def chart(
        self, name: str, params: Mapping[str, str], if_none_match: str
    ) -> tuple[int, dict[str, str], bytes]:
        found = charts.BY_NAME.get(name)
        if found is None:
            raise NotFound(f"no chart {name!r}", f"the charts are {', '.join(charts.CHARTS)}")
        now = self.clock()
        query = charts.parse_query(found, params, now)
        hours = range(0)
        if "bucket" in found.parameters:
            width = 3600 if query.bucket == "hour" else 60
            hours = range(int((now - query.points * width) // 3600), int(now // 3600) + 1)
        snap = self.snapshot(found.columns, hours)
        body, etag = self.cache.chart(snap, found, query)
        headers = {**data_headers(snap, etag, now), "Content-Type": JSON}
        if not_modified(etag, if_none_match):
            return 304, headers, b""
        return 200, headers, body

    def health(self) -> tuple[int, dict[str, str], bytes]:
        snap = self.snapshot(frozenset(), range(0))
        age = self.clock() - snap.as_of if snap.as_of else None
        ok = age is not None and age <= HEALTHY_AGE_S
        body = {"status": "ok" if ok else "degraded", "as_of": snap.as_of or None, "version": snap.version}
        return (200 if ok else 503), {"Content-Type": JSON, "Cache-Control": "no-cache"}, json_bytes(body)


def request_of(event: Any) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """Method, path, query parameters (the last of repeated ones, as `serve` takes them) and headers
    (lower-case names) of an API Gateway event, payload 2.0 or 1.0."""
    if not isinstance(event, dict):
        raise BadEvent("the event is not a JSON object")
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    if event.get("version") == "2.0":
        http = (event.get("requestContext") or {}).get("http") or {}
        method, path = http.get("method"), event.get("rawPath")
        query = dict(parse_qsl(event.get("rawQueryString") or "", keep_blank_values=True))
    else:
        method, path = event.get("httpMethod"), event.get("path")
        multi = event.get("multiValueQueryStringParameters") or {}
        single = event.get("queryStringParameters") or {}
        query = {k: (v[-1] if isinstance(v, list) and v else str(v)) for k, v in {**single, **multi}.items()}
    if not isinstance(method, str) or not isinstance(path, str) or not path.startswith("/"):
        raise BadEvent("the event names no HTTP method and path")
    return method.upper(), path, query, headers


_CHARTS: Charts | None = None


def _charts() -> Charts:
    global _CHARTS
    if _CHARTS is None:
        import boto3  # here: a cold start pays for it once

        name = os.environ.get("PISA_PULSE_TABLE", "")
        _CHARTS = Charts(from_table(Items(table.table_of(f"dynamodb://{name}"), boto3.client("dynamodb"))))
    return _CHARTS


def host_allowed(event: dict[str, Any], headers: Mapping[str, str]) -> bool:
    """The Host header names the API's own domain, or one `PISA_PULSE_ALLOWED_HOSTS` lists."""
    names = {host_name(name) for name in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if name.strip()}
    if "*" in names:
        return True
    domain = (event.get("requestContext") or {}).get("domainName")
    if isinstance(domain, str) and domain:
        names.add(host_name(domain))
    return host_name(headers.get("host", "")) in names


def answer(charts_: Charts, event: Any) -> tuple[int, dict[str, str], bytes, str]:
    """Status, headers, body and payload version of the answer to one event."""
    version = event.get("version", "1.0") if isinstance(event, dict) else "1.0"
    cors: dict[str, str] = {}
    try:
        method, path, query, headers = request_of(event)
        if not host_allowed(event, headers):
            shown = headers.get("host", "")[:100] or "(none)"
            raise BadRequest(
                f"Host {shown} is not served here; add its name to {ALLOWED_HOSTS_ENV} in the function's "
                "environment (the names a custom domain or CDN uses)"
            )
        chart = path.startswith("/api/charts/")
        cors = CORS_HEADERS if chart and "origin" in headers else {}
        if method == "OPTIONS" and chart and "access-control-request-method" in headers:
            return 204, {**PREFLIGHT_HEADERS, **SECURITY_HEADERS}, b"", version
        if method not in {"GET", "HEAD"}:
            raise MethodNotAllowed(f"{method} is not allowed here", "use GET")
        if chart:
            status, out, body = charts_.chart(
                path.removeprefix("/api/charts/"), query, headers.get("if-none-match", "")
            )
        elif path == "/api/health":
            status, out, body = charts_.health()
        else:
            raise NotFound(f"no route {path}", "this function serves /api/charts/{chart} and /api/health")
        return status, {**out, **cors, **SECURITY_HEADERS}, (b"" if method == "HEAD" else body), version
    except BadEvent as exc:
        status, body = 400, error_body(400, f"{exc}; send an API Gateway event")
    except HttpError as exc:
        status, body = exc.status, error_body(exc.status, str(exc))
    return status, {"Content-Type": JSON, **cors, **SECURITY_HEADERS}, body, version


def handle(event: Any, context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (`pisa_pulse.aws.handler.handle`)."""
    return respond(_charts, event)


def respond(charts_of: Callable[[], Charts], event: Any) -> dict[str, Any]:
    """The answer to one event as API Gateway takes it, and its JSON log line."""
    started = time.perf_counter()
    try:
        charts_ = charts_of()
    except Exception as exc:  # no table configured, no credentials: said in the log and the answer
        log.error(json.dumps({"error": str(exc)}))
        status, headers, body, version = (
            503,
            {"Content-Type": JSON},
            error_body(503, "the chart table is not reachable"),
            "1.0",
        )
    else:
        status, headers, body, version = answer(charts_, event)
    print(
        json.dumps(
            {"status": status, "ms": round((time.perf_counter() - started) * 1000, 2), "payload": version}
        )
    )
    return {"statusCode": status, "headers": headers, "body": body.decode(), "isBase64Encoded": False}
