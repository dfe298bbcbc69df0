"""The OpenAPI 3.0 document of every route (served at /api/openapi.json; the tests check it covers all)."""

from __future__ import annotations

from typing import Any

from pisa_pulse.api.charts import COUNTRIES_PATTERN, DEFAULT_HOURS, MAX_HOURS

_NUM = {"type": "number", "nullable": True}
_INT = {"type": "integer"}
_CODE = {"type": "string", "pattern": "^[A-Z]{3}$"}


def _datasets(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["datasets"],
        "additionalProperties": False,
        "properties": {"datasets": {"type": "array", "items": item}},
    }


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(properties),
        "additionalProperties": False,
        "properties": properties,
    }


CHART_SCHEMAS: dict[str, dict[str, Any]] = {
    "submissions": _object({"count": _INT}),
    "submissions-over-time": _datasets(
        _object(
            {
                "id": {"type": "string", "enum": ["Submissions"]},
                "data": {"type": "array", "items": _object({"x": {"type": "string"}, "y": _INT})},
            }
        )
    ),
    "early-education-and-belonging": _datasets(
        _object(
            {
                "id": _CODE,
                "data": {
                    "type": "array",
                    "items": _object(
                        {"x": {"type": "integer", "nullable": True}, "y": _NUM, "submissions": _INT}
                    ),
                },
            }
        )
    ),
    "escs": _datasets(_object({"id": _CODE, "value": _NUM})),
    "learning-hours-per-week": _datasets(
        _object({"country": _CODE, "hours": {"type": "integer", "nullable": True}})
    ),
    "performance": _datasets(
        _object({"id": _CODE, "reading": _NUM, "mathematics": _NUM, "science": _NUM, "submissions": _INT})
    ),
}

_SUMMARIES = {
    "submissions": "All submissions across all countries (chart 1)",
    "submissions-over-time": "Submissions per hour (or minute) of arrival, UTC (chart 2)",
    "early-education-and-belonging": "Mean DURECEC (years, integer) and BELONG per country (chart 3)",
    "escs": "Mean ESCS per country (chart 4)",
    "learning-hours-per-week": "round(mean TMINS / 60) per country (chart 5)",
    "performance": "Weighted mean reading, mathematics and science score per country (chart 6)",
}

_ERROR = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": _object(
                {"error": _object({"status": _INT, "message": {"type": "string"}})},
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
_DATA_HEADERS = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in (
        ("ETag", "Changes when the body does; send it back in If-None-Match for a 304"),
        ("X-Snapshot-Version", "The snapshot the body comes from"),
        ("X-Data-As-Of", "Every change committed in the sources before this time is in the body"),
        ("X-Data-Age-Ms", "Now minus X-Data-As-Of, in milliseconds"),
    )
}


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


def openapi_document(version: str, traffic: bool = False) -> dict[str, Any]:
    """The whole document (with the traffic routes when they are enabled)."""
    paths: dict[str, Any] = {}
    for name, schema in CHART_SCHEMAS.items():
        params = (
            [_COUNTRIES] if name in (set(CHART_SCHEMAS) - {"submissions", "submissions-over-time"}) else []
        )
        if name == "submissions-over-time":
            params = [_HOURS, _BUCKET]
        op = _get(_SUMMARIES[name], schema, params, headers=_DATA_HEADERS)
        op["get"]["responses"]["304"] = {"description": "Unchanged since the ETag sent in If-None-Match"}
        op["get"]["parameters"].append(
            {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
        )
        paths[f"/api/charts/{name}"] = op
    any_object = {"type": "object"}
    paths["/api/status"] = _get(
        "Per-source state, lag, rows and invalid values; snapshot version and age", any_object, []
    )
    paths["/api/health"] = _get(
        "ok when every source is streaming or polling (else 503, degraded)", any_object, []
    )
    paths["/api/health"]["get"]["responses"]["503"] = {
        "description": "Some source is neither streaming nor polling"
    }
    paths["/api/openapi.json"] = _get("This document", any_object, [])
    paths["/api"] = _get(
        "Links to every API route (traffic: only when traffic controls are on)", any_object, []
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
