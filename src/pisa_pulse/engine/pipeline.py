"""The engine's loop: every captured source's batches into ledgers and aggregates, exactly once.

The pipeline starts one `CapturedSource` per configured source (`capture.sources`: replication or
polling, as the source's mode says) and is their sink: each batch is applied whole, under one lock,
to that source's ledger and its part of the aggregates (`parts`, one `Aggregates` per source, so
they can be published per source and merged anywhere). A batch's position becomes the source's
position. About once a second (not while a source is copied: `copying`) the changed ledger rows and
every position are checkpointed in one SQLite transaction (or, in a fleet worker, into JetStream:
fleet/checkpoints.py), and only then is each position confirmed to its source, so a source keeps
everything the checkpoint lacks. On restart the ledgers and positions come back from the checkpoint
and each source resumes after its position.

A copy (`COPY_START`, rows, `COPY_END`) first forgets the source's position durably, then upserts
its rows (a row already held keeps its arrival time), and at its end retracts the held rows it did
not name. The engine knows nothing of slots or polls: only batches, positions and statuses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pisa_pulse.capture.contract import (
    Batch,
    BatchKind,
    CapturedSource,
    Position,
    RowChange,
    SourceStatus,
    State,
)
from pisa_pulse.capture.sources import captured_sources
from pisa_pulse.engine.aggregates import Aggregates, Exported
from pisa_pulse.engine.checkpoint import Checkpoint, CheckpointStore, SourceChanges
from pisa_pulse.engine.ledger import Ledger, Records
from pisa_pulse.sources.config import Source

log = logging.getLogger(__name__)

CHECKPOINT_ROWS = 50_000  # rows per checkpoint transaction, about (whole sources: see `checkpoint`)
COPY_BOUND = frozenset({State.CONNECTING, State.COPYING})  # a source without a position: to be copied

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None
BULK_RUN = 64  # upserts in a row from which `Ledger.upsert_many` takes them (see `_apply_changes`)


def checkpoint_path(data_dir: Path) -> Path:
    """Where the pipeline keeps its checkpoint in a data dir."""
    return data_dir / "pipeline" / "checkpoint.sqlite3"


@dataclass
class Held:
    """What the engine holds for one source."""

    capture: CapturedSource
    ledger: Ledger
    part: Aggregates  # this source's rows' contribution
    position: Position | None  # applied (in memory); None until copied or restored
    checkpointed: Position | None = None
    copy_seen: set[int] | None = None  # the keys a copy in progress has named


class Pipeline:
    """Captured sources -> ledgers and aggregates, with a durable checkpoint (see module doc)."""

    def __init__(
        self,
        sources: Sequence[Source],
        home: Path | Checkpoint,
        slot_prefix: str = "pisa_pulse",
        checkpoint_interval: float = 1.0,
        poll_interval: float = 0.25,
        reconcile_interval: float = 30.0,
        on_change: Callable[[], None] | None = None,
        claim: Callable[[str], bool] | None = None,
    ) -> None:
        """`home`: a data dir, whose SQLite file (`checkpoint_path`) holds the checkpoint, or another
        `Checkpoint` (a fleet worker's, in JetStream); `claim(name)`: whether this process may end
        another's hold on a source's slot (capture/replicated.py; None: it never does)."""
        self.checkpoint_interval = checkpoint_interval
        self.store = home if not isinstance(home, Path) else CheckpointStore(checkpoint_path(home))
        self.version = 0  # bumps whenever the aggregates change
        self.latencies_ms: deque[float] = deque(maxlen=100_000)  # commit -> applied, per transaction
        self.lock = threading.Lock()  # held while ledgers and aggregates change
        self._store_lock = threading.Lock()  # taken before `lock` when both are needed
        self._on_change = on_change
        self._dirty: set[str] = set()  # sources whose part changed since `take_parts`
        saved = self.store.positions()
        captures = captured_sources(sources, slot_prefix, poll_interval, reconcile_interval, claim)
        self.held: dict[str, Held] = {}
        for src, capture in zip(sources, captures, strict=True):
            part = Aggregates()
            ledger = Ledger.from_records(src.name.upper(), self.store.records(src.name), part)
            position = saved.get(src.name)
            self.held[src.name] = Held(capture, ledger, part, position, position)
        for gone in set(saved) - {s.name for s in sources}:
            self.store.forget(gone)

    # -- running ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Capture until `stop` is set, checkpointing every `checkpoint_interval`; then stop and close."""
        for name, h in self.held.items():
            h.capture.start(h.position, h.ledger, self._apply)
            log.debug("started source=%s", name)
        try:
            while not stop.wait(self.checkpoint_interval):
                self.keep_window(time.time())
                if not self.copying():
                    self.checkpoint()
        finally:
            # All at once: each stop waits for its source's thread (or the loop's next turn).
            stopping = [threading.Thread(target=h.capture.stop) for h in self.held.values()]
            for thread in stopping:
                thread.start()
            for thread in stopping:
                thread.join()
            self.checkpoint()
            self.store.close()

    def _apply(self, name: str, batch: Batch) -> None:
        """The sink of every source: apply one batch whole (called from the sources' threads)."""
        h = self.held[name]
        if batch.kind is BatchKind.COPY_START:
            # Durably, before the source makes a new slot: a crash during the copy leads to another copy.
            with self._store_lock:
                self.store.forget(name)
                with self.lock:
                    h.position = h.checkpointed = None
                    h.copy_seen = set()
            return
        changed = bool(batch.changes)
        ledger, part, minute = h.ledger, h.part, batch.arrival_minute
        with self.lock:
            _apply_changes(ledger, batch.changes, minute, part)
            if h.copy_seen is not None:
                if batch.kind is BatchKind.COPY_ROWS:
                    h.copy_seen.update(ch.pk for ch in batch.changes)
                elif batch.kind is BatchKind.COPY_END:
                    for pk in ledger.keys() - h.copy_seen:
                        ledger.delete(pk, part)
                    h.copy_seen, changed = None, True
                    trim_heap()  # the copy's text and chunks are freed: give their pages back
            if batch.position is not None:
                h.position = batch.position
            if changed:
                self.version += 1
                self._dirty.add(name)
        if batch.commit_time_us:
            self.latencies_ms.append((time.time_ns() // 1000 - batch.commit_time_us) / 1000)
        if changed and self._on_change is not None:
            self._on_change()

    def keep_window(self, now: float) -> None:
        """Forget the arrival minutes that fell out of the window kept in memory (`Aggregates.keep_window`:
        a scan of the minutes once a minute, a comparison otherwise)."""
        with self.lock:
            for h in self.held.values():
                h.part.keep_window(now)

    def copying(self) -> bool:
        """Whether a source is being copied, or holds no position yet and is connecting to be. The
        periodic checkpoint waits until none is: on a cold start the sources are copied one after
        the other by one thread, and writing each finished source meanwhile took 14 % of the
        process's time (bench/footprint_bench.py at 600,000 students), so every source streamed
        later. A crash before that checkpoint copies the finished sources again; a stop checkpoints
        them. A source that cannot connect (reconnecting, failed) holds nobody back."""
        with self.lock:
            if any(h.copy_seen is not None for h in self.held.values()):
                return True
            cold = [h for h in self.held.values() if h.position is None]
        return any(h.capture.status().state in COPY_BOUND for h in cold)

    def checkpoint(self) -> int:
        """Write changed rows and positions, then confirm the positions to the sources. Whole sources
        go into one transaction until it holds `CHECKPOINT_ROWS` rows, then the next: under steady
        traffic one transaction, after a cold start's copies (every row changed at once) a few, so
        that their rows are never all in memory at once (600,000 rows listed at once left the
        capture process 180 MB larger). Each source's rows and position are as of one moment."""
        written, pending = 0, list(self.held)
        while pending:
            changes: dict[str, SourceChanges] = {}
            snapshots: dict[str, Records] = {}  # the whole ledger, where the checkpoint asks for it
            with self._store_lock:
                with self.lock:
                    rows = 0
                    while pending and rows < CHECKPOINT_ROWS:
                        name = pending.pop(0)
                        h = self.held[name]
                        due = h.ledger.pending_changes or h.position != h.checkpointed
                        if h.position is not None and h.copy_seen is None and due:
                            rows += h.ledger.pending_changes
                            if self.store.snapshot_due(name, h.ledger.pending_changes):
                                snapshots[name] = h.ledger.records()
                            changes[name] = SourceChanges(h.position, list(h.ledger.take_changes()))
                written += self.store.save(changes, snapshots) if changes else 0
            for name, ch in changes.items():
                h = self.held[name]
                h.checkpointed = ch.position
                h.capture.confirm(ch.position)
        if written >= CHECKPOINT_ROWS:
            trim_heap()  # the rows listed for a large checkpoint are freed: give their pages back
        return written

    # -- reading (any thread) ---------------------------------------------------------------------

    @property
    def aggregates(self) -> Aggregates:
        """Every source's part merged: a copy, taken under the lock."""
        with self.lock:
            total = Aggregates()
            for h in self.held.values():
                total.merge(h.part)
            return total

    def take_parts(self, full: bool = False) -> dict[str, Exported]:
        """Per source, its part as plain data (`Aggregates.export`): every source when `full`, else those
        changed since the last call; with the version they reflect in `self.version`."""
        with self.lock:
            names = list(self.held) if full else sorted(self._dirty)
            self._dirty = set()
            return {name: self.held[name].part.export(full) for name in names}

    def take_part(
        self, name: str, full: bool, blocking: bool = True
    ) -> tuple[float, Aggregates, Exported] | None:
        """One source's freshness, a copy of its part, and `take_parts` of it, as of one moment (its
        freshness first: the part holds at least everything up to it); None at once if not
        `blocking` and a batch is being applied."""
        as_of = self.held[name].capture.freshness()
        if not self.lock.acquire(blocking=blocking):
            return None
        try:
            self._dirty.discard(name)
            h = self.held[name]
            return as_of, h.part.copy(), h.part.export(full)
        finally:
            self.lock.release()

    def position(self, name: str) -> Position | None:
        """The position applied for a source."""
        return self.held[name].position

    def ledger(self, name: str) -> Ledger:
        """What the engine holds of a source."""
        return self.held[name].ledger

    def as_of(self) -> float:
        """Unix time up to which every source's changes are known to be in the aggregates (0: not yet).

        For a polled source: its inserts and deletes (its updates wait for the next reconciliation).
        """
        return min((h.capture.freshness() for h in self.held.values()), default=0.0)

    def submissions(self) -> int:
        """Rows over all sources."""
        with self.lock:
            return sum(h.part.count() for h in self.held.values())

    def statuses(self) -> list[SourceStatus]:
        """Per source, in the config's order: what its capture reports."""
        return [h.capture.status() for h in self.held.values()]

    def status(self) -> list[dict[str, Any]]:
        """Per source, in the config's order: its capture's status, rows and invalid values (JSON)."""
        result = []
        for h in self.held.values():
            body = h.capture.status().as_dict()
            body["rows"] = len(h.ledger)
            body["invalid"] = {k: v for k, v in h.ledger.invalid_counts().items() if v}
            result.append(body)
        return result


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's `malloc_trim`; elsewhere nothing): after a
    copy or a large checkpoint, the freed rows would otherwise stay in the process's RSS."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _apply_changes(ledger: Ledger, changes: Sequence[RowChange], minute: int, part: Aggregates) -> None:
    """Apply a batch's changes in order; runs of `BULK_RUN` upserts or more go in through `upsert_many`
    (a copy's chunks, a backlog's transactions of inserts), shorter ones row by row (numpy's fixed
    cost per call would outweigh what it saves on a transaction of a few rows)."""
    run: list[tuple[int, Sequence[object], int]] = []
    for ch in changes:
        if ch.kind == "upsert":
            run.append((ch.pk, ch.values, ch.digest))
            continue
        _upserts(ledger, run, minute, part)
        run = []
        if ch.kind == "delete":
            ledger.delete(ch.pk, part)
        else:
            ledger.truncate(part)
    _upserts(ledger, run, minute, part)


def _upserts(
    ledger: Ledger, run: list[tuple[int, Sequence[object], int]], minute: int, part: Aggregates
) -> None:
    if len(run) >= BULK_RUN:
        ledger.upsert_many(run, minute, part)
    else:
        for pk, values, digest in run:
            ledger.upsert(pk, values, minute, part, digest)
