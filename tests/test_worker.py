"""One leased source captured and published to NATS, followed by a replica's view: a real source on
the shared PostgreSQL cluster under traffic, on the session's three-node NATS cluster (fleet/worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pisa_pulse.capture.replicated import slot_name
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.fleet import checkpoints, leases, parts
from pisa_pulse.fleet.bus import PartsView
from pisa_pulse.fleet.leases import LeaseBook
from pisa_pulse.fleet.stores import Stores
from pisa_pulse.fleet.worker import SourceWorker, Worker
from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import SharedServer, wait_for
from tests.nats_cluster import NatsCluster, run_within, running_cluster, until
from tests.nats_cluster import connected as connected_nats
from tests.test_parts import bodies
from tests.test_pipeline import traffic_made

pytestmark = pytest.mark.server
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """This module's own three-node cluster, not the session's: its scenarios make and drop R3
    buckets every few seconds under 2 s leases, and on CI machines they twice hung for minutes on a
    session cluster that the fleet and cluster tests had killed nodes of and stepped leaders down on
    a quarter of an hour before (not reproduced here). A fresh cluster takes seconds."""
    with running_cluster(tmp_path_factory.mktemp("nats-worker"), size=3) as cluster:
        yield cluster


async def delete_stores(js: JetStreamContext, prefix: str) -> None:
    """Remove every bucket and stream a test made under `prefix`; a cleanup that fails is logged, so
    that it cannot hide why the scenario failed."""
    names = [leases.bucket_name(prefix, what) for what in (parts.PARTS, leases.WORKERS, leases.LEASES)]
    deletions: list[Callable[[], Awaitable[object]]] = [
        *(functools.partial(js.delete_key_value, name) for name in names),
        functools.partial(js.delete_stream, leases.bucket_name(prefix, checkpoints.CHECKPOINTS)),
        functools.partial(js.delete_object_store, leases.bucket_name(prefix, checkpoints.SNAPSHOTS)),
    ]
    for delete in deletions:
        try:
            await asyncio.wait_for(delete(), 10)
        except NotFoundError:
            pass
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("cleanup of %s: %r", prefix, exc)


ROWS = 200
LEASE_S = 2  # short, for the test: expiry is what the takeover waits for


def test_a_source_under_traffic_reaches_a_replica_exactly(
    nats_cluster: NatsCluster, shared: SharedServer, new_dir: Path
) -> None:
    config = shared.up(new_dir, countries="alb", schema="slim", rows_per_country=ROWS, messy=0.05)
    traffic = Traffic(config, rate=300, updates=0.15, deletes=0.1, messy=0.05, seed=11)
    stop_traffic = threading.Event()
    writing = threading.Thread(target=traffic.run, args=(stop_traffic,))

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        async with (
            connected_nats(*nats_cluster.urls) as writer,
            connected_nats(*nats_cluster.urls[::-1]) as reader,
        ):
            js = writer.jetstream(timeout=30)
            stores = await Stores.open(js, replicas=3, prefix=prefix)
            worker = SourceWorker(
                config.sources[0], stores, epoch=7, worker="w1", slot_prefix=shared.slot_prefix
            )
            task = asyncio.create_task(worker.run())
            try:

                def part() -> Aggregates:
                    pipeline = worker.pipeline
                    if pipeline is None:
                        return Aggregates()
                    with pipeline.lock:
                        return pipeline.held["alb"].part.copy()

                await until(lambda: part().count() == ROWS, "the initial copy in the worker")
                view = PartsView(reader.jetstream(timeout=30), prefix)
                await view.start()
                writing.start()
                await asyncio.to_thread(traffic_made, traffic, 300)
                stop_traffic.set()
                await asyncio.to_thread(writing.join)
                stopped = time.time()
                await until(
                    lambda: view.as_of() > stopped and bodies(view.aggregates()) == bodies(part()),
                    "the replica equal to the worker, past the end of the traffic",
                )
                assert view.sources["alb"].epoch == 7 and part().count() != ROWS  # the traffic changed it
                await until(lambda: view.sources["alb"].status.get("rows") == part().count(), "the status")
                assert view.sources["alb"].status["state"] == "streaming"
            finally:
                stop_traffic.set()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await delete_stores(js, prefix)

    run_within(nats_cluster, scenario)


def test_workers_share_the_sources_and_the_survivor_takes_over_a_crashed_ones(
    nats_cluster: NatsCluster, shared: SharedServer, new_dir: Path
) -> None:
    config = shared.up(new_dir, countries="alb,arg,aus", schema="slim", rows_per_country=100)
    names = [s.name for s in config.sources]

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        async with connected_nats(*nats_cluster.urls) as client:
            js = client.jetstream(timeout=30)
            stores = await Stores.open(js, replicas=3, prefix=prefix)
            view = PartsView(js, prefix)
            await view.start()
            workers = {}
            for name in ("a", "b"):
                book = await LeaseBook.open(js, f"worker-{name}", replicas=3, lease_s=LEASE_S, prefix=prefix)
                workers[name] = Worker(book, config.sources, stores, LEASE_S, slot_prefix=shared.slot_prefix)
            stops = {name: asyncio.Event() for name in workers}
            tasks = {name: asyncio.create_task(w.run(stops[name])) for name, w in workers.items()}
            try:

                def split() -> list[int]:
                    return sorted(len(w.running) for w in workers.values())

                await until(lambda: split() == [1, 2], "the three sources split 2 and 1")
                await until(lambda: view.aggregates().count() == 300, "every source's rows at the replica")
                crashed = max(workers, key=lambda n: len(workers[n].running))
                survivor = next(n for n in workers if n != crashed)
                old = {s: workers[crashed].book.held[s].epoch for s in workers[crashed].running}
                tasks[crashed].cancel()  # a crash: its leases are left to expire
                with contextlib.suppress(asyncio.CancelledError):
                    await tasks[crashed]
                await until(
                    lambda: sorted(workers[survivor].running) == names,
                    "the survivor capturing every source",
                    timeout=120,
                )
                for source, epoch in old.items():
                    await until(
                        lambda s=source, e=epoch: view.sources[s].epoch > e, f"{source} under a new epoch"
                    )
                await until(lambda: view.aggregates().count() == 300, "every row once at the replica")
                await until(
                    lambda: {v.status.get("worker") for v in view.sources.values()} == {f"worker-{survivor}"},
                    "every source's status from the survivor",
                )
            finally:
                for stop in stops.values():
                    stop.set()
                for task in tasks.values():
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await delete_stores(js, prefix)

    run_within(nats_cluster, scenario)


def test_a_source_removed_from_the_settings_is_retired_with_its_slot(
    nats_cluster: NatsCluster, shared: SharedServer, new_dir: Path
) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="slim", rows_per_country=50)
    removed = config.sources[1]
    slot = slot_name(shared.slot_prefix, removed)

    def slots() -> set[str]:
        with connected(removed.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT slot_name FROM pg_replication_slots")
            return {row[0] for row in cur.fetchall()}

    async def run(sources: list[Source], until_true: Callable[[], bool], what: str, prefix: str) -> None:
        async with connected_nats(*nats_cluster.urls) as client:
            js = client.jetstream(timeout=30)
            stores = await Stores.open(js, replicas=3, prefix=prefix)
            book = await LeaseBook.open(js, "w", replicas=3, lease_s=LEASE_S, prefix=prefix)
            worker = Worker(book, sources, stores, LEASE_S, slot_prefix=shared.slot_prefix)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                await until(until_true, what)
            finally:
                stop.set()
                await task

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        async with connected_nats(*nats_cluster.urls) as client:
            js = client.jetstream(timeout=30)
            await Stores.open(js, replicas=3, prefix=prefix)  # the bucket the view follows
            view = PartsView(js, prefix)
            await view.start()
            try:
                await run(
                    list(config.sources),
                    lambda: set(view.sources) == {"alb", "arg"},
                    "both published",
                    prefix,
                )
                assert slot in await asyncio.to_thread(slots)
                await run(
                    [config.sources[0]], lambda: set(view.sources) == {"alb"}, "arg's parts gone", prefix
                )
            finally:
                await delete_stores(js, prefix)

    run_within(nats_cluster, scenario)
    wait_for(lambda: slot not in slots(), 30, what="the removed source's slot dropped")
