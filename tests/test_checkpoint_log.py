"""Checkpoints in JetStream (fleet/checkpoints.py): a new owner restores exactly what the former one
saved, through compaction; a former owner's next write is refused; a gap means a fresh copy. On the
session's three-node NATS cluster, each test in buckets of its own."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from pisa_pulse.capture.contract import Position
from pisa_pulse.engine.checkpoint import CheckpointStore, SourceChanges
from pisa_pulse.fleet import checkpoints
from pisa_pulse.fleet.checkpoints import SourceLog, Superseded, pack_rows, unpack_rows
from tests.nats_cluster import NatsCluster, connected
from tests.test_worker import delete_stores


def test_rows_survive_packing_in_chunks() -> None:
    rows: list[tuple[int, bytes | None]] = [(i, bytes([i % 251]) * (i % 1000)) for i in range(3000)]
    rows += [(-5, None), (2**62, b""), (7, None)]
    bodies = list(pack_rows(rows))
    assert len(bodies) > 1 and all(len(b) < checkpoints.CHUNK_BYTES + 4000 for b in bodies)
    assert [row for body in bodies for row in unpack_rows(body)] == rows


class Owner:
    """One worker's hold on source `alb`: its log and its local store (as the pipeline keeps them)."""

    def __init__(self, js: JetStreamContext, objects: object, prefix: str, epoch: int, home: Path) -> None:
        self.log = SourceLog(
            js,
            objects,
            "alb",
            epoch,
            prefix,
            asyncio.get_running_loop(),
            compact_min_bytes=20_000,  # type: ignore[arg-type]
        )
        self.store = CheckpointStore(home / f"epoch{epoch}.sqlite3")

    async def save(self, lsn: int, rows: list[tuple[int, bytes | None]]) -> None:
        changes = SourceChanges(Position("sys:1", lsn, lsn * 10), rows)
        self.store.save({"alb": changes})
        await asyncio.to_thread(self.log.save, "alb", changes, self.store)


def test_a_new_owner_resumes_exactly_and_the_former_one_is_fenced_off(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    async def scenario() -> None:
        prefix = f"c{uuid.uuid4().hex[:8]}"
        async with connected(*nats_cluster.urls) as client:
            js = client.jetstream(timeout=30)
            objects = await checkpoints.open_stores(js, replicas=3, prefix=prefix)
            try:
                first = Owner(js, objects, prefix, 1, tmp_path)
                nothing = await first.log.claim()
                assert nothing.position is None and "no checkpoint" in nothing.why
                expected: dict[int, bytes] = {}
                for lsn in range(1, 30):  # enough for several compactions at 20 kB
                    rows: list[tuple[int, bytes | None]] = [
                        (lsn * 100 + i, bytes([lsn]) * 300) for i in range(20)
                    ]
                    rows.append((lsn * 100 - 95, None))  # withdraw one of the previous batch's rows
                    await first.save(lsn, rows)
                    expected.update({pk: row for pk, row in rows if row is not None})
                    expected.pop(lsn * 100 - 95, None)
                assert first.log.snapshot_bytes > 0  # compacted at least once
                second = Owner(js, objects, prefix, 2, tmp_path)
                restored = await second.log.claim()
                assert restored.rows == expected
                assert restored.position == Position("sys:1", 29, 290)
                assert restored.snapshot_bytes + restored.log_bytes < 3 * sum(
                    len(r) + 12 for r in expected.values()
                )
                with pytest.raises(Superseded):  # the former owner wakes up and checkpoints
                    await first.save(30, [(1, b"stale")])
                await second.save(31, [(1, b"new"), (101, None)])
                third = await Owner(js, objects, prefix, 3, tmp_path).log.restore()
                assert third.rows == {**{k: v for k, v in expected.items() if k != 101}, 1: b"new"}
                assert third.position == Position("sys:1", 31, 310)
                await objects.delete("alb")  # the snapshot lost: the log alone has a gap
                gap = await Owner(js, objects, prefix, 4, tmp_path).log.restore()
                assert gap.position is None and gap.rows == {} and "gap" in gap.why
            finally:
                await delete_stores(js, prefix)

    asyncio.run(scenario())
