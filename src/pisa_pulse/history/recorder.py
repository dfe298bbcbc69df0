"""Every minute, what the charts showed, appended to the store (store.py) without blocking capture.

`Recorder.observe(as_of, parts)` is called with every update of the aggregates (under the snapshots'
lock, so it must be cheap): when the watermark `as_of` (every source's changes are in up to then)
passes a minute boundary, it takes each source's per-country totals and the rows that arrived
during the minute that just ended, and queues them: a copy of a few integers per country, once a
minute. A writer thread drains the queue into the store in order; a store that is down (or not
yet reachable at start) is retried every `RETRY_S` with one warning per outage, and the queue
holds what waits (up to `MAX_PENDING` minutes: a week; older ones are dropped, with a warning), so
nothing is lost nor, thanks to the store's (minute, source) key, written twice. `stop()` records
the minute in progress too, as shown at shutdown, and drains the queue for up to `DRAIN_S`.
Once a day (and at start) minutes past the retention are deleted.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pisa_pulse.api import charts
from pisa_pulse.api.exceptions import HttpError, ServiceUnavailable
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.history import query
from pisa_pulse.history.store import CountryMinute, Store
from pisa_pulse.secret import scrub

log = logging.getLogger(__name__)

RETRY_S = 2.0
MAX_PENDING = 7 * 24 * 60
DRAIN_S = 5.0
OLDER_KEPT = 8  # `older_arrivals` answers kept (a few window lengths, this minute's and the last)
T = TypeVar("T")
PRUNE_EVERY_S = 24 * 3600.0

Minute = tuple[int, dict[str, dict[str, CountryMinute]]]  # minute -> source -> country -> entry


def minute_of(minute: int, parts: Mapping[str, Aggregates]) -> Minute:
    """Each source's countries at the end of `minute`: their sums and that minute's arrivals."""
    return minute, {
        source: {
            code: CountryMinute(part.totals(code, minutes=False), part.arrived(code, minute))
            for code in part.country_codes()
        }
        for source, part in parts.items()
    }


class Recorder:
    """Appends each minute to the store (see the module docstring)."""

    def __init__(
        self,
        target: str,
        data_dir: Path,
        retention_days: float,
        opener: Callable[[str, Path], Store] = Store.open,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target, self.data_dir, self.retention_days = target, data_dir, retention_days
        self.opener, self.clock = opener, clock
        self.pending: collections.deque[Minute] = collections.deque()
        self.next_minute: int | None = None  # the first minute not yet taken
        self.written = self.skipped = self.dropped = 0
        self.failing: str | None = None  # why the store is not reachable now
        self._older: dict[tuple[int, int], dict[int, int]] = {}  # `older_arrivals`, newest last
        self._older_lock = threading.Lock()
        self._readers = threading.local()  # each reading thread's own connection (`_read`)
        self._catch_up = 0  # minutes before the first observed that it records too (`resume`)
        self.writer: bool | None = None  # an API replica: it holds the writer's lease (None: serve)
        self.span: tuple[int, int] | None = None  # the oldest and newest minute in the store, as last seen
        self._shown: set[str] | None = None  # the sources the newest minute written holds
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_all, name="history", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def resume(self, catch_up: int) -> None:
        """Start again from the next `observe`, and record the `catch_up` minutes before it too: an
        API replica taking the writer's lease over (fleet/replica.py) writes the minutes that ended
        while no one held it, with the arrivals of each and the totals as they are now (the store's
        key leaves the minutes the former writer did write as they were)."""
        self.next_minute, self._catch_up = None, catch_up

    def observe(self, as_of: float, parts: Mapping[str, Aggregates]) -> None:
        """Queue every minute that ended at or before `as_of` since the last call (cheap otherwise)."""
        if not as_of:
            return
        ended = int(as_of // 60)  # minutes before this one have ended
        if self.next_minute is None:  # nothing before the start is ours to say, but a writer that
            self.next_minute = ended - self._catch_up  # takes over says the last few (`resume`)
            if not self._catch_up:
                return
        if ended <= self.next_minute:
            return
        first = max(self.next_minute, ended - MAX_PENDING)  # a jump of days: the last week of it
        taken = [minute_of(m, parts) for m in range(first, ended)]
        self.next_minute = ended
        self._queue(taken)

    def _queue(self, minutes: list[Minute]) -> None:
        with self._wake:
            self.pending.extend(minutes)
            while len(self.pending) > MAX_PENDING:
                self.pending.popleft()
                self.dropped += 1
            self._wake.notify()
        if self.dropped and len(minutes):
            log.warning("history: %d minutes dropped so far (the store was down too long)", self.dropped)

    def stop(self, as_of: float, parts: Mapping[str, Aggregates]) -> None:
        """Record the minute in progress as shown now, drain the queue (up to `DRAIN_S`), stop."""
        self.observe(as_of, parts)
        if self.next_minute is not None and as_of:
            self._queue([minute_of(self.next_minute, parts)])
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(DRAIN_S + RETRY_S)

    def chart_at(self, chart: charts.Chart, minute: int, params: Mapping[str, str]) -> dict[str, Any]:
        """`chart` as shown at the end of `minute` (query.py), read on a connection of its own (the
        writer's is its thread's); ServiceUnavailable while the store cannot be read."""
        return self._read(lambda store: query.chart_at(store, chart, minute, params))

    def series(
        self, chart: charts.Chart, asked: query.SeriesRange, params: Mapping[str, str]
    ) -> dict[str, Any]:
        """`chart` at every point of `asked` (query.py), read as `chart_at` reads."""
        return self._read(lambda store: query.series(store, chart, asked, params))

    def older_arrivals(self, first: int, before: int) -> dict[int, int]:
        """The rows that arrived in each written minute from `first` to before `before`, over all
        sources (chart 2 over a window longer than memory): written minutes never change, so this
        is read once per (first, before) pair, at most once a minute per window length."""
        key = (first, before)
        with self._older_lock:
            found = self._older.get(key)
        if found is None:
            found = self._read(lambda store: store.arrivals_per_minute(first - 1, before - 1))
            with self._older_lock:
                self._older[key] = found
                while len(self._older) > OLDER_KEPT:
                    del self._older[next(iter(self._older))]
        return found

    @property
    def longest_hours(self) -> int:
        """The longest window of chart 2 it can answer: the retention, in hours."""
        return int(self.retention_days * 24)

    def _read(self, answer: Callable[[Store], T]) -> T:
        """`answer` on a connection of this thread's own, kept for its next read (opening one cost
        10-18 ms of each `?at=` on PostgreSQL) and dropped when a read fails on it; ServiceUnavailable
        while the store cannot be opened."""
        store: Store | None = getattr(self._readers, "store", None)
        if store is None:
            try:
                store = self.opener(self.target, self.data_dir)
            except Exception as exc:  # down, or (DuckDB) held by another process
                raise ServiceUnavailable(
                    f"the history store cannot be read now ({scrub(str(exc)).splitlines()[0]})",
                    "try again; /api/status says what the history last reported",
                ) from None
            self._readers.store = store
        try:
            return answer(store)
        except HttpError:
            raise  # the question's fault, not the connection's
        except Exception:
            self._readers.store = None
            with contextlib.suppress(Exception):
                store.close()
            raise

    def status(self) -> dict[str, object]:
        """What /api/status says of the history."""
        return {
            "store": scrub(self.target),
            "written": self.written,
            "pending": len(self.pending),
            "dropped": self.dropped,
            "failing": self.failing,
            "oldest": None if self.span is None else query.iso_minute(self.span[0]),
            "newest": None if self.span is None else query.iso_minute(self.span[1]),
            **({} if self.writer is None else {"writer": self.writer}),
        }

    def _write_all(self) -> None:
        store: Store | None = None
        pruned_at = 0.0
        deadline: float | None = None
        while True:
            with self._wake:
                if not self.pending and not self._stop.is_set():
                    self._wake.wait(1.0)
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + DRAIN_S
                if not self.pending and self._stop.is_set():
                    break
                head = self.pending[0] if self.pending else None
            if deadline is not None and time.monotonic() > deadline:
                break
            try:
                if store is None:
                    store = self.opener(self.target, self.data_dir)
                if time.monotonic() - pruned_at > PRUNE_EVERY_S or not pruned_at:
                    store.prune(int((self.clock() - self.retention_days * 86_400) // 60))
                    pruned_at = time.monotonic()
                    self.span = store.span()
                if head is not None:
                    self._write(store, head)
                    with self._wake:
                        self.pending.popleft()
                if self.failing is not None:
                    log.info("history: the store answers again; %d minutes waiting", len(self.pending))
                    self.failing = None
            except Exception as exc:  # any failure: said once per outage, tried again
                why = scrub(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
                if self.failing is None:
                    log.warning("history: cannot write to %s (%s); retrying", scrub(self.target), why)
                self.failing = why
                if store is not None:
                    with contextlib.suppress(Exception):  # a broken connection: nothing more to say
                        store.close()
                    store = None
                if deadline is None:
                    self._stop.wait(RETRY_S)
                elif time.monotonic() + RETRY_S > deadline:
                    break  # stopping: what is left is lost with the process (logged below)
                else:
                    time.sleep(RETRY_S)
        if self.pending:
            log.warning("history: %d minutes not written at shutdown (%s)", len(self.pending), self.failing)
        if store is not None:
            store.close()

    def _write(self, store: Store, entry: Minute) -> None:
        """One minute of every source; a source shown before and gone now (removed from the
        settings) is written with no countries, so that reads as of later minutes leave it out."""
        minute, sources = entry
        if self._shown is None:
            self._shown = store.shown_sources()
        gone: dict[str, dict[str, CountryMinute]] = {source: {} for source in self._shown - set(sources)}
        for source, countries in sorted({**sources, **gone}.items()):
            if store.write_minute(minute, source, countries):
                self.written += 1
            else:
                self.skipped += 1
        self._shown = {source for source, countries in sources.items() if countries}
        self.span = store.span()
