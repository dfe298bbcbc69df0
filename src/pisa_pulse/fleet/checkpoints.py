"""Checkpoints any worker can resume: each source's ledger and position, kept in JetStream.

A worker's pipeline checkpoints about once a second, and `SourceLog` is where its checkpoint goes
(the engine's `Checkpoint`, in place of the SQLite file `serve` keeps): each checkpoint is in
JetStream before its position is confirmed to the source, so what JetStream holds is never behind
the slot. Two places per source:

- **the log**, subject `<prefix>.checkpoints.<source>` of stream `<prefix>_checkpoints`: one
  message per checkpoint with the ledger rows it changed (upserted or deleted) and the position
  (split into `CHUNK_BYTES` pieces, the position on the last), a `reset` when the source is copied
  afresh, and a `claim` when a worker takes the source over. The bytes follow the changes, not the
  ledger's size.
- **the snapshot**, object `<source>` of object store `<prefix>_snapshots`: every row and the
  position as of one message of the log (`through`). A checkpoint that would make the log since the
  last snapshot outweigh it (and `COMPACT_MIN_BYTES`) is written as a new snapshot instead, the
  pipeline's whole ledger as of that checkpoint, after a log message that holds only its position
  (`Pisa-Rows: snapshot`); then the log before `through` is purged. So the cost of compaction is at
  most the cost of the changes, whatever the ledger's size, a fresh copy's first checkpoint is
  written once, and a restore reads at most about twice the ledger. A restore that meets such a
  message after the snapshot it has (the worker died between the two writes) copies afresh.

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
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from pisa_pulse.capture.contract import Position
from pisa_pulse.engine.checkpoint import SourceChanges
from pisa_pulse.engine.ledger import RECORD_BYTES, Records, records_of
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.fleet import PREFIX
from pisa_pulse.fleet.bus import retried
from pisa_pulse.fleet.leases import bucket_name

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


_RECORD = np.dtype([("pk", "<i8"), ("length", "<i4"), ("row", "u1", (RECORD_BYTES,))])  # `pack_rows`'s


def pack_records(records: Records) -> bytes:
    """A ledger's rows (`Ledger.records`) as one `pack_rows` body, in bulk (a snapshot)."""
    keys, rows = records
    packed = np.empty(len(keys), dtype=_RECORD)
    packed["pk"], packed["length"], packed["row"] = keys, RECORD_BYTES, rows
    return packed.tobytes()


def unpack_records(data: bytes, source: str) -> Records:
    """The rows of a body of rows only, none deleted (a snapshot), in bulk."""
    if len(data) % _RECORD.itemsize:
        raise PisaPulseError(f"the snapshot of {source} in JetStream is corrupt ({len(data)} bytes)")
    packed = np.frombuffer(data, dtype=_RECORD)
    if (packed["length"] != RECORD_BYTES).any():
        raise PisaPulseError(f"the snapshot of {source} in JetStream is corrupt (a row of another size)")
    return packed["pk"].copy(), packed["row"].copy()


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


def _no_records() -> Records:
    return np.empty(0, dtype=np.int64), np.empty((0, RECORD_BYTES), dtype=np.uint8)


def _with_changes(records: Records, changes: dict[int, bytes | None], source: str) -> Records:
    """`records` with `changes` (pk -> row, None: deleted) applied."""
    if not changes:
        return records
    keys, rows = records
    kept = ~np.isin(keys, np.fromiter(changes, dtype=np.int64, count=len(changes)))
    added = [(pk, row) for pk, row in changes.items() if row is not None]
    more = records_of(source.upper(), added)
    return np.concatenate([keys[kept], more[0]]), np.concatenate([rows[kept], more[1]])


@dataclass
class Restored:
    """What a new owner resumes from: the rows and position (None: copy afresh, for `why`)."""

    records: Records = field(default_factory=_no_records)
    position: Position | None = None
    last: int = 0  # the sequence of the log's last message: the next write's expected one
    why: str = "no checkpoint in JetStream"
    snapshot_bytes: int = 0
    log_bytes: int = 0  # read from the log after the snapshot


