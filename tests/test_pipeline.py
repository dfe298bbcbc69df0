"""The pipeline against real PostgreSQL: exact aggregates under traffic, and after every kind of break.

Each test runs live traffic (inserts, corrections, withdrawals, messy values) on five sources, breaks
something, stops the traffic, waits until the pipeline has read past the server's WAL position, and
then requires the engine's aggregates to equal plain SQL over the sources (the oracle): counts and
sums exactly, since both are exact integers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psycopg2
import pytest

from pisa_pulse.capture import replication
from pisa_pulse.capture.contract import SourceStatus
from pisa_pulse.capture.replicated import slot_name
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.checkpoint import CheckpointStore
from pisa_pulse.engine.oracle import aggregates_from_sql
from pisa_pulse.engine.pipeline import Pipeline, checkpoint_path
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.schema import CHART_COLUMNS
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import BringUp, SharedServer, stop, wait_for

COUNTRIES = "alb,arg,aus,aut,bel"


@pytest.fixture
def five(new_dir: Path, shared: SharedServer) -> cfg.SourcesConfig:
    """Five slim sources with 300 students each, on the shared cluster (slots: `shared.slot_prefix`)."""
    return shared.up(new_dir, countries=COUNTRIES, schema="slim", rows_per_country=300, messy=0.05)


@pytest.fixture
def five_own(new_dir: Path, bring_up: BringUp) -> cfg.SourcesConfig:
    """The same five sources on a cluster of this test's own, for a test that stops it."""
    return bring_up(new_dir, countries=COUNTRIES, schema="slim", rows_per_country=300, messy=0.05)


@contextmanager
def running(run: Callable[[threading.Event], object]) -> Iterator[None]:
    """`run(stopping)` in a thread until the block ends."""
    stopping = threading.Event()
    thread = threading.Thread(target=run, args=(stopping,))
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join()


@contextmanager
def traffic_running(config: cfg.SourcesConfig, rate: float = 400) -> Iterator[Traffic]:
    """Traffic with corrections, withdrawals and messy values until the block ends."""
    traffic = Traffic(config, rate=rate, updates=0.15, deletes=0.1, messy=0.05, seed=3)
    with running(traffic.run):
        yield traffic


def traffic_made(traffic: Traffic, operations: int, timeout: float = 60) -> None:
    """Until the traffic has made `operations` more changes: an amount rather than a time, so that a
    slower machine makes as many, at its own pace."""
    until = traffic.counts.operations + operations
    wait_for(
        lambda: traffic.counts.operations >= until,
        timeout,
        what=f"{operations} more operations of traffic",
        detail=traffic.status,
    )


@contextmanager
def pipeline_running(
    config: cfg.SourcesConfig, data_dir: Path, slot_prefix: str = "pisa_pulse"
) -> Iterator[Pipeline]:
    pipeline = Pipeline(config.sources, data_dir, checkpoint_interval=0.2, slot_prefix=slot_prefix)
    with running(pipeline.run):
        yield pipeline


