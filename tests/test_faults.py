"""Faults, on real servers: each case breaks something while traffic runs, then requires the oracle.

Run alone with `pytest -m faults`. Every case ends like the pipeline tests: traffic stopped, the
pipeline caught up, and its aggregates equal to plain SQL over the sources (no row lost, none
counted twice). The cases: a source server down for 30 s while the others stay fresh (in both
capture modes); the pipeline SIGKILLed five times at random moments; a slot invalidated by
`max_slot_wal_keep_size` while the pipeline is down; columns added and dropped and a TRUNCATE while
streaming; the checkpoint deleted, and corrupted.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from pisa_pulse.capture.contract import SourceStatus
from pisa_pulse.engine.checkpoint import CheckpointStore
from pisa_pulse.engine.pipeline import Pipeline, checkpoint_path
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.databases import connected, table_columns
from pisa_pulse.sources.schema import CHART_COLUMNS
from tests.conftest import BringUp, stop, wait_for
from tests.test_pipeline import (
    assert_exact,
    pipeline_running,
    running,
    server_lsn,
    traffic_made,
    traffic_running,
    wait_caught_up,
    wait_streaming,
)

pytestmark = pytest.mark.faults

COUNTRIES = "alb,arg,aus,aut"


@pytest.fixture
def four(new_dir: Path, bring_up: BringUp) -> cfg.SourcesConfig:
    return bring_up(new_dir, countries=COUNTRIES, schema="slim", rows_per_country=300, messy=0.05)


def cluster_of(config: cfg.SourcesConfig) -> EmbeddedCluster:
    assert config.cluster is not None
    return EmbeddedCluster(config.cluster, Path(config.cluster.cluster_dir))


def joined(a: cfg.SourcesConfig, b: cfg.SourcesConfig) -> cfg.SourcesConfig:
    return replace(a, sources=a.sources + b.sources, cluster=None, admin_dsn=None)


@contextmanager
def capturing(config: cfg.SourcesConfig, state: Path, mode: str) -> Iterator[Pipeline]:
    sources = [replace(s, mode=mode) for s in config.sources]
    pipeline = Pipeline(sources, state, checkpoint_interval=0.2, poll_interval=0.25, reconcile_interval=1.0)
    with running(pipeline.run):
        yield pipeline


def wait_settled(pipeline: Pipeline, configs: list[cfg.SourcesConfig], timeout: float = 120) -> None:
    """Replicated sources past each server's WAL position; polled ones reconciled after now."""
    now = time.time()
    targets = {s.name: server_lsn(c) for c in configs for s in c.sources}

    def behind() -> list[SourceStatus]:
        statuses = pipeline.statuses()
        return [
            r
            for r in statuses
            if r.mode == "replication"
            and ((p := pipeline.position(r.source)) is None or p.lsn < targets[r.source])
        ] + [
            r
            for r in statuses
            if r.mode == "poll" and (r.details["poll"]["updates_as_of_us"] or 0) <= now * 1e6
        ]

    wait_for(lambda: not behind(), timeout, what="every source settled", detail=pipeline.status)


def status_of(pipeline: Pipeline, source: str) -> SourceStatus:
    return next(r for r in pipeline.statuses() if r.source == source)


def others_fresh_after(pipeline: Pipeline, source: str, moment: float) -> bool:
    """Whether every source but `source` is fresh as of a time after `moment` (Unix time)."""
    return all(r.fresh_at > moment for r in pipeline.statuses() if r.source != source)


