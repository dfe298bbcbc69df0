"""The chart API in-process (starlette's TestClient) over a live pipeline on real PostgreSQL.

Contract tests: every chart's exact JSON shape and number types, `countries` parsing, ETag/304, the one
error shape on every route, CORS, freshness headers, and an OpenAPI document that covers every route.
Then, over an in-test `Snapshots` (no server): a separate capture process in /api/status, /api/health
and /metrics; the settings echo without secrets; HTTP errors as types carrying their status.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from pisa_pulse.api import charts, settings
from pisa_pulse.api.app import create_app
from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.api.exceptions import (
    BadRequest,
    HttpError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from pisa_pulse.api.openapi import history_path
from pisa_pulse.api.settings import Settings
from pisa_pulse.api.snapshots import LiveSnapshots
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import lifecycle
from pisa_pulse.sources.databases import connected
from tests.conftest import LOCAL, wait_for

COUNTRIES = ("ALB", "ARG", "AUS")


@pytest.fixture(scope="module")
def sources(scratch: Path) -> cfg.SourcesConfig:
    return lifecycle.up(
        lifecycle.UpRequest(
            data_dir=scratch / "api", countries="alb,arg,aus", schema="slim", rows_per_country=200
        )
    )


@pytest.fixture(scope="module")
def client(sources: cfg.SourcesConfig, scratch: Path) -> Iterator[TestClient]:
    snapshots = LiveSnapshots(Settings(sources.sources, "replication", scratch / "api-state", "api_test"))
    with TestClient(create_app(snapshots), base_url=LOCAL) as client:
        wait_for(
            lambda: (
                {s["state"] for s in client.get("/api/status").json()["sources"]} == {"streaming"}
                and client.get("/api/charts/submissions").json()["count"] == 600
            ),
            timeout=90,
            what="the three sources copied and streaming",
            detail=lambda: client.get("/api/status").json(),
        )
        yield client


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def test_submissions_is_the_count_of_every_row(client: TestClient) -> None:
    body = client.get("/api/charts/submissions").json()
    assert body.keys() == {"count"} and is_int(body["count"]) and body["count"] == 600


def test_submissions_over_time_has_one_point_per_hour(client: TestClient) -> None:
    body = client.get("/api/charts/submissions-over-time?hours=5").json()
    [dataset] = body["datasets"]
    assert body.keys() == {"datasets"} and dataset.keys() == {"id", "data"} and dataset["id"] == "Submissions"
    assert len(dataset["data"]) == 5
    assert all(p.keys() == {"x", "y"} and is_int(p["y"]) for p in dataset["data"])
    hour = time.gmtime().tm_hour
    assert dataset["data"][-1]["x"] == f"{hour:02d}:00"
    url = "/api/charts/submissions-over-time?bucket=minute&hours=2"
    minutes = client.get(url).json()["datasets"][0]["data"]
    assert len(minutes) == 120 and all(re.fullmatch(r"\d\d:\d\d", p["x"]) for p in minutes)
    assert len({p["x"] for p in minutes}) == 120  # 120 distinct consecutive minutes
    default = client.get("/api/charts/submissions-over-time?bucket=minute").json()["datasets"][0]["data"]
    assert len(default) == 60


def test_per_country_charts_have_their_exact_shapes(client: TestClient) -> None:
    q = "?countries=ALB,ARG,AUS"
    eb = client.get("/api/charts/early-education-and-belonging" + q).json()
    assert [d["id"] for d in eb["datasets"]] == list(COUNTRIES)
    for d in eb["datasets"]:
        assert d.keys() == {"id", "data"}
        [point] = d["data"]
        assert point.keys() == {"x", "y", "submissions"}
        assert is_int(point["x"]) and isinstance(point["y"], float) and point["submissions"] == 200
    escs = client.get("/api/charts/escs" + q).json()
    assert all(d.keys() == {"id", "value"} and isinstance(d["value"], float) for d in escs["datasets"])
    hours = client.get("/api/charts/learning-hours-per-week" + q).json()
    assert all(d.keys() == {"country", "hours"} and is_int(d["hours"]) for d in hours["datasets"])
    assert all(10 <= d["hours"] <= 60 for d in hours["datasets"])  # PISA's typical week
    perf = client.get("/api/charts/performance" + q).json()
    for d in perf["datasets"]:
        assert d.keys() == {"id", "reading", "mathematics", "science", "submissions"}
        assert all(
            isinstance(d[k], float) and 300 < d[k] < 650 for k in ("reading", "mathematics", "science")
        )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ALB,ARG", ["ALB", "ARG"]),
        (" alb , Arg ", ["ALB", "ARG"]),
        ("alb+,+arg", ["ALB", "ARG"]),  # '+' is a blank in a query string
        ("aus,alb", ["AUS", "ALB"]),  # the order asked
        ("ALB,XYZ,FRA", ["ALB"]),  # unknown codes and countries without rows are left out
        ("alb,ALB", ["ALB"]),
        (None, ["ALB", "ARG", "AUS"]),  # absent: every country with rows
    ],
)
def test_countries_parameter(client: TestClient, raw: str | None, expected: list[str]) -> None:
    url = "/api/charts/escs" + ("" if raw is None else f"?countries={raw}")
    response = client.get(url)
    assert response.status_code == 200
    assert [d["id"] for d in response.json()["datasets"]] == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "AL",
        "ALB,,ARG",
        "ALB;ARG",
        "AB1",
        "ALBARG",
        "ALB,",
        "A L B",
        "%C3%9A",  # unicode
        "ALB'%3B%20DROP%20TABLE%20responses%3B--",  # SQL injection attempt
        "%00ALB",
        "ALB," * 12_000 + "X",  # 48 KB
    ],
)
def test_malformed_countries_are_a_400_in_the_error_shape(client: TestClient, raw: str) -> None:
    response = client.get(f"/api/charts/performance?countries={raw}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        error.keys() == {"status", "message"} and error["status"] == 400 and "countries" in error["message"]
    )
    assert len(error["message"]) < 1000  # a huge input is not echoed whole


def test_unchanged_chart_answers_304_and_a_change_makes_a_new_etag(
    client: TestClient, sources: cfg.SourcesConfig
) -> None:
    first = client.get("/api/charts/submissions")
    etag = first.headers["etag"]
    again = client.get("/api/charts/submissions", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    for header in (f'"other", {etag}', "*"):
        assert client.get("/api/charts/submissions", headers={"If-None-Match": header}).status_code == 304
    assert client.get("/api/charts/submissions", headers={"If-None-Match": '"other"'}).status_code == 200
    with connected(sources.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO responses (id, cnt) VALUES (7, 'ALB')")
    try:
        wait_for(
            lambda: client.get("/api/charts/submissions").json()["count"] != first.json()["count"],
            what="the new row in the chart",
        )
        changed = client.get("/api/charts/submissions", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
    finally:
        with connected(sources.sources[0].dsn) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM responses WHERE id = 7")


def test_responses_say_which_snapshot_and_how_fresh(client: TestClient) -> None:
    def fresh() -> dict[str, str] | None:
        headers = dict(client.get("/api/charts/escs").headers)
        age = headers["x-data-age-ms"]
        return headers if age.isdigit() and int(age) < 1000 else None

    # Idle sources answer pings, so the data is fresh (under a second old) without any change.
    headers = wait_for(fresh, what="an answer with data under a second old")
    assert int(headers["x-snapshot-version"]) >= 0
    as_of = datetime.fromisoformat(headers["x-data-as-of"].replace("Z", "+00:00")).timestamp()
    assert abs(as_of - time.time()) < 5
    assert headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/api/charts/nothing", 404),
        ("POST", "/api/charts/escs", 405),
        ("DELETE", "/api/status", 405),
        ("GET", "/api/charts/submissions-over-time?hours=0", 400),
        ("GET", "/api/charts/submissions-over-time?hours=721", 400),  # past the retention
        ("GET", "/api/charts/submissions-over-time?bucket=week", 400),
    ],
)
def test_every_error_has_one_shape(client: TestClient, method: str, url: str, status: int) -> None:
    response = client.request(method, url)
    assert response.status_code == status
    assert response.json() == {"error": {"status": status, "message": response.json()["error"]["message"]}}
    assert response.json()["error"]["message"]


def test_cors_allows_get_from_any_origin(client: TestClient) -> None:
    response = client.get("/api/charts/escs", headers={"Origin": "https://dashboard.example.org"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "etag" in response.headers["access-control-expose-headers"].lower()
    preflight = client.options(
        "/api/charts/escs",
        headers={"Origin": "https://x.example.org", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200


def served_paths(app: Starlette) -> set[str]:
    """The app's routes (the static files' mount aside), `{chart}` filled in with every chart."""
    paths = {route.path for route in app.routes if isinstance(route, Route)}
    charts_route, history_route = "/api/charts/{chart}", "/api/history/{chart}"
    assert {charts_route, history_route} <= paths
    filled = {c.path for c in charts.REGISTRY} | {history_path(c.name) for c in charts.REGISTRY}
    return (paths - {charts_route, history_route}) | filled


def test_openapi_documents_every_route_and_every_chart(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    documented = set(doc["paths"])
    assert isinstance(client.app, Starlette)
    assert documented == served_paths(client.app)
    for path in documented - {"/api/live"}:  # a stream, which TestClient cannot end (test_live.py)
        answer = client.get(path)
        if path.startswith("/api/history/"):  # ?at= missing (400), or no history kept here (404)
            message = answer.json()["error"]["message"]
            assert (answer.status_code, "at is missing" in message or "no history" in message) in {
                (400, True),
                (404, True),
            }, path
        else:
            assert answer.status_code == 200, path


def test_status_and_health(client: TestClient) -> None:
    status = client.get("/api/status").json()
    assert status["mode"] == "replication" and status["snapshot"]["submissions"] >= 600
    assert {s["source"] for s in status["sources"]} == {"alb", "arg", "aus"}
    for s in status["sources"]:
        assert s["state"] == "streaming" and s["rows"] >= 200 and s["lag_ms"] is not None
    health = client.get("/api/health").json()
    assert health == {
        "status": "ok",
        "sources": 3,
        "healthy": 3,
        **({"capture": "running"} if "capture" in health else {}),
    }
    if "capture" in status:  # capture runs in a process of its own
        assert status["capture"]["state"] == "running" and status["capture"]["pid"] > 0


def test_metrics_for_prometheus(client: TestClient) -> None:
    client.get("/api/charts/escs")
    client.get("/api/charts/nope")
    text = client.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    for source in ("alb", "arg", "aus"):
        assert samples[f'pisa_pulse_source_up{{mode="replication",source="{source}"}}'] == 1.0
        assert samples[f'pisa_pulse_source_rows{{source="{source}"}}'] >= 200
        assert f'pisa_pulse_changes_applied_total{{source="{source}"}}' in samples
    assert (
        samples['pisa_pulse_http_request_duration_seconds_count{route="/api/charts/escs",status="200"}'] >= 1
    )
    assert (
        samples['pisa_pulse_http_request_duration_seconds_count{route="/api/charts/other",status="404"}'] >= 1
    )
    assert samples["pisa_pulse_snapshot_build_seconds_count"] >= 1
    assert 0 <= samples["pisa_pulse_snapshot_age_seconds"] < 60


class FixedSnapshots:
    """A `Snapshots` of fixed (empty) aggregates, sources in given states and a capture process in a
    given state: what the API makes of them needs no server."""

    mode = "replication"
    history = None  # no history store

    def __init__(self, capture: dict[str, Any] | None, states: tuple[str, ...] = ("streaming", "polling")):
        self.observe_build: Callable[[float], None] | None = None
        self.on_change: Callable[[], None] | None = None  # never told: nothing changes
        self.states = states
        self.process = capture
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot:
        return Snapshot(7, Aggregates(), 1000.0)

    def status(self) -> list[dict[str, Any]]:
        return [
            {"source": f"s{i}", "mode": "replication", "state": state, "changes": 0}
            for i, state in enumerate(self.states)
        ]

    def data_as_of(self) -> float | None:
        return 1000.0

    def capture(self) -> dict[str, Any] | None:
        return self.process


def metric_samples(text: str) -> dict[str, float]:
    return {
        name: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for name, value in [line.rsplit(" ", 1)]
    }


@pytest.mark.parametrize(
    ("capture", "health", "up"),
    [
        (None, 200, None),
        ({"state": "running", "pid": 123, "restarts": 2, "last_exit": "killed by signal 9"}, 200, 1.0),
        ({"state": "restarting", "pid": None, "restarts": 3, "backoff_s": 2.0}, 503, 0.0),
        (
            {"state": "crashing", "pid": None, "restarts": 9, "last_exit": "exit 1", "backoff_s": 10.0},
            503,
            0.0,
        ),
    ],
)
def test_a_separate_capture_process_shows_in_status_health_and_metrics(
    capture: dict[str, Any] | None, health: int, up: float | None
) -> None:
    snapshots = FixedSnapshots(capture)
    with TestClient(create_app(snapshots, clock=lambda: 1000.5), base_url=LOCAL) as client:
        assert snapshots.started
        status = client.get("/api/status").json()
        answer = client.get("/api/health")
        samples = metric_samples(client.get("/metrics").text)
    assert snapshots.stopped
    assert status.get("capture") == capture and ("capture" in status) == (capture is not None)
    assert answer.status_code == health
    expected = {"status": "ok" if health == 200 else "degraded", "sources": 2, "healthy": 2}
    if capture is not None:
        expected["capture"] = capture["state"]
    assert answer.json() == expected
    assert samples.get("pisa_pulse_capture_up") == up
    restarts = samples.get("pisa_pulse_capture_restarts_total")
    assert restarts == (None if capture is None else capture["restarts"])


def test_a_source_out_of_step_makes_health_degraded_whatever_the_capture() -> None:
    snapshots = FixedSnapshots({"state": "running", "restarts": 0}, states=("streaming", "reconnecting"))
    with TestClient(create_app(snapshots), base_url=LOCAL) as client:
        answer = client.get("/api/health")
    assert answer.status_code == 503
    assert answer.json() == {"status": "degraded", "sources": 2, "healthy": 1, "capture": "running"}


def test_status_echoes_the_settings_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = "pa:ss@w0rd-9f3"
    monkeypatch.setenv("ALB_SECRET_VARIABLE", password)
    path = tmp_path / "settings.toml"
    path.write_text(
        "[server]\nport = 9100\n[capture]\nmode = 'poll'\npoll_interval = 0.5\n"
        '[[sources]]\nname = "alb"\ndsn = "postgresql://reader@db.example.org/alb?sslmode=require"\n'
        'password_env = "ALB_SECRET_VARIABLE"\n'
        '[[sources]]\nname = "arg"\ndsn = "postgresql://u:inline-pw@db.example.org/arg?password=query-pw"\n'
        '[history]\nstore = "postgresql://analyst:history-pw@warehouse.example.org/pisa"\n'
    )
    loaded = settings.load(path)
    # The driver gets each password apart from its DSN ...
    assert [s.password and s.password.reveal() for s in loaded.sources] == [password, "query-pw"]
    with TestClient(create_app(FixedSnapshots(None), settings=loaded), base_url=LOCAL) as client:
        answer = client.get("/api/status")
    echoed = answer.json()["settings"]
    for text in (answer.text, repr(loaded), str(loaded), repr(loaded.sources)):  # ... nothing shows it
        for secret in (
            "pa%3Ass%40w0rd",
            "w0rd-9f3",
            "inline-pw",
            "query-pw",
            "ALB_SECRET_VARIABLE",
            "history-pw",
        ):
            assert secret not in text
    # Every setting of the table but the hidden ones, with the values in force.
    shown = {row.name for row in settings.SETTINGS if row.echo != "hidden"}
    assert {f"{t}.{k}" for t in ("server", "capture", "publish", "history") for k in echoed[t]} | {
        f"sources[].{k}" for k in echoed["sources"][0]
    } == shown
    assert echoed["server"]["port"] == 9100 and echoed["capture"]["mode"] == "poll"
    assert echoed["capture"]["poll_interval"] == 0.5 and echoed["capture"]["reconcile_interval"] == 30
    assert echoed["sources"][0] == {
        "name": "alb",
        "dsn": "postgresql://reader@db.example.org/alb?sslmode=require",
        "mode": "poll",
    }
    assert echoed["sources"][1]["dsn"] == "postgresql://u@db.example.org/arg"


@pytest.mark.parametrize("error", [BadRequest, Unauthorized, NotFound, MethodNotAllowed, ServiceUnavailable])
def test_http_errors_carry_their_status_into_the_one_shape(error: type[HttpError]) -> None:
    async def failing(request: Request) -> Response:
        raise error("something is wrong", "do this instead")

    app = create_app(FixedSnapshots(None), traffic_routes=[Route("/api/failing", failing)])
    with TestClient(app, base_url=LOCAL) as client:
        answer = client.get("/api/failing")
    assert answer.status_code == error.status
    assert answer.json() == {
        "error": {"status": error.status, "message": "something is wrong; do this instead"}
    }
