"""Where the API's numbers come from: snapshots of the aggregates, pushed by the capture process.

- `LiveSnapshots` (capture modes `replication`, `poll`, `auto`): capture and engine run in a process
  of their own (`capture_process.py`), which pushes each source's aggregates the moment they change;
  this process keeps them per source and merges them into a snapshot when they have changed, at most
  every `min_interval` seconds, so a thousand polls a second cost one merge per interval, whatever
  the number of rows. It imports neither numpy nor psycopg2.
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

    def __init__(
        self, settings: Settings, min_interval: float = 0.02, clock: Callable[[], float] = time.time
    ):
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
        self.min_interval = min_interval
        self.observe_build: Callable[[float], None] | None = None
        self._parts: dict[str, Aggregates] = {}
        self._version = 0  # bumps with every update that changed a part
        self._as_of = 0.0
        self._status: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards the parts and the fields above
        self._current = Snapshot(-1, Aggregates(), 0.0)
        self._taken = 0.0
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
        """One update of the feed (in the supervisor's thread)."""
        with self._lock:
            if update.full:
                self._parts = {}
            for name, exported in update.parts.items():
                part = self._parts.get(name)
                if part is None:
                    part = self._parts[name] = Aggregates()
                part.absorb(exported, full=update.full)
            for part in self._parts.values():  # the engine forgets them too; a replaced part keeps none
                part.keep_window(self.clock())
            if update.parts or update.full:
                self._version += 1
            self._as_of = update.as_of
            if update.status is not None:
                self._status = update.status
            if self.history is not None:
                self.history.observe(self._as_of, self._parts)

    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot:
        """The latest merge, renewed when a part has changed and `min_interval` has passed.

        `columns` is a hint for direct mode; the parts hold every column anyway.
        """
        now = time.monotonic()
        current = self._current
        if current.version != self._version and now - self._taken >= self.min_interval:
            with self._lock:
                merged = Aggregates()
                for part in self._parts.values():
                    merged.merge(part)
                self._current = current = Snapshot(self._version, merged, self._as_of)
            self._taken = now
            if self.observe_build is not None:
                self.observe_build(time.monotonic() - now)
        if current.version != self._version:
            return current  # newer changes wait for the next merge: its own as_of still holds
        # Nothing changed since the merge, so it is as fresh as the latest update.
        return Snapshot(current.version, current.aggregates, self._as_of)

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
