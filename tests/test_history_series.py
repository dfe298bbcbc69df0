"""The history's series (`/api/history/<chart>?from=&to=&step=`, history/query.py) on both back ends:
each point is what `?at=` answers for its minute (each source as of its newest minute, sparse sources
included), with the steps and the range's ends where they fall; points outside the store's span are
left out and a series without any is a 404; chart 2's points count the rows that arrived in their
step; a week of points reads the store in one statement, not one per point; the bodies are what the
OpenAPI document says; and a request that asks both or neither, a bad step or too many points is a 400
naming the fix. Over HTTP: test_history.py."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pisa_pulse.api import charts
from pisa_pulse.api.exceptions import BadRequest, NotFound
from pisa_pulse.api.openapi import history_path, openapi_document
from pisa_pulse.history import query
from pisa_pulse.history.query import MAX_POINTS, SeriesRange, chart_at, iso_minute, parse_asked, series
from pisa_pulse.history.store import CountryMinute, Store
from tests.conftest import SharedServer
from tests.test_history_store import totals

M = 29_940_000  # 2026-12-04T16:00Z
# minute, source, {country: (rows, scale of its sums, arrivals)}: sparse, as `sync --once` writes
WRITES: list[tuple[int, str, dict[str, tuple[int, int, int]]]] = [
    (M, "alb", {"ALB": (10, 1, 2)}),
    (M + 1, "arg", {"ARG": (20, 2, 3), "AUS": (5, 1, 1)}),
    (M + 2, "bel", {"BEL": (3, 5, 3)}),  # never written again: shown as of M + 2 to the end
    (M + 3, "alb", {"ALB": (12, 7, 2)}),
    (M + 4, "aus", {"AUS": (7, 3, 7)}),  # a country in two sources: summed
    (M + 5, "arg", {"ARG": (22, 2, 2)}),  # its AUS withdrawn
    (M + 9, "alb", {}),  # emptied
]
SPAN = (M, M + 9)
RANGES = [(M - 3, M + 12, 1), (M, M + 9, 2), (M + 1, M + 8, 3), (M + 4, M + 4, 1), (M - 100, M + 100, 7)]


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.server)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store of each back end holding `WRITES`."""
    if request.param == "duckdb":
        target = f"duckdb:{tmp_path / 'history.duckdb'}"
    else:
        shared: SharedServer = request.getfixturevalue("shared")
        target = shared.create_database("history")
    opened = Store.open(target, tmp_path)
    try:
        for minute, source, countries in WRITES:
            entries = {
                c: CountryMinute(totals(rows, scale), arrivals)
                for c, (rows, scale, arrivals) in countries.items()
            }
            opened.write_minute(minute, source, entries)
        yield opened
    finally:
        opened.close()


def asked(first: int, last: int, step: int | str) -> SeriesRange:
    text = f"{step}m" if isinstance(step, int) else step
    return parse_asked({"from": iso_minute(first), "to": iso_minute(last), "step": text})


