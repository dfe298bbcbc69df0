"""The one contract of a captured source, and the vocabulary every stage shares (written once).

A `CapturedSource` is started (or resumed) from a `Position` and hands over `Batch`es to a sink:
whole source transactions (replication) or the differences one poll found (polling), each with the
position the source reaches once the batch is applied. The engine applies each batch whole, keeps
the ledgers and aggregates and checkpoints them; only after a checkpoint holds a position does it
`confirm` it, and only then may the source let go of what came before (a slot's WAL). The engine
knows nothing of slots or polls; the capture knows nothing of ledgers or aggregates: what it needs
of the rows already held (polling compares them with the source) it reads through `HeldRows`.

This module imports nothing but the standard library, so every process (the HTTP one included)
may use its vocabulary: `Mode`, `State`, `HEALTHY`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Value = str | None | object  # str, None (NULL) or pgoutput.UNCHANGED


class Mode(enum.StrEnum):
    """How a source is captured (the last one is not capture: SQL on every request)."""

    REPLICATION = "replication"
    POLL = "poll"
    AUTO = "auto"  # replication where the source allows it, else poll
    DIRECT = "direct"


SOURCE_MODES: tuple[Mode, ...] = (Mode.REPLICATION, Mode.POLL, Mode.AUTO)  # a source's own mode
MODES: tuple[Mode, ...] = (*SOURCE_MODES, Mode.DIRECT)  # the mode of a whole `serve`


class State(enum.StrEnum):
    """Where a captured source stands."""

    CONNECTING = "connecting"
    COPYING = "copying"  # the initial (or a fresh) consistent copy
    STREAMING = "streaming"  # replication: following the slot
    POLLING = "polling"  # poll mode: comparing the source with what is held
    RECONNECTING = "reconnecting"  # after an error, with back-off
    FAILED = "failed"  # an error a retry cannot fix soon (no table, missing columns); retried slowly
    DIRECT = "direct"  # direct mode: nothing captured, queried per request


HEALTHY = frozenset({State.STREAMING, State.POLLING, State.DIRECT})  # the charts are up to date

RETRY_BACKOFF = (1.0, 2.0, 5.0, 10.0)  # seconds before a source's next try, by failures in a row


def retry_delay(failures: int, state: State) -> float:
    """How long a source waits before its next try: longer with each failure in a row; `failed`
    (nothing a retry can fix soon) waits the longest."""
    if state == State.FAILED:
        return RETRY_BACKOFF[-1]
    return RETRY_BACKOFF[min(max(failures, 1), len(RETRY_BACKOFF)) - 1]


INITIAL_COPY_MINUTE = -1  # the arrival "minute" of rows from a copy: they arrived before capture


@dataclass(frozen=True)
class Position:
    """Where a source's applied (or checkpointed) state stands.

    `identity` names the server and database (a position means nothing elsewhere), `lsn` is just past
    the last transaction applied (0 for polled sources, whose state is compared, not streamed), and
    `last_commit_us` the commit (or poll) time of the last change applied.
    """

    identity: str
    lsn: int
    last_commit_us: int


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row operation: upsert (insert or update) with its values, delete, or truncate."""

    kind: Literal["upsert", "delete", "truncate"]
    pk: int = 0
    values: tuple[Value, ...] = ()  # CHART_COLUMNS order, `id` included, for upserts
    digest: int = 0  # the source's digest of the row (read-only polling; 0 from replication)


class BatchKind(enum.StrEnum):
    """What a batch says about the rows it does not name."""

    CHANGES = "changes"  # nothing: they stay as they are
    COPY_START = "copy-start"  # a consistent copy begins: forget the position (durably), then ...
    COPY_ROWS = "copy-rows"  # ... rows of the copy (every one is in the source) ...
    COPY_END = "copy-end"  # ... and it ends: held rows the copy did not name are gone


@dataclass(frozen=True, slots=True)
class Batch:
    """Changes applied whole, and the position the source reaches once they are.

    `arrival_minute` is the minute new rows are counted in (the transaction's commit minute; the
    poll's start; `INITIAL_COPY_MINUTE` for a copy). `position` is None only inside a copy.
    """

    changes: Sequence[RowChange]
    position: Position | None
    arrival_minute: int
    kind: BatchKind = BatchKind.CHANGES
    commit_time_us: int = 0  # replication: when the transaction committed (latency is measured from it)


class HeldRows(Protocol):
    """What the engine holds of a source, as far as its capture may read it (polling compares)."""

    def keys_and_digests(self) -> tuple[Any, Any]: ...
    def digest(self, pk: int) -> int | None: ...
    def __contains__(self, pk: object) -> bool: ...
    def __len__(self) -> int: ...


Sink = Callable[[str, Batch], None]  # (source name, batch): applies it whole before returning


@dataclass
class SourceStatus:
    """What a captured source reports: the same fields in every mode, then the mode's own details."""

    source: str
    mode: Mode
    state: State = State.CONNECTING
    reason: str = ""
    fresh_at: float = 0.0  # Unix time up to which the source's changes are known to be handed over
    last_commit_us: int | None = None
    lag_ms: int | None = None
    lag_bytes: int | None = None
    lsn: str | None = None
    copies: int = 0
    copy_reason: str = ""
    connections_lost: int = 0
    transactions: int = 0  # transactions (replication) or polls (poll mode) handed over
    changes: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # the mode's own (poll cost, arrival, ...)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`/api/status`, `pisa-pulse pipeline`); `details` are merged in."""
        body = {
            "source": self.source,
            "mode": str(self.mode),
            "state": str(self.state),
            "reason": self.reason,
            "last_commit_us": self.last_commit_us,
            "lag_ms": self.lag_ms,
            "lag_bytes": self.lag_bytes,
            "lsn": self.lsn,
            "copies": self.copies,
            "copy_reason": self.copy_reason,
            "connections_lost": self.connections_lost,
            "transactions": self.transactions,
            "changes": self.changes,
        }
        body.update(self.details)
        return body


class CapturedSource(Protocol):
    """One source's capture (replication or polling), as the engine drives it.

    - `start(position, held, sink)`: begin, or resume after `position` (None: copy first). From then
      on the source calls `sink(name, batch)` from its own thread for every batch, in order.
    - `confirm(position)`: the checkpoint holds everything up to `position`; the source may release it.
    - `status()`: a typed status, safe to call from any thread; `freshness()` its `fresh_at` alone
      (cheap: the engine asks it on every snapshot).
    - `stop()`: stop handing over batches and close; returns once the source's thread has ended.
    """

    @property
    def name(self) -> str: ...

    def start(self, position: Position | None, held: HeldRows, sink: Sink) -> None: ...
    def confirm(self, position: Position) -> None: ...
    def status(self) -> SourceStatus: ...
    def freshness(self) -> float: ...
    def stop(self) -> None: ...


def healthy(states: Iterable[str]) -> bool:
    """Whether sources in these states all serve up-to-date charts (and there is at least one)."""
    seen = list(states)
    return bool(seen) and all(s in HEALTHY for s in seen)
