"""Read-only change capture (`mode = "poll"`): inserts, deletes and updates found with SELECT alone.

Where logical replication is not allowed (no REPLICATION privilege, a managed service, a read
replica), the pipeline polls. Rows have no timestamps and new ones land at random keys, so neither
`WHERE id > last` nor `OFFSET count` finds them, and re-reading every row per poll costs what the
original design cost. Instead the primary-key space is cut into ranges (`Layout`: 64 to 16,384
ranges of equal power-of-two width, about 32 rows each) and every poll, in one REPEATABLE READ READ
ONLY transaction (so everything it reads is one consistent state):

1. reads the transaction snapshot (`txid_current_snapshot()`); when it equals the last poll's, no
   transaction has committed on the server since, and the poll ends there;
2. reads, per range, `count(*)` and `sum(id)`: one index-only scan of the primary key, no row read;
3. for the ranges whose count or sum differ from the ledger's (`KeyRanges`), reads their ids
   (index-only range scans) and compares them with the ledger's: new ids and gone ids;
4. reads the chart columns of the new ids only, with each row's digest.

A row's digest is `hashtextextended` of its chart columns' text, computed by the source. Each poll
also reconciles a slice of the ranges (the caller rolls the slice so that every range comes round
once per reconciliation interval, 30 s by default): it reads `sum(digest)` of the slice's rows;
ranges whose digest sum differs get their (id, digest) pairs compared with the ledger's, and the
rows whose digest changed are read again: updates.

What the mode sees: every insert and delete within one poll; every update within one reconciliation;
the state of the source at each poll, exactly. What it cannot see: states between two polls (a row
inserted and deleted in between never counts; a row updated twice counts its last value, as it
should) and commit times: a row's arrival time is the poll that first saw it (`/api/status` says so).
An empty ledger (the first start) is filled by one COPY of the chart columns instead of step 3.
Needs PostgreSQL 11+ (`hashtextextended`), SELECT on `responses`, and a primary key on `id`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import psycopg2.extensions
from psycopg2 import sql

from pisa_pulse.capture.contract import RowChange
from pisa_pulse.capture.replication import copy_select
from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import Connection, connect
from pisa_pulse.sources.schema import CHART_COLUMNS, TABLE

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
ROWS_PER_RANGE = 32
MIN_RANGES, MAX_RANGES = 64, 16_384
FETCH_CHUNK = 5_000  # ids per query when reading rows by id

Keys = npt.NDArray[np.int64]
Apply = Callable[[list[RowChange]], None]

_VALUES = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in CHART_COLUMNS[1:])
DIGEST = sql.SQL("hashtextextended(ROW({})::text, 0)").format(_VALUES)
_ROWS = sql.SQL("SELECT id, {}, {} FROM {}").format(_VALUES, DIGEST, sql.Identifier(TABLE))


@dataclass(frozen=True)
class Layout:
    """Ranges of the key space: range r holds the ids whose `id >> shift` is `base + r` (clamped)."""

    shift: int
    base: int
    ranges: int

    @classmethod
    def for_keys(cls, keys: Keys) -> Layout:
        """About `ROWS_PER_RANGE` keys per range, between the smallest and the largest key."""
        n = len(keys)
        ranges = _range_count(n)
        lo, hi = (int(keys.min()), int(keys.max())) if n else (0, 2**62)
        shift = 0
        while (hi >> shift) - (lo >> shift) >= ranges:
            shift += 1
        return cls(shift, lo >> shift, ranges)

    def range_of(self, pk: int) -> int:
        """The range of one key."""
        return min(max((pk >> self.shift) - self.base, 0), self.ranges - 1)

    def ranges_of(self, keys: Keys) -> npt.NDArray[np.int64]:
        """The range of each key."""
        ranges: npt.NDArray[np.int64] = np.clip((keys >> self.shift) - self.base, 0, self.ranges - 1)
        return ranges

    def bounds(self, r: int) -> tuple[int, int]:
        """The smallest and the largest id of range r (the outer ranges reach the ends of bigint)."""
        lo = I64_MIN if r == 0 else (self.base + r) << self.shift
        hi = I64_MAX if r == self.ranges - 1 else ((self.base + r + 1) << self.shift) - 1
        return max(lo, I64_MIN), min(hi, I64_MAX)

    def expression(self) -> sql.Composable:
        """The range of `id` in SQL, as `range_of` computes it."""
        return sql.SQL("least(greatest((id >> {}) - {}, 0), {})").format(
            sql.Literal(self.shift), sql.Literal(self.base), sql.Literal(self.ranges - 1)
        )


class KeyRanges:
    """The ledger's keys by range: each range's count and sum of ids, and its keys on demand.

    Keys live in a sorted array plus the keys added and removed since it was last sorted, so a range's
    keys are one binary search away and a change costs O(1).
    """

    def __init__(self, keys: Keys, layout: Layout | None = None) -> None:
        self.layout = layout or Layout.for_keys(keys)
        self.size = len(keys)
        self._sorted = np.sort(keys)
        ranges = self.layout.ranges_of(self._sorted)
        self.counts: list[int] = np.bincount(ranges, minlength=self.layout.ranges).tolist()
        self.sums = [0] * self.layout.ranges  # Python ints: exact, like PostgreSQL's sum(bigint)
        for r, pk in zip(ranges.tolist(), self._sorted.tolist(), strict=True):
            self.sums[r] += pk
        self._added: dict[int, set[int]] = {}
        self._removed: set[int] = set()

    def add(self, pk: int) -> None:
        """A key the ledger now holds."""
        r = self.layout.range_of(pk)
        self.counts[r] += 1
        self.sums[r] += pk
        self.size += 1
        if pk in self._removed:
            self._removed.discard(pk)
        else:
            self._added.setdefault(r, set()).add(pk)

    def remove(self, pk: int) -> None:
        """A key the ledger no longer holds."""
        r = self.layout.range_of(pk)
        self.counts[r] -= 1
        self.sums[r] -= pk
        self.size -= 1
        added = self._added.get(r)
        if added is not None and pk in added:
            added.discard(pk)
        else:
            self._removed.add(pk)

    def keys_in(self, r: int) -> set[int]:
        """The keys of range r."""
        lo, hi = self.layout.bounds(r)
        i = int(np.searchsorted(self._sorted, lo, side="left"))
        j = int(np.searchsorted(self._sorted, hi, side="right"))
        keys = set(self._sorted[i:j].tolist())
        keys -= self._removed
        keys |= self._added.get(r, set())
        return keys

    def tidy(self) -> KeyRanges:
        """This index, or a rebuilt one: re-laid out when the ranges no longer fit the keys (the table
        grew or shrank fourfold, or keys pile up in one range, as increasing ids do in the last one),
        re-sorted when many changes are pending."""
        fitting = _range_count(self.size)
        crowded = max(self.counts, default=0) > 16 * ROWS_PER_RANGE + 8 * self.size // self.layout.ranges
        if crowded or not self.layout.ranges // 4 < fitting < self.layout.ranges * 4:
            return KeyRanges(self.all_keys())
        pending = sum(len(a) for a in self._added.values()) + len(self._removed)
        if pending > max(1024, self.size // 8):
            return KeyRanges(self.all_keys(), self.layout)
        return self

    def all_keys(self) -> Keys:
        """Every key, as an array."""
        kept = self._sorted[~np.isin(self._sorted, np.fromiter(self._removed, np.int64, len(self._removed)))]
        added = [pk for keys in self._added.values() for pk in keys]
        return np.concatenate([kept, np.array(added, dtype=np.int64)])


@dataclass
class PollStats:
    """What one poll cost and found."""

    skipped: bool = False  # the snapshot had not moved: nothing was read
    reconciled: bool = False
    copied: bool = False
    ranges: int = 0
    ranges_differing: int = 0
    index_entries: int = 0  # primary-key entries the range summary scanned (the source's row count)
    ids_read: int = 0  # ids read in the ranges that differ
    rows_read: int = 0  # rows whose chart columns were read
    inserted: int = 0
    deleted: int = 0
    updated: int = 0
    ms: float = 0.0
    scan_ms: float = 0.0  # the range summary: one index-only scan of the whole primary key
    reconcile_ms: float = 0.0  # the slice's digests: its rows read and hashed
    snapshot: str = ""


class SourcePoller:
    """One source's read-only connection and the queries of a poll (see the module docstring)."""

    def __init__(self, source: Source) -> None:
        self.conn: Connection = connect(source.dsn, autocommit=False, password=source.password)
        self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with self.conn.cursor() as cur:  # a poll's scans are small: parallel workers cost more than they save
            cur.execute("SET max_parallel_workers_per_gather = 0")
        self.conn.commit()
        self.last_snapshot = ""

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def poll(
        self,
        keys: KeyRanges,
        digest_of: Callable[[int], int | None],
        reconcile: range | None,
        apply: Apply,
        copy: bool = False,
    ) -> PollStats:
        """One poll; `reconcile` (a slice of the layout's ranges) asks to compare those ranges' digests
        too, and `copy` for a full copy instead (the first start, into an empty ledger).

        Changes go to `apply` in chunks, every chunk from the same snapshot.
        """
        t0 = time.perf_counter()
        stats = PollStats(reconciled=bool(reconcile))
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT txid_current_snapshot()::text")
                stats.snapshot = str(cur.fetchone()[0])  # type: ignore[index]
                if stats.snapshot == self.last_snapshot and not reconcile:
                    stats.skipped = True
                elif copy:
                    self._copy(cur, apply, stats)
                else:
                    self._compare(cur, keys, digest_of, reconcile or range(0), apply, stats)
        finally:
            self.conn.rollback()
        self.last_snapshot = stats.snapshot
        stats.ms = (time.perf_counter() - t0) * 1000
        return stats

    def _copy(self, cur: psycopg2.extensions.cursor, apply: Apply, stats: PollStats) -> None:
        chunk: list[RowChange] = []

        def on_row(values: list[str | None]) -> None:
            pk = int(values[0])  # type: ignore[arg-type]
            chunk.append(RowChange("upsert", pk, tuple(values[:-1]), int(values[-1])))  # type: ignore[arg-type]
            if len(chunk) >= FETCH_CHUNK:
                apply(chunk[:])
                chunk.clear()

        stats.rows_read = copy_select(cur, _ROWS, on_row)
        apply(chunk)
        stats.copied, stats.inserted = True, stats.rows_read

    def _compare(
        self,
        cur: psycopg2.extensions.cursor,
        keys: KeyRanges,
        digest_of: Callable[[int], int | None],
        reconcile: range,
        apply: Apply,
        stats: PollStats,
    ) -> None:
        layout = keys.layout
        t0 = time.perf_counter()
        cur.execute(
            sql.SQL("SELECT r, count(*), sum(id) FROM (SELECT {} AS r, id FROM {}) t GROUP BY r").format(
                layout.expression(), sql.Identifier(TABLE)
            )
        )
        source = {int(r): (int(n), int(total)) for r, n, total in cur.fetchall()}
        t1 = time.perf_counter()
        stats.scan_ms = (t1 - t0) * 1000
        stats.ranges = layout.ranges
        stats.index_entries = sum(n for n, _ in source.values())
        differing = {
            r for r in range(layout.ranges) if source.get(r, (0, 0)) != (keys.counts[r], keys.sums[r])
        }
        if reconcile:
            # The slice's digests: the rows of those ranges are read (and only those).
            lo, hi = layout.bounds(reconcile.start)[0], layout.bounds(reconcile.stop - 1)[1]
            cur.execute(
                sql.SQL(
                    "SELECT r, sum(d) FROM (SELECT {} AS r, {} AS d FROM {} WHERE id BETWEEN %s AND %s) t "
                    "GROUP BY r"
                ).format(layout.expression(), DIGEST, sql.Identifier(TABLE)),
                (lo, hi),
            )
            digests = {int(r): int(d) for r, d in cur.fetchall()}
            stats.reconcile_ms = (time.perf_counter() - t1) * 1000
            stats.rows_read += sum(source.get(r, (0, 0))[0] for r in reconcile)
            for r in reconcile:
                if digests.get(r, 0) != sum(digest_of(pk) or 0 for pk in keys.keys_in(r)):
                    differing.add(r)
        stats.ranges_differing = len(differing)
        if not differing:
            return
        checked = sorted(differing & set(reconcile))  # ids and digests compared
        counted = sorted(differing - set(reconcile))  # ids compared
        found = self._ids_in(cur, layout, checked, with_digest=True) + self._ids_in(
            cur, layout, counted, with_digest=False
        )
        stats.ids_read = len(found)
        by_range: dict[int, dict[int, int]] = {r: {} for r in differing}
        for pk, row_digest in found:
            by_range[layout.range_of(pk)][pk] = row_digest
        fetch: list[int] = []
        deletes: list[RowChange] = []
        for r in sorted(differing):
            mine, seen = keys.keys_in(r), by_range[r]
            deletes.extend(RowChange("delete", pk) for pk in mine - seen.keys())
            new = seen.keys() - mine
            fetch.extend(new)
            stats.inserted += len(new)
            if r in reconcile:
                changed = [pk for pk in seen.keys() & mine if digest_of(pk) != seen[pk]]
                fetch.extend(changed)
                stats.updated += len(changed)
        stats.deleted = len(deletes)
        apply(deletes)
        for start in range(0, len(fetch), FETCH_CHUNK):
            chunk = self._rows(cur, fetch[start : start + FETCH_CHUNK])
            stats.rows_read += len(chunk)
            apply(chunk)

    def _ids_in(
        self, cur: psycopg2.extensions.cursor, layout: Layout, ranges: Sequence[int], with_digest: bool
    ) -> list[tuple[int, int]]:
        """(id, digest or 0) of every row in the given ranges, adjacent ranges read as one."""
        if not ranges:
            return []
        spans: list[list[int]] = []
        for r in ranges:
            lo, hi = layout.bounds(r)
            if spans and spans[-1][1] == lo - 1:
                spans[-1][1] = hi
            else:
                spans.append([lo, hi])
        digest = sql.SQL(", {}").format(DIGEST) if with_digest else sql.SQL(", 0")
        cur.execute(
            sql.SQL(
                "SELECT t.* FROM unnest(%s::bigint[], %s::bigint[]) AS g(lo, hi) CROSS JOIN LATERAL "
                "(SELECT id{} FROM {} WHERE id BETWEEN g.lo AND g.hi) t"
            ).format(digest, sql.Identifier(TABLE)),
            ([s[0] for s in spans], [s[1] for s in spans]),
        )
        return [(int(pk), int(d)) for pk, d in cur.fetchall()]

    def _rows(self, cur: psycopg2.extensions.cursor, ids: Iterable[int]) -> list[RowChange]:
        cur.execute(sql.SQL("{} WHERE id = ANY(%s::bigint[])").format(_ROWS), (list(ids),))
        return [RowChange("upsert", int(row[0]), tuple(row[:-1]), int(row[-1])) for row in cur.fetchall()]


def _range_count(keys: int) -> int:
    """The power of two giving about `ROWS_PER_RANGE` keys per range, within the limits."""
    ranges = MIN_RANGES
    while ranges < MAX_RANGES and ranges * ROWS_PER_RANGE < keys:
        ranges *= 2
    return ranges