@pytest.mark.parametrize("mode", ["replication", "poll"])
def test_a_source_server_down_for_30_s_while_the_others_stay_fresh(
    four: cfg.SourcesConfig, bring_up: BringUp, new_dir: Path, mode: str
) -> None:
    # The fifth country lives on a server of its own, which goes away.
    lone = bring_up(new_dir.parent / "lone", countries="bel", schema="slim", rows_per_country=300)
    everything = joined(four, lone)
    with capturing(everything, new_dir.parent / "state", mode) as pipeline:
        capturing_state = "streaming" if mode == "replication" else "polling"
        wait_for(
            lambda: {s["state"] for s in pipeline.status()} == {capturing_state},
            timeout=90,
            what=f"every source {capturing_state}",
            detail=pipeline.status,
        )
        with traffic_running(four, rate=200):
            cluster_of(lone).stop("immediate")
            down = time.time()
            wait_for(
                lambda: status_of(pipeline, "bel").state == "reconnecting",
                what="bel reconnecting once its server stopped",
                detail=pipeline.status,
            )
            while time.time() - down < 30:  # the server stays down for 30 s
                # The others keep up: their data moves on past now, while bel waits for its server.
                now = time.time()
                wait_for(
                    lambda now=now: others_fresh_after(pipeline, "bel", now),
                    what="the other sources fresh while bel is down",
                    detail=pipeline.status,
                )
                assert status_of(pipeline, "bel").state == "reconnecting", pipeline.status()
                time.sleep(1)
            bel = {s["source"]: s for s in pipeline.status()}["bel"]
            assert bel["reason"] and (bel["lag_ms"] is None or bel["lag_ms"] >= 25_000)
            cluster_of(lone).start()
        with traffic_running(lone, rate=100) as traffic:
            traffic_made(traffic, 100)
        wait_settled(pipeline, [four, lone])
        assert_exact(pipeline, everything)


def test_sigkill_five_times_at_random_moments(four: cfg.SourcesConfig, new_dir: Path) -> None:
    rng = random.Random(11)
    command = [sys.executable, "-m", "pisa_pulse", "pipeline", "--data-dir", str(new_dir)]
    with traffic_running(four, rate=300):
        # Each kill lands a random moment after the pipeline has started (it says so): the first during
        # the initial copy, the others mid-stream or mid-checkpoint.
        for delay in (0.3, *(rng.uniform(0.5, 3.0) for _ in range(4))):
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                assert proc.stdout is not None
                started = proc.stdout.readline()
                assert started.startswith("pipeline on"), started
                time.sleep(delay)  # the random moment, not a wait for anything
                proc.kill()  # the fault under test: no chance to checkpoint or close
            finally:
                stop(proc)
    with pipeline_running(four, new_dir) as pipeline:
        wait_caught_up(pipeline, four)
        assert_exact(pipeline, four)


def test_a_slot_invalidated_while_the_pipeline_is_down(four: cfg.SourcesConfig, new_dir: Path) -> None:
    admin = four.sources[0].dsn
    with connected(admin) as conn, conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        cur.execute("SELECT pg_reload_conf()")
    try:
        with pipeline_running(four, new_dir) as pipeline:
            wait_caught_up(pipeline, four)
        with traffic_running(four, rate=400) as traffic:  # WAL far past 1 MB while nobody reads the slots
            traffic_made(traffic, 1200)
        with connected(admin) as conn, conn.cursor() as cur:
            for _ in range(3):
                cur.execute("SELECT pg_switch_wal()")
                cur.execute("CHECKPOINT")
            cur.execute("SELECT count(*) FROM pg_replication_slots WHERE wal_status = 'lost'")
            assert cur.fetchone()[0] == len(four.sources)
        with pipeline_running(four, new_dir) as pipeline:
            wait_caught_up(pipeline, four)
            assert_exact(pipeline, four)
            assert {(s["copies"], s["copy_reason"]) for s in pipeline.status()} == {(1, "slot invalidated")}
    finally:
        with connected(admin) as conn, conn.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            cur.execute("SELECT pg_reload_conf()")


def test_columns_added_and_dropped_and_a_truncate_while_streaming(
    four: cfg.SourcesConfig, new_dir: Path
) -> None:
    alb, arg = four.sources[0], four.sources[1]
    with connected(alb.dsn) as conn:
        spare = next(c for c in table_columns(conn) if c not in CHART_COLUMNS)
    with pipeline_running(four, new_dir) as pipeline:
        with traffic_running(four, rate=300) as traffic:
            traffic_made(traffic, 300)
            with connected(alb.dsn) as conn, conn.cursor() as cur:
                cur.execute("ALTER TABLE responses ADD COLUMN note text DEFAULT 'x'")
                cur.execute("UPDATE responses SET note = 'y' WHERE id IN (SELECT id FROM responses LIMIT 20)")
                wait_caught_up(pipeline, four)  # streamed with the new column before it goes
                cur.execute(f'ALTER TABLE responses DROP COLUMN "{spare}"')
                cur.execute("ALTER TABLE responses DROP COLUMN note")
            with connected(arg.dsn) as conn, conn.cursor() as cur:
                cur.execute("TRUNCATE responses")
            traffic_made(traffic, 450)
        wait_caught_up(pipeline, four)
        assert_exact(pipeline, four)
        assert all(r.state == "streaming" for r in pipeline.statuses())


