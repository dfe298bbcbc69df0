"""Checkpoints in JetStream (fleet/checkpoints.py): a new owner restores exactly what the former one
saved, through compaction; a former owner's next write is refused; a gap means a fresh copy. On the
session's three-node NATS cluster, each test in buckets of its own."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from pisa_pulse.capture.contract import Position
from pisa_pulse.engine.checkpoint import SourceChanges
from pisa_pulse.engine.ledger import RECORD_BYTES, records_of
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.fleet import checkpoints
from pisa_pulse.fleet.checkpoints import (
    SourceLog,
    Superseded,
    pack_records,
    pack_rows,
    unpack_records,
    unpack_rows,
)
from tests.nats_cluster import NatsCluster, connected
from tests.test_worker import delete_stores


def test_a_snapshot_packed_in_bulk_unpacks_row_by_row_too() -> None:
    keys = np.array([3, -7, 2**40], dtype=np.int64)
    rows = np.frombuffer(bytes(range(256)) * 3, dtype=np.uint8)[: 3 * RECORD_BYTES].reshape(3, RECORD_BYTES)
    data = pack_records((keys, rows))
    assert list(unpack_rows(data)) == [(int(k), bytes(r)) for k, r in zip(keys, rows, strict=True)]
    again = unpack_records(data, "alb")
    assert again[0].tolist() == keys.tolist() and again[1].tobytes() == rows.tobytes()
    with pytest.raises(PisaPulseError, match="corrupt"):
        unpack_records(data[:-1], "alb")
    with pytest.raises(PisaPulseError, match="corrupt"):
        unpack_records(b"".join(pack_rows([(1, b"x" * 4)] * 10)), "alb")


def test_rows_survive_packing_in_chunks() -> None:
    rows: list[tuple[int, bytes | None]] = [(i, bytes([i % 251]) * (i % 1000)) for i in range(3000)]
    rows += [(-5, None), (2**62, b""), (7, None)]
    bodies = list(pack_rows(rows))
    assert len(bodies) > 1 and all(len(b) < checkpoints.CHUNK_BYTES + 4000 for b in bodies)
    assert [row for body in bodies for row in unpack_rows(body)] == rows


def row(fill: int) -> bytes:
    return bytes([fill]) * RECORD_BYTES


def held(restored: checkpoints.Restored) -> dict[int, bytes]:
    keys, rows = restored.records
    return {int(k): bytes(r) for k, r in zip(keys, rows, strict=True)}


class Owner:
    """One worker's hold on source `alb`: its log, as the pipeline checkpoints into it (with the whole
    state whenever the log asks for a snapshot)."""

    def __init__(self, js: JetStreamContext, objects: ObjectStore, prefix: str, epoch: int) -> None:
        loop = asyncio.get_running_loop()
        self.log = SourceLog(js, objects, "alb", epoch, prefix, loop, compact_min_bytes=20_000)
        self.state: dict[int, bytes] = {}

    async def save(self, lsn: int, rows: list[tuple[int, bytes | None]], snapshot: bool = False) -> None:
        for pk, packed in rows:
            if packed is None:
                self.state.pop(pk, None)
            else:
                self.state[pk] = packed
        snapshots = {}
        if snapshot or self.log.snapshot_due("alb", len(rows)):
            snapshots["alb"] = records_of("ALB", self.state.items())
        changes = SourceChanges(Position("sys:1", lsn, lsn * 10), rows)
        await asyncio.to_thread(self.log.save, {"alb": changes}, snapshots)


def test_a_new_owner_resumes_exactly_and_the_former_one_is_fenced_off(nats_cluster: NatsCluster) -> None:
    async def scenario() -> None:
        prefix = f"c{uuid.uuid4().hex[:8]}"
        async with connected(*nats_cluster.urls) as client:
            js = client.jetstream(timeout=30)
            objects = await checkpoints.open_stores(js, replicas=3, prefix=prefix)
            try:
                first = Owner(js, objects, prefix, 1)
                nothing = await first.log.claim()
                assert nothing.position is None and "no checkpoint" in nothing.why
                expected: dict[int, bytes] = {}
                for lsn in range(1, 30):  # enough for several compactions at 20 kB
                    rows: list[tuple[int, bytes | None]] = [(lsn * 100 + i, row(lsn)) for i in range(20)]
                    rows.append((lsn * 100 - 95, None))  # withdraw one of the previous batch's rows
                    await first.save(lsn, rows)
                    expected.update({pk: row for pk, row in rows if row is not None})
                    expected.pop(lsn * 100 - 95, None)
                assert first.log.snapshot_bytes > 0  # compacted at least once
                second = Owner(js, objects, prefix, 2)
                restored = await second.log.claim()
                assert held(restored) == expected
                assert restored.position == Position("sys:1", 29, 290)
                assert restored.snapshot_bytes + restored.log_bytes < 3 * sum(
                    len(r) + 12 for r in expected.values()
                )
                with pytest.raises(Superseded):  # the former owner wakes up and checkpoints
                    await first.save(30, [(1, row(200))])
                await second.save(31, [(1, row(201)), (101, None)])
                third = await Owner(js, objects, prefix, 3).log.restore()
                assert held(third) == {**{k: v for k, v in expected.items() if k != 101}, 1: row(201)}
                assert third.position == Position("sys:1", 31, 310)
                fourth = Owner(js, objects, prefix, 4)
                await fourth.log.claim()

                async def dies_before_writing_it(position: Position, data: bytes) -> None:
                    raise ConnectionError("SIGKILL between the log message and its snapshot")

                fourth.log._compact = dies_before_writing_it  # type: ignore[method-assign]
                with pytest.raises(ConnectionError):
                    await fourth.save(32, [(7, row(7))], snapshot=True)
                missing = await Owner(js, objects, prefix, 5).log.restore()
                assert missing.position is None and held(missing) == {} and "missing" in missing.why
                await objects.delete("alb")  # the snapshot lost: the log alone has a gap
                gap = await Owner(js, objects, prefix, 6).log.restore()
                assert gap.position is None and held(gap) == {} and "gap" in gap.why
            finally:
                await delete_stores(js, prefix)

    asyncio.run(scenario())
