"""History end to end: two `serve`s on the same real sources, one keeping its history in DuckDB (the
default) and one in PostgreSQL, through traffic with corrections and withdrawals; once a whole
minute has passed with the traffic paused, `/api/history/<chart>?at=` of that minute answers what
`/api/charts/<chart>` answered live during it, and what the independent oracle computes; and
`?from=&to=&step=` answers, point by point, what `?at=` answers for each minute the history holds
(the others left out), or a 400 in the error shape for a request that asks wrong."""

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


def without_code(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in ("id", "country")}


def series_are_what_at_answers(url: str, first: int, last: int) -> None:
    """Series over first..last equal, point by point, the `?at=` answers of their minutes."""
    for chart, query in [("performance", PER_COUNTRY_QUERY), ("learning-hours-per-week", "")]:
        for step in (1, 2):
            asked = f"from={iso(first)}&to={iso(last)}&step={step}m&{query}"
            status, body = get(f"{url}api/history/{chart}?{asked}")
            head = [body["from"], body["to"], body["step"]] if status == 200 else body
            assert head == [iso(first), iso(last), f"{step}m"], asked
            expected: dict[str, list[dict[str, Any]]] = {}
            for minute in range(first, last + 1, step):
                code, shown = get(f"{url}api/history/{chart}?at={iso(minute)}&{query}")
                for entry in shown["datasets"] if code == 200 else []:  # 404: not held, left out
                    points = expected.setdefault(entry.get("id") or entry["country"], [])
                    points.append({"at": iso(minute)} | without_code(entry))
            assert expected, asked
            assert body["datasets"] == [{"id": c, "data": points} for c, points in expected.items()], asked
    at = iso(last)
    count = get(f"{url}api/history/submissions?at={at}")[1]["count"]
    assert get(f"{url}api/history/submissions?from={at}&to={at}")[1]["datasets"] == [
        {"id": "submissions", "data": [{"at": at, "count": count}]}
    ]
    arrived = []  # per minute held, the rows that arrived in it: the last point of ?at=&bucket=minute
    for minute in range(first, last + 1):
        code, shown = get(f"{url}api/history/submissions-over-time?at={iso(minute)}&bucket=minute")
        if code == 200:
            arrived.append({"at": iso(minute), "count": shown["datasets"][0]["data"][-1]["y"]})
    over_time = get(f"{url}api/history/submissions-over-time?from={iso(first)}&to={at}&step=1m")[1]
    assert over_time["datasets"] == [{"id": "Submissions", "data": arrived}]
    for asked, says in [
        (f"at={at}&from={at}&to={at}", "both given"),
        (f"from={at}", "at is missing"),
        (f"from={at}&to={at}&step=0m", "step="),
        (f"from={iso(first - 30 * 1440)}&to={at}&step=1m", "more than the 10,080"),
        (f"from={at}&to={iso(first)}", "before from"),
    ]:
        status, error = get(f"{url}api/history/escs?{asked}")
        assert status == 400 and set(error) == {"error"} and error["error"]["status"] == 400, asked
        assert says in error["error"]["message"] and "; " in error["error"]["message"], asked
    assert get(f"{url}api/history/escs?from={iso(first - 99)}&to={iso(first - 90)}")[0] == 404


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
            series_are_what_at_answers(url, started - 2, quiet)
            assert get(f"{url}api/history/escs?at=noon")[0] == 400
            status = get(url + "api/status")[1]["history"]
            assert status["written"] >= 3 and status["failing"] is None and status["dropped"] == 0
        totals = oracle.all_totals({s.name.upper(): s.dsn for s in config.sources})
        expected = oracle.chart_bodies(totals, quiet * 60, {}, None)
        for chart in (*oracle.PER_COUNTRY, "submissions"):
            assert live["duckdb"][chart] == expected[chart] == live["postgresql"][chart], chart
