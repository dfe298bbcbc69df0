"""What the NATS JetStream design relies on, shown on a real three-node cluster with nats-py.

Workers lease sources through a key-value bucket (the revision compare-and-set is the fence), publish
per-source partial aggregates to another bucket, and API replicas watch that one. These tests pin down,
on nats-server 2.15 and nats-py 2.16:

- `kv.create` of an existing key and `kv.update(key, value, last=rev)` with a stale revision both raise
  `nats.js.errors.KeyWrongLastSequenceError`; `update` without `last` expects no key at all, like `create`;
  a revision is the bucket stream's sequence, so it increases across all keys of a bucket.
- A bucket TTL (`ttl=`, the stream's max age) removes a key not written within it; watchers see that only
  if the bucket has limit markers (`limit_marker_ttl=`), as an entry with operation "PURGE". Per-key TTL
  works: `kv.create(key, value, msg_ttl=seconds)` (whole seconds, at least 1); `kv.update` takes no TTL,
  so a lease with a per-key TTL is renewed with `js.publish(subject, value, headers={
  "Nats-Expected-Last-Subject-Sequence": rev}, msg_ttl=seconds)`, whose stale form raises
  `BadRequestError` with err_code 10071.
- A watcher sees every update in revision order through a SIGKILL of the node it is connected to (which
  also leads the bucket's stream and hosts the watcher's consumer), and the node rejoins with every value.
  Writes fail with NoStreamResponseError (now and then a timeout) until the stream elects a leader, a few
  seconds; the watcher resumes only when nats-py's ordered consumer misses two idle heartbeats, 5 s each
  and not settable through `kv.watch`, so 10 to 20 s after the kill.
- The object store keeps a 5 MB object on three replicas.

Each test runs its scenario with `asyncio.run`; deadlines are generous and nothing is timed, as machines
differ four times in speed. Each test makes buckets of its own and deletes them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
import uuid
from contextlib import suppress
from typing import Any, TypeVar

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tests.nats_cluster import WAIT, NatsCluster, connected, eventually, until

pytestmark = pytest.mark.server


logger = logging.getLogger(__name__)

JS_TIMEOUT = 30.0  # seconds for one JetStream API call
# A put during an election may get no answer at all (rather than "no responders"): retry it sooner.
PUT_TIMEOUT = 5.0
TTL = 2  # seconds; nats-py sends TTLs as whole seconds
PURGE = "PURGE"  # a watched entry's operation when a key was purged or expired with a marker

T = TypeVar("T")


def bucket_name(what: str) -> str:
    """A bucket name no other test (or earlier run) uses."""
    return f"{what}_{uuid.uuid4().hex[:8]}"


async def gone(kv: KeyValue, key: str) -> bool:
    """True when `kv.get(key)` finds no value."""
    try:
        await kv.get(key)
    except KeyNotFoundError:
        return True
    return False


async def new_bucket(cluster: NatsCluster, js: JetStreamContext, bucket: str, **config: Any) -> KeyValue:
    """`js.create_key_value` with three replicas, then wait until every node holds the bucket: a write
    on a node that does not hold it yet finds no responder (NoStreamResponseError)."""
    kv = await js.create_key_value(bucket=bucket, replicas=3, **config)
    await until(functools.partial(cluster.stream_everywhere, f"KV_{bucket}"), f"{bucket} on every node")
    return kv


def watch_into(watcher: KeyValue.KeyWatcher, entries: list[KeyValue.Entry]) -> asyncio.Task[None]:
    """A task appending every entry `watcher` delivers to `entries` (not the None that ends the backlog)."""

    async def collect() -> None:
        while True:
            entry = await watcher.updates(timeout=3600)  # type: ignore[no-untyped-call]
            if isinstance(entry, KeyValue.Entry):
                entries.append(entry)

    return asyncio.create_task(collect())


# -- a: compare-and-set ----------------------------------------------------------------------------------


def test_kv_create_and_update_are_compare_and_set(nats_cluster: NatsCluster) -> None:
    asyncio.run(_compare_and_set(nats_cluster))


async def _compare_and_set(cluster: NatsCluster) -> None:
    bucket = bucket_name("leases")
    async with connected(*cluster.urls) as client:
        js = client.jetstream(timeout=JS_TIMEOUT)
        kv = await new_bucket(cluster, js, bucket)
        assert (await kv.status()).stream_info.config.num_replicas == 3

        taken = await kv.create("source.alb", b"worker-1")
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.create("source.alb", b"worker-2")  # the lease is held
        renewed = await kv.update("source.alb", b"worker-1", last=taken)
        assert renewed > taken
        with pytest.raises(KeyWrongLastSequenceError) as stale:
            await kv.update("source.alb", b"worker-2", last=taken)  # a fenced-off worker
        # Only the description tells the current revision (the error has no err_code attribute set).
        assert stale.value.description == f"wrong last sequence: {renewed}"
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.update("source.alb", b"worker-2")  # no `last`: expects no key, like create

        elsewhere = await kv.put("source.aut", b"worker-2")
        assert elsewhere > renewed  # one sequence for the whole bucket
        entry = await kv.get("source.alb")
        assert (entry.value, entry.revision) == (b"worker-1", renewed)

        # Releasing is a fenced delete; its stale form is the raw stream error, not the KV one.
        with pytest.raises(BadRequestError) as stale_delete:
            await kv.delete("source.alb", last=taken)
        assert not isinstance(stale_delete.value, KeyWrongLastSequenceError)
        assert stale_delete.value.err_code == 10071
        await kv.delete("source.alb", last=renewed)
        assert await gone(kv, "source.alb")
        retaken = await kv.create("source.alb", b"worker-2")  # create over a delete marker works
        assert retaken > elsewhere
        await js.delete_key_value(bucket)


# -- b: TTLs ---------------------------------------------------------------------------------------------


def test_kv_keys_expire_by_bucket_ttl_and_by_key_ttl(nats_cluster: NatsCluster) -> None:
    asyncio.run(_expiry(nats_cluster))


async def _expiry(cluster: NatsCluster) -> None:
    names = [bucket_name(what) for what in ("silent", "marked", "per_key")]
    async with connected(*cluster.urls) as client:
        js = client.jetstream(timeout=JS_TIMEOUT)
        silent = await new_bucket(cluster, js, names[0], ttl=TTL)
        marked = await new_bucket(cluster, js, names[1], ttl=TTL, limit_marker_ttl=TTL)
        per_key = await new_bucket(cluster, js, names[2], limit_marker_ttl=TTL)
        config = (await per_key.status()).stream_info.config
        assert config.allow_msg_ttl  # nats-py sets it on every bucket it creates
        assert not config.max_age  # no bucket TTL: only keys written with one expire

        seen: dict[str, list[KeyValue.Entry]] = {name: [] for name in names}
        watchers = [await kv.watchall() for kv in (silent, marked, per_key)]
        tasks = [watch_into(watcher, seen[name]) for watcher, name in zip(watchers, names)]

        await silent.put("source.alb", b"worker-1")
        await marked.put("source.alb", b"worker-1")
        await per_key.put("aggregate.alb", b"no ttl")
        await per_key.create("lease.alb", b"worker-1", msg_ttl=TTL)
        pinned = await per_key.create("lease.pinned", b"worker-1", msg_ttl=TTL)
        await per_key.update("lease.pinned", b"worker-1", last=pinned)  # update() writes no TTL
        renewable = await per_key.create("lease.renewed", b"worker-1", msg_ttl=TTL)
        subject = f"$KV.{names[2]}.lease.renewed"
        fence = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(renewable)}
        renewal = await js.publish(subject, b"worker-1", headers=dict(fence), msg_ttl=10 * WAIT)
        with pytest.raises(BadRequestError) as stale:
            await js.publish(subject, b"worker-2", headers=dict(fence), msg_ttl=10 * WAIT)
        assert stale.value.err_code == 10071

        for kv, key in ((silent, "source.alb"), (marked, "source.alb"), (per_key, "lease.alb")):
            await eventually(functools.partial(gone, kv, key), f"{key} expired")

        def purged(name: str, key: str) -> bool:
            return any(e.key == key and e.operation == PURGE for e in seen[name])

        await until(functools.partial(purged, names[1], "source.alb"), "the bucket TTL's marker")
        await until(functools.partial(purged, names[2], "lease.alb"), "the key TTL's marker")
        # Without limit markers an expiry leaves nothing in the stream, so there is nothing to watch.
        assert [(e.key, e.operation) for e in seen[names[0]]] == [("source.alb", None)]
        assert (await silent.status()).values == 0
        marker = next(e for e in seen[names[1]] if e.operation == PURGE)
        assert marker.value == b""

        assert (await per_key.get("aggregate.alb")).value == b"no ttl"
        assert (await per_key.get("lease.pinned")).value == b"worker-1"
        assert (await per_key.get("lease.renewed")).revision == renewal.seq
        assert await marked.create("source.alb", b"worker-2") > (marker.revision or 0)  # free again

        for watcher, task in zip(watchers, tasks):
            task.cancel()
            await watcher.stop()  # type: ignore[no-untyped-call]
        for name in names:
            await js.delete_key_value(name)


# -- c: a watcher through a SIGKILL ----------------------------------------------------------------------

UPDATES = 24  # values 0..23, written round-robin to four keys, the second half after the kill
KEYS = 4


def test_kv_watcher_sees_every_update_through_a_killed_node(nats_cluster: NatsCluster) -> None:
    asyncio.run(_watch_through_kill(nats_cluster))


async def _watch_through_kill(cluster: NatsCluster) -> None:
    bucket = bucket_name("aggregates")
    stream = f"KV_{bucket}"
    async with connected(*cluster.urls) as admin:
        js = admin.jetstream(timeout=JS_TIMEOUT)
        await new_bucket(cluster, js, bucket, history=64)  # keeps every update
        info = await js.stream_info(stream)
        assert info.cluster is not None and info.cluster.leader is not None
        victim = cluster.node(info.cluster.leader)
        others = [node.url for node in cluster.nodes.values() if node is not victim]
        try:
            async with connected(victim.url, *others) as reader, connected(*others) as writer:
                watched = await reader.jetstream(timeout=JS_TIMEOUT).key_value(bucket)
                watcher = await _watcher_on(cluster, watched, stream, victim.name)
                seen: list[KeyValue.Entry] = []
                task = watch_into(watcher, seen)
                written = await writer.jetstream(timeout=PUT_TIMEOUT).key_value(bucket)
                killed_at = 0.0
                for value in range(UPDATES):
                    if value == UPDATES // 2:
                        victim.kill()
                        killed_at = time.monotonic()
                    await _put_retrying(written, f"source.s{value % KEYS}", str(value).encode())
                    if value == UPDATES // 2:
                        logger.info("first write after the kill: %.1f s", time.monotonic() - killed_at)

                await until(
                    lambda: {int(e.value or b"") for e in seen} == set(range(UPDATES)),
                    f"the watcher saw all {UPDATES} updates",
                )
                logger.info("watcher caught up: %.1f s after the kill", time.monotonic() - killed_at)
                values = [int(e.value or b"") for e in seen]
                revisions = [e.revision or 0 for e in seen]
                # In order; a value twice only if a write was retried after an ambiguous failure.
                assert values == sorted(values), values
                assert revisions == sorted(set(revisions)), revisions
                assert reader.connected_url is not None and reader.connected_url.port != victim.ports.client

                await asyncio.to_thread(cluster.restart, victim.name)
                await _lead_from(admin, cluster, stream, victim.name)
                after = await _put_retrying(written, "source.s0", str(UPDATES).encode())
                await until(lambda: any(e.revision == after for e in seen), "the update after the restart")
                task.cancel()
                await watcher.stop()  # type: ignore[no-untyped-call]

            # The restarted node leads the stream now: reads by revision are answered from its copy.
            kv = await js.key_value(bucket)
            for entry in seen:
                assert (await kv.get(entry.key, revision=entry.revision)).value == entry.value
            await js.delete_key_value(bucket)
        finally:
            if not victim.running:  # the session's cluster must stay whole for the next test
                await asyncio.to_thread(cluster.restart, victim.name)


async def _watcher_on(cluster: NatsCluster, kv: KeyValue, stream: str, node: str) -> KeyValue.KeyWatcher:
    """A watcher of `kv` whose consumer runs on `node` (the server places it; try until it lands there)."""
    for _ in range(40):
        before = cluster.consumer_hosts(stream)
        watcher = await kv.watchall()
        new = await until(functools.partial(_new_consumers, cluster, stream, before), "its consumer")
        if set(new.values()) == {node}:
            return watcher
        await watcher.stop()  # type: ignore[no-untyped-call]
    pytest.fail(f"no watcher's consumer was placed on {node} in 40 tries")


def _new_consumers(cluster: NatsCluster, stream: str, before: dict[str, str]) -> dict[str, str]:
    return {name: host for name, host in cluster.consumer_hosts(stream).items() if name not in before}


async def _put_retrying(kv: KeyValue, key: str, value: bytes) -> int:
    """`kv.put`, retried while the stream has no leader (no responders, timeouts), up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await kv.put(key, value)
        except nats.errors.Error as error:  # NoStreamResponseError or TimeoutError during an election
            if time.monotonic() > deadline:
                raise
            logger.debug("put %s retried: %r", key, error)
            await asyncio.sleep(0.2)