class SourceLog:
    """One source's checkpoints in JetStream, as its current owner writes them (module docstring).

    `restore` and `claim` run on the event loop; the rest is the pipeline's `Checkpoint` of this one
    source (what `claim` read, then each checkpoint), called from its thread: a write blocks until
    JetStream has stored it.
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
        self.restored = Restored()  # what `claim` read, until the pipeline takes it
        self.position: Position | None = None  # as of the last checkpoint in JetStream
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
            self.restored, self.position = restored, restored.position
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
            restored.records = unpack_records(data, self.source)
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
        changes: dict[int, bytes | None] = {}  # since the snapshot, by the log's checkpoints
        chain = through
        async for seq, headers, data in self._log(through + 1, last):
            if int(headers.get("Pisa-Prev", -1)) != chain:
                restored.records, restored.position = _no_records(), None
                restored.why = f"the checkpoint in JetStream has a gap before message {seq}"
                return restored
            chain = seq
            restored.log_bytes += len(data)
            kind = headers.get("Pisa-Kind", "")
            if headers.get("Pisa-Rows") == "snapshot":  # its snapshot was never written (or was lost)
                restored.records, restored.position = _no_records(), None
                restored.why = f"the snapshot of message {seq} is missing from JetStream"
                return restored
            if kind == "reset":
                restored.records, restored.position, pending, changes = _no_records(), None, [], {}
            elif kind == "rows":
                pending.append(data)
                if headers.get("Pisa-Final") == "1":
                    for body in pending:
                        changes.update(unpack_rows(body))
                    restored.position, pending = position_from(headers.get("Pisa-Position", "")), []
        if restored.position is None:
            restored.records = _no_records()
            restored.why = "the checkpoint in JetStream has no position yet (a copy was under way)"
        else:
            restored.records = _with_changes(restored.records, changes, self.source)
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

    # -- the pipeline's checkpoint (its thread) ---------------------------------------------------

    def positions(self) -> dict[str, Position]:
        """The position claimed (none: the source is copied afresh)."""
        position = self.restored.position
        return {} if position is None else {self.source: position}

    def records(self, source: str) -> Records:
        """The rows claimed, handed over once (the pipeline's ledger holds them from then on)."""
        records, self.restored.records = self.restored.records, _no_records()
        return records

    def snapshot_due(self, source: str, rows: int) -> bool:
        """Whether the log since the snapshot, with a checkpoint of `rows` changed rows, would outweigh
        the snapshot (and `compact_min_bytes`): that checkpoint then goes into a new snapshot."""
        logged = self.since_snapshot + rows * (_ROW.size + RECORD_BYTES)
        return logged > max(self.snapshot_bytes, self.compact_min_bytes)

    def forget(self, source: str) -> None:
        """The source is being copied afresh: what the log held no longer counts."""
        self._blocking(self._write({"Pisa-Kind": "reset"}, b""))
        self.position = None

    def save(self, changes: dict[str, SourceChanges], snapshots: Mapping[str, Records] | None = None) -> int:
        """One checkpoint of the source: its rows in the log; or, when `snapshot_due` asked for one,
        the whole ledger as of the same moment (`snapshots`) as the new snapshot, after a log message
        that holds only the position and says its rows are in the snapshot (a copy's first
        checkpoint is written once, not twice). Raises `Superseded` when another worker has written
        the log since. Returns the rows written.

        The rows are packed here, in the pipeline's thread, and only the writes run on the event
        loop: packing a copy's hundred thousand rows there would hold up the worker's lease renewals."""
        change = changes.get(self.source)
        if change is None:
            return 0
        rows = list(change.rows)
        snapshot = (snapshots or {}).get(self.source)
        if snapshot is None:
            self._blocking(self._save(list(pack_rows(rows)) or [b""], change.position))
        else:
            self._blocking(self._save([b""], change.position, {"Pisa-Rows": "snapshot"}))
            self._blocking(self._compact(change.position, pack_records(snapshot)))
        self.position = change.position
        return len(rows)

    def close(self) -> None:
        """Nothing to close: the worker owns the connection."""

    def _blocking(self, work: Awaitable[None]) -> None:
        assert self.loop is not None, "a SourceLog used as a mirror needs the event loop"
        asyncio.run_coroutine_threadsafe(work, self.loop).result()  # type: ignore[arg-type]

    async def _save(
        self, bodies: list[bytes], position: Position, last: dict[str, str] | None = None
    ) -> None:
        for i, body in enumerate(bodies):
            final = i == len(bodies) - 1
            headers = {"Pisa-Kind": "rows", "Pisa-Final": "1" if final else "0"}
            if final:
                headers.update(last or {})
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
            "lsn": None if self.position is None else self.position.lsn,  # of the last checkpoint
            "log_sequence": self.last,
            "snapshot_bytes": self.snapshot_bytes,
            "bytes_written": self.bytes_written,  # log and snapshots, by this owner
            "messages_written": self.messages_written,
        }
