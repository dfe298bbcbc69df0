"""Chart 2 over windows longer than memory keeps (a week of arrival minutes, `Aggregates.keep_window`):
a `serve` with a history store answers up to its retention, the older hours read from the store as
written; one without history answers up to a week, as before."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.history.store import CountryMinute, Store
from pisa_pulse.sources import config as cfg
from tests.conftest import SharedServer, serving
from tests.test_history import get

pytestmark = pytest.mark.server


def counts(body: dict[str, Any]) -> list[int]:
    return [point["y"] for point in body["datasets"][0]["data"]]


def window(url: str, width: int) -> tuple[list[int], int]:
    """Chart 2's counts and the slot (minutes or hours since the epoch, by `width` seconds) of its last
    point: asked again if a slot ended while it was asked."""
    for _ in range(5):
        before = int(time.time() // width)
        status, body = get(url)
        assert status == 200, body
        if int(time.time() // width) == before:
            return counts(body), before
    raise AssertionError(f"every answer of {url} straddled a boundary")


def test_windows_longer_than_memory_read_the_older_hours_from_the_store(
    shared: SharedServer, new_dir: Path
) -> None:
    shared.up(new_dir, countries="alb", schema="slim", rows_per_country=40)
    store_path = new_dir.parent / "history.duckdb"
    now = int(time.time() // 60)
    old = {now - 9 * 1440 + 7 * k: 2 + k for k in range(30)}  # nine days ago, past the week in memory
    store = Store.open(f"duckdb:{store_path}", store_path.parent)
    try:
        for minute, rows in old.items():
            store.write_minute(minute, "alb", {"ALB": CountryMinute(Aggregates().totals("ALB"), rows)})
    finally:
        store.close()
    with cfg.config_path(new_dir).open("a", encoding="utf-8") as settings:
        settings.write(f'\n[history]\nstore = "duckdb:{store_path}"\nretention_days = 30\n')

    with serving("--data-dir", str(new_dir)) as server:
        url = server.url + "api/charts/submissions-over-time"
        hourly, last_hour = window(f"{url}?hours=240", 3600)
        expected = [0] * 240
        for minute, rows in old.items():
            expected[minute // 60 - (last_hour - 239)] += rows
        assert hourly == expected  # the rows of the initial copy have no arrival time
        by_minute, last_minute = window(f"{url}?hours=220&bucket=minute", 60)
        first = last_minute - 220 * 60 + 1
        assert len(by_minute) == 220 * 60 and {first + i: y for i, y in enumerate(by_minute) if y} == old
        status, refused = get(f"{url}?hours=721")
        assert status == 400 and "from 1 to 720" in refused["error"]["message"]
        document = get(server.url + "api/openapi.json")[1]
        parameters = document["paths"]["/api/charts/submissions-over-time"]["get"]["parameters"]
        assert next(p for p in parameters if p["name"] == "hours")["schema"]["maximum"] == 720

    with serving("--data-dir", str(new_dir), "--mode", "direct") as plain:  # no history: a week at most
        status, refused = get(plain.url + "api/charts/submissions-over-time?hours=169")
        assert status == 400 and "from 1 to 168" in refused["error"]["message"]
