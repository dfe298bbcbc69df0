"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright).

One set of real sources (four countries, on the session's shared cluster) and one `pisa-pulse serve`
subprocess serve the whole module, its live route off: the page polls, as it does wherever the route is
absent or refuses it;
each test opens the page in a fresh browser context (its own localStorage). A "soak" page opened by
the first test keeps polling through all the others (traffic, a stopped server, failing polls) and
the last test checks that its JavaScript heap did not grow. The screenshots go to build/screenshots/
(git-ignored); `make screenshots` runs that test alone and copies them into docs/.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, sync_playwright

from pisa_pulse.api.charts import CHARTS
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.traffic import Traffic
from tests.browser import heap_bytes, history_miss, launch
from tests.conftest import Server, serving, share_of, wait_for

COUNTRIES = ("ALB", "ARG", "AUS", "BEL")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"  # git-ignored
SOAK_SECONDS = 60
HEAP_GROWTH_LIMIT = 5 * 1024 * 1024
# The page's elements but the trends' (their countries' lines appear once the history has minutes).
ELEMENTS = "document.querySelectorAll('*').length - document.querySelectorAll('.trend *').length"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_streaming(server: Server) -> None:
    wait_for(
        lambda: {s["state"] for s in get_json(server.url + "api/status")["sources"]} == {"streaming"},
        timeout=90,
        what="the pipeline streaming every source",
        detail=lambda: get_json(server.url + "api/status"),
    )


def page_pause(page: Page) -> Callable[[float], object]:
    """A pause for `wait_for` that lets the page's events (requests, console) come in meanwhile."""
    return lambda seconds: page.wait_for_timeout(seconds * 1000)


@pytest.fixture(scope="module")
def sources(scratch: Path, shared_cluster: EmbeddedCluster) -> Iterator[tuple[cfg.SourcesConfig, Path]]:
    """Four slim countries of 200 students on the shared cluster (what `shared` does, once per module)."""
    data_dir = Path(tempfile.mkdtemp(prefix="dashboard-", dir=scratch)) / "data"
    countries = ",".join(COUNTRIES).lower()
    with share_of(shared_cluster) as share:
        yield share.up(data_dir, countries=countries, schema="slim", rows_per_country=200), data_dir


@pytest.fixture(scope="module")
def server(sources: tuple[cfg.SourcesConfig, Path], foreign: Foreign) -> Iterator[Server]:
    # The dashboard may poll the first foreign server (server.chart_origins), not the second. The live
    # route is off (server.max_streams = 0, so it answers 503): these tests are of the page's polling,
    # which a server without the route gets (test_dashboard_live.py has the page on a stream).
    with cfg.config_path(sources[1]).open("a", encoding="utf-8") as settings:
        settings.write(f'\n[server]\nchart_origins = ["{foreign.origin(0)}"]\nmax_streams = 0\n')
    with serving("--data-dir", str(sources[1])) as live:
        wait_streaming(live)
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield launch(playwright)


@dataclass
class Tab:
    """A page with what it logged and asked for."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[tuple[float, Request]] = field(default_factory=list)  # (time.monotonic(), request)

    def urls(self) -> list[str]:
        return [request.url for _, request in self.requests]

    def chart_requests(self, since: float = 0.0) -> Counter[str]:
        """Requests to this server's API per chart (and `status`) started after `since`."""
        counts: Counter[str] = Counter()
        for started, request in self.requests:
            path = urlsplit(request.url).path
            if started >= since and path.startswith("/api/"):
                counts[path.removeprefix("/api/charts/").removeprefix("/api/")] += 1
        return counts


def open_tab(browser: Browser, url: str, width: int = 1440, height: int = 900) -> Tab:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(60_000)  # every wait on the page: generous, for slow machines
    tab = Tab(context.new_page())

    def on_console(message: Any) -> None:
        if message.type == "error" and not history_miss(message):
            tab.errors.append(message.text)

    tab.page.on("console", on_console)
    tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.page.on("request", lambda request: tab.requests.append((time.monotonic(), request)))
    tab.page.goto(url)
    return tab


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Tab]:
    opened = open_tab(browser, server.url)
    yield opened
    opened.page.context.close()


def wait_for_data(tab: Tab, timeout: float = 60) -> None:
    """Until every chart has drawn data from an answer."""
    tab.page.wait_for_function(
        """charts => charts.every(
             id => Number(document.querySelector(`[data-feed="${id}"]`)?.dataset.items) > 0)""",
        arg=list(CHARTS),
        timeout=timeout * 1000,
    )


