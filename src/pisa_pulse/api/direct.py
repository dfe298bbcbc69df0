"""Direct mode (`mode = "direct"`, the original course design): the aggregate SQL on every source per request.

Every snapshot runs the aggregate SQL on all sources, in parallel over one pooled connection per
source. It needs only SELECT on the sources and no state, and its cost grows with rows and polls: it
is the correctness oracle of the tests, the baseline of the benchmarks, and the fallback where
nothing else is allowed. It is the one mode in which the HTTP process talks to the sources itself
(the original design's API did), so it is imported only when chosen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.capture.contract import State
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.oracle import aggregates_from_sql
from pisa_pulse.history.recorder import Recorder
from pisa_pulse.sources.config import Source, first_line
from pisa_pulse.sources.databases import Connection, connect


class DirectSnapshots:
    """The aggregate SQL on every source per snapshot (see the module docstring)."""

    mode = "direct"
    history: Recorder | None = None  # no history store here (yet)

    def __init__(self, sources: tuple[Source, ...]) -> None:
        self.sources = sources
        self._pool = ThreadPoolExecutor(max_workers=min(32, len(sources)), thread_name_prefix="direct")
        self._connections: dict[str, list[Connection]] = {s.name: [] for s in sources}
        self._errors: dict[str, str] = {}
        self._version = 0
        self._lock = threading.Lock()
        self.observe_build: Callable[[float], None] | None = None  # nothing is copied in direct mode
        self.on_change: Callable[[], None] | None = None  # never told: nothing changes between queries

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
                conn = connect(source.dsn, password=source.password)
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

    async def may_publish(self) -> bool:
        """Never: direct mode keeps no aggregates to publish (the settings refuse [publish] with it)."""
        return False

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
                "state": State.FAILED if s.name in self._errors else State.DIRECT,
                "reason": self._errors.get(s.name, ""),
            }
            for s in self.sources
        ]
