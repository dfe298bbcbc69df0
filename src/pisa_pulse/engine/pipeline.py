"""The pipeline: every source's change stream into one set of per-country aggregates, exactly once.

One thread, one select() loop over all sources' replication connections (DESIGN.md: a thread per
slot costs twice the CPU per row). Per source, `SourceRunner` walks the states

    connecting -> copying (only without a usable checkpoint) -> streaming
                -> reconnecting (after an error, with back-off) -> connecting ...
    failed: an error a retry cannot fix (no `responses` table, missing columns); retried slowly

A source that fails does not stop the others. Each committed source transaction becomes one
`ChangeBatch`, applied whole to that source's ledger and the shared aggregates; its `end_lsn`
becomes the source's position. About once a second the changed ledger rows and every position are
checkpointed in one SQLite transaction, and only then is each position confirmed to its source
(`flush_lsn`), so the slot keeps every transaction the checkpoint lacks. On restart the ledgers and
positions come back from the checkpoint and any transaction at or before a position is skipped.

Starting without a checkpoint, or when the slot is gone or invalidated, or the database is not the
one checkpointed, the source is copied afresh through a new slot's exported snapshot. The copy
reconciles: rows the ledger holds keep their arrival time, rows no longer in the source are retracted.

Sources in `mode = "poll"` are captured by `PollRunner`s instead (`poll_runner.py`, one thread each,
SELECT only), into the same ledgers, aggregates and checkpoint. A source in `mode = "auto"` starts as
a replication source and, when its first connection shows replication is not allowed (server
version, `wal_level`, role, publication), becomes a polled one and says why in its status.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from pisa_pulse.capture import pgoutput, replication
from pisa_pulse.capture.changes import CaptureError, ChangeBatch, TransactionAssembler
from pisa_pulse.capture.contract import INITIAL_COPY_MINUTE
from pisa_pulse.capture.preflight import SourceUnusable, check_table, replication_blockers
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.checkpoint import CheckpointStore, Position, SourceChanges
from pisa_pulse.engine.ledger import Ledger
from pisa_pulse.engine.poll_runner import PollRunner
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.config import Source, first_line
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.schema import CHART_COLUMNS

log = logging.getLogger(__name__)

US_PER_MINUTE = 60_000_000
MAX_MESSAGES_PER_TURN = 5_000  # per source and loop turn, so one busy source cannot starve the others
BACKOFF = (1.0, 2.0, 5.0, 10.0)
PING_INTERVAL = 0.1  # ask every source for a keepalive this often, so idle sources stay provably fresh
# A stream that answers no ping for this long is dropped and reopened (a stalled network).
SILENCE_LIMIT = 15.0


def checkpoint_path(data_dir: Path) -> Path:
    """Where the pipeline keeps its checkpoint in a data dir."""
    return data_dir / "pipeline" / "checkpoint.sqlite3"


def slot_name(prefix: str, source: str) -> str:
    """The replication slot of one source (slots are per cluster, so the source name is in it)."""
    return f"{prefix}_{source}"


@dataclass
class SourceRunner:
    """One source's capture state, ledger and position."""

    source: Source
    slot: str
    ledger: Ledger
    position: Position | None = None  # applied (in memory); None until copied or restored
    checkpointed_lsn: int = 0
    state: str = "connecting"
    reason: str = ""
    stream: replication.ReplicationStream | None = None
    assembler: TransactionAssembler = field(default_factory=lambda: TransactionAssembler(CHART_COLUMNS))
    retry_at: float = 0.0
    failures: int = 0  # in a row, for the back-off
    losses: int = 0  # connections lost since the start
    copies: int = 0
    copy_reason: str = ""  # why the last full copy was made (first start, slot invalidated, ...)
    skipped: int = 0  # transactions the checkpoint already held, seen again after a restart
    transactions: int = 0
    changes: int = 0  # row changes applied from the stream
    wal_end: int = 0
    fresh_at: float = 0.0  # Unix time up to which the source's changes are known to be applied
    heard_at: float = 0.0  # Unix time the server's last bytes (data or keepalive) were seen arriving
    pinged_at: float = 0.0

    def status(self) -> dict[str, Any]:
        """What `pisa-pulse pipeline` and the API show for this source."""
        pos = self.position
        lag_bytes = max(0, self.wal_end - pos.lsn) if pos else None
        last = pos.last_commit_us if pos and pos.last_commit_us else None
        lag_ms = 0 if lag_bytes == 0 else round((time.time() * 1e6 - last) / 1000) if last else None
        if self.state != "streaming":  # cut off: behind by as long as it has been unheard
            lag_ms = round((time.time() - self.fresh_at) * 1000) if self.fresh_at else None
        return {
            "source": self.source.name,
            "mode": "replication",
            "state": self.state,
            "reason": self.reason,
            "rows": len(self.ledger),
            "last_commit_us": last,
            "lag_ms": lag_ms,
            "lag_bytes": lag_bytes,
            "lsn": replication.lsn_text(pos.lsn) if pos else None,
            "copies": self.copies,
            "copy_reason": self.copy_reason,
            "connections_lost": self.losses,
            "transactions": self.transactions,
            "changes": self.changes,
            "invalid": {k: v for k, v in self.ledger.invalid_counts().items() if v},
        }