def levels(page: Page) -> dict[str, str]:
    """Each feed's freshness level (ok, amber, red, waiting), and the header's as `overall`."""
    found: dict[str, str] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-feed]')]
               .map(el => [el.dataset.feed, el.querySelector('.age').dataset.level]))"""
    )
    found["overall"] = page.get_attribute("#overall", "data-level") or ""
    return found


def count_shown(page: Page) -> int:
    return int(page.get_attribute(".big-number", "data-count") or -1)


@contextmanager
def traffic_running(config: cfg.SourcesConfig, rate: float) -> Iterator[Traffic]:
    """Real submissions into the sources from a thread, until the block ends."""
    traffic = Traffic(config, rate=rate, seed=11)
    stopping = threading.Event()
    thread = threading.Thread(target=traffic.run, args=(stopping,), daemon=True)
    thread.start()
    try:
        yield traffic
    finally:
        stopping.set()
        thread.join(timeout=30)


def polled_at_least(tab: Tab, times: int, since: float) -> bool:
    """Whether every chart (and the status) has been asked for `times` times since `since`."""
    counts = tab.chart_requests(since)
    return all(counts[name] >= times for name in (*CHARTS, "status"))


@dataclass
class Soak:
    """A page left polling from the first test to the last."""

    tab: Tab
    started: float
    heap: int
    elements: int


@pytest.fixture(scope="module")
def soak(browser: Browser, server: Server, sources: tuple[cfg.SourcesConfig, Path]) -> Iterator[Soak]:
    opened = open_tab(browser, server.url)
    wait_for_data(opened)
    # Warm-up: every chart redraws a few times (the JIT compiles the update paths), animations end.
    since = time.monotonic()
    with traffic_running(sources[0], rate=20):
        wait_for(
            lambda: polled_at_least(opened, 6, since),
            timeout=60,
            what="every chart polled 6 times while the data changes",
            detail=lambda: opened.chart_requests(since),
            pause=page_pause(opened.page),
        )
    opened.page.wait_for_timeout(1500)  # an animation's own length, not a wait for the machine
    elements = opened.page.evaluate(ELEMENTS)
    yield Soak(opened, time.monotonic(), heap_bytes(opened.page), elements)
    opened.page.context.close()


def test_every_chart_renders_data_without_console_errors(tab: Tab, server: Server, soak: Soak) -> None:
    # (`soak` starts the long-lived page now, so that it polls through every other test.)
    wait_for_data(tab)
    page = tab.page
    # Every ECharts canvas has drawn something.
    inked = page.evaluate(
        """() => [...document.querySelectorAll('.chart')].map(box => {
             const canvas = box.querySelector('canvas');
             if (!canvas || !canvas.width) return 0;
             const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
             let inked = 0;
             for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) inked += 1;
             return inked;
           })"""
    )
    assert len(inked) == 5 and all(n > 500 for n in inked), inked
    total = get_json(server.url + "api/charts/submissions")["count"]  # (no traffic now)
    page.wait_for_function(f"() => document.querySelector('.big-number').dataset.count === '{total}'")
    page.wait_for_function("() => document.querySelectorAll('.health-list .source').length === 4")
    assert page.inner_text(".health-summary").startswith("4/4 sources healthy")
    assert page.locator(".off-map").is_hidden()  # all four countries have a shape on the map
    # Screen readers: the number is announced, every chart title is a heading.
    assert page.get_attribute(".big-number-live", "aria-live") == "polite"
    headings = page.eval_on_selector_all(".card h2", "els => els.map(e => e.textContent)")
    assert len(headings) == 6 and all(headings)
    page.wait_for_function("() => document.querySelector('#overall').dataset.level === 'ok'")
    assert tab.errors == []


def test_the_number_rises_while_traffic_runs(tab: Tab, sources: tuple[cfg.SourcesConfig, Path]) -> None:
    wait_for_data(tab)
    page = tab.page
    before = count_shown(page)
    page.get_by_role("button", name="Minutes").click()
    with traffic_running(sources[0], rate=60):
        page.wait_for_function(
            f"() => Number(document.querySelector('.big-number').dataset.count) > {before + 20}"
        )
        rising = count_shown(page)
        page.wait_for_function(
            f"() => Number(document.querySelector('.big-number').dataset.count) > {rising}"
        )
    # The minute chart was asked for, and shows the new arrivals.
    assert any("bucket=minute" in url for url in tab.urls())
    assert "bucket=minute" in page.url
    page.wait_for_function(
        "() => Number(document.querySelector('[data-feed=submissions-over-time]').dataset.total) >= 20"
    )
    page.wait_for_function("() => document.querySelector('.rate').textContent.startsWith('+')")
    assert tab.errors == []


def test_the_picker_changes_the_requested_countries(tab: Tab, server: Server) -> None:
    wait_for_data(tab)
    page = tab.page
    asked_all = [url for url in tab.urls() if "/api/charts/escs" in url]
    assert asked_all and all("countries" not in url for url in asked_all)  # default: every country
    page.wait_for_function("() => document.querySelector('.picker-count').textContent.includes('All 4')")

    # Keyboard only: open, search, Enter unticks the first match (all were ticked).
    page.focus(".picker-toggle")
    page.keyboard.press("Enter")
    page.keyboard.type("argentina")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.classList.contains('picker-toggle')")
    wanted = {"ALB", "AUS", "BEL"}
    assert_next_requests_ask_for(tab, wanted)
    assert parse_qs(urlsplit(page.url).query)["countries"] == ["ALB,AUS,BEL"]

    # Clear, then tick one with the arrow keys and Space.
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Clear").click()
    page.fill(".picker-search", "BEL")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    page.keyboard.press("Escape")
    assert_next_requests_ask_for(tab, {"BEL"})
    page.wait_for_function("() => document.querySelector('[data-feed=escs]').dataset.items === '1'")

    # Remembered in the URL: a reload asks for the same countries.
    tab.requests.clear()
    page.reload()
    assert_next_requests_ask_for(tab, {"BEL"})
    assert tab.errors == []


def assert_next_requests_ask_for(tab: Tab, wanted: set[str], timeout: float = 30) -> None:
    """Each per-country chart's next request asks for exactly `wanted`."""
    since = time.monotonic()
    seen: dict[str, set[str]] = {}

    def every_chart_asked() -> bool:
        for started, request in tab.requests:
            parts = urlsplit(request.url)
            name = parts.path.removeprefix("/api/charts/")
            if started < since or name not in CHARTS[2:] or name in seen:
                continue
            seen[name] = set(parse_qs(parts.query).get("countries", [""])[0].split(","))
        return len(seen) == 4

    wait_for(
        every_chart_asked,
        timeout,
        what=f"every per-country chart asking again (for {wanted})",
        detail=lambda: seen,
        pause=page_pause(tab.page),
    )
    assert all(codes == wanted for codes in seen.values()), seen


