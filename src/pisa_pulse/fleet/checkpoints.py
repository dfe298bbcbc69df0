"""Checkpoints any worker can resume: each source's ledger and position, kept in JetStream.

A worker's pipeline checkpoints locally (engine/checkpoint.py) about once a second; `SourceLog`
mirrors each of those checkpoints into JetStream before the position is confirmed to the source,
so what JetStream holds is never behind the slot. Two places per source:

- **the log**, subject `<prefix>.checkpoints.<source>` of stream `<prefix>_checkpoints`: one
  message per checkpoint with the ledger rows it changed (upserted or deleted) and the position
  (split into `CHUNK_BYTES` pieces, the position on the last), a `reset` when the source is copied
  afresh, and a `claim` when a worker takes the source over. The bytes follow the changes, not the
  ledger's size.
- **the snapshot**, object `<source>` of object store `<prefix>_snapshots`: every row and the
  position as of one message of the log (`through`). It is rewritten once the log since the last
  snapshot outweighs it (at least `COMPACT_MIN_BYTES`), then the log before `through` is purged: the
  cost of compaction is at most the cost of the changes, whatever the ledger's size, and a restore
  reads at most about twice the ledger.

**Fencing.** Every message is published with `Nats-Expected-Last-Subject-Sequence` (the sequence of
the one before it, which it also carries as `Pisa-Prev`), so a worker's writes land only while
nobody else has written the source's log since: a new owner's first write is its claim, and from
then on an old owner that paused past its lease and woke up fails its next checkpoint
(`Superseded`) before it confirms anything to the source. A message id per write makes a retry of a
write that did land a no-op.

**Restore** reads the snapshot, then the log after it, and checks the chain of `Pisa-Prev`: a gap
(a snapshot or messages lost, or deleted by an operator) or no state at all makes the new owner
copy the source afresh, and its status says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from pisa_pulse.capture.contract import Position
from pisa_pulse.engine.checkpoint import CheckpointStore, SourceChanges
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.fleet.bus import retried
from pisa_pulse.fleet.leases import PREFIX, bucket_name

log = logging.getLogger(__name__)

SCHEMA = 1
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
CHUNK_BYTES = 512 * 1024  # per message, under NATS's default 1 MiB payload limit
COMPACT_MIN_BYTES = 1 << 20
RESTORE_WAIT_S = 30.0  # for the next log message of a restore (an election may be under way)
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence
_ROW = struct.Struct("<qi")


class Superseded(PisaPulseError):
    """Another worker has written the source's log since this one: it is no longer the owner."""


def subject(prefix: str, source: str) -> str:
    return f"{prefix}.{CHECKPOINTS}.{source}"


async def open_stores(js: JetStreamContext, replicas: int, prefix: str = PREFIX) -> ObjectStore:
    """The log stream and the snapshot store, created with `replicas` copies when missing."""
    name = bucket_name(prefix, CHECKPOINTS)
    try:
        await js.stream_info(name)
    except NotFoundError:
        config = api.StreamConfig(
            name=name,
            subjects=[f"{prefix}.{CHECKPOINTS}.>"],
            num_replicas=replicas,
            storage=api.StorageType.FILE,
            allow_direct=True,
        )
        with contextlib.suppress(BadRequestError):  # another worker made it meanwhile
            await js.add_stream(config)
    objects = bucket_name(prefix, SNAPSHOTS)
    try:
        return await js.object_store(objects)
    except NotFoundError:
        try:
            return await js.create_object_store(
                objects, api.ObjectStoreConfig(replicas=replicas, storage=api.StorageType.FILE)
            )
        except BadRequestError:
            return await js.object_store(objects)


def pack_rows(rows: Iterable[tuple[int, bytes | None]]) -> Iterator[bytes]:
    """Rows as messages' bodies of about `CHUNK_BYTES` each: (pk, length or -1, row) after another."""
    chunk: list[bytes] = []
    size = 0
    for pk, row in rows:
        piece = _ROW.pack(pk, -1 if row is None else len(row)) + (row or b"")
        chunk.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


