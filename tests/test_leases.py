"""Leases on sources in JetStream KV, on the session's three-node cluster (fleet/leases.py).

Workers here are `LeaseBook`s of one process driven step by step (renew, then rebalance), so a test
can pause one (stop driving it) as SIGSTOP would pause a worker process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from pisa_pulse.fleet import leases
from pisa_pulse.fleet.leases import LeaseBook
from tests.nats_cluster import NatsCluster, connected, eventually

pytestmark = pytest.mark.server

SOURCES = ["alb", "arg", "aus", "aut", "bel"]
LEASE_S = 2  # short, for the test: expiry is what it waits for


Opener = Callable[[str], Awaitable[LeaseBook]]


def run(cluster: NatsCluster, scenario: Callable[[Opener], Awaitable[None]]) -> None:
    """`scenario`, given a way to open a worker's book, on buckets of its own (a prefix no other test
    uses), deleted after."""

    async def main() -> None:
        async with connected(*cluster.urls) as client:
            js = client.jetstream(timeout=30)
            prefix = f"t{uuid.uuid4().hex[:8]}"
            try:

                async def book(worker: str) -> LeaseBook:
                    return await LeaseBook.open(js, worker, replicas=3, lease_s=LEASE_S, prefix=prefix)

                await scenario(book)
            finally:
                for what in (leases.WORKERS, leases.LEASES):
                    await js.delete_key_value(leases.bucket_name(prefix, what))

    asyncio.run(main())


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
    async def scenario(book: Opener) -> None:
        a, b = await book("worker-a"), await book("worker-b")
        ended: list[float] = []
        await b.watch_ends(lambda: ended.append(time.monotonic()))
        await settled((a, b), [3, 2])
        assert not ended  # renewals are not ends
        held_by_a = dict(a.held)
        paused = time.monotonic()
        # a pauses past its lease (nobody drives it): b ends up with every source.
        await eventually(
            lambda: step_and_count(b, 5), "worker-b holding every source after a's leases expired"
        )
        assert ended and ended[0] > paused  # the expiry of a's keys woke b's watch
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
    async def scenario(book: Opener) -> None:
        a, b = await book("worker-a"), await book("worker-b")
        await settled((a, b), [3, 2])
        before = {**{s: "a" for s in a.held}, **{s: "b" for s in b.held}}
        c = await book("worker-c")
        await settled((a, b, c), [2, 2, 1])
        after = {**{s: "a" for s in a.held}, **{s: "b" for s in b.held}, **{s: "c" for s in c.held}}
        assert sum(1 for s in SOURCES if before[s] != after[s]) == 1  # the fewest moves: one
        # c leaves (SIGTERM): its source is free at once, not after its lease.
        await c.leave()
        assert c.held == {}
        await settled((a, b), [3, 2])

    run(nats_cluster, scenario)