def test_a_deleted_or_corrupted_checkpoint(four: cfg.SourcesConfig, new_dir: Path) -> None:
    with pipeline_running(four, new_dir) as pipeline, traffic_running(four, rate=200) as traffic:
        wait_streaming(pipeline)  # copied and checkpointed: a checkpoint worth losing
        traffic_made(traffic, 300)
    path = checkpoint_path(new_dir)
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        (path.parent / name).unlink(missing_ok=True)
    with traffic_running(four, rate=200) as traffic:
        traffic_made(traffic, 200)
    with pipeline_running(four, new_dir) as pipeline:  # deleted: a clean rebuild from the sources
        wait_caught_up(pipeline, four)
        assert_exact(pipeline, four)
        assert all(r.copies == 1 for r in pipeline.statuses())
    path.write_bytes(b"not a checkpoint" * 512)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(PisaPulseError) as info:  # corrupted: a clear error, not wrong numbers
        CheckpointStore(path)
    assert "checkpoint" in str(info.value) and "remove" in str(info.value)
    assert path.read_bytes().startswith(b"not a checkpoint")  # left for whoever looks into it


class Proxy:
    """A TCP proxy in front of a server that the test controls: it forwards, holds, or drops."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()  # held: the bytes wait here, as in a stalled network
                target.sendall(data)
        except OSError:
            pass
        for s in (source, target):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Reset every connection through the proxy."""
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.sockets = []

    def close(self) -> None:
        self.drop()
        self.listener.close()


def test_the_network_to_a_source_stalled_then_dropped(four: cfg.SourcesConfig, new_dir: Path) -> None:
    assert four.cluster is not None
    proxy = Proxy(four.cluster.port)
    alb = four.sources[0]
    behind_proxy = replace(
        four,
        sources=(
            replace(alb, dsn=alb.dsn.replace(f":{four.cluster.port}/", f":{proxy.port}/")),
            *four.sources[1:],
        ),
    )
    try:
        with pipeline_running(behind_proxy, new_dir) as pipeline:
            wait_caught_up(pipeline, four)
            with traffic_running(four, rate=200) as traffic:
                traffic_made(traffic, 200)
                proxy.flowing.clear()
                held = time.time()
                # Bytes already past the proxy may still arrive; after that the stalled source is not
                # claimed fresh any more (its freshness stays put), while the others' moves on.
                wait_for(
                    lambda: others_fresh_after(pipeline, "alb", held + 1),
                    what="the other sources fresh past the stall's start",
                    detail=pipeline.status,
                )
                frozen = status_of(pipeline, "alb").fresh_at
                time.sleep(max(0.0, held + 5 - time.time()))  # the stall lasts 5 s: the fault, not a wait
                assert status_of(pipeline, "alb").fresh_at == frozen and pipeline.as_of() <= frozen
                now = time.time()
                wait_for(
                    lambda: others_fresh_after(pipeline, "alb", now),
                    what="the other sources still fresh at the stall's end",
                    detail=pipeline.status,
                )
                proxy.flowing.set()
                wait_for(
                    lambda: status_of(pipeline, "alb").fresh_at > now,
                    what="alb fresh again once its bytes flow",
                    detail=pipeline.status,
                )
                proxy.drop()  # and now the connections break
                wait_for(
                    lambda: status_of(pipeline, "alb").connections_lost >= 1,
                    what="alb's broken connection noticed",
                    detail=pipeline.status,
                )
                traffic_made(traffic, 400)  # written while alb reconnects
            wait_caught_up(pipeline, four)
            assert_exact(pipeline, four)
            alb_now = {r.source: r for r in pipeline.statuses()}["alb"]
            assert alb_now.connections_lost >= 1 and alb_now.state == "streaming"
    finally:
        proxy.close()
