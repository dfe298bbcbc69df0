"""Leases on sources in JetStream KV, on the session's three-node cluster (fleet/leases.py).

Workers here are `LeaseBook`s of one process driven step by step (renew, then rebalance), so a test
can pause one (stop driving it) as SIGSTOP would pause a worker process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.js import JetStreamContext

from pisa_pulse.fleet import leases
from pisa_pulse.fleet.leases import LeaseBook
from tests.nats_cluster import NatsCluster, connected, eventually

pytestmark = pytest.mark.server

SOURCES = ["alb", "arg", "aus", "aut", "bel"]
LEASE_S = 2  # short, for the test: expiry is what it waits for


def run(cluster: NatsCluster, scenario: Callable[[JetStreamContext], Awaitable[None]]) -> None:
    """`scenario` with buckets of its own (names no other test uses), deleted after."""

    async def main() -> None:
        async with connected(*cluster.urls) as client:
            js = client.jetstream(timeout=30)
            suffix = uuid.uuid4().hex[:8]
            names = (leases.WORKERS, leases.LEASES)
            leases.WORKERS, leases.LEASES = f"workers_{suffix}", f"leases_{suffix}"
            try:
                await scenario(js)
            finally:
                for bucket in (leases.WORKERS, leases.LEASES):
                    await js.delete_key_value(bucket)
                leases.WORKERS, leases.LEASES = names

    asyncio.run(main())


async def book(js: JetStreamContext, worker: str) -> LeaseBook:
    return await LeaseBook.open(js, worker, replicas=3, lease_s=LEASE_S)


async def step(*books: LeaseBook) -> None:
    """One turn of each worker's loop: renew what it holds, then move towards the plan."""
    for b in books:
        await b.renew_all()
    for b in books:
        await b.rebalance(SOURCES)


def counts(*books: LeaseBook) -> list[int]:
    return [len(b.held) for b in books]


async def settled(books: tuple[LeaseBook, ...], expected: list[int]) -> None:
    async def probe() -> bool:
        await step(*books)
        return sorted(counts(*books)) == sorted(expected) and not set.intersection(
            *(set(b.held) for b in books)
        )

    await eventually(probe, f"leases spread as {expected}")


def test_two_workers_share_and_the_survivor_takes_over_fenced(nats_cluster: NatsCluster) -> None:
    async def scenario(js: JetStreamContext) -> None:
        a, b = await book(js, "worker-a"), await book(js, "worker-b")
        await settled((a, b), [3, 2])
        held_by_a = dict(a.held)
        # a pauses past its lease (nobody drives it): b ends up with every source.
        await eventually(
            lambda: step_and_count(b, 5), "worker-b holding every source after a's leases expired"
        )
        for source, old in held_by_a.items():
            assert b.held[source].epoch > old.epoch  # a new epoch for each
            assert await a.renew(old) is None  # a wakes up: its renewal is refused ...
        assert a.held == {}  # ... and it holds nothing
        owners = await b.owners()
        assert {lease.worker for lease in owners.values()} == {"worker-b"}

    run(nats_cluster, scenario)


async def step_and_count(b: LeaseBook, wanted: int) -> bool:
    await step(b)
    return len(b.held) == wanted


def test_a_joining_worker_takes_only_its_share_and_a_leaving_one_hands_over_at_once(
    nats_cluster: NatsCluster,
) -> None:
    async def scenario(js: JetStreamContext) -> None:
        a, b = await book(js, "worker-a"), await book(js, "worker-b")
        await settled((a, b), [3, 2])
        before = {**{s: "a" for s in a.held}, **{s: "b" for s in b.held}}
        c = await book(js, "worker-c")
        await settled((a, b, c), [2, 2, 1])
        after = {**{s: "a" for s in a.held}, **{s: "b" for s in b.held}, **{s: "c" for s in c.held}}
        assert sum(1 for s in SOURCES if before[s] != after[s]) == 1  # the fewest moves: one
        # c leaves (SIGTERM): its source is free at once, not after its lease.
        await c.leave()
        assert c.held == {}
        await settled((a, b), [3, 2])

    run(nats_cluster, scenario)
