"""The analytical store (history/store.py), the same tests on both back ends: DuckDB in a file and
PostgreSQL on the shared cluster. Exact totals (past 2**63) round-trip, a minute is written once,
arrivals come back per minute, reads are as of each source's newest minute (sparse sources), retention
prunes, and a store newer than this version is refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pisa_pulse.engine.aggregates import CountryTotals
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.history.store import SCHEMA_VERSION, CountryMinute, Store
from pisa_pulse.sources.schema import DOMAINS, INDEX_COLUMNS
from tests.conftest import SharedServer

BIG = 2**70  # Σw·pv at PISA's size passes 2**63


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.server)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty store of each back end."""
    if request.param == "duckdb":
        yield f"duckdb:{tmp_path / 'history.duckdb'}"
    else:
        shared: SharedServer = request.getfixturevalue("shared")
        yield shared.create_database("history")


def totals(rows: int, scale: int = 1) -> CountryTotals:
    return CountryTotals(
        rows=rows,
        valid={name: rows - i for i, name in enumerate(INDEX_COLUMNS)},
        sums={name: -scale * (i + 1) for i, name in enumerate(INDEX_COLUMNS)},
        weights={name: scale * rows for name in DOMAINS},
        weighted_scores={name: BIG + d for d, name in enumerate(DOMAINS)},
    )


def test_a_minute_round_trips_exactly_and_is_written_once(target: str, tmp_path: Path) -> None:
    store = Store.open(target, tmp_path)
    try:
        minute = 29_933_000
        alb = {"ALB": CountryMinute(totals(120, 7), arrivals=3)}
        arg = {"ARG": CountryMinute(totals(80), arrivals=0)}
        assert store.write_minute(minute, "alb", alb) and store.write_minute(minute, "arg", arg)
        assert not store.write_minute(minute, "alb", {"ALB": CountryMinute(totals(999), arrivals=9)})
        assert store.minute(minute) == {"alb": alb, "arg": arg}
        assert store.minute(minute + 1) == {}
        store.write_minute(minute + 1, "alb", {"ALB": CountryMinute(totals(125, 7), arrivals=5)})
        assert store.arrivals(minute, minute + 1) == {"ALB": {minute: 3, minute + 1: 5}}
        assert store.last_minute("alb") == minute + 1 and store.last_minute("aus") is None
        assert store.prune(minute + 1) == 2
        assert store.minute(minute) == {} and store.last_minute("alb") == minute + 1
    finally:
        store.close()


def test_reads_are_as_of_each_sources_newest_minute_when_sources_write_sparsely(
    target: str, tmp_path: Path
) -> None:
    store = Store.open(target, tmp_path)  # as `sync --once` writes: a source only when it changed
    try:
        minute = 29_933_000
        assert store.span() is None and store.as_of(minute) == {}
        alb = [{"ALB": CountryMinute(totals(rows, 3), arrivals=rows - 10)} for rows in (10, 12)]
        arg = {"ARG": CountryMinute(totals(80), arrivals=80), "AUS": CountryMinute(totals(4), arrivals=4)}
        store.write_minute(minute, "alb", alb[0])
        store.write_minute(minute + 2, "arg", arg)
        store.write_minute(minute + 5, "alb", alb[1])
        store.write_minute(minute + 7, "arg", {})  # its countries all emptied
        assert not store.write_minute(minute + 5, "alb", alb[0])  # still written once
        assert store.span() == (minute, minute + 7)
        assert store.as_of(minute - 1) == {}
        assert store.as_of(minute) == store.as_of(minute + 1) == {"alb": alb[0]}
        assert store.as_of(minute + 2) == store.as_of(minute + 4) == {"alb": alb[0], "arg": arg}
        assert store.as_of(minute + 5) == store.as_of(minute + 6) == {"alb": alb[1], "arg": arg}
        assert store.as_of(minute + 7) == store.as_of(minute + 99) == {"alb": alb[1]}
        assert store.minute(minute + 4) == {}  # `minute` still reads that minute's own rows
    finally:
        store.close()


def test_the_schema_is_versioned_and_a_newer_store_refused(target: str, tmp_path: Path) -> None:
    store = Store.open(target, tmp_path)
    assert store.version() == SCHEMA_VERSION
    store.close()
    again = Store.open(target, tmp_path)  # migrating a current store changes nothing
    assert again.version() == SCHEMA_VERSION
    again._run("INSERT INTO pisa_pulse_schema VALUES (?)", (SCHEMA_VERSION + 1,))
    again.close()
    with pytest.raises(PisaPulseError, match="newer than this version"):
        Store.open(target, tmp_path)


def test_a_duckdb_file_another_process_has_open_is_named_with_the_way_out(tmp_path: Path) -> None:
    hold = "import sys, duckdb; c = duckdb.connect(sys.argv[1]); print(flush=True); input()"
    holder = subprocess.Popen(  # DuckDB lets one process open a file (its threads share it)
        [sys.executable, "-c", hold, str(tmp_path / "history.duckdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "\n"
        with pytest.raises(PisaPulseError, match=r"history\.duckdb is in use by another process"):
            Store.open("duckdb", tmp_path)
    finally:
        holder.communicate("\n", timeout=30)


def test_an_unknown_store_is_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(PisaPulseError, match="neither duckdb"):
        Store.open("mysql://x", tmp_path)
