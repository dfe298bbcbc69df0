"""Traffic controls through the API: absent unless enabled, and then only with the token."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psycopg2
import pytest
from starlette.testclient import TestClient

from pisa_pulse.api.app import create_app
from pisa_pulse.api.direct import DirectSnapshots
from pisa_pulse.api.traffic import TOKEN_FILE, new_token, traffic_routes
from pisa_pulse.sources import control
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import LOCAL, BringUp, SharedServer


def test_without_the_switch_there_are_no_traffic_routes(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb", schema="slim", rows_per_country=10)
    with TestClient(create_app(DirectSnapshots(config.sources)), base_url=LOCAL) as client:
        for method in ("GET", "POST"):
            assert client.request(method, "/api/traffic").status_code in (404, 405)
        assert client.post("/api/traffic/empty", json={"country": "alb"}).status_code in (404, 405)
        assert not any("traffic" in path for path in client.get("/api/openapi.json").json()["paths"])
        assert "traffic" not in client.get("/api").json()  # so the dashboard shows no traffic panel
    with psycopg2.connect(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM responses")
        assert cur.fetchone()[0] == 10


def test_with_the_switch_every_change_needs_the_token(new_dir: Path, bring_up: BringUp) -> None:
    # Its own embedded cluster: `empty` truncates only those (a --dsn server's are refused).
    config = bring_up(new_dir, countries="alb,arg", schema="slim", rows_per_country=50)
    token = new_token(new_dir)
    assert (new_dir / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    traffic = Traffic(config, rate=50)
    stop = threading.Event()
    app = create_app(DirectSnapshots(config.sources), traffic_routes=traffic_routes(new_dir, token))
    with control.ControlEndpoint(traffic, new_dir), TestClient(app, base_url=LOCAL) as client:
        writer = threading.Thread(target=traffic.run, args=(stop,))
        writer.start()
        try:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token}):
                assert client.get("/api/traffic", headers=headers).status_code == 401
                assert client.post("/api/traffic", json={"rate": 5}, headers=headers).status_code == 401
                assert (
                    client.post("/api/traffic/empty", json={"country": "alb"}, headers=headers).status_code
                    == 401
                )
            assert traffic.rate == 50
            auth = {"Authorization": f"Bearer {token}"}
            assert client.get("/api").json()["traffic"] == "/api/traffic"
            status = client.get("/api/traffic", headers=auth).json()
            assert status["rate"] == 50 and sorted(status["countries"]) == ["alb", "arg"]
            assert client.post("/api/traffic", json={"rate": 7}, headers=auth).json()["rate"] == 7
            assert traffic.rate == 7
            assert (
                client.post("/api/traffic", json={"action": "pause"}, headers=auth).json()["paused"] is True
            )
            for bad in ({"rate": -1}, {"rate": "fast"}, {"action": "explode"}, [1, 2]):
                response = client.post("/api/traffic", json=bad, headers=auth)
                assert response.status_code == 400 and response.json()["error"]["status"] == 400
            for country in ("xx", "fra"):  # not a code; not one of the sources
                response = client.post("/api/traffic/empty", json={"country": country}, headers=auth)
                assert response.status_code == 400 and response.json()["error"]["status"] == 400
            assert client.post("/api/traffic/empty", json={"country": "ALB"}, headers=auth).json() == {
                "emptied": ["alb"]
            }
            paths = client.get("/api/openapi.json").json()["paths"]
            assert {"/api/traffic", "/api/traffic/empty"} <= set(paths)
        finally:
            stop.set()
            writer.join()
    counts = []
    for s in config.sources:
        with psycopg2.connect(s.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM responses")
            counts.append(cur.fetchone()[0])
    assert counts[0] == 0 and counts[1] >= 50


@pytest.mark.parametrize("body", [b"not json", b'{"country": 5}'])
def test_empty_rejects_bad_bodies(new_dir: Path, shared: SharedServer, body: bytes) -> None:
    config = shared.up(new_dir, countries="alb", schema="slim", rows_per_country=5)
    token = new_token(new_dir)
    app = create_app(DirectSnapshots(config.sources), traffic_routes=traffic_routes(new_dir, token))
    with TestClient(app, base_url=LOCAL) as client:
        response = client.post(
            "/api/traffic/empty", content=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 400


def test_empty_without_running_traffic_is_unavailable(new_dir: Path, shared: SharedServer) -> None:
    config = shared.up(new_dir, countries="alb", schema="slim", rows_per_country=5)
    token = new_token(new_dir)
    app = create_app(DirectSnapshots(config.sources), traffic_routes=traffic_routes(new_dir, token))
    with TestClient(app, base_url=LOCAL) as client:
        response = client.post(
            "/api/traffic/empty", json={"country": "alb"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 503 and "no traffic is running" in response.json()["error"]["message"]
    with psycopg2.connect(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM responses")
        assert cur.fetchone()[0] == 5  # the HTTP process itself never empties a source


def test_the_traffic_routes_need_neither_psycopg2_nor_numpy() -> None:
    code = "import sys, pisa_pulse.api.traffic; print([m for m in ('numpy', 'psycopg2') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
