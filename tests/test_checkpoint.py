"""The SQLite checkpoint: rows and positions together, cost by changes, never backwards."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from pisa_pulse.capture.contract import Position
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.checkpoint import CheckpointStore, SourceChanges
from pisa_pulse.engine.ledger import RECORD_BYTES, Ledger
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.schema import CHART_COLUMNS


def _row(rng: random.Random, pk: int) -> list[str | None]:
    values: list[str | None] = [str(pk), "ALB", str(rng.randint(0, 8))]
    values += [f"{rng.uniform(-2, 2):.4f}", f"{rng.uniform(-2, 2):.4f}", str(rng.randint(500, 3000))]
    values += [f"{rng.uniform(1, 50):.5f}"] + [f"{rng.uniform(200, 700):.3f}" for _ in range(30)]
    assert len(values) == len(CHART_COLUMNS)
    return values


def test_restored_ledger_equals_the_live_one_after_random_changes(tmp_path: Path) -> None:
    rng = random.Random(5)
    live, aggregates = Ledger("ALB"), Aggregates()
    store = CheckpointStore(tmp_path / "cp.sqlite3")
    lsn = 0
    for _ in range(20):  # twenty checkpoints of random inserts, updates and deletes
        for _ in range(200):
            pk = rng.randint(1, 500)
            if rng.random() < 0.3:
                live.delete(pk, aggregates)
            else:
                digest = rng.randint(-(2**63), 2**63 - 1)
                live.upsert(pk, _row(rng, pk), rng.randint(480_000, 480_010), aggregates, digest)
        lsn += rng.randint(1, 1000)
        store.save({"alb": SourceChanges(Position("sys:1", lsn, 7), live.take_changes())})
    store.close()

    again = CheckpointStore(tmp_path / "cp.sqlite3")
    restored_aggregates = Aggregates()
    restored = Ledger.restore("ALB", again.rows("alb"), restored_aggregates)
    assert again.positions() == {"alb": Position("sys:1", lsn, 7)}
    held = set(live.keys())
    assert set(restored.keys()) == held
    assert all(restored.digest(pk) == live.digest(pk) for pk in held)
    assert restored_aggregates == aggregates and restored_aggregates.hourly() == aggregates.hourly()


def test_a_checkpoint_writes_only_the_changed_rows(tmp_path: Path) -> None:
    rng = random.Random(6)
    ledger, aggregates = Ledger("ALB"), Aggregates()
    for pk in range(1, 5001):
        ledger.upsert(pk, _row(rng, pk), 1, aggregates)
    store = CheckpointStore(tmp_path / "cp.sqlite3")
    assert store.save({"alb": SourceChanges(Position("s", 1, 0), ledger.take_changes())}) == 5000
    ledger.upsert(7, _row(rng, 7), 2, aggregates)
    ledger.delete(8, aggregates)
    assert store.save({"alb": SourceChanges(Position("s", 2, 0), ledger.take_changes())}) == 2
    assert sum(1 for _ in store.rows("alb")) == 4999


def test_a_position_never_goes_backwards_and_a_failed_save_changes_nothing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.sqlite3")
    store.save({"alb": SourceChanges(Position("s", 100, 0), [(1, b"x" * 4)])})
    with pytest.raises(PisaPulseError, match="go back"):
        store.save(
            {
                "arg": SourceChanges(Position("s", 5, 0), [(9, b"y" * 4)]),
                "alb": SourceChanges(Position("s", 50, 0), [(2, b"z" * 4)]),
            }
        )
    assert store.positions() == {"alb": Position("s", 100, 0)}
    assert list(store.rows("alb")) == [(1, b"x" * 4)] and list(store.rows("arg")) == []
    # Another database (a new identity) may start lower: it is a different stream.
    store.save({"alb": SourceChanges(Position("other", 5, 0), [])})
    store.forget("alb")
    assert store.positions() == {} and list(store.rows("alb")) == []


def test_a_checkpoint_of_another_format_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite3"
    store = CheckpointStore(path)
    store.save({"alb": SourceChanges(Position("s", 9, 0), [(1, b"x" * RECORD_BYTES)])})
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    fresh = CheckpointStore(path)
    assert fresh.positions() == {} and list(fresh.rows("alb")) == []  # rebuilt from the sources
    fresh.close()
    with sqlite3.connect(tmp_path / "cp.format-99.sqlite3") as db:  # the old file, kept whole
        assert db.execute("SELECT source, lsn FROM positions").fetchall() == [("alb", 9)]
