"""One leased source captured and published to NATS, followed by a replica's view: a real source on
the shared PostgreSQL cluster under traffic, on the session's three-node NATS cluster (fleet/worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from pathlib import Path

import pytest

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.fleet import bus, parts
from pisa_pulse.fleet.bus import PartsView
from pisa_pulse.fleet.worker import SourceWorker
from pisa_pulse.sources.traffic import Traffic
from tests.conftest import SharedServer
from tests.nats_cluster import NatsCluster, connected, until
from tests.test_parts import bodies
from tests.test_pipeline import traffic_made

pytestmark = pytest.mark.server

ROWS = 200


def test_a_source_under_traffic_reaches_a_replica_exactly(
    nats_cluster: NatsCluster, shared: SharedServer, new_dir: Path, tmp_path: Path
) -> None:
    config = shared.up(new_dir, countries="alb", schema="slim", rows_per_country=ROWS, messy=0.05)
    traffic = Traffic(config, rate=300, updates=0.15, deletes=0.1, messy=0.05, seed=11)
    stop_traffic = threading.Event()
    writing = threading.Thread(target=traffic.run, args=(stop_traffic,))

    async def scenario() -> None:
        parts.PARTS = f"parts_{uuid.uuid4().hex[:8]}"
        async with connected(*nats_cluster.urls) as writer, connected(*nats_cluster.urls[::-1]) as reader:
            js = writer.jetstream(timeout=30)
            kv = await bus.parts_bucket(js, replicas=3)
            worker = SourceWorker(config.sources[0], tmp_path, kv, epoch=7, slot_prefix=shared.slot_prefix)
            task = asyncio.create_task(worker.run())
            try:

                def part() -> Aggregates:
                    with worker.pipeline.lock:
                        return worker.pipeline.held["alb"].part.copy()

                await until(lambda: part().count() == ROWS, "the initial copy in the worker")
                view = PartsView(reader.jetstream(timeout=30))
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
            finally:
                stop_traffic.set()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await js.delete_key_value(parts.PARTS)

    asyncio.run(scenario())
