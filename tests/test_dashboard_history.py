"""The dashboard's time control and trends in a real headless Chromium, against real servers.

One set of real sources (four countries, on the session's shared cluster) and two `pisa-pulse serve`s
on them serve the whole module: one keeping its history in DuckDB, where the minutes of the three
hours before it started are written beforehand with numbers of our own (far from the live ones, so a
chart still showing live data cannot pass for the past), and one in direct mode, which keeps none.
What the page draws at a past minute is compared with what `/api/history/<chart>?at=` answers for it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from pisa_pulse.api.charts import CHARTS
from pisa_pulse.engine.aggregates import CountryTotals
from pisa_pulse.engine.values import column_rules
from pisa_pulse.history.store import CountryMinute, Store
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.schema import DOMAINS, INDEX_COLUMNS
from tests.browser import launch
from tests.conftest import Server, serving, share_of, wait_for
from tests.test_dashboard import SCREENSHOTS, Tab, open_tab, page_pause, wait_for_data, wait_streaming
from tests.test_history import get, iso

COUNTRIES = ("ALB", "ARG", "AUS", "BEL")
WRITTEN_HOURS = 3  # the minutes written before the server starts: every EVERY-th of these hours
EVERY = 5


def made_up(i: int, minute: int) -> CountryMinute:
    """Country `i`'s totals at `minute`: plausible, far from the live sources' and moving by the hour."""
    scale = {rule.name: rule.scale for rule in column_rules()}
    hour = minute // 60 % 24
    valid = 400
    means = {
        "durecec": 2 + i,
        "belong": 0.1 + 0.05 * i,
        "escs": 0.3 + 0.2 * i + 0.01 * hour,
        "tmins": 1500 + 60 * i,
    }
    weight = valid * 15 * scale["w_fstuwt"]
    return CountryMinute(
        CountryTotals(
            rows=700 + 10 * i + hour,
            valid=dict.fromkeys(INDEX_COLUMNS, valid),
            sums={name: valid * round(means[name] * scale[name]) for name in INDEX_COLUMNS},
            weights=dict.fromkeys(DOMAINS, weight),
            weighted_scores={
                domain: weight * (600 + 10 * i + 5 * d + hour) * scale[f"pv1{domain}"]
                for d, domain in enumerate(DOMAINS)
            },
        ),
        arrivals=3,
    )


@pytest.fixture(scope="module")
def sources(scratch: Path, shared_cluster: EmbeddedCluster) -> Iterator[tuple[cfg.SourcesConfig, Path]]:
    """Four slim countries of 100 students on the shared cluster (what `shared` does, once per module)."""
    data_dir = Path(tempfile.mkdtemp(prefix="dashboard-history-", dir=scratch)) / "data"
    countries = ",".join(COUNTRIES).lower()
    with share_of(shared_cluster) as share:
        yield share.up(data_dir, countries=countries, schema="slim", rows_per_country=100), data_dir


@pytest.fixture(scope="module")
def written(sources: tuple[cfg.SourcesConfig, Path]) -> tuple[Path, range]:
    """The history store, with minutes of the WRITTEN_HOURS before now made up (each country in its own
    source's rows, as `serve` writes them); and those minutes."""
    store_path = sources[1].parent / "history.duckdb"
    now = int(time.time() // 60)
    minutes = range(now - WRITTEN_HOURS * 60, now - 2, EVERY)  # ended before the server starts
    store = Store.open(f"duckdb:{store_path}", store_path.parent)
    try:
        for minute in minutes:
            for i, code in enumerate(COUNTRIES):
                store.write_minute(minute, code.lower(), {code: made_up(i, minute)})
    finally:
        store.close()
    return store_path, minutes


@pytest.fixture(scope="module")
def server(sources: tuple[cfg.SourcesConfig, Path], written: tuple[Path, range]) -> Iterator[Server]:
    """`serve` keeping its history in the store written above."""
    with cfg.config_path(sources[1]).open("a", encoding="utf-8") as settings:
        # The live route off (server.max_streams = 0): the live charts poll, so these tests see what
        # each asks (test_dashboard_live.py has the page on a stream).
        settings.write(f'\n[history]\nstore = "duckdb:{written[0]}"\n[server]\nmax_streams = 0\n')
    with serving("--data-dir", str(sources[1])) as live:
        wait_streaming(live)
        yield live


@pytest.fixture(scope="module")
def no_history(sources: tuple[cfg.SourcesConfig, Path]) -> Iterator[Server]:
    """`serve` in direct mode on the same sources: it keeps no history."""
    with serving("--data-dir", str(sources[1]), "--mode", "direct") as plain:
        yield plain


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield launch(playwright)


@pytest.fixture
def tabs(browser: Browser) -> Iterator[list[Tab]]:
    """The tabs a test opens, closed when it ends."""
    opened: list[Tab] = []
    yield opened
    for tab in opened:
        tab.page.context.close()


def open_page(tabs: list[Tab], browser: Browser, url: str, width: int = 1440, height: int = 900) -> Tab:
    tab = open_tab(browser, url, width, height)
    tabs.append(tab)
    return tab


def past_minute(written: tuple[Path, range]) -> str:
    """A minute in the made-up history (the middle of it)."""
    minutes = written[1]
    return iso(minutes[len(minutes) // 2])


def wait_past_shown(page: Page, state: str = "shown") -> None:
    """Until every chart's card is in `state` (shown: drawn from the history's answer)."""
    page.wait_for_function(
        """([charts, state]) => charts.every(
             id => document.querySelector(`[data-feed="${id}"]`)?.dataset.past === state)""",
        arg=[list(CHARTS), state],
    )


def history_asked(tab: Tab, at: str, since: float = 0.0) -> dict[str, list[dict[str, list[str]]]]:
    """Per chart, the query of every `?at=` request to its history started after `since`."""
    asked: dict[str, list[dict[str, list[str]]]] = {}
    for started, request in tab.requests:
        parts = urlsplit(request.url)
        query = parse_qs(parts.query)
        if started >= since and parts.path.startswith("/api/history/") and query.get("at") == [at]:
            asked.setdefault(parts.path.removeprefix("/api/history/"), []).append(query)
    return asked


def polled_since(tab: Tab, since: float, times: int) -> bool:
    """Whether every chart has polled its live URL `times` times since `since`."""
    counts = tab.chart_requests(since)
    return all(counts[chart] >= times for chart in CHARTS)


def last_live_queries(tab: Tab) -> dict[str, dict[str, list[str]]]:
    """Per chart, the query of its latest live poll."""
    queries = {}
    for _, request in tab.requests:
        parts = urlsplit(request.url)
        if parts.path.startswith("/api/charts/"):
            queries[parts.path.removeprefix("/api/charts/")] = parse_qs(parts.query)
    return queries


def live_polls(tab: Tab, since: float) -> int:
    return sum(
        1
        for started, r in tab.requests
        if started >= since and urlsplit(r.url).path.startswith("/api/charts/")
    )


DRAWN = """id => {
  const card = document.querySelector(`[data-feed="${id}"]`);
  const box = card.querySelector('.chart');
  if (!box) return {count: card.querySelector('.big-number').dataset.count};
  const option = echarts.getInstanceByDom(box).getOption();
  return {
    x: option.xAxis ? option.xAxis[0].data : null,
    // (a map's series also lists every region it has no value for: those are left out)
    series: Object.fromEntries(option.series.map(s => [s.id, s.data
      .filter(d => d === null || typeof d !== 'object' || (d.value !== null && d.value !== undefined))
      .map(d => (d !== null && typeof d === 'object') ? {name: d.name, value: d.value} : d)])),
  };
}"""


def expected_drawing(chart: str, body: Any) -> dict[str, Any]:
    """What the page draws of a chart's body, as DRAWN reads it (the views' own mapping, written out)."""
    if chart == "submissions":
        return {"count": str(body["count"])}
    datasets = body["datasets"]
    if chart == "submissions-over-time":
        points = datasets[0]["data"]
        return {"x": [p["x"] for p in points], "series": {"submissions": [p["y"] for p in points]}}
    if chart == "early-education-and-belonging":
        bubbles = [
            {"name": d["id"], "value": [d["data"][0]["x"], d["data"][0]["y"], d["data"][0]["submissions"]]}
            for d in datasets
            if d["data"][0]["x"] is not None and d["data"][0]["y"] is not None
        ]
        return {"x": None, "series": {"countries": bubbles}}
    if chart == "escs":
        values = [{"name": d["id"], "value": d["value"]} for d in datasets if d["value"] is not None]
        return {"x": None, "series": {"escs": values}}
    if chart == "learning-hours-per-week":
        hours = [d["hours"] if d["hours"] is not None else "-" for d in datasets]
        return {"x": [d["country"] for d in datasets], "series": {"hours": hours}}
    assert chart == "performance", chart
    scores = {
        domain: [d[domain] if d[domain] is not None else "-" for d in datasets]
        for domain in ("reading", "mathematics", "science")
    }
    return {"x": [d["id"] for d in datasets], "series": scores}


def screenshot(page: Page, name: str) -> None:
    """For a reader's eyes (build/screenshots/, beside the live ones), once the animations have ended."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1000)  # an animation's own length
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def drawn(page: Page, chart: str) -> Any:
    return page.evaluate(DRAWN, chart)


def assert_drawn_as_answered(
    page: Page, server: Server, at: str | None, charts: tuple[str, ...] = CHARTS, query: str = ""
) -> None:
    """Every chart draws what the API answers (the history at `at`; live: the charts now) for `query`."""
    for chart in charts:
        route = f"api/history/{chart}?at={at}&{query}" if at else f"api/charts/{chart}?{query}"
        status, body = get(server.url + route)
        assert status == 200, (chart, body)
        assert drawn(page, chart) == expected_drawing(chart, body), chart


def test_a_past_minute_shows_every_chart_as_the_history_answers_it(
    tabs: list[Tab], browser: Browser, server: Server, written: tuple[Path, range]
) -> None:
    tab = open_page(tabs, browser, server.url)
    page = tab.page
    wait_for_data(tab)
    at = past_minute(written)
    # The made-up past is far from the live numbers: a chart still showing live data would fail below.
    for chart in CHARTS:
        assert get(f"{server.url}api/history/{chart}?at={at}")[1] != get(f"{server.url}api/charts/{chart}")[1]
    # Chart 2 per minute: a parameter the past must ask for too.
    page.get_by_role("button", name="Minutes").click()
    wait_for(
        lambda: last_live_queries(tab).get("submissions-over-time", {}).get("bucket") == ["minute"],
        what="chart 2 polling its minutes",
        pause=page_pause(page),
    )
    toggle = page.get_by_role("button", name="Time shown: Live")
    toggle.wait_for()
    page.wait_for_function(
        "() => document.querySelector('#open-time').getAttribute('aria-disabled') === 'false'"
    )

    # Keyboard only: open the dialog, type the minute, Enter.
    toggle.focus()
    page.keyboard.press("Enter")
    minute_input = page.get_by_label("Minute (UTC)")
    assert minute_input.is_visible()
    assert minute_input.get_attribute("type") == "datetime-local"
    minute_input.fill(at[:16])
    page.keyboard.press("Enter")
    chosen = time.monotonic()
    wait_past_shown(page)

    # Not live, and plainly so: the banner with the minute, every card tinted, the header's pill.
    banner = page.locator("#past-banner")
    assert banner.is_visible()
    assert page.inner_text("#past-banner .past-minute").endswith("UTC")
    assert page.get_attribute("#past-banner .past-minute", "datetime") == at
    marks = page.eval_on_selector_all(".card[data-feed]", "cards => cards.map(c => c.dataset.time)")
    assert marks == ["past"] * 6
    assert page.inner_text("#overall").startswith("Not live")
    assert page.inner_text("[data-feed=escs] .age").startswith("as at")
    assert parse_qs(urlsplit(page.url).fragment) == {"at": [at]}

    assert_drawn_as_answered(page, server, at, query="bucket=minute")
    screenshot(page, "dashboard-past-1440x900.png")

    # Asked once each, with the parameters the charts ask live; no live poll meanwhile.
    page.wait_for_timeout(3000)  # three of the live polls' seconds: none may come
    asked = history_asked(tab, at)
    assert set(asked) == set(CHARTS) and all(len(queries) == 1 for queries in asked.values()), asked
    live = last_live_queries(tab)
    assert {chart: {k: v for k, v in q[0].items() if k != "at"} for chart, q in asked.items()} == live
    assert live["submissions-over-time"] == {"bucket": ["minute"]}
    assert live_polls(tab, chosen + 0.5) == 0
    # The status strip stays live.
    assert sum(1 for s, r in tab.requests if s >= chosen + 0.5 and urlsplit(r.url).path == "/api/status") >= 2

    # The per-country charts' parameters follow the picker, asked once again at the same minute.
    page.click(".picker-toggle")
    page.fill(".picker-search", "argentina")
    page.keyboard.press("Enter")  # unticks Argentina
    page.keyboard.press("Escape")
    wait_for(
        lambda: all(
            any(q.get("countries") == ["ALB,AUS,BEL"] for q in history_asked(tab, at).get(chart, []))
            for chart in CHARTS[2:]
        ),
        what="the per-country charts asking the history again for the picked countries",
        pause=page_pause(page),
    )
    wait_past_shown(page)
    status, escs = get(f"{server.url}api/history/escs?at={at}&countries=ALB,AUS,BEL")
    assert status == 200 and len(escs["datasets"]) == 3
    assert drawn(page, "escs") == expected_drawing("escs", escs)

    # Back to live: polling again, the marks gone, live numbers drawn.
    page.get_by_role("button", name="Back to live").click()
    back = time.monotonic()
    assert banner.is_hidden()
    assert "at=" not in urlsplit(page.url).fragment
    wait_for(
        lambda: polled_since(tab, back, 3),
        what="every chart polling live again",
        detail=lambda: tab.chart_requests(back),
        pause=page_pause(page),
    )
    page.wait_for_function("() => !document.querySelector('.card[data-past]')")  # every card redrawn live
    marks = page.eval_on_selector_all(".card[data-feed]", "cards => cards.map(c => c.dataset.time)")
    assert marks == ["live"] * 6
    assert page.evaluate("document.activeElement.id") == "open-time"  # the keyboard stays near
    page.wait_for_function("() => document.querySelector('#overall').dataset.level === 'ok'")
    page.click(".picker-toggle")
    page.get_by_role("button", name="All with data").click()
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('[data-feed=escs]').dataset.items === '4'")
    # No traffic: the live charts stand still (chart 2 but for its hours: its labels move with the clock).
    assert_drawn_as_answered(page, server, None, ("submissions", *CHARTS[2:]), query="bucket=minute")
    assert tab.errors == []


def test_a_past_view_survives_a_reload_and_the_back_button_at_phone_width(
    tabs: list[Tab], browser: Browser, server: Server, written: tuple[Path, range]
) -> None:
    at = past_minute(written)
    tab = open_page(tabs, browser, f"{server.url}#at={at}", 390, 844)
    page = tab.page
    wait_past_shown(page)
    assert_drawn_as_answered(page, server, at)
    assert live_polls(tab, 0) == 0  # a past view never polls the live charts
    assert page.locator("#past-banner").is_visible()

    page.reload()
    wait_past_shown(page)
    assert parse_qs(urlsplit(page.url).fragment) == {"at": [at]}
    assert_drawn_as_answered(page, server, at)
    assert page.locator("#past-banner").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than a phone

    # Another minute from the banner, an hour earlier; the dialog starts at the minute shown.
    page.get_by_role("button", name="Change minute").click()
    minute_input = page.get_by_label("Minute (UTC)")
    assert minute_input.input_value() == at[:16]
    earlier = iso(written[1][len(written[1]) // 2 - 60 // EVERY])  # an hour before
    minute_input.fill(earlier[:16])
    page.get_by_role("button", name="Show this minute").click()
    page.wait_for_function(
        "at => document.querySelector('#past-banner .past-minute').getAttribute('datetime') === at",
        arg=earlier,
    )
    wait_past_shown(page)
    assert_drawn_as_answered(page, server, earlier)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "dashboard-past-390x844.png")

    # Back: the minute before.
    page.go_back()
    page.wait_for_function(
        "at => document.querySelector('#past-banner .past-minute').getAttribute('datetime') === at", arg=at
    )
    wait_past_shown(page)
    assert_drawn_as_answered(page, server, at)
    assert tab.errors == []


def test_a_minute_the_history_does_not_hold_says_so_in_place_of_the_data(
    tabs: list[Tab], browser: Browser, server: Server, written: tuple[Path, range]
) -> None:
    missing = iso(written[1][0] - 6 * 60)  # hours before the first minute written
    assert get(f"{server.url}api/history/escs?at={missing}")[0] == 404
    tab = open_page(tabs, browser, f"{server.url}#at={missing}")
    page = tab.page
    wait_past_shown(page, "missing")
    for chart in CHARTS:
        card = f"[data-feed={chart}]"
        assert page.inner_text(f"{card} .past-note") == "Not in this server's history"
        assert page.locator(f"{card} .past-note").is_visible()
        data = page.locator(f"{card} .chart, {card} .big-number").first
        assert data.is_hidden(), chart  # nothing drawn in its place: no live numbers passing for the past
    problem = page.locator("#past-banner .past-problem")
    assert problem.is_visible()
    assert "holds no minute" in problem.inner_text()
    assert page.locator("#past-banner").is_visible()
    # Still a working page: back to live shows data.
    page.get_by_role("button", name="Back to live").click()
    wait_for_data(tab)
    page.wait_for_function("() => !document.querySelector('.card[data-past]')")
    assert page.locator(".past-note:visible").count() == 0
    assert tab.errors == []


def test_a_server_without_history_disables_the_control(
    tabs: list[Tab], browser: Browser, no_history: Server, written: tuple[Path, range]
) -> None:
    assert "history" not in get(no_history.url + "api/status")[1]
    tab = open_page(tabs, browser, no_history.url)
    page = tab.page
    wait_for_data(tab)
    toggle = page.locator("#open-time")
    page.wait_for_function("() => document.querySelector('#open-time').title.includes('keeps no history')")
    assert toggle.get_attribute("aria-disabled") == "true"
    assert "keeps no history" in page.inner_text("#time-why")  # what a screen reader hears with it
    toggle.click(force=True)  # (a reader can click it: it does nothing but its tooltip)
    page.wait_for_timeout(300)  # a dialog would open at once
    assert not page.evaluate("document.querySelector('#time-dialog').open")
    assert live_polls(tab, 0) > 0 and not [u for u in tab.urls() if "/api/history/" in u]  # no trend asked

    # A shared link to a past minute: the page says why it cannot show it.
    at = past_minute(written)
    tab = open_page(tabs, browser, f"{no_history.url}#at={at}")
    page = tab.page
    wait_past_shown(page, "missing")
    assert "keeps no history" in page.inner_text("#past-banner .past-problem")
    assert page.get_by_role("button", name="Change minute").count() == 0  # only "Back to live" is offered
    assert page.get_attribute("#open-time", "aria-disabled") == "true"
    assert not [u for u in tab.urls() if "/api/history/" in u and "from=" in u]
    assert tab.errors == []


def series_requests(tab: Tab, since: float = 0.0) -> list[dict[str, list[str]]]:
    """The queries of the trend's series requests started after `since`."""
    return [
        parse_qs(urlsplit(r.url).query)
        for started, r in tab.requests
        if started >= since and urlsplit(r.url).path == "/api/history/escs" and "from=" in r.url
    ]


def is_series(url: str) -> bool:
    return urlsplit(url).path.startswith("/api/history/") and "from=" in url


def made_up_series(query: dict[str, list[str]]) -> dict[str, Any]:
    """A series answer in the route's contract for the window asked, a value per hour per country."""
    start = int(datetime.fromisoformat(query["from"][0].replace("Z", "+00:00")).timestamp() // 60)
    return {
        "from": query["from"][0],
        "to": query["to"][0],
        "step": "1h",
        "datasets": [
            {
                "id": code,
                "data": [
                    {"at": iso(start + 60 * h), "value": round(0.1 * i - 0.01 * h, 4)} for h in range(25)
                ],
            }
            for i, code in enumerate(COUNTRIES)
        ],
    }


def test_the_trend_draws_the_series_answer_once_a_minute_at_most(
    tabs: list[Tab], browser: Browser, server: Server, written: tuple[Path, range]
) -> None:
    """The page's side of the series contract, with the route's answer made up in the browser (the
    route itself: the next test)."""
    answers: list[dict[str, Any]] = []

    def series(route: Route) -> None:
        answers.append(made_up_series(parse_qs(urlsplit(route.request.url).query)))
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answers[-1]))

    tab = open_page(tabs, browser, server.url)
    page = tab.page
    page.context.route(is_series, series)
    page.reload()  # from the start with the made-up route
    opened = time.monotonic()
    page.wait_for_function("() => document.querySelectorAll('.trend:not([hidden]) li').length === 4")
    asked = series_requests(tab, opened)
    assert len(asked) == 1, asked
    query = asked[0]
    assert query["step"] == ["1h"] and "countries" not in query
    span = datetime.fromisoformat(query["to"][0].replace("Z", "+00:00")) - datetime.fromisoformat(
        query["from"][0].replace("Z", "+00:00")
    )
    assert span.total_seconds() == 24 * 3600
    # Each country's line is the series' values, in order; its number the last of them.
    drawn_values = page.eval_on_selector_all(
        ".trend li", "items => items.map(li => [li.dataset.code, JSON.parse(li.dataset.values)])"
    )
    assert drawn_values == [[d["id"], [p["value"] for p in d["data"]]] for d in answers[-1]["datasets"]]
    assert (
        page.inner_text(".trend li[data-code=ARG] .trend-value")
        == f"{answers[-1]['datasets'][1]['data'][-1]['value']:.2f}"
    )
    assert "hour by hour" in page.inner_text(".trend-title")

    # Live: not asked again within the minute.
    page.wait_for_timeout(5000)
    assert len(series_requests(tab, opened)) == 1

    # At a past minute: asked once, ending at that minute.
    at = past_minute(written)
    page.evaluate("at => { location.hash = `at=${at}`; }", at)
    wait_past_shown(page)
    wait_for(
        lambda: any(q["to"] == [at] for q in series_requests(tab, opened)), what="the trend to that minute"
    )
    page.wait_for_function(
        "at => document.querySelector('.trend-title').textContent.includes(at.slice(11, 16))", arg=at
    )

    # A route that answers 404 (no minute in the window): no trend.
    page.context.unroute_all()
    none = json.dumps({"error": {"status": 404, "message": "the history holds no minute in that window"}})
    page.context.route(
        is_series, lambda route: route.fulfill(status=404, content_type="application/json", body=none)
    )
    page.get_by_role("button", name="Back to live").click()
    page.wait_for_function("() => document.querySelector('.trend').hidden")
    assert not [e for e in tab.errors if "Failed to load resource" not in e]


def test_the_trend_follows_the_series_route(tabs: list[Tab], browser: Browser, server: Server) -> None:
    """Against the real route: the trend draws what it answers for the page's question."""
    tab = open_page(tabs, browser, server.url)
    page = tab.page
    wait_for_data(tab)
    wait_for(lambda: series_requests(tab), what="the trend asking for its series", pause=page_pause(page))
    request = next(r for _, r in tab.requests if is_series(r.url))
    status, body = get(request.url)
    assert status == 200, body  # the made-up minutes are in its 24 hours
    page.wait_for_function("() => !document.querySelector('.trend').hidden")
    drawn_values = page.eval_on_selector_all(
        ".trend li", "items => items.map(li => [li.dataset.code, JSON.parse(li.dataset.values)])"
    )
    expected = [
        [d["id"], [p["value"] for p in d["data"] if p.get("value") is not None]]
        for d in body["datasets"]
        if any(p.get("value") is not None for p in d["data"])
    ]
    assert drawn_values == expected
