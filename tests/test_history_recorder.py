"""The recorder (history/recorder.py) on a DuckDB store, its clock the watermark it is given: each
minute written once, as the aggregates stood when the watermark passed its end; a store that is
down loses nothing and writes nothing twice; the minute in progress is written at stop; the
charts of a written minute come back as they were built from those aggregates."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pisa_pulse.api import charts
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.history.query import parse_at
from pisa_pulse.history.recorder import Recorder
from pisa_pulse.history.store import Store
from pisa_pulse.sources import databases
from tests.conftest import SharedServer, wait_for

START = 29_940_000  # a minute since the epoch (2026-12-04T16:00Z)


def part(rows: int, minute: int, country: int = 0) -> Aggregates:
    """`rows` students of one country, all arrived in `minute`, with values that vary by row."""
    agg = Aggregates()
    for i in range(rows):
        agg.add(
            [country, minute, 0, 100 + i, 2000 + 7 * i, -500 + i, 3 + i % 5, 15_000 + i, *[480_000 + i] * 30]
        )
    return agg


class FlakyOpener:
    """Store.open that fails while `down` is set (a store that is down), counting the attempts."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.attempts = 0

    def __call__(self, target: str, data_dir: Path) -> Store:
        self.attempts += 1
        if self.down.is_set():
            raise ConnectionError("connection refused (the test's store is down)")
        return Store.open(target, data_dir)


def read(tmp_path: Path, minute: int) -> dict[str, Aggregates]:
    store = Store.open("duckdb", tmp_path)
    try:
        return {
            source: Aggregates.from_totals({code: entry.totals for code, entry in countries.items()})
            for source, countries in store.minute(minute).items()
        }
    finally:
        store.close()


def test_each_minute_is_written_once_as_it_stood_when_the_watermark_passed(tmp_path: Path) -> None:
    recorder = Recorder("duckdb", tmp_path, retention_days=30)
    recorder.start()
    try:
        recorder.observe(START * 60 + 10, {"alb": part(3, START)})  # the first minute: where it starts
        recorder.observe(START * 60 + 50, {"alb": part(4, START)})  # within it: nothing yet
        assert not recorder.pending and recorder.written == 0
        at_end = {"alb": part(5, START), "arg": part(2, START, country=1)}
        recorder.observe(START * 60 + 61, at_end)  # the watermark passed its end
        recorder.observe(START * 60 + 62, {"alb": part(9, START)})  # later changes: not that minute's
        wait_for(lambda: recorder.written == 2, 30, what="minute START of both sources written")
        stored = read(tmp_path, START)
        assert stored["alb"].without_arrivals() == at_end["alb"].without_arrivals()
        assert stored["arg"].without_arrivals() == at_end["arg"].without_arrivals()
        recorder.observe(START * 60 + 181, at_end)  # two boundaries at once: both minutes, same totals
        wait_for(lambda: recorder.written == 6, 30, what="minutes START+1 and START+2 written")
        assert read(tmp_path, START + 2)["alb"] == read(tmp_path, START + 1)["alb"]
    finally:
        recorder.stop(START * 60 + 200, at_end)
    assert recorder.written == 8  # the minute in progress (START+3), at stop
    assert set(read(tmp_path, START + 3)) == {"alb", "arg"}


def test_a_store_down_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pisa_pulse.history.recorder.RETRY_S", 0.1)
    opener = FlakyOpener()
    opener.down.set()
    recorder = Recorder("duckdb", tmp_path, retention_days=30, opener=opener)
    recorder.start()
    try:
        recorder.observe(START * 60, {"alb": part(1, START)})
        for minute in range(START + 1, START + 31):  # thirty minutes pass while it is down
            recorder.observe(minute * 60 + 1, {"alb": part(minute - START, minute)})
        wait_for(lambda: opener.attempts > 3, 30, what="the recorder retrying")
        assert recorder.failing and recorder.written == 0 and len(recorder.pending) == 30
        opener.down.clear()
        wait_for(lambda: recorder.written == 30, 30, what="every minute written once the store is back")
        assert recorder.failing is None and recorder.skipped == 0
    finally:
        recorder.stop(0, {})
    for minute in (START, START + 17, START + 29):
        assert read(tmp_path, minute)["alb"].count() == minute - START + 1
    again = Recorder("duckdb", tmp_path, retention_days=30)  # a restart replays nothing twice
    again.start()
    again.observe(START * 60, {"alb": part(1, START)})
    again.stop(START * 60 + 61, {"alb": part(1, START)})
    assert again.skipped == 2 and again.written == 0  # START, and START + 1 in progress at stop


