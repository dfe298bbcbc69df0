"""A source published as key values and put back together by a replica (fleet/parts.py, no server)."""

from __future__ import annotations

import random

import pytest

from pisa_pulse.api import charts
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.ledger import Ledger
from pisa_pulse.engine.values import NUMERIC_COLUMNS
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.fleet import parts
from pisa_pulse.fleet.parts import SourceView

NOW = 1_764_590_400.0  # 2025-12-01 12:00 UTC
MINUTE = int(NOW // 60)


def row(cnt: str, rng: random.Random) -> list[object]:
    values: list[object] = ["1", cnt]
    for name in NUMERIC_COLUMNS:
        values.append(f"{rng.uniform(-2, 2):.4f}" if name in ("belong", "escs") else f"{rng.randint(1, 900)}")
    return values


class Worker:
    """A source's part, published after each batch as a worker does: the sums, and the touched hours."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.part, self.ledger = Aggregates(), Ledger("ALB")
        self.kv: dict[str, bytes] = {}  # what the bucket holds: the latest value of each key
        self.written: list[tuple[str, bytes]] = []  # every write, in order

    def publish(self, full: bool = False) -> None:
        exported = self.part.export(full)
        hours = parts.hours_to_write(self.part, exported, full)
        writes = [
            (parts.hour_key("alb", h), parts.hour_value(self.epoch, self.part.minutes_of_hour(h)))
            for h in hours
        ]
        writes.append((parts.sums_key("alb"), parts.sums_value(self.epoch, NOW, "0/1", self.part)))
        for key, value in writes:
            self.kv[key] = value
            self.written.append((key, value))


def bodies(agg: Aggregates) -> dict[str, object]:
    hours = charts.Query(now=NOW + 3600, points=168)
    minutes = charts.Query(now=NOW + 3600, points=300, bucket="minute")
    return {
        **{name: charts.build(name, agg, hours) for name in charts.CHARTS},
        "by minute": charts.build("submissions-over-time", agg, minutes),
    }


def replay(writes: list[tuple[str, bytes]]) -> SourceView:
    view = SourceView()
    for key, value in writes:
        view.take(key, value)
    return view


def test_a_replica_rebuilds_the_worker_part_from_every_write_or_from_the_latest_values() -> None:
    rng = random.Random(7)
    worker = Worker(epoch=5)
    pks: list[int] = []
    for batch in range(40):  # inserts, corrections and withdrawals over three hours and the copy
        minute = -1 if batch < 5 else MINUTE - 150 + 4 * batch
        for _ in range(rng.randint(1, 6)):
            if pks and rng.random() < 0.3:
                worker.ledger.delete(pks.pop(rng.randrange(len(pks))), worker.part)
            else:
                pk = rng.choice(pks) if pks and rng.random() < 0.3 else rng.randrange(10**6)
                worker.ledger.upsert(pk, row(rng.choice(["ALB", "ARG", "NA"]), rng), minute, worker.part)
                pks.append(pk)
        worker.publish(full=batch == 0)
    expected = bodies(worker.part)
    assert bodies(replay(worker.written).aggregates()) == expected  # a replica that saw every write
    assert bodies(replay(list(worker.kv.items())).aggregates()) == expected  # one that joined now
    assert replay(list(worker.kv.items())).position == "0/1"


def test_values_of_an_older_epoch_are_dropped() -> None:
    old, new = Worker(epoch=5), Worker(epoch=9)
    for w in (old, new):
        w.ledger.upsert(1, row("ALB", random.Random(1)), MINUTE, w.part)
        w.publish(full=True)
    new.ledger.upsert(2, row("ALB", random.Random(2)), MINUTE, new.part)
    new.publish()
    view = replay(new.written)
    stale = Worker(epoch=5)  # the paused owner wakes up and writes what it had
    stale.ledger.upsert(3, row("ARG", random.Random(3)), MINUTE + 1, stale.part)
    stale.publish(full=True)
    assert not any(view.take(key, value) for key, value in stale.written)
    assert view.epoch == 9 and view.aggregates().count() == 2


def test_after_a_fresh_copy_the_hours_the_new_owner_no_longer_has_drop_out() -> None:
    old = Worker(epoch=5)
    old.ledger.upsert(1, row("ALB", random.Random(1)), MINUTE - 120, old.part)  # an hour of its own
    old.publish(full=True)
    fresh = Worker(epoch=9)  # copied the table afresh: its rows are in the copy's minute
    fresh.ledger.upsert(1, row("ALB", random.Random(1)), -1, fresh.part)
    fresh.publish(full=True)
    view = replay(old.written + fresh.written)
    assert view.aggregates().by_minute() == {-1: 1}


def test_a_newer_schema_is_refused_with_the_fix() -> None:
    with pytest.raises(PisaPulseError, match="upgrade this process"):
        SourceView().take("sums.alb", b'{"schema": 99, "epoch": 1}')


def test_hours_out_of_the_workers_window_leave_the_replica_and_the_edge_hour_is_cut_alike() -> None:
    rng = random.Random(9)
    worker = Worker(epoch=3)
    for pk in range(300):  # five hours of arrivals
        worker.ledger.upsert(pk, row("ALB", rng), MINUTE - 300 + pk, worker.part)
    worker.publish(full=True)
    edge = MINUTE - 150  # in the middle of an hour
    worker.part.forget_before(edge)
    worker.ledger.delete(3, worker.part)  # a withdrawal of a forgotten minute's row
    worker.publish()
    view = replay(worker.written)
    assert min(m for m in view.aggregates().by_minute()) == edge
    assert view.aggregates() == worker.part and bodies(view.aggregates()) == bodies(worker.part)
    assert set(view.hours) == set(worker.part.hourly())  # the older hours' minutes are not kept
    assert len(set(view.hours)) < len({(MINUTE - 300 + pk) // 60 for pk in range(300)})
