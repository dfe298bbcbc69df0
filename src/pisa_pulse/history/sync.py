"""`pisa-pulse sync --once`: the batch form, for levels 1 and 2 (data an hour or a minute old).

One exact pass and exit: the pipeline (the same engine and checkpoint `serve` uses, in
`capture.state_dir`) resumes from its checkpoint where there is one, else copies each source
consistently, and runs until every source is caught up with the moment the run started: a replicated
source once its stream has passed the WAL its server had flushed when the stream opened and a
keepalive after the start (logical decoding sends flushed WAL only: on a source that commits with
`synchronous_commit = off`, as `make demo`'s do, a commit of the last `wal_writer_delay` before the
start may not be flushed yet and is left to the next run, counted once there), a polled one once a
poll and a reconciliation of every range have started after it (corrections are only found by
reconciling). Then it checkpoints, stops, and brings the history store and the publish targets up to
date:

- the store gets, per source whose totals changed since the last minute it holds, one minute: the
  run's, with the rows that arrived since the minute before (a second run within the same minute
  replaces the first one's rows of it: both describe that minute, the second as it ended); a source
  the store shows and the settings no longer list gets a minute with no countries;
- each publish target is first read back, so only what differs is written (`seed`).

With no new commits, a second run writes nothing anywhere. The state dir is locked (`exclusive`)
while a run or a `serve` uses it: a second one is refused with a one-line error. A replication
slot is kept between runs and pins WAL on its server meanwhile (README, History, says how to bound
it, and `pisa-pulse sources drop-slots` drops them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pisa_pulse.api import settings as api_settings
from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.capture.contract import HEALTHY, State
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.history.store import CountryMinute, Store

if TYPE_CHECKING:
    from pisa_pulse.engine.pipeline import Pipeline

LOCK_NAME = "pisa-pulse.lock"
CAUGHT_UP_TIMEOUT_S = 600.0


@contextlib.contextmanager
def exclusive(state_dir: Path, what: str) -> Iterator[None]:
    """Hold the state dir's lock while the block runs; PisaPulseError when another process holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_NAME).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PisaPulseError(
                f"{state_dir} is in use by {holder}: its checkpoint and slots cannot be shared",
                "stop that one, or give this run a capture.state_dir and capture.slot_prefix of its own",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class SyncResult:
    """What one run did, for its summary line."""

    seconds: float = 0.0
    sources: int = 0
    copied: list[str] = field(default_factory=list)  # sources copied afresh (no usable checkpoint)
    rows: int = 0
    minutes_written: int = 0
    unchanged: int = 0  # sources whose totals the store already held
    published: dict[str, int] = field(default_factory=dict)  # target -> writes and deletions

    def summary(self) -> str:
        copied = f", {len(self.copied)} copied afresh" if self.copied else ""
        published = "".join(f"; {url}: {n} written" for url, n in self.published.items())
        return (
            f"sync: {self.sources} sources caught up in {self.seconds:.1f} s ({self.rows:,} rows{copied}); "
            f"history: {self.minutes_written} minutes written, {self.unchanged} unchanged{published}"
        )


def caught_up(pipeline: Pipeline, started: float) -> bool:
    """Every source healthy and handed over up to `started` (polled ones: reconciled too)."""
    for held in pipeline.held.values():
        status = held.capture.status()
        if status.state not in HEALTHY or status.fresh_at < started:
            return False
        if getattr(held.capture, "reconciled_as_of", started) < started:
            return False
    return True


def failures(pipeline: Pipeline) -> list[str]:
    """The sources whose capture has failed, with why."""
    statuses = pipeline.statuses()
    return [f"{status.source}: {status.reason}" for status in statuses if status.state is State.FAILED]


def run_once(settings: api_settings.Settings, timeout: float = CAUGHT_UP_TIMEOUT_S) -> SyncResult:
    """One pass (see the module docstring), under the state dir's lock."""
    from pisa_pulse.engine.pipeline import Pipeline  # numpy and the database driver: only here

    if settings.mode == "direct":
        raise PisaPulseError(
            "sync needs a capture mode: direct mode keeps no aggregates",
            "use capture mode replication, poll or auto",
        )
    result = SyncResult(sources=len(settings.sources))
    with exclusive(settings.state_dir, "pisa-pulse sync --once"):
        started = time.time()
        pipeline = Pipeline(
            settings.sources,
            settings.state_dir,
            slot_prefix=settings.slot_prefix,
            poll_interval=settings.poll_interval,
            reconcile_interval=settings.reconcile_interval,
        )
        for held in pipeline.held.values():
            if hasattr(held.capture, "reconcile_everything"):
                held.capture.reconcile_everything = True  # corrections: one whole reconciliation
        stop = threading.Event()
        running = threading.Thread(target=pipeline.run, args=(stop,), name="sync")
        running.start()
        try:
            deadline = time.monotonic() + timeout
            while not caught_up(pipeline, started):
                failed = failures(pipeline)
                if time.monotonic() > deadline or not running.is_alive():
                    why = "; ".join(failed) or f"not caught up within {timeout:g} s"
                    raise PisaPulseError(
                        f"sync did not complete: {why}", "fix the source named, then run again"
                    )
                time.sleep(0.1)
        finally:
            stop.set()
            running.join()
        result.copied = sorted(s.source for s in pipeline.statuses() if s.copies)
        parts = {name: held.part for name, held in pipeline.held.items()}
        result.rows = sum(part.count() for part in parts.values())
        if settings.history_store != "none":
            _record(settings, parts, started, result)
        if settings.publish_to:
            _publish(settings, parts, started, result)
        result.seconds = time.time() - started
    return result


def _record(
    settings: api_settings.Settings, parts: dict[str, Aggregates], started: float, result: SyncResult
) -> None:
    minute = int(started // 60)
    store = Store.open(settings.history_store, settings.state_dir)
    try:
        for source, part in sorted(parts.items()):
            last = store.last_minute(source)
            held = store.minute(last).get(source, {}) if last is not None else {}
            previous = store.last_minute(source, before=minute)  # this minute's arrivals come after it
            countries = {}
            for code in part.country_codes():
                minutes = part.totals(code).minutes
                arrived = sum(n for m, n in minutes.items() if m >= 0 and (previous is None or m > previous))
                countries[code] = CountryMinute(part.totals(code, minutes=False), arrived)
            same = {code: entry.totals for code, entry in held.items()} == {
                code: entry.totals for code, entry in countries.items()
            }
            # Nothing new: the same totals, and no arrivals since (or, rerun within the same minute,
            # the same arrivals as that minute's row already says).
            quiet = held == countries if last == minute else not any(e.arrivals for e in countries.values())
            if same and quiet:
                result.unchanged += 1
            elif store.write_minute(minute, source, countries, replace=True):
                result.minutes_written += 1
        for gone in sorted(store.shown_sources() - set(parts)):  # removed from the settings: from
            if store.write_minute(minute, gone, {}, replace=True):  # this minute on, it shows nothing
                result.minutes_written += 1
    finally:
        store.close()


def _publish(
    settings: api_settings.Settings, parts: dict[str, Aggregates], started: float, result: SyncResult
) -> None:
    from pisa_pulse.aws.publish import publisher_of

    merged = Aggregates()
    for part in parts.values():
        merged.merge(part)
    snap = Snapshot(1, merged, started)
    for url in settings.publish_to:
        publisher = publisher_of(url)
        if not publisher.holds(snap):  # the same data, a newer as-of time: not worth a write
            publisher.publish(snap)
        result.published[url] = publisher.writes + publisher.deletes
