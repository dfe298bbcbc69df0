"""End to end: `pisa-pulse serve` as a subprocess against real sources with traffic.

Two servers run side by side on the same sources: the pipeline (replication) and the original design
(direct: the aggregate SQL on every source per request). Once traffic stops and the pipeline says its
data is as of a moment after the last commit, every chart must be the same on both.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pisa_pulse.api import charts
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import SharedServer, serving, wait_for
from tests.test_pipeline import running, traffic_made


def get(url: str) -> tuple[dict[str, Any], dict[str, str]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}


def streaming(base: str) -> bool:
    """Whether every source streams (False while the server cannot answer)."""
    try:
        return {s["state"] for s in get(base + "api/status")[0]["sources"]} == {"streaming"}
    except OSError:
        return False


def wait_streaming(base: str, timeout: float = 90) -> None:
    wait_for(lambda: streaming(base), timeout, what="the pipeline streaming every source")


def as_of(headers: dict[str, str]) -> float:
    """X-Data-As-Of in Unix seconds; 0 while it is `unknown` (a capture process that has just started
    says when its data is from once every source has reported since)."""
    sent = headers["x-data-as-of"]
    return 0.0 if sent == "unknown" else datetime.fromisoformat(sent.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def sources(new_dir: Path, shared: SharedServer) -> tuple[cfg.SourcesConfig, Path]:
    config = shared.up(
        new_dir, countries="alb,arg,aus,aut,bel", schema="slim", rows_per_country=300, messy=0.05
    )
    # `serve --data-dir` reads its settings from the sources config: slots of this test's own there.
    with cfg.config_path(new_dir).open("a", encoding="utf-8") as settings:
        settings.write(f'\n[capture]\nslot_prefix = "{shared.slot_prefix}"\n')
    direct = new_dir.parent / "direct.toml"
    entries = "".join(f'[[sources]]\nname = "{s.name}"\ndsn = "{s.dsn}"\n\n' for s in config.sources)
    direct.write_text(f'[capture]\nmode = "direct"\n\n{entries}')
    return config, direct


def test_every_chart_equals_the_direct_mode_once_traffic_stops(
    sources: tuple[cfg.SourcesConfig, Path], new_dir: Path
) -> None:
    config, direct_settings = sources
    with (
        serving("--data-dir", str(new_dir)) as live_server,
        serving("--config", str(direct_settings)) as direct_server,
    ):
        live, direct = live_server.url, direct_server.url
        wait_streaming(live)
        traffic = Traffic(config, rate=500, updates=0.1, deletes=0.05, messy=0.05, seed=9)
        with running(traffic.run):
            traffic_made(traffic, 1500)
        stopped = time.time()
        assert traffic.counts.updated > 10 and traffic.counts.deleted > 5
        wait_for(
            lambda: as_of(get(live + "api/charts/submissions")[1]) > stopped,
            what="the pipeline's data past the end of the traffic",
        )
        for name in charts.CHARTS:
            if name == "submissions-over-time":
                continue  # SQL cannot know when rows arrived; the live chart is checked below
            url = f"api/charts/{name}" + (
                "?countries=ALB,ARG,AUS,AUT,BEL" if name in charts.PER_COUNTRY else ""
            )
            assert get(live + url)[0] == get(direct + url)[0], name
        total = get(direct + "api/charts/submissions")[0]["count"]
        series = get(live + "api/charts/submissions-over-time?hours=2")[0]["datasets"][0]["data"]
        assert 0 < sum(p["y"] for p in series) <= total - 5 * 300 + traffic.counts.deleted


def test_a_committed_row_reaches_the_chart(sources: tuple[cfg.SourcesConfig, Path], new_dir: Path) -> None:
    """How soon is bench/'s business (the serving latency); this checks that it gets there."""
    config, _ = sources
    with serving("--data-dir", str(new_dir)) as live_server:
        live = live_server.url
        wait_streaming(live)
        before = get(live + "api/charts/submissions")[0]["count"]
        with connected(config.sources[0].dsn) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO responses (id, cnt) VALUES (42, 'ALB')")
        wait_for(
            lambda: get(live + "api/charts/submissions")[0]["count"] == before + 1,
            what="the committed row in the chart",
        )
