"""Read-only capture (`mode = "poll"`) against real PostgreSQL, through a role with SELECT only.

The sources are read as `reader`, a role with SELECT on `responses` and nothing else (no
REPLICATION, no CREATE): the pipeline must not need more. Traffic (inserts at random ids,
corrections, withdrawals, messy values) runs through the owner's role; once it stops and one
reconciliation has started after it, the engine's aggregates must equal plain SQL over the sources.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pisa_pulse.capture.contract import SourceStatus
from pisa_pulse.capture.polled import RECONCILE_RANGES_PER_POLL, PolledSource
from pisa_pulse.capture.preflight import check_source
from pisa_pulse.engine.pipeline import Pipeline
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.schema import CHART_COLUMNS
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import SharedServer, stop, wait_for
from tests.test_pipeline import assert_exact, running, traffic_made, wait_checkpointed

COUNTRIES = "alb,arg,aus,aut,bel"
READER = "reader"


def reader(config: cfg.SourcesConfig) -> str:
    """The SELECT-only role of these sources: `reader` with their database prefix (t7_reader), since
    roles are cluster-wide and the sources share a cluster with other tests'."""
    first = config.sources[0]
    return cfg.database_of(first.dsn).removesuffix(first.name) + READER


@pytest.fixture
def five(new_dir: Path, shared: SharedServer) -> cfg.SourcesConfig:
    """Five slim sources with 300 students each; `reader` may SELECT from their `responses`."""
    config = shared.up(new_dir, countries=COUNTRIES, schema="slim", rows_per_country=300, messy=0.05)
    with connected(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {reader(config)}")
        cur.execute(f"CREATE ROLE {reader(config)} LOGIN NOREPLICATION PASSWORD 'reader-pw'")
    for s in config.sources:
        with connected(s.dsn) as conn, conn.cursor() as cur:
            cur.execute(f"GRANT SELECT ON responses TO {reader(config)}")
    return config


def as_reader(config: cfg.SourcesConfig) -> cfg.SourcesConfig:
    """The same sources, read as `reader` in poll mode."""
    role = reader(config)
    sources = tuple(
        Source(
            s.name,
            f"postgresql://{role}:reader-pw@127.0.0.1:{urlsplit(s.dsn).port}/{cfg.database_of(s.dsn)}",
            "poll",
        )
        for s in config.sources
    )
    return replace(config, sources=sources, cluster=None, admin_dsn=None)


@contextmanager
def polling(config: cfg.SourcesConfig, state: Path, reconcile: float = 1.0) -> Iterator[Pipeline]:
    pipeline = Pipeline(
        as_reader(config).sources,
        state,
        checkpoint_interval=0.2,
        poll_interval=0.25,
        reconcile_interval=reconcile,
    )
    with running(pipeline.run):
        yield pipeline


def traffic(config: cfg.SourcesConfig, operations: int) -> Traffic:
    """Corrections, withdrawals and messy values at random ids, until `operations` are made."""
    t = Traffic(config, rate=400, updates=0.15, deletes=0.1, messy=0.05, seed=4)
    with running(t.run):
        traffic_made(t, operations)
    assert t.counts.updated > 20 and t.counts.deleted > 10
    return t


def wait_reconciled(pipeline: Pipeline, after: float, timeout: float = 60) -> None:
    """Until every source has been reconciled from a snapshot taken after `after` (Unix time)."""
    wait_for(
        lambda: all(reconciled(p) > after for p in polled(pipeline)),
        timeout,
        what="every polled source reconciled after the traffic",
        detail=lambda: polled(pipeline),
    )


def polled(pipeline: Pipeline) -> list[SourceStatus]:
    """The polled sources' statuses."""
    return [s for s in pipeline.statuses() if s.mode == "poll"]


def reconciled(status: SourceStatus) -> float:
    """Unix time up to which a polled source's updates are in."""
    return (status.details["poll"]["updates_as_of_us"] or 0) / 1e6


def objects(dsn: str) -> tuple[int, int]:
    with connected(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_replication_slots)"
        )
        row = cur.fetchone()
    return int(row[0]), int(row[1])


def test_check_recommends_polling_for_a_select_only_role(five: cfg.SourcesConfig) -> None:
    checks = {c.name: c for c in check_source(as_reader(five).sources[0], "s", CHART_COLUMNS)}
    assert not checks["replication role"].ok and checks["poll: select"].ok
    assert checks["recommended mode"].ok and checks["recommended mode"].detail.startswith("poll")
    assert checks["least privilege"].detail == f"{reader(five)} is not a superuser"
    owner = {c.name: c for c in check_source(five.sources[0], "s", CHART_COLUMNS)}
    assert owner["recommended mode"].detail == "replication"
    assert "superuser" in owner["least privilege"].detail and "SELECT only" in owner["least privilege"].fix


