"""Where the API's numbers come from: snapshots of the aggregates, pushed by the capture process.

- `LiveSnapshots` (capture modes `replication`, `poll`, `auto`): capture and engine run in a process
  of their own (`capture_process.py`), which pushes each source's aggregates the moment they change;
  this process keeps them per source and, as each update arrives, makes the next snapshot from the
  last one with only the countries it changed summed again (`Aggregates.renewed`): a new version
  exists when a change does, not when a request asks, and polls and streams cost no merge at all,
  whatever the number of rows. `on_change` is told (from the feed's thread) of each new version: the
  live route (live.py) wakes on it. It imports neither numpy nor psycopg2.
- `DirectSnapshots` (`direct.py`, capture mode `direct`): the aggregate SQL on every source per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.api.capture_process import CaptureProcess
from pisa_pulse.api.settings import Settings
from pisa_pulse.engine import feed
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.history.recorder import Recorder


class Snapshots(Protocol):
    """What the API reads from."""

    mode: str
    observe_build: Callable[[float], None] | None  # told how long each merge of the aggregates took
    on_change: Callable[[], None] | None  # told of each new snapshot version (from any thread)
    history: Recorder | None  # appends each minute to the history store (None: no history here)

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot: ...
    def status(self) -> list[dict[str, Any]]: ...
    def data_as_of(self) -> float | None: ...
    def capture(self) -> dict[str, Any] | None: ...  # the capture process (None: there is none)
    async def may_publish(self) -> bool: ...  # this process writes to the publish targets this round


class LiveSnapshots:
    """The capture process's pushed aggregates, merged into snapshots (see the module docstring)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        """`clock`: Unix time, for the window of arrival minutes kept and the history's minutes (a
        simulation of days passes its own: bench/days_bench.py)."""
        self.mode = settings.mode
        self.clock = clock
        config = feed.EngineConfig(
            sources=settings.sources,
            state_dir=settings.state_dir,
            slot_prefix=settings.slot_prefix,
            poll_interval=settings.poll_interval,
            reconcile_interval=settings.reconcile_interval,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        self.process = CaptureProcess(config, self._take)
        self.observe_build: Callable[[float], None] | None = None
        self.on_change: Callable[[], None] | None = None
        self._parts: dict[str, Aggregates] = {}
        self._as_of = 0.0
        self._status: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards the parts and the fields above
        self._current = Snapshot(0, Aggregates(), 0.0)
        self.history: Recorder | None = None
        if settings.history_store != "none":
            self.history = Recorder(
                settings.history_store, settings.state_dir, settings.history_retention_days, clock=clock
            )

    def start(self) -> None:
        """Start the capture process, and the history's writer."""
        if self.history is not None:
            self.history.start()
        self.process.start()

    def stop(self) -> None:
        """Stop the capture process (it checkpoints first), then record the minute in progress."""
        self.process.stop()
        if self.history is not None:
            with self._lock:
                as_of, parts = self._as_of, {name: part.copy() for name, part in self._parts.items()}
            self.history.stop(as_of, parts)

    def _take(self, update: feed.Update) -> None:
        """One update of the feed (in the supervisor's thread): the parts, then the next snapshot."""
        started = time.monotonic()
        with self._lock:
            if update.full:
                self._parts = {}
            changed: set[int] = set()
            for name, exported in update.parts.items():
                part = self._parts.get(name)
                if part is None:
                    part = self._parts[name] = Aggregates()
                part.absorb(exported, full=update.full)
                changed.update(exported)
            now = self.clock()
            for part in self._parts.values():  # the engine forgets them too; a replaced part keeps none
                if part.keep_window(now):
                    changed.update(part.countries())
            self._as_of = update.as_of
            if update.status is not None:
                self._status = update.status
            current = self._current
            if update.full:  # parts may have gone: every country held before is summed again too
                changed.update(current.aggregates.countries())
                merged = Aggregates().renewed(self._parts.values(), changed)
            elif changed:
                merged = current.aggregates.renewed(self._parts.values(), changed)
            if update.full or changed:
                self._current = Snapshot(current.version + 1, merged, self._as_of)
            else:  # the same numbers, known to hold up to a later time
                self._current = Snapshot(current.version, current.aggregates, self._as_of)
            if self.history is not None:
                self.history.observe(self._as_of, self._parts)
        if update.full or changed:
            if self.observe_build is not None:
                self.observe_build(time.monotonic() - started)
            if self.on_change is not None:
                self.on_change()

    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot:
        """The latest snapshot, as fresh as the latest update (`columns`: a hint for direct mode)."""
        return self._current

    def status(self) -> list[dict[str, Any]]:
        """Per source, as the capture process last reported it."""
        return self._status

    async def may_publish(self) -> bool:
        """Always: `serve` is the one publisher of its data."""
        return True

    def data_as_of(self) -> float | None:
        """Unix time up to which every source's changes are in (None: not yet)."""
        return self._as_of or None

    def capture(self) -> dict[str, Any] | None:
        """The capture process: state, pid, restarts, how it last ended."""
        return self.process.describe()
