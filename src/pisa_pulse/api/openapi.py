"""The OpenAPI 3.0 document of every route (served at /api/openapi.json; the tests check it covers all)."""

from __future__ import annotations

from typing import Any

from pisa_pulse.api.charts import (
    CODE,
    COUNTRIES_PATTERN,
    DEFAULT_HOURS,
    INTEGER,
    MAX_HOURS,
    REGISTRY,
    Chart,
    object_schema,
)
from pisa_pulse.history.query import AT_PATTERN, DEFAULT_STEP, MAX_POINTS, MINUTE_PATTERN, STEP_PATTERN

_ERROR = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": object_schema(
                {"error": object_schema({"status": INTEGER, "message": {"type": "string"}})},
            )
        }
    },
}

_COUNTRIES = {
    "name": "countries",
    "in": "query",
    "required": False,
    "description": "Comma-separated 3-letter codes (any case, blanks allowed); absent = all countries",
    "schema": {"type": "string", "pattern": COUNTRIES_PATTERN},
}
_HOURS = {
    "name": "hours",
    "in": "query",
    "required": False,
    "description": f"The window in hours (default {DEFAULT_HOURS['hour']}, or {DEFAULT_HOURS['minute']} "
    "with bucket=minute)",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_HOURS},
}
_BUCKET = {
    "name": "bucket",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["hour", "minute"], "default": "hour"},
}
_PARAMETERS = {"countries": _COUNTRIES, "hours": _HOURS, "bucket": _BUCKET}  # what a chart may take
# The history takes either `at`, or `from` and `to` (and `step`): a rule OpenAPI 3.0 cannot state, so
# every one is optional, the descriptions say it, and a request that breaks it answers 400.
_EITHER = "Give either at, or from and to (both or neither: 400)."
_AT = {
    "name": "at",
    "in": "query",
    "required": False,
    "description": "An ISO 8601 time (UTC unless it says otherwise): the chart as shown at the end of "
    f"its minute. {_EITHER}",
    "schema": {"type": "string", "pattern": AT_PATTERN, "example": "2026-12-02T12:00Z"},
}
_FROM, _TO = (
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"A series: {what} (ISO 8601, as at); the chart as shown at the end of each minute "
        f"from, from + step, ... up to to, at most {MAX_POINTS:,} points, those the history holds. "
        + _EITHER,
        "schema": {"type": "string", "pattern": AT_PATTERN, "example": example},
    }
    for name, what, example in (
        ("from", "its first point", "2026-12-02T10:00Z"),
        ("to", "its last minute (not before from)", "2026-12-02T12:00Z"),
    )
)
_STEP = {
    "name": "step",
    "in": "query",
    "required": False,
    "description": "A series' step: n minutes, hours or days (15m, 1h, 1d)",
    "schema": {"type": "string", "pattern": STEP_PATTERN, "default": DEFAULT_STEP},
}
_HISTORY = [_AT, _FROM, _TO, _STEP]
_DATA_HEADERS = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in (
        ("ETag", "Changes when the body does; send it back in If-None-Match for a 304"),
        ("X-Snapshot-Version", "The snapshot the body comes from"),
        ("X-Data-As-Of", "Every change committed in the sources before this time is in the body"),
        ("X-Data-Age-Ms", "Now minus X-Data-As-Of, in milliseconds"),
    )
}


_CHART_INDEX = object_schema(
    {
        "charts": {
            "type": "array",
            "items": object_schema(
                {
                    "name": {"type": "string"},
                    "path": {"type": "string"},
                    "title": {"type": "string"},
                    "description": {"type": "string"},
                    "contract": {"type": "string"},
                    "parameters": {"type": "array", "items": {"type": "string", "enum": list(_PARAMETERS)}},
                    "per_country": {"type": "boolean"},
                    "columns": {"type": "array", "items": {"type": "string"}},
                }
            ),
        }
    }
)
_COUNTRY_LIST = object_schema(
    {
        "countries": {
            "type": "array",
            "items": object_schema(
                {
                    "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "name": {"type": "string"},
                    "iso": {"type": "string", "pattern": "^[0-9]{3}$", "nullable": True},
                }
            ),
        }
    }
)


def _get(
    summary: str, schema: dict[str, Any], parameters: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": summary, "content": {"application/json": {"schema": schema}}, **extra},
        "default": _ERROR,
    }
    return {"get": {"summary": summary, "parameters": parameters, "responses": responses}}


def _traffic_paths() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    status = _get("The traffic's rate, state and counts", {"type": "object"}, [])
    status["get"]["security"] = bearer
    steer = {
        "summary": 'Change the traffic: {"rate": R}, {"action": "pause"} or {"action": "resume"}',
        "security": bearer,
        "requestBody": body,
        "responses": {"200": {"description": "The new traffic status"}, "default": _ERROR},
    }
    empty = {
        "summary": 'Empty one country\'s database: {"country": "alb"}',
        "security": bearer,
        "requestBody": body,
        "responses": {"200": {"description": "Which databases were emptied"}, "default": _ERROR},
    }
    return {"/api/traffic": {**status, "post": steer}, "/api/traffic/empty": {"post": empty}}


def series_schema(chart: Chart) -> dict[str, Any]:
    """The body of `/api/history/<chart>?from=&to=&step=`: a dataset per country whose points are its
    entries in the chart (without the code) at each minute, or one of counts (submissions, and for
    submissions-over-time the rows that arrived in each step)."""
    at = {"type": "string", "pattern": MINUTE_PATTERN}
    if chart.per_country:
        entry = chart.schema["properties"]["datasets"]["items"]["properties"]
        fields = {name: value for name, value in entry.items() if name not in ("id", "country")}
        ident: dict[str, Any] = CODE
    else:
        fields = {"count": INTEGER}
        ident = {"type": "string", "enum": ["Submissions" if "bucket" in chart.parameters else chart.name]}
    dataset = object_schema(
        {"id": ident, "data": {"type": "array", "items": object_schema({"at": at, **fields})}}
    )
    return object_schema(
        {
            "from": at,
            "to": at,
            "step": {"type": "string", "pattern": STEP_PATTERN},
            "datasets": {"type": "array", "items": dataset},
        }
    )