def answers_at(
    store: Store, chart: charts.Chart, minutes: range, params: Mapping[str, str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset id, time) -> what `?at=` shows for it at each minute the store answers."""
    shown = {}
    for minute in minutes:
        try:
            body = chart_at(store, chart, minute, params)
        except NotFound:
            continue
        at = {"at": iso_minute(minute)}
        if not chart.per_country:
            shown[(chart.name, at["at"])] = at | body
            continue
        for entry in body["datasets"]:
            code = entry.get("id") or entry["country"]
            shown[(code, at["at"])] = at | {k: v for k, v in entry.items() if k not in ("id", "country")}
    return shown


@pytest.mark.parametrize("name", [c.name for c in charts.REGISTRY if "bucket" not in c.parameters])
def test_each_point_is_what_at_answers_for_its_minute(store: Store, name: str) -> None:
    chart = charts.BY_NAME[name]
    for first, last, step in RANGES:
        for params in ({}, {"countries": "aus, ALB,xyz"}) if chart.per_country else ({},):
            body = series(store, chart, asked(first, last, step), params)
            assert (body["from"], body["to"], body["step"]) == (
                iso_minute(first),
                iso_minute(last),
                f"{step}m",
            )
            points = {(d["id"], p["at"]): p for d in body["datasets"] for p in d["data"]}
            expected = answers_at(store, chart, range(first, last + 1, step), params)
            assert json.dumps(sorted(points.items())) == json.dumps(sorted(expected.items())), (first, step)
            ids = [d["id"] for d in body["datasets"]]
            if chart.per_country:  # in the order the chart lists them: as asked, or by code
                assert ids == (["AUS", "ALB"] if params else sorted(ids)), ids
            for dataset in body["datasets"]:
                assert [p["at"] for p in dataset["data"]] == sorted(p["at"] for p in dataset["data"])


def test_points_fall_on_the_steps_and_those_outside_the_span_are_left_out(store: Store) -> None:
    submissions = charts.BY_NAME["submissions"]

    def times(first: int, last: int, step: int | str) -> list[str]:
        return [
            p["at"] for p in series(store, submissions, asked(first, last, step), {})["datasets"][0]["data"]
        ]

    assert times(M - 3, M + 12, 1) == [iso_minute(m) for m in range(M, M + 10)]
    assert times(M - 1, M + 12, 2) == [iso_minute(m) for m in (M + 1, M + 3, M + 5, M + 7, M + 9)]
    assert times(M + 2, M + 6, 2) == [iso_minute(m) for m in (M + 2, M + 4, M + 6)]  # `to` on a step
    assert times(M + 2, M + 7, 2) == [iso_minute(m) for m in (M + 2, M + 4, M + 6)]  # `to` between steps
    assert times(M + 9, M + 9, 1) == times(M + 9, M + 60, "1h") == [iso_minute(M + 9)]
    assert times(M, M + 9, "99999d") == [iso_minute(M)]
    counts = [p["count"] for p in series(store, submissions, asked(M, M + 9, 1), {})["datasets"][0]["data"]]
    assert counts == [10, 35, 38, 40, 47, 44, 44, 44, 44, 32]  # as of each source's newest minute
    for first, last, step in [(M - 10, M - 1, 1), (M + 10, M + 20, 1), (M - 5, M + 20, 30)]:
        with pytest.raises(NotFound, match="holds no minute"):
            series(store, submissions, asked(first, last, step), {})


def test_chart_2s_points_count_the_rows_that_arrived_in_their_step(store: Store) -> None:
    over_time = charts.BY_NAME["submissions-over-time"]
    arrived: dict[int, int] = {}
    for minute, _, countries in WRITES:
        arrived[minute] = arrived.get(minute, 0) + sum(n for _, _, n in countries.values())
    for first, last, step in [*RANGES, (M, M + 9, 99_999 * 1440)]:
        body = series(store, over_time, asked(first, last, step), {"hours": "2", "bucket": "minute"})
        [dataset] = body["datasets"]
        assert dataset["id"] == "Submissions"
        expected = [
            {"at": iso_minute(p), "count": sum(n for m, n in arrived.items() if p - step < m <= p)}
            for p in range(first, last + 1, step)
            if SPAN[0] <= p <= SPAN[1]
        ]
        assert dataset["data"] == expected, (first, step)
    with pytest.raises(BadRequest, match="hours="):  # its own parameters are checked as ?at= checks them
        series(store, over_time, asked(M, M + 9, 1), {"hours": "0"})


def json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema (`nullable` as a null type)."""
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: json_schema(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable"):
        result["type"] = [schema["type"], "null"]
    return result


@pytest.mark.parametrize("chart", charts.REGISTRY, ids=lambda c: c.name)
def test_series_and_at_bodies_are_what_the_openapi_document_says(store: Store, chart: charts.Chart) -> None:
    operation = openapi_document("test")["paths"][history_path(chart.name)]["get"]
    answer = json_schema(operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert {p["name"] for p in operation["parameters"]} >= {"at", "from", "to", "step"}
    assert {"400", "404"} <= set(operation["responses"])
    jsonschema.validate(series(store, chart, asked(M - 1, M + 9, 2), {}), answer)  # one of the two
    jsonschema.validate(chart_at(store, chart, M + 4, {}), answer)
    with pytest.raises(jsonschema.ValidationError):  # the series' schema is not a loose one
        jsonschema.validate(
            {"from": iso_minute(M), "to": iso_minute(M), "step": "1h", "datasets": [{}]}, answer
        )


def test_a_store_without_minutes_answers_404(tmp_path: Path) -> None:
    empty = Store.open("duckdb", tmp_path)
    try:
        with pytest.raises(NotFound, match="holds no minute"):
            series(empty, charts.BY_NAME["escs"], asked(M, M + 60, 1), {})
    finally:
        empty.close()


def test_a_week_of_points_reads_the_store_in_a_few_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open("duckdb", tmp_path)
    try:
        for i, minute in enumerate(range(M, M + 7 * 1440, 97)):  # three sources, each every 97 minutes
            for k, source in enumerate(("alb", "arg", "aus")):
                entry = CountryMinute(totals(10 + i + k, 1 + (i + k) % 5), arrivals=1 + k)
                store.write_minute(minute + 31 * k, source, {source.upper(): entry})
        week = asked(M, M + 7 * 1440 - 1, "1h")
        statements: list[str] = []
        run = store._run
        monkeypatch.setattr(store, "_run", lambda sql, params=(): statements.append(sql) or run(sql, params))
        body = series(store, charts.BY_NAME["performance"], week, {})
        assert len(statements) <= 3, statements  # the span and the changes
        statements.clear()
        over_time = series(store, charts.BY_NAME["submissions-over-time"], week, {})
        assert len(statements) <= 3 and sum(p["count"] for p in over_time["datasets"][0]["data"]) > 0
        monkeypatch.undo()
        assert [len(d["data"]) for d in body["datasets"]] == [168, 167, 166]  # ARG, AUS: from M + 31, M + 62
        sample = range(M + 61 * 60, M + 7 * 1440, 29 * 60)
        shown = answers_at(store, charts.BY_NAME["performance"], sample, {})
        points = {(d["id"], p["at"]): p for d in body["datasets"] for p in d["data"]}
        assert shown and all(points[key] == value for key, value in shown.items())
    finally:
        store.close()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"at": "2026-12-02T12:00Z", "from": "2026-12-02T10:00Z"}, "at and from/to are both given"),
        ({}, "at is missing, and from and to are not both given"),
        ({"from": "2026-12-02T10:00Z"}, "at is missing, and from and to are not both given"),
        ({"from": "2026-12-02T10:00Z", "to": "2026-12-02T09:59Z"}, "to=2026-12-02T09:59Z is before from"),
        ({"from": "2026-12-02T10:00Z", "to": "2026-12-02T12:00Z", "step": "0h"}, "step='0h' is not"),
        ({"from": "2026-12-02T10:00Z", "to": "2026-12-02T12:00Z", "step": "1w"}, "step='1w' is not"),
        ({"at": "2026-12-02T10:00Z", "step": "1 h"}, "step='1 h' is not"),
        ({"from": "noon", "to": "2026-12-02T12:00Z"}, "from='noon' is not an ISO 8601 time"),
        ({"from": "2026-12-01T00:00Z", "to": "2026-12-08T00:00Z", "step": "1m"}, "10,081 points, more than"),
    ],
)
def test_a_request_that_asks_wrong_is_a_400_naming_the_fix(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        parse_asked(params)
    assert info.value.status == 400 and info.value.fix


def test_what_a_request_asks_is_parsed_from_its_times_and_step() -> None:
    assert parse_asked({"at": "2026-12-04T16:00:59Z", "step": "5m"}) == M  # step beside at: checked, unused
    assert parse_asked({"from": "2026-12-04T17:00+01:00", "to": "2026-12-04T16:30"}) == SeriesRange(
        M, M + 30, 60, "1h"
    )
    assert parse_asked({"from": iso_minute(M), "to": iso_minute(M + 3 * 1440), "step": "2d"}).step == 2880
    most = parse_asked({"from": iso_minute(M), "to": iso_minute(M + MAX_POINTS - 1), "step": "1m"})
    assert len(most.points_within((M, M + MAX_POINTS))) == MAX_POINTS
    with pytest.raises(NotFound, match="names no moment"):  # written right, outside the calendar in UTC
        parse_asked({"from": "0001-01-01T00:00+01:00", "to": "2026-12-04T16:00Z"})
    assert query.iso_minute(M) == "2026-12-04T16:00Z"
