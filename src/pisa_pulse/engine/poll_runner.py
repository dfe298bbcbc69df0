"""One source captured by polling (`mode = "poll"`, `capture/poll.py`): its thread, state and cost.

Each polled source has its own thread, so polls of one source never overlap and a slow source
delays no other. A poll starts `poll_interval` after the previous one started (default 250 ms) or,
when it took longer than that, as long after it ended as it took (a slow source spends at most half
its time answering polls); after an error the thread reconnects with back-off (1, 2, 5, 10 s).
Reconciliation (finding updates) rolls: each poll compares the digests of the next slice of ranges,
sized so that every range is compared once per `reconcile_interval` (default 30 s); no poll reads
more than its slice, so finding updates never delays finding inserts and deletes. The changes of a
poll go to the ledger and the shared aggregates under the pipeline's lock, the same way a replicated
transaction does; the pipeline's checkpoint stores the ledger like any other, with the position
`poll` (state-based: a restart compares the source with the restored ledger, so nothing is counted
twice).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg2

from pisa_pulse.capture.changes import RowChange
from pisa_pulse.capture.contract import INITIAL_COPY_MINUTE
from pisa_pulse.capture.poll import KeyRanges, PollStats, SourcePoller
from pisa_pulse.capture.preflight import SourceUnusable, check_table
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.checkpoint import Position
from pisa_pulse.engine.ledger import Ledger
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.config import Source, first_line

log = logging.getLogger(__name__)

BACKOFF = (1.0, 2.0, 5.0, 10.0)
POLL_IDENTITY = "poll"  # the checkpoint position of a polled source: it holds no stream position
ARRIVAL = "the poll that first saw the row"
READ_COUNTERS = ("index_entries", "ids_read", "rows_read")


@dataclass
class PollRunner:
    """One polled source (see the module docstring)."""

    source: Source
    ledger: Ledger
    aggregates: Aggregates
    lock: threading.Lock
    changed: Callable[[], None]  # called under `lock` after each applied chunk (bumps the version)
    poll_interval: float = 0.25
    reconcile_interval: float = 30.0
    position: Position | None = None
    why: str = ""  # why this source is polled when it was not asked to be (auto mode)
    state: str = "connecting"
    reason: str = ""
    fresh_at: float = 0.0  # Unix time up to which the source's inserts and deletes are applied
    failures: int = 0  # in a row, for the back-off
    losses: int = 0  # connections lost since the start
    copies: int = 0
    polls: int = 0
    skipped: int = 0
    updates_found: int = 0  # rows whose digest changed, over every reconciliation
    changes: int = 0  # rows inserted, deleted and updated, as the polls found them
    read: dict[str, int] = field(default_factory=lambda: dict.fromkeys(READ_COUNTERS, 0))  # totals
    last: PollStats = field(default_factory=PollStats)  # the last poll that was not skipped
    reconciled_as_of: float = 0.0  # Unix time up to which updates are applied too (a cycle's start)
    reconcile_everything: bool = False  # the next poll compares every range's digests (then resets)
    _cursor: int = 0  # the next range to reconcile
    _cycle_started: float = 0.0  # when the poll that reconciled range 0 of this cycle started
    poll_ms: deque[float] = field(default_factory=lambda: deque(maxlen=240))
    _keys: KeyRanges | None = None
    _thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        """Poll in a thread of its own until `stop` is set."""
        self._thread = threading.Thread(
            target=self.run, args=(stop,), name=f"poll-{self.source.name}", daemon=True
        )
        self._thread.start()

    def join(self) -> None:
        """Wait for the thread to end (after `stop` was set)."""
        if self._thread is not None:
            self._thread.join()

    def run(self, stop: threading.Event) -> None:
        """Connect, poll, and reconnect after errors, until `stop` is set."""
        poller: SourcePoller | None = None
        while not stop.is_set():
            began = time.monotonic()
            try:
                if poller is None:
                    self.state = "reconnecting" if self.losses else "connecting"  # a retry stays one
                    poller = SourcePoller(self.source.dsn)
                    check_table(poller.conn, self.source.name)
                    poller.conn.rollback()
                self._poll(poller)
            except SourceUnusable as exc:
                poller = self._lost(poller, exc, "failed")
                stop.wait(BACKOFF[-1])
                continue
            except (psycopg2.Error, OSError, PisaPulseError) as exc:
                poller = self._lost(poller, exc, "reconnecting")
                stop.wait(BACKOFF[min(self.failures, len(BACKOFF)) - 1])
                continue
            took = time.monotonic() - began
            stop.wait(max(self.poll_interval - took, took if took > self.poll_interval else 0.0))
        if poller is not None:
            poller.close()

    def _poll(self, poller: SourcePoller) -> None:
        copy = self.position is None and len(self.ledger) == 0
        if self._keys is None:
            self._keys = KeyRanges(self.ledger.keys_and_digests()[0])
        keys = self._keys
        started = time.time()
        reconcile = None if copy else self._slice(keys.layout.ranges, started)
        minute = INITIAL_COPY_MINUTE if copy else int(started // 60)
        if copy:
            self.state = "copying"

        def apply(changes: list[RowChange]) -> None:
            with self.lock:
                for ch in changes:
                    if ch.kind == "delete":
                        if self.ledger.delete(ch.pk, self.aggregates):
                            keys.remove(ch.pk)
                    else:
                        new = ch.pk not in self.ledger
                        self.ledger.upsert(ch.pk, ch.values, minute, self.aggregates, ch.digest)
                        if new:
                            keys.add(ch.pk)
                self.changed()

        stats = poller.poll(keys, self.ledger.digest, reconcile, apply, copy=copy)
        if reconcile is not None:
            self._cursor = reconcile.stop % keys.layout.ranges
            if self._cursor == 0:  # every range compared since the cycle started
                self.reconciled_as_of = self._cycle_started
        self._keys = keys.tidy()
        if self._keys.layout != keys.layout:
            self._cursor = 0  # new ranges: the cycle starts over
        self.fresh_at = started
        self.position = Position(POLL_IDENTITY, 0, int(started * 1e6))
        self.state, self.reason, self.failures = "polling", "", 0
        self.polls += 1
        self.skipped += stats.skipped
        self.copies += stats.copied
        self.updates_found += stats.updated
        self.changes += stats.inserted + stats.deleted + stats.updated
        for key in READ_COUNTERS:
            self.read[key] += getattr(stats, key)
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
        return range(self._cursor, min(ranges, self._cursor + per_poll))

    def _lost(self, poller: SourcePoller | None, exc: BaseException, state: str) -> SourcePoller | None:
        """Close the connection and say why; returns no poller, for the caller to reconnect."""
        if poller is not None:
            with contextlib.suppress(psycopg2.Error):
                poller.close()
        self.failures += 1
        self.losses += 1
        self.state, self.reason = state, first_line(exc)
        log.warning("source %s source=%s reason=%s", state, self.source.name, self.reason)
        return None

    def status(self) -> dict[str, Any]:
        """What `pisa-pulse pipeline` and the API show for this source."""
        last = self.last
        ms = sorted(self.poll_ms)
        return {
            "source": self.source.name,
            "mode": "poll",
            "state": self.state,
            "reason": self.reason,
            "rows": len(self.ledger),
            "last_commit_us": None,
            "lag_ms": round((time.time() - self.fresh_at) * 1000) if self.fresh_at else None,
            "lag_bytes": None,
            "lsn": None,
            "copies": self.copies,
            "connections_lost": self.losses,
            "transactions": self.polls,
            "changes": self.changes,
            "invalid": {k: v for k, v in self.ledger.invalid_counts().items() if v},
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
                "reconcile_interval_s": self.reconcile_interval,
                "reconcile_progress": round(self._cursor / last.ranges, 3) if last.ranges else None,
                "updates_as_of_us": int(self.reconciled_as_of * 1e6) or None,
                "updates_found": self.updates_found,
            },
        }
