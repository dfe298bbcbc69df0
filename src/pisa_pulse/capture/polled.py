"""A source captured by polling (`mode = "poll"`, the queries in `poll.py`): its thread, state and cost.

Each polled source has its own thread, so polls of one source never overlap and a slow source
delays no other. A poll starts `poll_interval` after the previous one started (default 250 ms) or,
when it took longer than that, as long after it ended as it took (a slow source spends at most half
its time answering polls); after an error the thread reconnects with back-off (1, 2, 5, 10 s).
Reconciliation (finding updates) rolls: each poll compares the digests of the next slice of ranges,
sized so that every range is compared once per `reconcile_interval` (default 30 s), but never more
than `RECONCILE_RANGES_PER_POLL` ranges (about 256 rows): a poll's reads stay bounded whatever the
source's size, and a source too large for that budget takes longer than the interval to come round
(at the default 250 ms: 30,000 rows, 1,024 ranges, about 32 s; 300,000 rows, 16,384 ranges, about 9
minutes). No poll reads more than its slice, so finding updates never delays inserts and deletes.

What a poll finds goes to the sink as batches, in chunks from one snapshot, each with the position
`poll` (state-based: a restart compares the source with the rows the engine holds, so nothing is
counted twice). New rows arrive in the minute the poll started; the first start is a copy.

States: connecting -> copying (first start only) -> polling -> reconnecting (after an error) ...;
failed when the table is unusable (retried slowly).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import psycopg2

from pisa_pulse.capture.contract import (
    INITIAL_COPY_MINUTE,
    Batch,
    BatchKind,
    HeldRows,
    Mode,
    Position,
    RowChange,
    Sink,
    SourceStatus,
    State,
    retry_delay,
)
from pisa_pulse.capture.exceptions import SourceUnusable
from pisa_pulse.capture.poll import KeyRanges, PollStats, SourcePoller
from pisa_pulse.capture.preflight import check_table
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.config import Source, first_line

log = logging.getLogger(__name__)

POLL_IDENTITY = "poll"  # the position of a polled source: it holds no stream position
ARRIVAL = "the poll that first saw the row"
READ_COUNTERS = ("index_entries", "ids_read", "rows_read")
TIMED_PARTS = ("ms", "scan_ms", "reconcile_ms")  # a poll's time, and that of its two parts that read most
# The reconciliation's budget per poll, in ranges of about `poll.ROWS_PER_RANGE` (32) rows: 256 rows
# read and hashed by the source per poll at most (1/120 of a 30,000-row source, the share a 30-s cycle
# at 250 ms asks for), so the cycle rather than the poll grows with the source.
RECONCILE_RANGES_PER_POLL = 8


@dataclass
class PolledSource:
    """One polled source (see the module docstring); implements `contract.CapturedSource`."""

    source: Source
    poll_interval: float = 0.25
    reconcile_interval: float = 30.0
    why: str = ""  # why this source is polled when it was not asked to be (auto mode)
    state: State = State.CONNECTING
    reason: str = ""
    fresh_at: float = 0.0  # Unix time up to which the source's inserts and deletes are handed over
    failures: int = 0  # in a row, for the back-off
    losses: int = 0  # connections lost since the start
    copies: int = 0
    polls: int = 0
    skipped: int = 0
    updates_found: int = 0  # rows whose digest changed, over every reconciliation
    changes: int = 0  # rows inserted, deleted and updated, as the polls found them
    read: dict[str, int] = field(default_factory=lambda: dict.fromkeys(READ_COUNTERS, 0))  # totals
    spent_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMED_PARTS, 0.0))  # totals
    last: PollStats = field(default_factory=PollStats)  # the last poll that was not skipped
    reconciled_as_of: float = 0.0  # Unix time up to which updates are handed over too (a cycle's start)
    reconcile_everything: bool = False  # the next poll compares every range's digests (then resets)
    position: Position | None = None
    _cursor: int = 0  # the next range to reconcile
    _cycle_started: float = 0.0  # when the poll that reconciled range 0 of this cycle started
    poll_ms: deque[float] = field(default_factory=lambda: deque(maxlen=240))
    _keys: KeyRanges | None = None
    _held: HeldRows | None = None
    _sink: Sink | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        """The source's name."""
        return self.source.name

    # -- the contract -----------------------------------------------------------------------------

    def start(self, position: Position | None, held: HeldRows, sink: Sink) -> None:
        """Poll in a thread of its own until `stop()`."""
        self.position, self._held, self._sink = position, held, sink
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def confirm(self, position: Position) -> None:
        """Nothing to release: a polled source keeps no history for us."""

    def freshness(self) -> float:
        """Unix time up to which inserts and deletes are handed over (the last poll's start)."""
        return self.fresh_at

    def stop(self) -> None:
        """Stop after the poll in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # -- polling ----------------------------------------------------------------------------------

    def _run(self) -> None:
        stop = self._stop
        poller: SourcePoller | None = None
        while not stop.is_set():
            began = time.monotonic()
            try:
                if poller is None:
                    self.state = State.RECONNECTING if self.losses else State.CONNECTING  # a retry stays one
                    poller = SourcePoller(self.source)
                    check_table(poller.conn, self.name)
                    poller.conn.rollback()
                self._poll(poller)
            except SourceUnusable as exc:
                poller = self._lost(poller, exc, State.FAILED)
                stop.wait(retry_delay(self.failures, State.FAILED))
                continue
            except (psycopg2.Error, OSError, PisaPulseError) as exc:
                poller = self._lost(poller, exc, State.RECONNECTING)
                stop.wait(retry_delay(self.failures, State.RECONNECTING))
                continue
            took = time.monotonic() - began
            stop.wait(max(self.poll_interval - took, took if took > self.poll_interval else 0.0))
        if poller is not None:
            poller.close()

    def _poll(self, poller: SourcePoller) -> None:
        held, sink = self._held, self._sink
        assert held is not None and sink is not None
        copy = self.position is None and len(held) == 0
        if self._keys is None:
            self._keys = KeyRanges(held.keys_and_digests()[0])
        keys = self._keys
        started = time.time()
        reconcile = None if copy else self._slice(keys.layout.ranges, started)
        minute = INITIAL_COPY_MINUTE if copy else int(started // 60)
        reached = Position(POLL_IDENTITY, 0, int(started * 1e6))
        if copy:
            self.state = State.COPYING
            sink(self.name, Batch((), None, minute, BatchKind.COPY_START))

        def hand_over(changes: list[RowChange]) -> None:
            new = [ch.pk for ch in changes if ch.kind == "upsert" and ch.pk not in held]
            gone = [ch.pk for ch in changes if ch.kind == "delete" and ch.pk in held]
            kind = BatchKind.COPY_ROWS if copy else BatchKind.CHANGES
            sink(self.name, Batch(changes, None if copy else reached, minute, kind))
            for pk in gone:
                keys.remove(pk)
            for pk in new:
                keys.add(pk)

        stats = poller.poll(keys, held.digest, reconcile, hand_over, copy=copy)
        sink(self.name, Batch((), reached, minute, BatchKind.COPY_END if copy else BatchKind.CHANGES))
        if reconcile is not None:
            self._cursor = reconcile.stop % keys.layout.ranges
            if self._cursor == 0:  # every range compared since the cycle started
                self.reconciled_as_of = self._cycle_started
        self._keys = keys.tidy()
        if self._keys.layout != keys.layout:
            self._cursor = 0  # new ranges: the cycle starts over
        self.fresh_at = started
        self.position = reached
        self.state, self.reason, self.failures = State.POLLING, "", 0
        self.polls += 1
        self.skipped += stats.skipped
        self.copies += stats.copied
        self.updates_found += stats.updated
        self.changes += stats.inserted + stats.deleted + stats.updated
        for key in READ_COUNTERS:
            self.read[key] += getattr(stats, key)
        for key in TIMED_PARTS:
            self.spent_ms[key] += getattr(stats, key)
        self.poll_ms.append(stats.ms)
        if not stats.skipped:
            self.last = stats  # what a poll that read something cost
        if copy:  # a copy reads every row: as good as a reconciliation
            self.reconciled_as_of = started

    def _slice(self, ranges: int, started: float) -> range:
        """The ranges whose digests this poll compares: a slice, or all when asked."""
        if self.reconcile_everything:
            self.reconcile_everything, self._cursor = False, 0
            self._cycle_started = started
            return range(ranges)
        if self._cursor == 0:
            self._cycle_started = started
        per_poll = max(1, math.ceil(ranges * self.poll_interval / self.reconcile_interval))
        per_poll = min(per_poll, RECONCILE_RANGES_PER_POLL)
        return range(self._cursor, min(ranges, self._cursor + per_poll))

    def _lost(self, poller: SourcePoller | None, exc: BaseException, state: State) -> SourcePoller | None:
        """Close the connection and say why; returns no poller, for the caller to reconnect."""
        if poller is not None:
            with contextlib.suppress(psycopg2.Error):
                poller.close()
        self.failures += 1
        self.losses += 1
        self.state, self.reason = state, first_line(exc)
        log.warning("source %s source=%s reason=%s", state, self.name, self.reason)
        return None

    def status(self) -> SourceStatus:
        """The typed status, with the poll's cost in `details`."""
        last = self.last
        ms = sorted(self.poll_ms)
        return SourceStatus(
            source=self.name,
            mode=Mode.POLL,
            state=self.state,
            reason=self.reason,
            fresh_at=self.fresh_at,
            lag_ms=round((time.time() - self.fresh_at) * 1000) if self.fresh_at else None,
            copies=self.copies,
            connections_lost=self.losses,
            transactions=self.polls,
            changes=self.changes,
            details={
                "arrival": ARRIVAL,
                "mode_reason": self.why,
                "poll": {
                    "interval_ms": round(self.poll_interval * 1000),
                    "polls": self.polls,
                    "skipped": self.skipped,
                    "last_ms": round(last.ms, 1),
                    "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms else None,
                    "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms else None,
                    "index_entries_read": last.index_entries,
                    "ids_read": last.ids_read,
                    "rows_read": last.rows_read,
                    "ranges": last.ranges,
                    "ranges_differing": last.ranges_differing,
                    "scan_ms": round(last.scan_ms, 1),
                    "reconcile_ms": round(last.reconcile_ms, 1),
                    "reconcile_interval_s": self.reconcile_interval,
                    "reconcile_progress": round(self._cursor / last.ranges, 3) if last.ranges else None,
                    "updates_as_of_us": int(self.reconciled_as_of * 1e6) or None,
                    "updates_found": self.updates_found,
                },
            },
        )