def unpack_rows(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """The rows of one body (`pack_rows`)."""
    at = 0
    while at < len(data):
        pk, length = _ROW.unpack_from(data, at)
        at += _ROW.size
        if length < 0:
            yield pk, None
        else:
            yield pk, data[at : at + length]
            at += length


def position_header(position: Position | None) -> str:
    return "" if position is None else f"{position.identity}|{position.lsn}|{position.last_commit_us}"


def position_from(text: str) -> Position | None:
    if not text:
        return None
    identity, lsn, last = text.rsplit("|", 2)
    return Position(identity, int(lsn), int(last))


@dataclass
class Restored:
    """What a new owner resumes from: the rows and position (None: copy afresh, for `why`)."""

    rows: dict[int, bytes] = field(default_factory=dict)
    position: Position | None = None
    last: int = 0  # the sequence of the log's last message: the next write's expected one
    why: str = "no checkpoint in JetStream"
    snapshot_bytes: int = 0
    log_bytes: int = 0  # read from the log after the snapshot


class SourceLog:
    """One source's checkpoints in JetStream, as its current owner writes them (module docstring).

    `restore` and `claim` run on the event loop; `forget` and `save` are the pipeline's mirror, called
    from its thread, and block until JetStream has stored the write.
    """

    def __init__(
        self,
        js: JetStreamContext,
        objects: ObjectStore,
        source: str,
        epoch: int,
        prefix: str = PREFIX,
        loop: asyncio.AbstractEventLoop | None = None,
        compact_min_bytes: int = COMPACT_MIN_BYTES,
    ) -> None:
        self.js = js
        self.objects = objects
        self.source = source
        self.epoch = epoch
        self.stream = bucket_name(prefix, CHECKPOINTS)
        self.subject = subject(prefix, source)
        self.loop = loop
        self.compact_min_bytes = compact_min_bytes
        self.last = 0
        self.since_snapshot = 0  # bytes written to the log since the snapshot
        self.snapshot_bytes = 0
        self.bytes_written = 0
        self.messages_written = 0

    # -- taking a source over (event loop) --------------------------------------------------------

    async def claim(self) -> Restored:
        """Restore, then write a claim on top of what was read: from then on, every write of a former
        owner fails. Read again if one wrote meanwhile."""
        while True:
            restored = await self.restore()
            self.last = restored.last
            self.snapshot_bytes, self.since_snapshot = restored.snapshot_bytes, restored.log_bytes
            try:
                await self._write({"Pisa-Kind": "claim"}, b"")
                return restored
            except Superseded:
                log.info("source=%s: written meanwhile by its former owner; reading again", self.source)

    async def restore(self) -> Restored:
        """The snapshot and the log after it, checked for gaps (see the module docstring)."""
        restored = Restored()
        through = 0
        try:
            info = await self.objects.get_info(self.source)
            meta = json.loads(info.description or "{}")
            if meta.get("schema", 0) > SCHEMA:
                raise PisaPulseError(
                    f"the checkpoint of {self.source} was written with schema {meta.get('schema')}, newer "
                    f"than this version's {SCHEMA}",
                    "upgrade this worker",
                )
            result = await self.objects.get(self.source)
            data = result.data or b""
            restored.rows = {pk: row for pk, row in unpack_rows(data) if row is not None}
            restored.position = position_from(meta.get("position", ""))
            restored.snapshot_bytes = len(data)
            through = int(meta["through"])
        except ObjectNotFoundError:
            pass
        try:
            last = (await self.js.get_last_msg(self.stream, self.subject)).seq or 0
        except NotFoundError:
            last = 0
        restored.last = last
        if not through and not last:
            return restored  # never checkpointed: a fresh copy
        pending: list[bytes] = []
        chain = through
        async for seq, headers, data in self._log(through + 1, last):
            if int(headers.get("Pisa-Prev", -1)) != chain:
                restored.rows, restored.position = {}, None
                restored.why = f"the checkpoint in JetStream has a gap before message {seq}"
                return restored
            chain = seq
            restored.log_bytes += len(data)
            kind = headers.get("Pisa-Kind", "")
            if kind == "reset":
                restored.rows, restored.position, pending = {}, None, []
            elif kind == "rows":
                pending.append(data)
                if headers.get("Pisa-Final") == "1":
                    for body in pending:
                        for pk, row in unpack_rows(body):
                            if row is None:
                                restored.rows.pop(pk, None)
                            else:
                                restored.rows[pk] = row
                    restored.position, pending = position_from(headers.get("Pisa-Position", "")), []
        if restored.position is None:
            restored.rows = {}
            restored.why = "the checkpoint in JetStream has no position yet (a copy was under way)"
        return restored

    async def _log(self, start: int, last: int) -> AsyncIterator[tuple[int, dict[str, str], bytes]]:
        """The source's log messages from sequence `start` to `last`, streamed by an ordered consumer
        (one request per message would make a restore as slow as the log is long)."""
        if start > last:
            return
        subscription = await self.js.subscribe(
            self.subject,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=start),
        )
        try:
            seq = 0
            while seq < last:
                msg = await subscription.next_msg(timeout=RESTORE_WAIT_S)
                seq = msg.metadata.sequence.stream
                yield seq, dict(msg.headers or {}), msg.data or b""
        finally:
            await subscription.unsubscribe()

    # -- the pipeline's mirror (its thread) -------------------------------------------------------

    def forget(self, name: str) -> None:
        """The source is being copied afresh: what the log held no longer counts."""
        self._blocking(self._write({"Pisa-Kind": "reset"}, b""))

    def save(self, name: str, changes: SourceChanges, store: CheckpointStore) -> None:
        """One checkpoint of the source (already in the local `store`): its rows, then compaction when
        due. Raises `Superseded` when another worker has written the log since.

        The rows are packed here, in the pipeline's thread, and only the writes run on the event
        loop: packing a copy's hundred thousand rows there would hold up the worker's lease renewals."""
        bodies = list(pack_rows(changes.rows)) or [b""]
        self._blocking(self._save(bodies, changes.position))
        if self.since_snapshot > max(self.snapshot_bytes, self.compact_min_bytes):
            # The local store holds exactly the state as of the log's last message.
            data = b"".join(pack_rows(store.rows(self.source)))
            self._blocking(self._compact(changes.position, data))

    def _blocking(self, work: Awaitable[None]) -> None:
        assert self.loop is not None, "a SourceLog used as a mirror needs the event loop"
        asyncio.run_coroutine_threadsafe(work, self.loop).result()  # type: ignore[arg-type]

    async def _save(self, bodies: list[bytes], position: Position) -> None:
        for i, body in enumerate(bodies):
            final = i == len(bodies) - 1
            headers = {"Pisa-Kind": "rows", "Pisa-Final": "1" if final else "0"}
            if final:
                headers["Pisa-Position"] = position_header(position)
            await self._write(headers, body)

    async def _compact(self, position: Position, data: bytes) -> None:
        """Rewrite the snapshot as `data`, the state as of the log's last message, then purge the log
        before it (keeping it: the chain goes on from its sequence)."""
        meta = {
            "schema": SCHEMA,
            "through": self.last,
            "position": position_header(position),
            "epoch": self.epoch,
        }
        await retried(
            f"write the snapshot of {self.source}",
            lambda: self.objects.put(self.source, data, api.ObjectMeta(description=json.dumps(meta))),
        )
        await retried(
            f"purge the log of {self.source}",
            lambda: self.js.purge_stream(self.stream, seq=self.last, subject=self.subject),
        )
        self.snapshot_bytes, self.since_snapshot = len(data), 0
        self.bytes_written += len(data)
        log.debug("compacted source=%s through=%d bytes=%d", self.source, self.last, len(data))

    async def _write(self, headers: dict[str, str], body: bytes) -> None:
        """Append one message to the source's log after `self.last`, or raise `Superseded`."""
        prev = self.last
        headers = {
            **headers,
            "Pisa-Schema": str(SCHEMA),
            "Pisa-Epoch": str(self.epoch),
            "Pisa-Prev": str(prev),
            "Nats-Expected-Last-Subject-Sequence": str(prev),
            "Nats-Msg-Id": f"{self.source}:{self.epoch}:{prev}",
        }
        try:
            ack = await retried(
                f"write the checkpoint of {self.source}",
                lambda: self.js.publish(self.subject, body, stream=self.stream, headers=headers),
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Superseded(
                    f"another worker has taken {self.source} over (its checkpoint moved past {prev})",
                    "nothing to do: this worker lets the source go",
                ) from None
            raise
        self.last = ack.seq
        self.bytes_written += len(body)
        self.since_snapshot += len(body)
        self.messages_written += 1

    def describe(self) -> dict[str, Any]:
        """What the status says of this source's checkpoint in JetStream."""
        return {
            "log_sequence": self.last,
            "snapshot_bytes": self.snapshot_bytes,
            "bytes_written": self.bytes_written,  # log and snapshots, by this owner
            "messages_written": self.messages_written,
        }
