"""History end to end: two `serve`s on the same real sources, one keeping its history in DuckDB (the
default) and one in PostgreSQL, through traffic with corrections and withdrawals; once a whole
minute has passed with the traffic paused, `/api/history/<chart>?at=` of that minute answers what
`/api/charts/<chart>` answered live during it, and what the independent oracle computes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pisa_pulse.sources import config as cfg
from tests import independent_oracle as oracle
from tests.conftest import SharedServer, serving, wait_for
from tests.test_independent_oracle import traffic

PER_COUNTRY_QUERY = "countries=ARG,ALB"


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def iso(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%MZ")


def test_a_past_minute_answers_what_was_shown_live_in_both_stores(
    shared: SharedServer, new_dir: Path, tmp_path: Path
) -> None:
    config = shared.up(new_dir, countries="alb,arg,aus", schema="slim", rows_per_country=100, messy=0.05)
    base = cfg.config_path(new_dir).read_text()
    stores = {"duckdb": "duckdb", "postgresql": shared.create_database("history")}
    files = {}
    for name, store in stores.items():
        files[name] = tmp_path / f"{name}.toml"
        files[name].write_text(
            base + f'\n[capture]\nslot_prefix = "{shared.slot_prefix}_{name[:4]}"\n'
            f'state_dir = "{tmp_path / name}"\n[history]\nstore = "{store}"\n'
        )
    with (
        serving("--config", str(files["duckdb"])) as first,
        serving("--config", str(files["postgresql"])) as second,
    ):
        urls = {"duckdb": first.url, "postgresql": second.url}
        started = int(time.time() // 60)
        rows = lambda: sum(len(oracle.ids_of(source.dsn)) for source in config.sources)  # noqa: E731

        def caught_up() -> bool:
            expected = rows()
            return all(
                get(url + "api/status")[1]["snapshot"]["submissions"] == expected for url in urls.values()
            )

        wait_for(caught_up, 60, what="both serves holding every row")
        traffic(config, 200)  # corrections and withdrawals; then paused
        wait_for(caught_up, 60, what="both serves holding the traffic")
        quiet = int(time.time() // 60) + 1  # the first whole minute without changes
        wait_for(lambda: time.time() > quiet * 60 + 1, 70, what="the quiet minute")
        live = {
            name: {chart: get(f"{url}api/charts/{chart}")[1] for chart in oracle.CHART_NAMES}
            | {f"{chart}?{PER_COUNTRY_QUERY}": get(f"{url}api/charts/{chart}?{PER_COUNTRY_QUERY}")[1]
               for chart in oracle.PER_COUNTRY}
            for name, url in urls.items()
        }  # fmt: skip
        at = iso(quiet)
        for name, url in urls.items():
            wait_for(
                lambda u=url: get(f"{u}api/history/submissions?at={at}")[0] == 200,
                90,
                what=f"the quiet minute in {name}'s history",
            )
            for key, body in live[name].items():
                chart, _, query = key.partition("?")
                past = get(f"{url}api/history/{chart}?at={at}{'&' + query if query else ''}")
                assert past == (200, body), (name, key)
            assert get(f"{url}api/history/escs?at={iso(started - 5)}")[0] == 404  # before it started
            assert get(f"{url}api/history/escs?at=noon")[0] == 400
            status = get(url + "api/status")[1]["history"]
            assert status["written"] >= 3 and status["failing"] is None and status["dropped"] == 0
        totals = oracle.all_totals({s.name.upper(): s.dsn for s in config.sources})
        expected = oracle.chart_bodies(totals, quiet * 60, {}, None)
        for chart in (*oracle.PER_COUNTRY, "submissions"):
            assert live["duckdb"][chart] == expected[chart] == live["postgresql"][chart], chart