class Pipeline:
    """Capture -> engine for every source in a config, with a durable checkpoint (see module doc)."""

    def __init__(
        self,
        sources: Sequence[Source],
        data_dir: Path,
        slot_prefix: str = "pisa_pulse",
        checkpoint_interval: float = 1.0,
        poll_interval: float = 0.25,
        reconcile_interval: float = 30.0,
    ) -> None:
        self.aggregates = Aggregates()
        self.poll_interval, self.reconcile_interval = poll_interval, reconcile_interval
        self.checkpoint_interval = checkpoint_interval
        self.store = CheckpointStore(checkpoint_path(data_dir))
        self.version = 0  # bumps whenever the aggregates change
        self.latencies_ms: deque[float] = deque(maxlen=100_000)  # commit -> applied, per transaction
        self.lock = threading.Lock()  # held while the aggregates change: readers in other threads take it
        self._last_checkpoint = time.monotonic()
        saved = self.store.positions()
        self.runners: list[SourceRunner] = []  # replication (and auto, until it decides)
        self.pollers: list[PollRunner] = []
        self._order = {src.name: i for i, src in enumerate(sources)}
        self._stop_polling = threading.Event()
        for src in sources:
            country = src.name.upper()
            ledger = Ledger.restore(country, self.store.rows(src.name), self.aggregates)
            if src.mode == "poll":
                self.pollers.append(self._poller(src, ledger, saved.get(src.name)))
                continue
            runner = SourceRunner(src, slot_name(slot_prefix, src.name), ledger, saved.get(src.name))
            if runner.position:
                runner.checkpointed_lsn = runner.position.lsn
            self.runners.append(runner)
        for gone in set(saved) - {s.name for s in sources}:
            self.store.forget(gone)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Capture until `stop` is set, then checkpoint and close."""
        for p in self.pollers:
            p.start(self._stop_polling)
        try:
            while not stop.is_set():
                self.step(0.1)
        finally:
            self._stop_polling.set()
            for p in self.pollers:
                p.join()
            self.checkpoint()
            self.close()

    def _poller(self, source: Source, ledger: Ledger, position: Position | None, why: str = "") -> PollRunner:
        def changed() -> None:
            self.version += 1

        return PollRunner(
            source,
            ledger,
            self.aggregates,
            self.lock,
            changed,
            self.poll_interval,
            self.reconcile_interval,
            position=position,
            why=why,
        )

    def _switch_to_polling(self, r: SourceRunner, why: str) -> None:
        """An auto source where replication is not allowed: poll it from now on."""
        poller = self._poller(r.source, r.ledger, r.position, why)
        self.runners = [x for x in self.runners if x is not r]
        self.pollers = [*self.pollers, poller]
        log.info("polling source=%s reason=%s", r.source.name, why)
        poller.start(self._stop_polling)

    def step(self, timeout: float) -> None:
        """One turn: (re)open due sources, read what arrived, checkpoint when due."""
        now = time.monotonic()
        for r in self.runners:
            if r.stream is None and now >= r.retry_at:
                self._open(r)
        streams = {r.stream.fileno(): r for r in self.runners if r.stream is not None}
        for fd, r in list(streams.items()):
            if time.time() - r.heard_at > SILENCE_LIMIT:
                self._lost(r, TimeoutError(f"no answer from the source for {SILENCE_LIMIT:.0f} s"))
                del streams[fd]
            elif now - r.pinged_at >= PING_INTERVAL:
                self._ping(r)
        streams = {fd: r for fd, r in streams.items() if r.stream is not None}  # a ping may lose one
        if streams:
            ready, _, _ = select.select(list(streams), [], [], timeout)
            heard = time.time()
            for fd in ready:
                streams[fd].heard_at = heard
            # Read every stream, not only the ready ones: psycopg2 may hold messages it has buffered.
            for r in streams.values():
                self._drain(r)
        else:
            time.sleep(timeout)
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_interval:
            self.checkpoint()

    def _drain(self, r: SourceRunner) -> None:
        stream = r.stream
        assert stream is not None
        try:
            drained = False
            for _ in range(MAX_MESSAGES_PER_TURN):
                msg = stream.read()
                if msg is None:
                    drained = True
                    break
                batch = r.assembler.feed(pgoutput.decode(msg.payload))
                if batch is not None:
                    self._apply(r, batch)
            r.wal_end = stream.wal_end
            if drained and not r.assembler.in_transaction and r.position:
                # Caught up with everything the server sent, up to its last word (a message or the
                # keepalive answering our ping): the source is fresh as of then.
                r.fresh_at = max(r.fresh_at, r.heard_at)
                if r.wal_end > r.position.lsn:
                    # The server has decoded up to wal_end and sent us every commit before it, so the
                    # position may move there; confirming it lets an idle slot release its WAL.
                    r.position = Position(r.position.identity, r.wal_end, r.position.last_commit_us)
        except (psycopg2.Error, OSError, CaptureError, pgoutput.PgoutputError) as exc:
            self._lost(r, exc)

    def _ping(self, r: SourceRunner) -> None:
        assert r.stream is not None
        r.pinged_at = time.monotonic()
        try:
            r.stream.ping()
        except (psycopg2.Error, OSError) as exc:
            self._lost(r, exc)

    def _apply(self, r: SourceRunner, batch: ChangeBatch) -> None:
        assert r.position is not None
        if batch.end_lsn <= r.position.lsn:
            r.skipped += 1
            return
        minute = batch.commit_time_us // US_PER_MINUTE
        with self.lock:
            for ch in batch.changes:
                if ch.kind == "upsert":
                    r.ledger.upsert(ch.pk, ch.values, minute, self.aggregates, ch.digest)
                elif ch.kind == "delete":
                    r.ledger.delete(ch.pk, self.aggregates)
                else:
                    r.ledger.truncate(self.aggregates)
            self.version += 1
        r.position = Position(r.position.identity, batch.end_lsn, batch.commit_time_us)
        r.transactions += 1
        r.changes += len(batch.changes)
        self.latencies_ms.append((time.time_ns() // 1000 - batch.commit_time_us) / 1000)

    # -- opening a source -----------------------------------------------------------------------

    def _open(self, r: SourceRunner) -> None:
        r.state, r.assembler = "connecting", TransactionAssembler(CHART_COLUMNS)
        stream: replication.ReplicationStream | None = None
        try:
            with connected(r.source.dsn) as conn:
                check_table(conn, r.source.name)
                if r.source.mode == "auto":
                    blockers = replication_blockers(conn)
                    if blockers:
                        self._switch_to_polling(r, "auto: " + "; ".join(blockers))
                        return
                replication.ensure_publication(conn, CHART_COLUMNS)
                with conn.cursor() as cur:
                    cur.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
                    db_oid = (cur.fetchone() or (0,))[0]
                slot = replication.slot_info(conn, r.slot)
                stream = replication.ReplicationStream(r.source.dsn, r.slot)
                identity = f"{stream.system_id()}:{db_oid}"
                # A slot confirmed past our position is fine: we never confirm beyond the checkpoint,
                # and psycopg2 confirms a keepalive's position only once everything received before
                # it is confirmed, so nothing of ours lies between (a slot we recreate is marked in
                # the checkpoint first, see _copy).
                usable = (
                    r.position is not None
                    and r.position.identity == identity
                    and slot is not None
                    and slot.wal_status != "lost"
                )
                if not usable:
                    why = _copy_reason(r.position, identity, slot)
                    if slot is not None:
                        stream.close()
                        replication.drop_slot(conn, r.slot)
                        stream = replication.ReplicationStream(r.source.dsn, r.slot)
                    self._copy(r, stream, identity, why)
            assert r.position is not None
            stream.start(r.position.lsn)
        except SourceUnusable as exc:
            self._lost(r, exc, stream, state="failed")
            return
        except (psycopg2.Error, OSError, PisaPulseError) as exc:
            self._lost(r, exc, stream)
            return
        r.stream, r.state, r.reason, r.failures = stream, "streaming", "", 0
        r.heard_at = time.time()
        log.info("streaming source=%s lsn=%s", r.source.name, replication.lsn_text(r.position.lsn))

    def _copy(self, r: SourceRunner, stream: replication.ReplicationStream, identity: str, why: str) -> None:
        """Create the slot and copy through its snapshot, reconciling the ledger with the copy."""
        r.state = "copying"
        r.fresh_at = time.time()  # the copy holds everything committed before its snapshot
        log.info("copying source=%s reason=%s", r.source.name, why)
        # Forget the old position durably before the new slot exists: a crash during the copy must
        # lead to another copy, not to streaming from a slot that starts after the checkpoint.
        self.store.forget(r.source.name)
        r.position, r.checkpointed_lsn = None, 0
        start = stream.create_slot()
        seen: set[int] = set()
        ledger, aggregates = r.ledger, self.aggregates

        def on_row(values: list[str | None]) -> None:
            pk = int(values[0])  # type: ignore[arg-type]
            seen.add(pk)
            ledger.upsert(pk, values, INITIAL_COPY_MINUTE, aggregates)  # a held row keeps its arrival

        with self.lock:
            replication.copy_snapshot(r.source.dsn, start.snapshot, CHART_COLUMNS, on_row)
            for pk in ledger.keys() - seen:
                ledger.delete(pk, aggregates)
            self.version += 1
        r.position = Position(identity, start.consistent_lsn, 0)
        r.copies += 1
        r.copy_reason = why

    def _lost(
        self,
        r: SourceRunner,
        exc: BaseException,
        stream: replication.ReplicationStream | None = None,
        state: str = "reconnecting",
    ) -> None:
        for s in (stream, r.stream):
            if s is not None:
                s.close()
        r.stream = None
        r.failures += 1
        r.losses += 1
        delay = BACKOFF[min(r.failures, len(BACKOFF)) - 1] if state != "failed" else BACKOFF[-1]
        r.retry_at = time.monotonic() + delay
        r.state, r.reason = (
            state,
            first_line(exc),
        )
        log.warning("source %s source=%s reason=%s retry_in=%ss", state, r.source.name, r.reason, delay)

    # -- checkpoint -----------------------------------------------------------------------------

    def checkpoint(self) -> int:
        """Write changed rows and positions, then confirm the positions to the sources."""
        changes = {}
        for r in self.runners:
            if r.position is None:
                continue
            if r.ledger.pending_changes or r.position.lsn != r.checkpointed_lsn:
                changes[r.source.name] = SourceChanges(r.position, r.ledger.take_changes())
        with self.lock:  # polled ledgers change in their own threads: take their rows whole, now
            for p in self.pollers:
                if p.position is not None:
                    changes[p.source.name] = SourceChanges(p.position, list(p.ledger.take_changes()))
        written = self.store.save(changes) if changes else 0
        self._last_checkpoint = time.monotonic()
        for r in self.runners:
            if r.position is None:
                continue
            r.checkpointed_lsn = r.position.lsn
            if r.stream is not None:
                try:
                    r.stream.confirm(r.checkpointed_lsn)
                except (psycopg2.Error, OSError) as exc:
                    self._lost(r, exc)
        return written

    def as_of(self) -> float:
        """Unix time up to which every source's changes are known to be in the aggregates (0: not yet).

        For a polled source: its inserts and deletes (its updates wait for the next reconciliation).
        """
        return min([r.fresh_at for r in self.runners] + [p.fresh_at for p in self.pollers], default=0.0)

    def submissions(self) -> int:
        """Rows over all sources, read safely from another thread."""
        with self.lock:
            return self.aggregates.count()

    def status(self) -> list[dict[str, Any]]:
        """Per source, in the config's order: mode, state, rows, last commit, lag, invalid values."""
        every = [r.status() for r in self.runners] + [p.status() for p in self.pollers]
        return sorted(every, key=lambda s: self._order[s["source"]])

    def close(self) -> None:
        """Close every stream and the checkpoint file."""
        for r in self.runners:
            if r.stream is not None:
                r.stream.close()
                r.stream = None
        self.store.close()


def _copy_reason(position: Position | None, identity: str, slot: replication.SlotInfo | None) -> str:
    if position is None:
        return "first start"
    if position.identity != identity:
        return "the database is not the one checkpointed"
    if slot is None:
        return "slot missing"
    return "slot invalidated"
