"""Parts through NATS: a worker's writes of its sources and a replica's view of them, on the session's
three-node cluster, including the SIGKILL of the node the replica is connected to (fleet/bus.py)."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from nats.js.kv import KeyValue

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.ledger import Ledger
from pisa_pulse.fleet import bus, leases, parts
from pisa_pulse.fleet.bus import PartsPublisher, PartsView
from tests.nats_cluster import NatsCluster, connected, until
from tests.test_parts import MINUTE, bodies, row

pytestmark = pytest.mark.server


class Source:
    """A source's ledger and part, changed by random batches as a worker's pipeline changes them."""

    def __init__(self, name: str, seed: int) -> None:
        self.name, self.rng = name, random.Random(seed)
        self.part, self.ledger = Aggregates(), Ledger(name.upper())
        self.pks: list[int] = []

    def batch(self, minute: int) -> None:
        for _ in range(self.rng.randint(1, 5)):
            if self.pks and self.rng.random() < 0.3:
                self.ledger.delete(self.pks.pop(self.rng.randrange(len(self.pks))), self.part)
            else:
                pk = self.rng.randrange(10**6)
                self.ledger.upsert(pk, row(self.name.upper(), self.rng), minute, self.part)
                self.pks.append(pk)


def merged(sources: list[Source]) -> Aggregates:
    total = Aggregates()
    for s in sources:
        total.merge(s.part)
    return total


async def write_batches(kv: KeyValue, sources: list[Source], batches: int, epoch: int, first: int) -> None:
    for n in range(batches):
        for s in sources:
            s.batch(MINUTE - 200 + 7 * (first + n))
            full = first + n == 0
            hours = parts.hours_to_write(s.part, s.part.export(full), full)
            await PartsPublisher(kv, s.name).publish(epoch, float(n), f"0/{n}", s.part, hours)


def test_a_replica_follows_the_parts_through_the_loss_of_its_node(nats_cluster: NatsCluster) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        sources = [Source("alb", 1), Source("arg", 2), Source("aus", 3)]
        # The writer on the last node, the replica on the first: the one that dies.
        urls = nats_cluster.urls
        async with connected(*urls[::-1]) as writer, connected(*urls) as reader:
            js = writer.jetstream(timeout=30)
            kv = await bus.parts_bucket(js, replicas=3, prefix=prefix)
            try:
                await write_batches(kv, sources, 10, epoch=4, first=0)
                view = PartsView(reader.jetstream(timeout=30), prefix)
                await view.start()  # joins late: the last value of every key first
                await until(
                    lambda: bodies(view.aggregates()) == bodies(merged(sources)), "the replica caught up"
                )
                # The node serving the replica's connection dies; writes go on through the others.
                assert reader.connected_url is not None
                port = reader.connected_url.port
                victim = next(name for name, node in nats_cluster.nodes.items() if node.ports.client == port)
                nats_cluster.kill(victim)
                try:
                    await write_batches(kv, sources, 10, epoch=4, first=10)
                    await until(
                        lambda: bodies(view.aggregates()) == bodies(merged(sources)),
                        "the replica caught up after its node died",
                    )
                finally:
                    await asyncio.to_thread(nats_cluster.restart, victim)
            finally:
                await js.delete_key_value(leases.bucket_name(prefix, parts.PARTS))

    asyncio.run(scenario())


def test_a_source_purged_key_by_key_leaves_the_view_whatever_the_order(nats_cluster: NatsCluster) -> None:
    """A retirement (fleet/retire.py) purges a source's keys one by one; once its sums are purged,
    the purges of its status and hours that follow must not bring it back as an empty source (which
    would also hold the replica's as-of at 0)."""

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        kept, removed = Source("alb", 1), Source("arg", 2)
        async with connected(*nats_cluster.urls) as client:
            js = client.jetstream(timeout=30)
            kv = await bus.parts_bucket(js, replicas=3, prefix=prefix)
            try:
                await write_batches(kv, [kept, removed], 3, epoch=1, first=0)
                await PartsPublisher(kv, removed.name).publish_status(1, "w1", {"state": "streaming"})
                view = PartsView(js, prefix)
                await view.start()
                await until(lambda: set(view.sources) == {"alb", "arg"}, "both sources in the view")
                keys = [k for k in await kv.keys() if k.split(".")[1] == removed.name]
                keys.sort(key=lambda k: not k.startswith("sums."))  # the sums first, the rest after
                assert len(keys) > 2, keys
                for key in keys:
                    await kv.purge(key)
                await write_batches(kv, [kept], 1, epoch=1, first=3)  # a marker after the purges
                await until(
                    lambda: bodies(view.aggregates()) == bodies(merged([kept])), "the marker reached the view"
                )
                assert set(view.sources) == {"alb"}
            finally:
                await js.delete_key_value(leases.bucket_name(prefix, parts.PARTS))

    asyncio.run(scenario())
