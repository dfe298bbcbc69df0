"""The dashboard on the live route (web/static/js/live.js) in a real headless Chromium.

One set of real sources and one `pisa-pulse serve` with the route on (its default) serve the module:

- the page opens one stream for all its charts, draws every chart from it and polls none of them
  (the status strip still polls);
- a committed row reaches the page on the stream, with no poll;
- where the route is absent (404, as on another server) the page polls every chart, once a second;
- a chart whose URL the endpoint settings point elsewhere polls there, the others stay on the stream.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Route

from pisa_pulse.api.charts import CHARTS
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.databases import connected
from tests.conftest import Server, serving, share_of, wait_for
from tests.test_dashboard import (
    Foreign,
    Tab,
    browser,  # noqa: F401  (a fixture)
    count_shown,
    foreign,  # noqa: F401  (a fixture)
    open_tab,
    page_pause,
    polled_at_least,
    wait_for_data,
    wait_streaming,
)

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def sources(scratch: Path, shared_cluster: EmbeddedCluster) -> Iterator[tuple[cfg.SourcesConfig, Path]]:
    data_dir = Path(tempfile.mkdtemp(prefix="dashboard-live-", dir=scratch)) / "data"
    with share_of(shared_cluster) as share:
        yield share.up(data_dir, countries="alb,arg", schema="slim", rows_per_country=100), data_dir


@pytest.fixture(scope="module")
def server(sources: tuple[cfg.SourcesConfig, Path], foreign: Foreign) -> Iterator[Server]:  # noqa: F811
    with cfg.config_path(sources[1]).open("a", encoding="utf-8") as settings:
        settings.write(f'\n[server]\nchart_origins = ["{foreign.origin(0)}"]\n')
    with serving("--data-dir", str(sources[1])) as live:
        wait_streaming(live)
        yield live


@pytest.fixture
def tab(browser, server: Server) -> Iterator[Tab]:  # noqa: F811
    opened = open_tab(browser, server.url)
    yield opened
    opened.page.context.close()


def streams(tab: Tab) -> list[str]:
    return [url for url in tab.urls() if urlsplit(url).path == "/api/live"]


def chart_polls(tab: Tab, since: float) -> int:
    counts = tab.chart_requests(since)
    return sum(counts[name] for name in CHARTS)


def test_one_stream_carries_every_chart_and_no_chart_polls(tab: Tab) -> None:
    wait_for_data(tab)
    page = tab.page
    [stream] = streams(tab)
    asked = parse_qs(urlsplit(stream).query)
    assert asked["charts"] == [",".join(CHARTS)]
    since = time.monotonic()
    wait_for(
        lambda: tab.chart_requests(since)["status"] >= 4,
        what="the status strip polled 4 times",
        pause=page_pause(page),
    )
    assert chart_polls(tab, since) == 0, tab.chart_requests(since)
    assert streams(tab) == [stream]  # still the one stream
    page.wait_for_function("() => document.querySelector('#overall').dataset.level === 'ok'")
    assert tab.errors == []


def test_a_committed_row_reaches_the_page_on_the_stream(
    tab: Tab, sources: tuple[cfg.SourcesConfig, Path]
) -> None:
    wait_for_data(tab)
    page = tab.page
    before = count_shown(page)
    since = time.monotonic()
    with connected(sources[0].sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO responses (id, cnt) VALUES (777001, 'ALB')")
    page.wait_for_function(
        "before => Number(document.querySelector('.big-number').dataset.count) === before + 1", arg=before
    )
    assert chart_polls(tab, since) == 0
    assert len(streams(tab)) == 1


def test_without_the_route_every_chart_polls(browser, server: Server) -> None:  # noqa: F811
    context = browser.new_context()
    context.set_default_timeout(60_000)

    def absent(route: Route) -> None:
        route.fulfill(
            status=404,
            content_type="application/json",
            body=json.dumps({"error": {"status": 404, "message": "no such route"}}),
        )

    context.route("**/api/live*", absent)
    tab = Tab(context.new_page())
    tab.page.on("request", lambda request: tab.requests.append((time.monotonic(), request)))
    tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
    try:
        tab.page.goto(server.url)
        wait_for_data(tab)
        since = time.monotonic()
        wait_for(
            lambda: polled_at_least(tab, 3, since),
            what="every chart polled 3 times",
            detail=lambda: tab.chart_requests(since),
            pause=page_pause(tab.page),
        )
        elapsed = time.monotonic() - since
        counts = tab.chart_requests(since)
        assert all(counts[name] <= elapsed + 1 for name in CHARTS), (elapsed, counts)
        assert len(streams(tab)) >= 1  # it tried, and tries again later
        assert tab.errors == []
    finally:
        context.close()


def test_a_chart_pointed_elsewhere_polls_there_and_the_rest_stream(tab: Tab, foreign: Foreign) -> None:  # noqa: F811
    wait_for_data(tab)
    page = tab.page
    page.evaluate(
        """url => localStorage.setItem('pisa-pulse.endpoints.v1', JSON.stringify({submissions: url}))""",
        f"{foreign.origin(0)}/count",
    )
    page.reload()
    wait_for(
        lambda: count_shown(page) == 4242, what="chart 1 from the foreign server", pause=page_pause(page)
    )
    stream = streams(tab)[-1]
    assert parse_qs(urlsplit(stream).query)["charts"] == [",".join(c for c in CHARTS if c != "submissions")]
    since = time.monotonic()
    wait_for(lambda: len(foreign.asked[0]) >= 3, what="3 polls of the foreign server", pause=page_pause(page))
    assert chart_polls(tab, since) == 0
