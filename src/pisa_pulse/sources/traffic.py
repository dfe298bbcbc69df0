"""Live traffic: submissions, corrections and withdrawals written to the country databases.

One loop writes small transactions at a target rate of operations per second, which can be changed,
paused and resumed while it runs (from the control endpoint in `control.py`). Each transaction goes
to one country, drawn by its PISA 2018 sample size; its operations are inserts of new students at
random ids (never increasing), and, at the requested shares, updates (a corrected submission: the
student's answers and indices re-entered) and deletes (a withdrawal) of existing rows picked at a
random point of the primary key. Transactions are atomic, so stopping never leaves half a batch.
A source that fails is skipped for a second and reconnected; the others go on.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg2
import psycopg2.errors
from psycopg2 import sql

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import Country, countries
from pisa_pulse.sources.config import Source, SourcesConfig, first_line
from pisa_pulse.sources.databases import Connection, connect, empty
from pisa_pulse.sources.schema import TABLE, SchemaName, columns
from pisa_pulse.sources.seed import COPY_SQL, MAX_ID, random_ids
from pisa_pulse.sources.students import StudentFactory

log = logging.getLogger(__name__)

MAX_BATCH = 50  # operations in one transaction at the highest rates: "small transactions"
RATE_WINDOW_S = 10.0  # the achieved rate is over this many seconds: long enough to be steady
SAMPLE_EVERY_S = 0.25  # the writer notes its count this often (RATE_WINDOW_S / SAMPLE_EVERY_S samples)
IDENTIFIERS = frozenset({"cntryid", "cnt", "cntschid", "cntstuid"})
RETRY_AFTER_S = 1.0


def auto_batch(rate: float) -> int:
    """Operations per transaction for a rate: 1 at low rates, up to MAX_BATCH (about 200 tx/s)."""
    return max(1, min(MAX_BATCH, round(rate / 200)))


@dataclass
class TrafficCounts:
    """What the traffic has done so far (rows affected, as the database reported them)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    transactions: int = 0
    errors: int = 0

    @property
    def operations(self) -> int:
        """Rows inserted, updated or deleted."""
        return self.inserted + self.updated + self.deleted


@dataclass
class _Target:
    """One country database the traffic writes to."""

    source: Source
    country: Country
    factory: StudentFactory
    rng: np.random.Generator  # draws the ids of new rows: from OS entropy, never from the seed
    conn: Connection | None = None
    retry_at: float = 0.0
    buffer: deque[str] = field(default_factory=deque)