def _history(chart: Chart, params: list[dict[str, Any]]) -> dict[str, Any]:
    """The history's operation for `chart`: one minute (`at`, the chart's own body) or a series."""
    body = {"oneOf": [chart.schema, series_schema(chart)]}
    past = _get(
        f"{chart.title}, as shown at a past minute (at) or at every step from one to another (from, to, "
        "step): the history",
        body,
        [*_HISTORY, *params],
    )
    responses = past["get"]["responses"]
    responses["400"] = {
        **_ERROR,
        "description": "A parameter not written right; both at and from/to, or neither; to before from; "
        f"more than {MAX_POINTS:,} points",
    }
    responses["404"] = {
        **_ERROR,
        "description": "No such minute (or none of the series') in the history, or no history here",
    }
    return past


def history_path(chart: str) -> str:
    """Where the history answers `chart` (`GET /api/history/<chart>?at=`)."""
    return f"/api/history/{chart}"


def _live(hours: dict[str, Any]) -> dict[str, Any]:
    """The live route: server-sent events (api/live.py says what they carry)."""
    names = ",".join(chart.name for chart in REGISTRY)
    parameters = [
        {
            "name": "charts",
            "in": "query",
            "required": False,
            "description": f"Comma-separated chart names (absent: all of them: {names})",
            "schema": {"type": "string"},
        },
        {**_COUNTRIES, "description": "As on the charts; applies to each chart that takes it"},
        {**hours, "description": "As on the charts; applies to each chart that takes it"},
        {**_BUCKET, "description": "As on the charts; applies to each chart that takes it"},
        {
            "name": "since",
            "in": "query",
            "required": False,
            "description": "The id of the last event a client received (as Last-Event-ID): charts it "
            "holds are not sent again",
            "schema": {"type": "string"},
        },
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
    ]
    summary = (
        "Every chart asked for, as server-sent events: `chart` (a new body, byte for byte the chart "
        "route's, with its ETag, version and data age) as soon as it exists, `fresh` (the data's new "
        "age when nothing changed) at most every second, a comment after 15 s of silence"
    )
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "The stream (never ends by itself)",
                    "content": {"text/event-stream": {}},
                },
                "503": {"description": "No stream now: the cap, the route off, or direct mode (poll)"},
                "default": _ERROR,
            },
        }
    }


def openapi_document(version: str, traffic: bool = False, longest_hours: int = MAX_HOURS) -> dict[str, Any]:
    """The whole document (with the traffic routes when they are enabled; chart 2's `hours` up to
    `longest_hours`, more than memory holds where the history store answers the rest)."""
    paths: dict[str, Any] = {}
    hours = {**_HOURS, "schema": {**_HOURS["schema"], "maximum": longest_hours}}  # type: ignore[dict-item]
    for chart in REGISTRY:
        params = [hours if name == "hours" else _PARAMETERS[name] for name in chart.parameters]
        op = _get(f"{chart.title}: {chart.description}", chart.schema, params, headers=_DATA_HEADERS)
        op["get"]["responses"]["304"] = {"description": "Unchanged since the ETag sent in If-None-Match"}
        op["get"]["parameters"].append(
            {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
        )
        paths[chart.path] = op
        paths[history_path(chart.name)] = _history(chart, params)
    paths["/api/live"] = _live(hours)
    any_object = {"type": "object"}
    paths["/api/status"] = _get(
        "Per-source state, lag, rows and invalid values; snapshot version and age; the capture "
        "process (when separate); the settings in force (no secrets)",
        any_object,
        [],
    )
    paths["/api/health"] = _get(
        "ok when every source is streaming or polling and the capture process (if any) runs "
        "(else 503, degraded)",
        any_object,
        [],
    )
    paths["/api/health"]["get"]["responses"]["503"] = {
        "description": "Some source is neither streaming nor polling, or the capture process is down"
    }
    paths["/api/openapi.json"] = _get("This document", any_object, [])
    paths["/api"] = _get(
        "The index: every chart and country (as below) and links to the other routes (live: only "
        "where the live route takes streams; traffic: only when traffic controls are on)",
        any_object,
        [],
    )
    paths["/api/charts"] = _get(
        "Every chart: name, path, title, description, contract, parameters, per_country, columns",
        _CHART_INDEX,
        [],
    )
    paths["/api/countries"] = _get(
        "The PISA 2018 participants: code, name and ISO 3166 number (null: not an ISO country)",
        _COUNTRY_LIST,
        [],
    )
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics: per-source state, lag, changes, invalid values; request times",
            "responses": {
                "200": {"description": "The text exposition format", "content": {"text/plain": {}}},
                "default": _ERROR,
            },
        }
    }
    paths["/"] = {
        "get": {
            "summary": "The dashboard (HTML; its files are under /static/)",
            "responses": {
                "200": {"description": "The page", "content": {"text/html": {}}},
                "default": _ERROR,
            },
        }
    }
    components: dict[str, Any] = {}
    if traffic:
        paths.update(_traffic_paths())
        components = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    return {
        "openapi": "3.0.3",
        "components": components,
        "info": {
            "title": "pisa-pulse",
            "version": version,
            "description": "Live PISA 2018 charts, read-only.",
        },
        "paths": paths,
    }