async def _lead_from(client: Client, cluster: NatsCluster, stream: str, node: str) -> None:
    """Make `node` the leader of `stream` (a step-down naming it preferred) and wait until it is."""
    js: JetStreamContext = client.jetstream(timeout=JS_TIMEOUT)

    async def leads() -> bool:
        try:
            info = await js.stream_info(stream)
        except nats.errors.Error:  # no leader for a moment
            return False
        if info.cluster is not None and info.cluster.leader == node:
            return True
        request = json.dumps({"placement": {"preferred": node}}).encode()
        with suppress(nats.errors.TimeoutError):
            await client.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=JS_TIMEOUT)
        await asyncio.sleep(0.5)
        return False

    await eventually(leads, f"{node} leads {stream}")


# -- d: object store -------------------------------------------------------------------------------------


def test_object_store_keeps_a_5_mb_object_on_three_replicas(nats_cluster: NatsCluster) -> None:
    asyncio.run(_object_round_trip(nats_cluster))


async def _object_round_trip(cluster: NatsCluster) -> None:
    bucket = bucket_name("snapshots")
    blob = random.Random(42).randbytes(5 * 1024 * 1024)
    first, *rest = cluster.urls
    async with connected(first) as writer, connected(*rest) as reader:
        js = writer.jetstream(timeout=JS_TIMEOUT)
        store = await js.create_object_store(bucket, replicas=3)
        await until(functools.partial(cluster.stream_everywhere, f"OBJ_{bucket}"), f"{bucket} on every node")
        info = await store.put("aggregates.bin", blob)
        assert (info.size, info.chunks) == (len(blob), len(blob) // (128 * 1024))  # 128 KiB chunks
        stream = await js.stream_info(f"OBJ_{bucket}")
        assert stream.config.num_replicas == 3
        copy = await reader.jetstream(timeout=JS_TIMEOUT).object_store(bucket)
        result = await asyncio.wait_for(copy.get("aggregates.bin"), WAIT)  # get() has no deadline of its own
        assert result.data == blob
        await js.delete_object_store(bucket)
