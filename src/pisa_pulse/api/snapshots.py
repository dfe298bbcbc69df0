"""Where the API's numbers come from: snapshots of the aggregates, live or computed per request.

- `LiveSnapshots` (capture modes `replication`, `poll`, `auto`): the pipeline runs in a background
  thread and the API takes a copy of its aggregates when they have changed, at most every
  `min_interval` seconds, so a thousand polls a second cost one copy per interval, whatever the
  number of rows.
- `DirectSnapshots` (capture mode `direct`, the original course design): every snapshot runs the
  aggregate SQL on all sources, in parallel over one pooled connection per source. It needs only
  SELECT on the sources and no state, and its cost grows with rows and polls: it is the correctness
  oracle of the tests, the baseline of the benchmarks, and the fallback where nothing else is allowed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pisa_pulse.api.settings import Settings
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.oracle import aggregates_from_sql
from pisa_pulse.engine.pipeline import Pipeline
from pisa_pulse.sources.config import Source, first_line
from pisa_pulse.sources.databases import Connection, connect


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the aggregates."""

    version: int
    aggregates: Aggregates
    as_of: float  # Unix time up to which every source's changes are in (0: not yet known)


class Snapshots(Protocol):
    """What the API reads from."""

    mode: str
    observe_build: Callable[[float], None] | None  # told how long each copy of the aggregates took

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot: ...
    def status(self) -> list[dict[str, Any]]: ...
    def data_as_of(self) -> float | None: ...
    def capture(self) -> dict[str, Any] | None: ...  # the capture process (None: there is none)


class LiveSnapshots:
    """The pipeline in a background thread, read through copies of its aggregates."""

    def __init__(self, settings: Settings, min_interval: float = 0.02):
        self.mode = settings.mode
        self.pipeline = Pipeline(
            settings.sources,
            settings.state_dir,
            slot_prefix=settings.slot_prefix,
            poll_interval=settings.poll_interval,
            reconcile_interval=settings.reconcile_interval,
        )
        self.min_interval = min_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.pipeline.run, args=(self._stop,), name="pipeline", daemon=True
        )
        self._current = Snapshot(-1, Aggregates(), 0.0)
        self._taken = 0.0
        self._lock = threading.Lock()
        self.observe_build: Callable[[float], None] | None = None

    def start(self) -> None:
        """Start capturing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop capturing (checkpointing first)."""
        self._stop.set()
        self._thread.join()

    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot:
        """The latest copy, renewed when the pipeline has changed and `min_interval` has passed.

        `columns` is a hint for direct mode; the live aggregates hold every column anyway.
        """
        now = time.monotonic()
        current = self._current
        if current.version != self.pipeline.version and now - self._taken >= self.min_interval:
            # Never wait for the pipeline (an initial copy holds its lock for seconds): serve the
            # previous snapshot and try again on the next request.
            if self._lock.acquire(blocking=False):
                try:
                    if self.pipeline.lock.acquire(blocking=False):
                        try:
                            version, aggregates = self.pipeline.version, self.pipeline.aggregates.copy()
                            as_of = self.pipeline.as_of()
                        finally:
                            self.pipeline.lock.release()
                        self._current = Snapshot(version, aggregates, as_of)
                        self._taken = now
                        if self.observe_build is not None:
                            self.observe_build(time.monotonic() - now)
                finally:
                    self._lock.release()
            current = self._current
        if current.version != self.pipeline.version:
            return current  # newer changes wait for the next copy: its own as_of still holds
        # Nothing changed since the copy, so it is as fresh as the pipeline (idle sources answer pings).
        return Snapshot(current.version, current.aggregates, self.pipeline.as_of())

    def status(self) -> list[dict[str, Any]]:
        """Per source, from the pipeline."""
        return self.pipeline.status()

    def data_as_of(self) -> float | None:
        """Unix time up to which every source's changes are in (None: not yet)."""
        return self.pipeline.as_of() or None

    def capture(self) -> dict[str, Any] | None:
        """The pipeline runs in this process."""
        return None


class DirectSnapshots:
    """The aggregate SQL on every source per snapshot (see the module docstring)."""

    mode = "direct"

    def __init__(self, sources: tuple[Source, ...]) -> None:
        self.sources = sources
        self._pool = ThreadPoolExecutor(max_workers=min(32, len(sources)), thread_name_prefix="direct")
        self._connections: dict[str, list[Connection]] = {s.name: [] for s in sources}
        self._errors: dict[str, str] = {}
        self._version = 0
        self._lock = threading.Lock()
        self.observe_build: Callable[[float], None] | None = None  # nothing is copied in direct mode

    def start(self) -> None:
        """Nothing runs in the background in direct mode."""

    def stop(self) -> None:
        """Close the pooled connections."""
        self._pool.shutdown()
        for conns in self._connections.values():
            for conn in conns:
                conn.close()

    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot:
        """Query every source now, only `columns` when given (blocking: call it from a worker thread)."""
        started = time.time()
        total = Aggregates()
        for part in self._pool.map(lambda source: self._query(source, columns), self.sources):
            if part is not None:
                total.merge(part)
        with self._lock:
            self._version += 1
            version = self._version
        return Snapshot(version, total, started if not self._errors else 0.0)

    def _query(self, source: Source, columns: frozenset[str] | None) -> Aggregates | None:
        with self._lock:
            idle = self._connections[source.name]
            conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = connect(source.dsn)
            result = aggregates_from_sql(conn, source.name.upper(), arrivals=False, columns=columns)
        except Exception as exc:
            self._errors[source.name] = first_line(exc)
            if conn is not None:
                conn.close()
            return None
        self._errors.pop(source.name, None)
        with self._lock:
            self._connections[source.name].append(conn)
        return result

    def data_as_of(self) -> float | None:
        """Each request queries the sources: the data is as of the request."""
        return None

    def capture(self) -> dict[str, Any] | None:
        """Nothing is captured in direct mode."""
        return None

    def status(self) -> list[dict[str, Any]]:
        """Per source: queried per request, so only whether the last query failed."""
        return [
            {
                "source": s.name,
                "state": "failed" if s.name in self._errors else "direct",
                "reason": self._errors.get(s.name, ""),
            }
            for s in self.sources
        ]