def test_a_written_minute_answers_its_charts_as_they_were(tmp_path: Path) -> None:
    minute = START + 5
    shown = part(40, minute)
    shown.merge(part(25, minute - 70, country=1))  # arrived an hour and ten minutes before
    recorder = Recorder("duckdb", tmp_path, retention_days=30)
    recorder.start()
    recorder.observe(minute * 60, {"all": shown})
    recorder.observe((minute + 1) * 60 + 1, {"all": shown})
    wait_for(lambda: recorder.written == 1, 30, what="the minute written")
    try:
        for chart in charts.REGISTRY:
            if "bucket" in chart.parameters:
                continue  # chart 2 needs the arrival minutes of its window: checked below
            live = chart.build(shown, charts.parse_query(chart, {}, (minute + 1) * 60 - 1))
            assert recorder.chart_at(chart, minute, {}) == live, chart.name
        over_time = charts.BY_NAME["submissions-over-time"]
        past = recorder.chart_at(over_time, minute, {"bucket": "minute", "hours": "1"})
        points = past["datasets"][0]["data"]
        assert [p["y"] for p in points if p["y"]] == [40] == [points[-1]["y"]]  # the others: not written
        with pytest.raises(Exception, match="holds no minute"):
            recorder.chart_at(over_time, minute - 1, {})
    finally:
        recorder.stop(0, {})


@pytest.mark.parametrize(
    ("text", "minute"),
    [("2026-12-04T16:00Z", START), ("2026-12-04T16:00:59", START), ("2026-12-04T17:01+01:00", START + 1)],
)
def test_at_takes_iso_times(text: str, minute: int) -> None:
    assert parse_at(text) == minute


@pytest.mark.parametrize("text", [None, "", "yesterday", "2026-12-02 12:00", "2026-12-02T12"])
def test_a_bad_at_is_a_400_that_says_how(text: str | None) -> None:
    with pytest.raises(Exception, match="at") as info:
        parse_at(text)
    assert getattr(info.value, "status", None) == 400 and "?at=" in str(info.value)


@pytest.mark.parametrize("text", ["2026-13-01T00:00Z", "2026-02-31T12:00", "2026-12-02T24:30Z"])
def test_an_at_written_right_that_names_no_moment_is_a_404(text: str) -> None:
    with pytest.raises(Exception, match="names no moment") as info:
        parse_at(text)
    assert getattr(info.value, "status", None) == 404


@pytest.mark.server
def test_a_postgresql_store_down_for_30_s_loses_nothing(shared: SharedServer, tmp_path: Path) -> None:
    dsn = shared.create_database("outage")
    database = shared.prefix + "outage"
    recorder = Recorder(dsn, tmp_path, retention_days=30)
    recorder.start()

    def admin(statement: str) -> None:
        with databases.connected(shared.admin_dsn) as conn, conn.cursor() as cur:
            cur.execute(statement, (database,))

    try:
        recorder.observe(START * 60, {"alb": part(1, START)})
        recorder.observe(START * 60 + 61, {"alb": part(1, START)})
        wait_for(lambda: recorder.written == 1, 30, what="the first minute written")
        admin("UPDATE pg_database SET datallowconn = false WHERE datname = %s")  # the store goes down
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s")
        down_until = time.monotonic() + 30
        minute = START + 1
        while time.monotonic() < down_until:  # a minute of the watermark every half second meanwhile
            minute += 1
            recorder.observe(minute * 60 + 1, {"alb": part(minute - START, minute)})
            time.sleep(0.5)
        assert recorder.failing and recorder.written < minute - START
        admin("UPDATE pg_database SET datallowconn = true WHERE datname = %s")
        wait_for(lambda: recorder.written == minute - START, 60, what="every minute written after the outage")
        assert recorder.skipped == 0 and recorder.dropped == 0
    finally:
        recorder.stop(0, {})
    store = Store.open(dsn, tmp_path)
    try:
        assert store._run("SELECT count(*), count(DISTINCT minute) FROM minutes") == [
            (minute - START, minute - START)
        ]
        assert store.minute(minute - 1)["alb"]["ALB"].totals.rows == minute - START  # as it stood at its end
    finally:
        store.close()


def test_a_source_removed_from_the_settings_leaves_the_minutes_after_it_even_after_a_restart(
    tmp_path: Path,
) -> None:
    def shown_at(minute: int) -> set[str]:
        store = Store.open("duckdb", tmp_path)
        try:
            return set(store.as_of(minute))
        finally:
            store.close()

    both = {"alb": part(3, START), "arg": part(2, START, country=1)}
    recorder = Recorder("duckdb", tmp_path, retention_days=30)
    recorder.start()
    recorder.observe(START * 60 + 10, both)
    recorder.observe(START * 60 + 61, both)
    wait_for(lambda: recorder.written == 2, 30, what="minute START of both sources")
    recorder.observe(START * 60 + 121, {"alb": both["alb"]})  # arg removed from the settings
    wait_for(lambda: recorder.written == 4, 30, what="minute START+1, arg written empty")
    recorder.stop(START * 60 + 130, {"alb": both["alb"]})
    assert shown_at(START) == {"alb", "arg"} and shown_at(START + 1) == shown_at(START + 5) == {"alb"}
    assert (
        recorder.status()["oldest"] == "2026-12-04T16:00Z"
        and recorder.status()["newest"] == "2026-12-04T16:02Z"
    )

    again = Recorder("duckdb", tmp_path, retention_days=30)  # a restart: arg back, then alb removed
    again.start()
    again.observe(START * 60 + 190, both)
    again.observe(START * 60 + 250, {"arg": both["arg"]})
    again.stop(START * 60 + 251, {"arg": both["arg"]})
    assert shown_at(START + 3) == {"arg"} and shown_at(START + 4) == {"arg"}