def test_each_chart_polls_at_most_once_a_second_and_unchanged_data_costs_a_304(tab: Tab) -> None:
    wait_for_data(tab)
    page = tab.page
    since = time.monotonic()
    # A window of 5 polls each, however long a slow machine takes for them.
    wait_for(
        lambda: polled_at_least(tab, 5, since),
        what="every chart polled 5 times",
        detail=lambda: tab.chart_requests(since),
        pause=page_pause(page),
    )
    elapsed = time.monotonic() - since
    counts = tab.chart_requests(since)
    # At one poll per second at most: one more than the whole seconds, when the window catches both ends.
    assert all(counts[name] <= elapsed + 1 for name in (*CHARTS, "status")), (elapsed, counts)
    conditional = [
        r for started, r in tab.requests if started >= since and r.all_headers().get("if-none-match")
    ]
    assert conditional, "no poll sent If-None-Match"
    responses = [r.response() for r in conditional]
    statuses = Counter(response.status for response in responses if response is not None)
    assert statuses[304] > 0, statuses  # nothing changed meanwhile: most polls cost a 304
    assert tab.errors == []


class FixedCount(BaseHTTPRequestHandler):
    """A foreign implementation of chart 1's contract: always 4242, cross-origin GET allowed."""

    asked: list[str]

    def do_GET(self) -> None:
        self.asked.append(self.path)
        body = b'{"count": 4242}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Foreign:
    """Two foreign servers of chart 1's contract, each with the paths it was asked for."""

    ports: list[int]
    asked: list[list[str]]

    def origin(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"


@pytest.fixture(scope="module")
def foreign() -> Iterator[Foreign]:
    servers, asked = [], []
    for _ in range(2):
        asked.append([])
        handler = type("Handler", (FixedCount,), {"asked": asked[-1]})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    yield Foreign([int(s.server_address[1]) for s in servers], asked)
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_a_foreign_url_is_polled_where_the_policy_allows_it(tab: Tab, foreign: Foreign) -> None:
    wait_for_data(tab)
    page = tab.page
    # Not in server.chart_origins: the Content-Security-Policy stops the page from asking it at all.
    page.get_by_role("button", name="Endpoints").click()
    page.get_by_role("textbox", name="Submissions", exact=True).fill(foreign.origin(1) + "/count")
    page.get_by_role("button", name="Save").click()
    wait_for(
        lambda: any("Content Security Policy" in e for e in tab.errors),
        what="the browser refusing a connection the policy does not allow",
        pause=page_pause(page),
    )
    assert foreign.asked[1] == []
    url, asked = foreign.origin(0) + "/count", foreign.asked[0]
    page.get_by_role("button", name="Endpoints").click()
    page.get_by_role("textbox", name="Submissions", exact=True).fill(url)
    page.get_by_role("button", name="Save").click()
    page.wait_for_function("() => document.querySelector('.big-number').dataset.count === '4242'")
    tab.errors.clear()  # the refusals above; from here on, none
    host = urlsplit(url).netloc
    shown = page.inner_text("[data-feed=submissions] .card-source")
    assert shown == f"from {host}; its sources' health is unknown here"
    wait_for(lambda: len(asked) >= 3, what="3 polls of the foreign URL", pause=page_pause(page))
    assert set(asked) == {"/count"}
    # Saved in the browser: after a reload the chart still polls the foreign URL.
    page.reload()
    page.wait_for_function("() => document.querySelector('.big-number').dataset.count === '4242'")
    page.wait_for_function(
        "() => document.querySelector('[data-feed=submissions] .age').dataset.level === 'ok'"
    )
    assert tab.errors == []


def test_there_are_no_traffic_controls(tab: Tab) -> None:
    wait_for_data(tab)
    page = tab.page
    assert page.locator("[id*=traffic i], [class*=traffic i], [data-feed*=traffic i]").count() == 0
    assert page.get_by_role("button", name=re.compile("pause|resume|rate|empty", re.I)).count() == 0
    assert page.get_by_role("slider").count() == 0
    assert not any("/api/traffic" in url for url in tab.urls())


@pytest.fixture(scope="module")
def demo(scratch: Path) -> Iterator[tuple[Server, Path]]:
    """`pisa-pulse demo` on two slim countries: its own sources, traffic and traffic controls."""
    data_dir = Path(tempfile.mkdtemp(prefix="demo-", dir=scratch)) / "data"
    args = ("--data-dir", str(data_dir), "--countries", "alb,arg", "--schema", "slim")
    with serving(*args, "--rows-per-country", "100", "--rate", "20", command="demo") as live:
        wait_streaming(live)
        yield live, data_dir


def traffic_status(url: str, token: str) -> Any:
    request = urllib.request.Request(url + "api/traffic", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_traffic_controls_need_the_token(browser: Browser, demo: tuple[Server, Path]) -> None:
    tab = open_tab(browser, demo[0].url)
    page = tab.page
    page.get_by_label("Token").wait_for()
    controls = page.locator("[id^=traffic-rate], #traffic-country, .traffic-pause")
    assert controls.count() == 0
    page.get_by_label("Token").fill("not-the-token")
    page.get_by_role("button", name="Unlock controls").click()
    page.get_by_text("The token was refused").wait_for()
    assert controls.count() == 0
    sent = [r.headers.get("authorization") for _, r in tab.requests if urlsplit(r.url).path == "/api/traffic"]
    assert sent == ["Bearer not-the-token"]
    assert tab.errors == [] or all("401" in e for e in tab.errors)  # the refused request itself
    tab.page.context.close()


def test_the_traffic_panel_steers_the_demo(browser: Browser, demo: tuple[Server, Path]) -> None:
    server, data_dir = demo
    token = (data_dir / "api-token").read_text().strip()
    tab = open_tab(browser, server.url + f"#token={token}")
    page = tab.page
    rate = page.get_by_label("Target rate, operations per second")
    rate.wait_for()
    assert token not in page.url  # out of the address bar and the history at once
    # The panel shows the achieved rate the traffic reports.
    page.wait_for_function("() => Number(document.querySelector('.traffic-achieved').textContent) > 0")

    rate.fill("35")
    rate.press("Enter")
    page.get_by_text("Target rate set to 35 per second").wait_for()
    assert traffic_status(server.url, token)["rate"] == 35

    page.get_by_role("button", name="Pause").click()
    page.get_by_role("button", name="Resume").wait_for()
    assert traffic_status(server.url, token)["paused"] is True
    assert page.inner_text(".traffic-state") == "paused"

    page.get_by_label("Empty").select_option("alb")
    page.get_by_role("button", name="Empty…").click()
    page.get_by_role("button", name="Delete every row of Albania").click()
    page.get_by_text("Emptied Albania").wait_for()
    alb = next(s for s in cfg.load(data_dir).sources if s.name == "alb")
    with connected(alb.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM responses")
        assert cur.fetchone() == (0,)

    page.get_by_role("button", name="Resume").click()
    page.get_by_role("button", name="Pause").wait_for()
    assert traffic_status(server.url, token)["paused"] is False
    # The token went only in the Authorization header, never in a URL.
    assert not any(token in url for url in tab.urls())
    page.set_viewport_size({"width": 390, "height": 844})  # the controls wrap on a phone
    page.wait_for_function("() => document.documentElement.scrollWidth <= 390")  # once laid out again
    assert tab.errors == []
    tab.page.context.close()


def test_screenshots_at_laptop_and_phone_sizes(
    browser: Browser, server: Server, sources: tuple[cfg.SourcesConfig, Path]
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with traffic_running(sources[0], rate=30):
        shots = {}
        for width, height in ((1440, 900), (390, 844)):
            tab = open_tab(browser, server.url + "?bucket=minute", width, height)
            wait_for_data(tab)
            # The sparkline and the rate fill in, then the animations settle (their own length).
            tab.page.wait_for_function("() => document.querySelector('.rate').textContent.startsWith('+')")
            tab.page.wait_for_timeout(1500)
            # Nothing wider than the screen (a phone would scroll sideways).
            assert tab.page.evaluate("document.documentElement.scrollWidth") <= width
            shot = SCREENSHOTS / f"dashboard-{width}x{height}.png"
            tab.page.screenshot(path=str(shot), full_page=True)
            assert tab.errors == []
            tab.page.context.close()
            shots[width] = shot
    for shot in shots.values():
        assert shot.stat().st_size > 50_000


def test_the_age_turns_red_when_the_server_stops_and_recovers(tab: Tab, server: Server) -> None:
    wait_for_data(tab)
    page = tab.page
    page.wait_for_function("() => document.querySelector('#overall').dataset.level === 'ok'")
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        seen: set[str] = set()

        def all_red() -> bool:
            found = set(levels(page).values())
            seen.update(found)
            return found == {"red"}

        wait_for(
            all_red,
            timeout=60,
            what="every feed red after the server stopped",
            detail=lambda: levels(page),
            pause=page_pause(page),
        )
        assert "amber" in seen, "went red without passing amber"
        assert "no answer" in page.inner_text("[data-feed=submissions] .age")
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-feed] .age')].every(el => el.dataset.level === 'ok')"
    )


def test_a_page_left_open_does_not_grow(soak: Soak, sources: tuple[cfg.SourcesConfig, Path]) -> None:
    page = soak.tab.page
    # Keep the data changing (every chart redraws every second) for the rest of the soak.
    remaining = max(15.0, SOAK_SECONDS - (time.monotonic() - soak.started))
    with traffic_running(sources[0], rate=20):
        page.wait_for_timeout(remaining * 1000)  # the soak's length: the point, not a wait
    page.wait_for_timeout(1500)  # the last animations end (their own length)
    grown = heap_bytes(page) - soak.heap
    assert grown < HEAP_GROWTH_LIMIT, f"the JS heap grew by {grown / 1e6:.1f} MB in {SOAK_SECONDS} s"
    # The same charts and the same DOM: nothing is re-created per poll (the trend: a line per country).
    assert page.evaluate(ELEMENTS) <= soak.elements + 10
    assert page.evaluate("document.querySelectorAll('.trend li').length") <= len(COUNTRIES)
    assert page.evaluate("document.querySelectorAll('canvas').length") == 5
    # At most one request per chart per second over the whole soak, one for the trend per minute.
    elapsed = time.monotonic() - soak.tab.requests[0][0]
    counts = soak.tab.chart_requests()
    trend = sum(n for name, n in counts.items() if name.startswith("history/"))
    polled = {name: n for name, n in counts.items() if not name.startswith("history/")}
    assert len(polled) == 7 and all(n <= elapsed + 1 for n in polled.values()), (elapsed, counts)
    assert trend <= elapsed / 60 + 1, (elapsed, counts)