def test_poll_mode_equals_sql_under_traffic(five: cfg.SourcesConfig, new_dir: Path) -> None:
    with polling(five, new_dir.parent / "state") as pipeline:
        traffic(five, 1200)
        stopped = time.time()
        wait_reconciled(pipeline, stopped)
        assert_exact(pipeline, five)
        assert all(p.state == "polling" and p.copies == 1 for p in polled(pipeline))
        assert (
            sum(p.details["poll"]["updates_found"] for p in polled(pipeline)) > 20
        )  # the corrections, found by digest
        # Rows present at the start have no arrival time; the rest arrived at the poll that saw them.
        hours = pipeline.aggregates.hourly()
        assert 0 < hours.get(-1, 0) <= 5 * 300
        assert sum(n for h, n in hours.items() if h >= int(stopped // 3600) - 1) > 100
    assert objects(five.sources[0].dsn) == (0, 0)  # no publication, no slot: SELECT was enough


def test_inserts_and_deletes_show_by_polling_without_a_reconciliation(
    five: cfg.SourcesConfig, new_dir: Path
) -> None:
    # No reconciliation in the test's time: polls alone must find them (how soon is bench/'s business).
    with polling(five, new_dir.parent / "state", reconcile=3600) as pipeline:
        wait_for(lambda: pipeline.submissions() == 5 * 300, timeout=90, what="every source copied")
        for sql, expected in (
            ("INSERT INTO responses (id, cnt) VALUES (4242, 'ARG')", 5 * 300 + 1),
            ("DELETE FROM responses WHERE id = 4242", 5 * 300),
        ):
            with connected(five.sources[1].dsn) as conn, conn.cursor() as cur:
                cur.execute(sql)
            wait_for(
                lambda expected=expected: pipeline.submissions() == expected,
                what=f"{sql!r} seen by a poll",
            )


def test_sigkill_and_restart_count_nothing_twice(five: cfg.SourcesConfig, new_dir: Path) -> None:
    readers_dir = new_dir.parent / "readers"
    readers_dir.mkdir()
    cfg.save(readers_dir, as_reader(five))
    command = [
        sys.executable,
        "-m",
        "pisa_pulse",
        "pipeline",
        "--mode",
        "poll",
        "--data-dir",
        str(readers_dir),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ})
    try:
        wait_checkpointed(readers_dir, len(five.sources))
        traffic(five, 800)  # polled and checkpointed while it runs ...
        proc.kill()  # the fault under test: no chance to checkpoint or close
    finally:
        stop(proc)
    traffic(five, 600)  # ... and while the pipeline is down
    with polling(five, readers_dir) as pipeline:
        assert pipeline.submissions() > 0  # restored from the checkpoint, not copied again
        wait_reconciled(pipeline, time.time())
        assert_exact(pipeline, five)
        assert all(p.copies == 0 for p in polled(pipeline))


def test_auto_mode_replicates_where_allowed_and_polls_elsewhere(
    five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer
) -> None:
    readers = as_reader(five).sources
    sources = [replace(readers[i] if i % 2 else s, mode="auto") for i, s in enumerate(five.sources)]
    pipeline = Pipeline(
        sources,
        new_dir.parent / "state",
        slot_prefix=shared.slot_prefix,
        poll_interval=0.25,
        reconcile_interval=1.0,
    )
    with running(pipeline.run):
        wait_for(
            lambda: {s["state"] for s in pipeline.status()} == {"streaming", "polling"},
            timeout=90,
            what="every source streaming or polling",
            detail=pipeline.status,
        )
        modes = {s["source"]: s["mode"] for s in pipeline.status()}
        assert modes == {s.name: "poll" if i % 2 else "replication" for i, s in enumerate(five.sources)}
        assert all("replication role" in p.details["mode_reason"] for p in polled(pipeline))
        traffic(five, 800)
        stopped = time.time()
        wait_reconciled(pipeline, stopped)
        wait_for(
            lambda: pipeline.as_of() > stopped,
            timeout=60,
            what="the replicated sources past the end of the traffic too",
            detail=pipeline.status,
        )
        assert_exact(pipeline, five)


@pytest.mark.parametrize("ranges", [64, 1_024, 16_384])
def test_the_reconciliation_reads_a_bounded_slice_and_comes_round(ranges: int) -> None:
    """Each poll's slice stays within the budget whatever the size; the slices cover every range once."""
    source = PolledSource(Source("alb", "dbname=alb"), poll_interval=0.25, reconcile_interval=30.0)
    covered: list[int] = []
    for poll in range(100_000):
        part = source._slice(ranges, float(poll))
        assert 1 <= len(part) <= RECONCILE_RANGES_PER_POLL
        covered += part
        source._cursor = part.stop % ranges
        if source._cursor == 0:
            break
    assert covered == list(range(ranges))
    # a small source still comes round within the interval: 30 s / 0.25 s = 120 polls at most
    assert ranges > 120 * RECONCILE_RANGES_PER_POLL or poll + 1 <= 120