def server_lsn(config: cfg.SourcesConfig) -> int:
    with connected(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        return replication.parse_lsn(cur.fetchone()[0])


def wait_caught_up(
    pipeline: Pipeline,
    config: cfg.SourcesConfig,
    timeout: float = 120,
    sources: cfg.SourcesConfig | None = None,
) -> None:
    """Until every source's (or the given sources') position is past the server's WAL position as of now."""
    target = server_lsn(config)
    names = {s.name for s in (sources or config).sources}

    def behind() -> list[SourceStatus]:
        return [
            r
            for r in pipeline.statuses()
            if r.source in names and ((p := pipeline.position(r.source)) is None or p.lsn < target)
        ]

    wait_for(lambda: not behind(), timeout, what="every source caught up with the server", detail=behind)


def oracle(config: cfg.SourcesConfig) -> Aggregates:
    total = Aggregates()
    for s in config.sources:
        with psycopg2.connect(s.dsn) as conn:
            total = total.merge(aggregates_from_sql(conn, s.name.upper(), arrivals=False))
    return total


def assert_exact(pipeline: Pipeline, config: cfg.SourcesConfig) -> None:
    engine = pipeline.aggregates.without_arrivals()
    expected = oracle(config)
    assert engine.count() == expected.count() > 0
    assert engine == expected


def wait_streaming(pipeline: Pipeline, timeout: float = 90) -> None:
    """Until every source streams (its copy, if any, is done)."""
    wait_for(
        lambda: all(s.state == "streaming" for s in pipeline.statuses()),
        timeout,
        what="every source streaming",
        detail=pipeline.statuses,
    )


def test_copy_then_stream_equals_sql_under_traffic(
    five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer
) -> None:
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline:
        wait_streaming(pipeline)  # so that every row of the traffic arrives by the stream
        with traffic_running(five) as traffic:
            traffic_made(traffic, 1200)
        assert traffic.counts.updated > 20 and traffic.counts.deleted > 10
        wait_caught_up(pipeline, five)
        assert_exact(pipeline, five)
        assert all(r.copies == 1 and r.state == "streaming" for r in pipeline.statuses())
        hours = pipeline.aggregates.hourly()
        assert sum(hours.values()) == pipeline.aggregates.count()
        assert 0 < hours.get(-1, 0) <= 5 * 300  # the initial copy has no arrival time
        this_hour = int(time.time() // 3600)
        assert sum(n for h, n in hours.items() if h >= this_hour - 1) > 100  # streamed rows: now


def test_restart_resumes_from_the_checkpoint(
    five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer
) -> None:
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline, traffic_running(five) as traffic:
        wait_streaming(pipeline)  # copied, so that the restart resumes
        traffic_made(traffic, 600)
    with traffic_running(five) as traffic:
        traffic_made(traffic, 600)  # changes while the pipeline is down: the slots keep them
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline:
        wait_caught_up(pipeline, five)
        assert_exact(pipeline, five)
        assert all(r.copies == 0 for r in pipeline.statuses())


def test_a_source_is_fresh_only_once_its_backlog_is_read(
    five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer
) -> None:
    """Restarted on a backlog, no source may claim freshness (what `sync --once` waits for and the
    charts' as-of shows) before it holds every change committed before then."""
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline:
        wait_streaming(pipeline)
    with traffic_running(five, rate=2000) as traffic:
        traffic_made(traffic, 1500)  # while the pipeline is down: the slots keep it
    started = time.time()
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline:
        # The totals as of the first moment every source claims it (read right after the claims)
        claimed = wait_for(
            lambda: all(s.fresh_at >= started for s in pipeline.statuses()) and [pipeline.aggregates],
            60,
            what="every source fresh",
            pause=lambda _: time.sleep(0.001),
        )
        expected = oracle(five)
        assert claimed[0].without_arrivals() == expected and expected.count() > 0


def wait_checkpointed(data_dir: Path, sources: int) -> None:
    """Wait until a pipeline of `data_dir` (another process) has checkpointed every source once."""
    store = CheckpointStore(checkpoint_path(data_dir))
    try:
        wait_for(lambda: len(store.positions()) == sources, timeout=90, what="every source checkpointed")
    finally:
        store.close()


def test_sigkill_while_traffic_runs(five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer) -> None:
    env = {**os.environ, cfg.DATA_DIR_ENV: str(new_dir)}
    with traffic_running(five) as traffic:
        command = [sys.executable, "-m", "pisa_pulse", "pipeline", "--slot-prefix", shared.slot_prefix]
        proc = subprocess.Popen(command, env=env)
        try:
            wait_checkpointed(new_dir, len(five.sources))
            traffic_made(traffic, 600)  # streamed and checkpointed for a while
            proc.kill()  # the fault under test: no chance to checkpoint or close
        finally:
            stop(proc)
        traffic_made(traffic, 400)  # changes while the pipeline is down
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline:
        wait_caught_up(pipeline, five)
        assert_exact(pipeline, five)
        assert all(r.copies == 0 for r in pipeline.statuses())


def test_source_server_restarted_in_immediate_mode(five_own: cfg.SourcesConfig, new_dir: Path) -> None:
    five = five_own  # stopped below: on a cluster of its own
    assert five.cluster is not None
    cluster = EmbeddedCluster(five.cluster, Path(five.cluster.cluster_dir))
    with pipeline_running(five, new_dir) as pipeline:
        with traffic_running(five) as traffic:
            wait_streaming(pipeline)  # copied: the restart must not make it copy again
            traffic_made(traffic, 600)
            cluster.stop("immediate")
            wait_for(
                lambda: all(r.state != "streaming" for r in pipeline.statuses()),
                what="every source noticed that its server stopped",
                detail=pipeline.statuses,
            )
            cluster.start()
            traffic_made(traffic, 800)  # written once the traffic has reconnected too
        wait_caught_up(pipeline, five)
        assert_exact(pipeline, five)
        assert all(r.state == "streaming" and r.copies == 1 for r in pipeline.statuses())


def test_slot_dropped_behind_the_pipelines_back(
    five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer
) -> None:
    victim = five.sources[1]
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline:
        with traffic_running(five) as traffic:
            wait_streaming(pipeline)  # dropped behind the back of a streaming pipeline
            traffic_made(traffic, 600)
            with connected(victim.dsn) as conn:
                replication.drop_slot(conn, slot_name(shared.slot_prefix, victim))
            wait_for(
                lambda: {r.source: r.copies for r in pipeline.statuses()}[victim.name] == 2,
                timeout=90,
                what=f"{victim.name} copied again",
                detail=pipeline.statuses,
            )
            traffic_made(traffic, 400)  # and streamed after its new copy
        wait_caught_up(pipeline, five)
        assert_exact(pipeline, five)
        copies = {r.source: r.copies for r in pipeline.statuses()}
        assert copies == {s.name: 2 if s is victim else 1 for s in five.sources}


def test_a_broken_source_does_not_stop_the_others(
    five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer
) -> None:
    broken = five.sources[2]
    with connected(broken.dsn) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE responses RENAME TO responses_old")
    healthy = cfg.SourcesConfig(five.schema, five.seed, tuple(s for s in five.sources if s is not broken))
    with pipeline_running(five, new_dir, shared.slot_prefix) as pipeline:
        with traffic_running(healthy) as traffic:
            traffic_made(traffic, 600)
        wait_caught_up(pipeline, healthy)

        def failed() -> dict[str, tuple[str, str]] | None:
            state = {r.source: (str(r.state), r.reason) for r in pipeline.statuses()}
            return state if state[broken.name][0] == "failed" else None

        state = wait_for(failed, what=f"{broken.name} failed", detail=pipeline.statuses)
        assert state.pop(broken.name) == (
            "failed",
            f"source {broken.name} has no responses table; "
            "run `pisa-pulse sources up` or point the config at it",
        )
        assert {s for s, _ in state.values()} == {"streaming"}
        assert pipeline.aggregates.without_arrivals() == oracle(healthy)


def test_a_least_privilege_replication_role(
    five: cfg.SourcesConfig, new_dir: Path, shared: SharedServer
) -> None:
    """REPLICATION plus SELECT on `responses`, the publication made by the owner: the README's SQL."""
    role = f"{shared.prefix}pisa_capture"  # roles are cluster-wide: this test's own name
    with connected(five.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {role}")
        cur.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'capture-pw'")
    for s in five.sources:
        with connected(s.dsn) as conn, conn.cursor() as cur:
            cur.execute(f"GRANT SELECT ON responses TO {role}")
            replication.ensure_publication(conn, CHART_COLUMNS)  # as the owner
    server = f"postgresql://{role}:capture-pw@127.0.0.1:{shared.port}"
    capture = replace(
        five, sources=tuple(Source(s.name, f"{server}/{cfg.database_of(s.dsn)}") for s in five.sources)
    )
    with pipeline_running(capture, new_dir, shared.slot_prefix) as pipeline:
        with traffic_running(five) as traffic:
            traffic_made(traffic, 600)
        wait_caught_up(pipeline, five)
        assert_exact(pipeline, five)
        assert all(r.state == "streaming" for r in pipeline.statuses())


def slowed_copies() -> tuple[threading.Event, Callable[[], None]]:
    """A pipeline's `on_change` that sleeps 0.5 s after each batch (a copy's chunk: 5,000 rows) on the
    loop's thread while the returned event is set (it starts set)."""
    copying = threading.Event()
    copying.set()

    def slow_copy() -> None:
        if copying.is_set():
            time.sleep(0.5)

    return copying, slow_copy


def test_a_copy_keeps_the_other_sources_streams_alive(new_dir: Path, shared: SharedServer) -> None:
    """The replication loop copies one source at a time in its own thread; meanwhile it pings the
    other streams, so their walsenders never end them at `wal_sender_timeout` (60 s by default; 2 s
    here, set through the DSN), however long a copy takes (here slowed to 0.5 s a chunk)."""
    config = shared.up(new_dir, countries="alb,arg", schema="slim", rows_per_country=40_000)
    option = "options=-c%20wal_sender_timeout%3D2000"  # a URI's query parameter
    sources = [replace(s, dsn=s.dsn + ("&" if "?" in s.dsn else "?") + option) for s in config.sources]
    copying, slow_copy = slowed_copies()
    pipeline = Pipeline(sources, new_dir, slot_prefix=shared.slot_prefix, on_change=slow_copy)
    with running(pipeline.run):
        wait_streaming(pipeline)
        copying.clear()
        time.sleep(3)  # the loop reads every stream again: a stream ended meanwhile is found now
        assert [(s.source, s.connections_lost) for s in pipeline.statuses()] == [("alb", 0), ("arg", 0)]
        assert all(s.state == "streaming" for s in pipeline.statuses())


def test_no_checkpoint_is_written_while_a_source_is_copied(new_dir: Path, shared: SharedServer) -> None:
    """A cold start's copies run one after the other; the checkpoint waits until they are all done
    (writing each finished source meanwhile slowed the copies), so its first one holds every source."""
    config = shared.up(new_dir, countries="alb,arg", schema="slim", rows_per_country=10_000)
    copying, slow_copy = slowed_copies()
    pipeline = Pipeline(
        config.sources, new_dir, checkpoint_interval=0.1, slot_prefix=shared.slot_prefix, on_change=slow_copy
    )
    store = CheckpointStore(checkpoint_path(new_dir))
    try:
        with running(pipeline.run):
            first = wait_for(store.positions, 60, what="a checkpoint", pause=lambda _: time.sleep(0.01))
            assert set(first) == {"alb", "arg"}, "a checkpoint was written while a source was copied"
            copying.clear()
            wait_streaming(pipeline)
    finally:
        store.close()
