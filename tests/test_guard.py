"""The API on a network (api/guard.py): the Host check, CORS per route, the headers, the metrics token.

In-process (starlette's TestClient), no server: the requests carry the Host header a browser would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pisa_pulse.api import settings
from pisa_pulse.api.app import create_app
from pisa_pulse.api.bodies import host_name
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import Secret
from tests.test_api import FixedSnapshots

CHART_ROUTES = ["/api", "/api/charts", "/api/charts/escs", "/api/countries", "/api/openapi.json"]
PRIVATE_ROUTES = ["/api/status", "/api/health", "/metrics"]


def _settings(**server: object) -> settings.Settings:
    source = settings.Source("alb", "postgresql://u@db/alb")
    return settings.Settings((source,), "replication", Path("."), server=settings.ServerSettings(**server))


def _client(base: str = "http://127.0.0.1:8000", **server: object) -> TestClient:
    app = create_app(FixedSnapshots({"state": "running"}), settings=_settings(**server))
    return TestClient(app, base_url=base)


def _rejected(client: TestClient) -> float:
    text = client.get("/metrics", headers={"Host": "127.0.0.1"}).text
    [line] = [line for line in text.splitlines() if line.startswith("pisa_pulse_rejected_hosts_total")]
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8000", "127.0.0.1"), ("LocalHost", "localhost"), ("[::1]:9", "::1"), ("::1", "::1")],
)
def test_host_names_lose_their_port_and_brackets(header: str, name: str) -> None:
    assert host_name(header) == name


def test_loopback_names_are_served_and_any_other_host_is_refused_and_counted() -> None:
    with _client() as client:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
            assert client.get("/api/charts/escs", headers={"Host": host}).status_code == 200, host
        assert _rejected(client) == 0
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
            answer = client.get("/api/charts/escs", headers={"Host": host})
            assert answer.status_code == 400, host
            message = answer.json()["error"]["message"]
            assert "server.allowed_hosts" in message and "settings" in message
        assert _rejected(client) == 4


def test_the_names_configured_and_the_address_listened_on_are_served() -> None:
    with _client(host="10.1.2.3", allowed_hosts=("pisa.example.org",)) as client:
        for host, status in (("pisa.example.org", 200), ("10.1.2.3:8000", 200), ("127.0.0.1", 400)):
            assert client.get("/api/countries", headers={"Host": host}).status_code == status, host
    with _client(host="0.0.0.0", allowed_hosts=("*",)) as client:
        assert client.get("/api/countries", headers={"Host": "anything.example"}).status_code == 200


@pytest.mark.parametrize("route", CHART_ROUTES + PRIVATE_ROUTES)
def test_cors_only_on_the_chart_routes(route: str) -> None:
    with _client() as client:
        answer = client.get(route, headers={"Origin": "https://elsewhere.example"})
        preflight = client.options(
            route,
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
        )
    assert answer.status_code == 200
    if route in CHART_ROUTES:
        assert answer.headers["access-control-allow-origin"] == "*"
        if route == "/api/charts/escs":
            assert "X-Data-Age-Ms" in answer.headers["access-control-expose-headers"]
        assert preflight.status_code == 200 and "GET" in preflight.headers["access-control-allow-methods"]
    else:
        assert "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize("route", ["/", "/api/charts/escs", "/api/status", "/api/charts/nope", "/static/x"])
def test_every_answer_carries_nosniff_and_the_content_security_policy(route: str) -> None:
    with _client(chart_origins=("https://pisa.example.org", "http://10.0.0.5:8000")) as client:
        answer = client.get(route)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    policy = dict(part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";"))
    assert policy["connect-src"] == "'self' https://pisa.example.org http://10.0.0.5:8000"
    assert policy["script-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'" and policy["default-src"] == "'self'"


def test_metrics_needs_the_token_when_one_is_set() -> None:
    with _client(metrics_token_env="METRICS_TOKEN", metrics_token=Secret("tok-123456")) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = client.get("/metrics", headers={"Authorization": "Bearer tok-123456"})
        assert good.status_code == 200 and "pisa_pulse_source_up" in good.text
        assert "tok-123456" not in client.get("/api/status").text


SOURCE = '[[sources]]\nname = "alb"\ndsn = "postgresql://u@db/alb"\n'


def test_the_network_settings_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISA_METRICS", "m-token-1")
    path = tmp_path / "s.toml"
    path.write_text(
        '[server]\nallowed_hosts = ["pisa.example.org"]\nchart_origins = ["https://b.example/"]\n'
        'metrics_token_env = "PISA_METRICS"\n' + SOURCE
    )
    server = settings.load(path).server
    assert server.allowed_hosts == ("pisa.example.org",) and server.chart_origins == ("https://b.example",)
    assert server.metrics_token is not None and server.metrics_token.reveal() == "m-token-1"
    assert "m-token-1" not in repr(server)
    assert settings.load(tmp_path / "s.toml").server.metrics_token_env == "PISA_METRICS"


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ('allowed_hosts = "pisa.example.org"', "server.allowed_hosts = 'pisa.example.org' is not a list"),
        ("allowed_hosts = [1]", "is not a list of strings"),
        (
            'chart_origins = ["https://b.example/charts"]',
            "'https://b.example/charts', which is not an origin",
        ),
        ('chart_origins = ["b.example"]', "which is not an origin"),
        ('metrics_token_env = "PISA_NOT_SET_ANYWHERE"', "PISA_NOT_SET_ANYWHERE, which is not set"),
    ],
)
def test_bad_network_settings_are_named(tmp_path: Path, server: str, problem: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f"[server]\n{server}\n" + SOURCE)
    with pytest.raises(PisaPulseError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        settings.load(path)