class Traffic:
    """The traffic loop and its controls; thread-safe setters, one writer thread (`run`)."""

    def __init__(
        self,
        config: SourcesConfig,
        rate: float,
        updates: float = 0.0,
        deletes: float = 0.0,
        messy: float = 0.01,
        seed: int = 42,
        batch: int | None = None,
    ) -> None:
        if rate < 0:
            raise PisaPulseError(f"rate {rate} is negative", "pass --rate 0 or more (operations per second)")
        if not (0 <= updates <= 1 and 0 <= deletes <= 1 and updates + deletes <= 1):
            raise PisaPulseError(
                f"update share {updates} and delete share {deletes} do not fit in one",
                "pass --updates and --deletes between 0 and 1 with a sum of at most 1",
            )
        if not config.sources:
            raise PisaPulseError("the sources config lists no sources", "run `pisa-pulse sources up`")
        self.schema: SchemaName = config.schema
        self.embedded = config.cluster is not None  # sources of our own cluster: `empty` may truncate them
        self.updates = updates
        self.deletes = deletes
        self.batch = batch
        self.counts = TrafficCounts()
        self._rate = rate
        self._paused = False
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        # (time, operations) every SAMPLE_EVERY_S, one more than the window holds: the oldest is the
        # count RATE_WINDOW_S ago, so the rate spans the whole window.
        self._samples: deque[tuple[float, int]] = deque(maxlen=int(RATE_WINDOW_S / SAMPLE_EVERY_S) + 1)
        known = countries()
        self._targets = []
        for src in config.sources:
            country = known[src.name.upper()]
            self._targets.append(
                _Target(
                    src,
                    country,
                    StudentFactory(country, config.schema, seed=seed + 1, messy=messy),
                    # Ids are not derived from the seed: a second run with the same seed would
                    # otherwise draw the ids the first one wrote and every insert would collide.
                    np.random.default_rng(),
                )
            )
        sizes = [t.country.n_students or 0 for t in self._targets]
        fallback = sorted(s for s in sizes if s)[len(sizes) // 2] if any(sizes) else 1
        self._weights = [s or fallback for s in sizes]
        corrected = [v.name for v in columns("slim")]
        self._update_columns = [i for i, name in enumerate(corrected) if name not in IDENTIFIERS]
        self._update_sql = sql.SQL(
            "UPDATE {t} SET ({cols}) = ROW({vals}) WHERE id = COALESCE("
            "(SELECT id FROM {t} WHERE id >= %s ORDER BY id LIMIT 1), (SELECT min(id) FROM {t}))"
        ).format(
            t=sql.Identifier(TABLE),
            cols=sql.SQL(", ").join(sql.Identifier(corrected[i]) for i in self._update_columns),
            vals=sql.SQL(", ").join(sql.Placeholder() * len(self._update_columns)),
        )
        self._delete_sql = sql.SQL(
            "DELETE FROM {t} WHERE id = COALESCE("
            "(SELECT id FROM {t} WHERE id >= %s ORDER BY id LIMIT 1), (SELECT min(id) FROM {t}))"
        ).format(t=sql.Identifier(TABLE))

    # -- controls (any thread) --------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Target operations per second."""
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the target rate; takes effect at the next transaction."""
        if rate < 0:
            raise PisaPulseError(f"rate {rate} is negative", "pass a rate of 0 or more")
        with self._lock:
            self._rate = float(rate)

    def pause(self) -> None:
        """Stop writing until `resume`."""
        self._paused = True

    def resume(self) -> None:
        """Write again after `pause`."""
        self._paused = False

    def status(self) -> dict[str, Any]:
        """Rate, state and counts, as the control endpoint and the CLI show them."""
        c = self.counts
        return {
            "rate": self._rate,
            "paused": self._paused,
            "achieved_rate": round(self.achieved_rate(), 1),
            "achieved_over_s": RATE_WINDOW_S,
            "inserted": c.inserted,
            "updated": c.updated,
            "deleted": c.deleted,
            "transactions": c.transactions,
            "errors": c.errors,
            "sources": len(self._targets),
            "countries": [t.source.name for t in self._targets],
            "failing": sorted(t.source.name for t in self._targets if t.conn is None and t.retry_at),
        }

    def achieved_rate(self) -> float:
        """Operations per second over the last RATE_WINDOW_S seconds (since the start, before that).

        Counted up to now, so a writer stalled in a slow transaction shows its rate falling.
        """
        now = time.monotonic()
        with self._lock:
            operations = self.counts.operations
            since = next(
                ((t, n) for t, n in self._samples if now - t <= RATE_WINDOW_S + SAMPLE_EVERY_S), None
            )
        if since is None or now - since[0] < SAMPLE_EVERY_S:
            return 0.0
        return (operations - since[1]) / (now - since[0])

    def empty(self, name: str) -> str:
        """TRUNCATE the `responses` of the source named `name` (one this traffic writes to, on the
        embedded cluster: a server given with `--dsn` is not ours to empty from the dashboard)."""
        if not self.embedded:
            raise PisaPulseError(
                f"{name!r} is on a server given with --dsn, and only the embedded cluster's sources are "
                "emptied from here",
                "empty it yourself with `pisa-pulse sources empty` if you mean to",
            )
        target = next((t for t in self._targets if t.source.name == name.lower()), None)
        if target is None:
            raise PisaPulseError(
                f"{name!r} is not one of the sources", f"name one of {', '.join(self.status()['countries'])}"
            )
        empty(target.source)
        log.info("source emptied source=%s", target.source.name)
        return target.source.name

    # -- the writer loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, duration: float | None = None) -> TrafficCounts:
        """Write until `stop` is set (or `duration` seconds pass); returns the counts."""
        deadline = None if duration is None else time.monotonic() + duration
        budget, last = 0.0, time.monotonic()
        self._note(last)
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                now = time.monotonic()
                if now - self._samples[-1][0] >= SAMPLE_EVERY_S:
                    self._note(now)
                rate = 0.0 if self._paused else self._rate
                # Accrue operations due, but never more than half a second's worth after a stall.
                budget = min(budget + rate * (now - last), max(1.0, rate * 0.5))
                last = now
                if budget < 1.0:
                    time.sleep(min(0.05, (1.0 - budget) / rate) if rate > 0 else 0.05)
                    continue
                n = min(int(budget), self.batch or auto_batch(rate))
                budget -= n
                target = self._random.choices(self._targets, weights=self._weights)[0]
                self._transaction(target, n)
        finally:
            for t in self._targets:
                if t.conn is not None:
                    t.conn.close()
                    t.conn = None
        return self.counts

    def _note(self, now: float) -> None:
        with self._lock:
            self._samples.append((now, self.counts.operations))

    def _transaction(self, target: _Target, n: int) -> None:
        """One transaction of n operations on one country database."""
        conn = self._connection(target)
        if conn is None:
            return
        kinds = self._random.choices(
            ("insert", "update", "delete"),
            weights=(1.0 - self.updates - self.deletes, self.updates, self.deletes),
            k=n,
        )
        inserts = kinds.count("insert")
        try:
            with conn.cursor() as cur:
                updated = deleted = 0
                if inserts:
                    cur.copy_expert(COPY_SQL, io.StringIO("".join(self._new_rows(target, inserts))))
                for values in target.factory.slim_values(kinds.count("update")):
                    cur.execute(
                        self._update_sql,
                        [values[i] for i in self._update_columns] + [self._random.randrange(1, MAX_ID)],
                    )
                    updated += cur.rowcount
                for _ in range(kinds.count("delete")):
                    cur.execute(self._delete_sql, (self._random.randrange(1, MAX_ID),))
                    deleted += cur.rowcount
            conn.commit()
        except psycopg2.errors.UniqueViolation:
            conn.rollback()  # a random id that exists already: the next draw differs
            return
        except psycopg2.Error as exc:
            self._fail(target, exc)
            return
        with self._lock:
            self.counts.inserted += inserts
            self.counts.updated += updated
            self.counts.deleted += deleted
            self.counts.transactions += 1

    def _new_rows(self, target: _Target, n: int) -> list[str]:
        """n COPY lines of new students, from a buffer refilled in blocks (generation is vectorised)."""
        while len(target.buffer) < n:
            block = max(n, 256)
            target.buffer.extend(target.factory.copy_lines(random_ids(target.rng, block)))
        return [target.buffer.popleft() for _ in range(n)]

    def _connection(self, target: _Target) -> Connection | None:
        if target.conn is not None:
            return target.conn
        if time.monotonic() < target.retry_at:
            return None
        try:
            target.conn = connect(target.source.dsn, autocommit=False, password=target.source.password)
            if target.retry_at:
                log.info("source reconnected source=%s", target.source.name)
            target.retry_at = 0.0
        except PisaPulseError as exc:
            self._fail(target, exc)
        return target.conn

    def _fail(self, target: _Target, exc: Exception) -> None:
        with self._lock:
            self.counts.errors += 1
        log.warning("source failed source=%s error=%s", target.source.name, first_line(exc))
        if target.conn is not None:
            target.conn.close()
        target.conn = None
        target.retry_at = time.monotonic() + RETRY_AFTER_S
