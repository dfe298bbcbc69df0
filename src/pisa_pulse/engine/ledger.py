"""The per-source row ledger: what each primary key contributed, so deletes and updates retract exactly.

Sources keep the default replica identity, so a delete names only the primary key: the ledger keeps,
per key, the row's parsed contribution (country, arrival minute, cnt status and the 35 numeric values
as int32, `values.MISSING` / `values.INVALID` for the rest). Rows live in one numpy int32 block that
grows by doubling, with a free list of deleted slots, and a `KeyIndex` from primary key to slot (a
hash table in numpy arrays, `keyindex.py`): no Python object per row. A row is read and written with
`struct` through a memoryview of the block, which is cheaper than numpy's per-element conversion for
one row.

Beside each row it keeps a 64-bit digest of the source row's chart columns as the source computed it
(`capture/polling.py`; 0 where nobody computed one, as in replication mode): read-only polling
compares the digests of key ranges with the source's to find updated rows.

The ledger also counts, per column, the rows it holds whose value is missing or invalid, and
remembers which keys changed since `take_changes()` last ran, for the checkpoint.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.keyindex import KeyIndex
from pisa_pulse.engine.values import (
    ARRIVAL,
    CNT_INVALID,
    CNT_MISSING,
    CNT_STATUS,
    COUNTED_COLUMNS,
    COUNTRY,
    COUNTRY_CODES,
    FIRST_VALUE,
    INVALID,
    MISSING,
    ROW_WIDTH,
    VALID_MIN,
    RowParser,
)
from pisa_pulse.errors import PisaPulseError

_ROW = struct.Struct(f"<{ROW_WIDTH}i")  # little-endian: the checkpoint's bytes do not depend on the host
ROW_BYTES = _ROW.size
RECORD_BYTES = ROW_BYTES + 8  # a checkpointed row: the row, then its digest (int64, little-endian)
_INITIAL_CAPACITY = 1024

Records = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]  # primary keys, and (n, RECORD_BYTES) rows


def records_of(source_country: str, rows: Iterable[tuple[int, bytes]]) -> Records:
    """Checkpointed (pk, packed row) pairs as `Ledger.from_records` takes them, each row's size checked."""
    keys: list[int] = []
    packed: list[bytes] = []
    for pk, row in rows:
        if len(row) != RECORD_BYTES:
            raise PisaPulseError(
                f"checkpointed row {pk} of {source_country} has {len(row)} bytes, not {RECORD_BYTES}",
                "the checkpoint was written by another version: remove it to rebuild from the sources",
            )
        keys.append(pk)
        packed.append(row)
    block = np.frombuffer(b"".join(packed), dtype=np.uint8).reshape(len(keys), RECORD_BYTES)
    return np.array(keys, dtype=np.int64), block


class Ledger:
    """One source's rows by primary key; every change is applied to the given Aggregates too."""

    def __init__(self, source_country: str, capacity: int = _INITIAL_CAPACITY) -> None:
        self._parser = RowParser(source_country)
        self.source_country = source_country
        self._block: npt.NDArray[np.int32] = np.zeros((max(1, capacity), ROW_WIDTH), dtype="<i4")
        self._view = self._block.data.cast("B")
        self._digests: npt.NDArray[np.int64] = np.zeros(max(1, capacity), dtype="<i8")
        self._digest_view = self._digests.data.cast("B")
        self._index = KeyIndex(len(self._block))
        self._free: list[int] = []
        self._used = 0  # slots below this have been handed out at least once
        self._changed: set[int] = set()
        self._missing = [0] * len(COUNTED_COLUMNS)
        self._invalid = [0] * len(COUNTED_COLUMNS)
        self.unknown_deletes = 0  # deletes of keys the ledger did not hold

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, pk: object) -> bool:
        return isinstance(pk, int) and self._index.slot(pk) >= 0

    def keys(self) -> set[int]:
        """The primary keys held, as a new set (so deleting while iterating it is safe)."""
        return set(self._index.keys_of(self._index.slots()).tolist())

    # -- changes ----------------------------------------------------------------------------------

    def upsert(
        self, pk: int, values: Sequence[object], minute: int, aggregates: Aggregates, digest: int = 0
    ) -> None:
        """Insert or update row `pk` from its `CHART_COLUMNS` values (None for NULL) and its digest.

        An update retracts the old contribution and keeps the row's original arrival minute; a value
        that is neither str nor None means "unchanged" and keeps the column's previous value.
        """
        slot = self._index.slot(pk)
        if slot < 0:
            row = self._parser.parse_row(values, minute)
            slot = self._allocate()
            self._index.add(pk, slot)
        else:
            old = _ROW.unpack_from(self._view, slot * ROW_BYTES)
            self._uncount(old)
            aggregates.retract(old)
            row = self._parser.parse_row(values, old[ARRIVAL], old)
        _ROW.pack_into(self._view, slot * ROW_BYTES, *row)
        self._digests[slot] = digest
        self._count(row)
        aggregates.add(row)
        self._changed.add(pk)

    def upsert_many(
        self, changes: Iterable[tuple[int, Sequence[object], int]], minute: int, aggregates: Aggregates
    ) -> None:
        """`upsert` of each (pk, values, digest), with the same result; rows of keys not held yet go in
        in bulk (`RowParser.parse_rows`, then numpy for the block, the counters and `add_rows`), so a
        copy or a backlog of inserts spends little time per row in Python."""
        keys: list[int] = []
        rows: list[Sequence[object]] = []
        digests: list[int] = []
        fresh: set[int] = set()
        slot_of = self._index.slot
        for pk, values, digest in changes:
            if pk in fresh:  # twice in one run: the first goes in before the second updates it
                self._add_fresh(keys, self._parser.parse_rows(rows, minute), digests, aggregates)
                keys, rows, digests, fresh = [], [], [], set()
            if slot_of(pk) >= 0:
                self.upsert(pk, values, minute, aggregates, digest)
            else:
                keys.append(pk)
                rows.append(values)
                digests.append(digest)
                fresh.add(pk)
        if keys:
            self._add_fresh(keys, self._parser.parse_rows(rows, minute), digests, aggregates)

    def _add_fresh(
        self, keys: list[int], rows: npt.NDArray[np.int32], digests: list[int], aggregates: Aggregates
    ) -> None:
        """Hold new keys' parsed rows (none of them held yet), counted and added in bulk."""
        slots = [self._allocate() for _ in keys]  # may grow the block: before taking views of it
        self._block[slots] = rows
        self._digests[slots] = digests
        add = self._index.add
        for pk, slot in zip(keys, slots, strict=True):
            add(pk, slot)
        self._count_block(rows)
        aggregates.add_rows(rows)
        self._changed.update(keys)

    def delete(self, pk: int, aggregates: Aggregates) -> bool:
        """Retract row `pk`; False (and counted in `unknown_deletes`) if the ledger does not hold it."""
        slot = self._index.remove(pk)
        if slot < 0:
            self.unknown_deletes += 1
            return False
        old = _ROW.unpack_from(self._view, slot * ROW_BYTES)
        self._uncount(old)
        aggregates.retract(old)
        self._free.append(slot)
        self._changed.add(pk)
        return True

    def truncate(self, aggregates: Aggregates) -> int:
        """Retract every row of this source; returns how many there were."""
        unpack, view, slots = _ROW.unpack_from, self._view, self._index.slots()
        for slot in slots.tolist():
            aggregates.retract(unpack(view, slot * ROW_BYTES))
        self._changed.update(self._index.keys_of(slots).tolist())
        self._index = KeyIndex(_INITIAL_CAPACITY)
        self._free = []
        self._used = 0
        self._missing = [0] * len(COUNTED_COLUMNS)
        self._invalid = [0] * len(COUNTED_COLUMNS)
        self._resize(_INITIAL_CAPACITY)
        return len(slots)

    @property
    def pending_changes(self) -> int:
        """How many keys changed since `take_changes()` last ran."""
        return len(self._changed)

    def take_changes(self) -> Iterator[tuple[int, bytes | None]]:
        """The keys changed since the last call: (pk, packed row) if present, (pk, None) if deleted.

        The keys are taken at the call; the rows are packed as the iterator is consumed (so a
        checkpoint of 600,000 rows never holds them all at once): consume it before changing the ledger.
        """
        changed, self._changed = self._changed, set()
        return self._packed(changed)

    def _packed(self, keys: set[int]) -> Iterator[tuple[int, bytes | None]]:
        view, digests, index = self._view, self._digest_view, self._index
        for pk in keys:
            slot = index.slot(pk)
            if slot < 0:
                yield pk, None
            else:
                yield (
                    pk,
                    bytes(view[slot * ROW_BYTES : (slot + 1) * ROW_BYTES])
                    + bytes(digests[slot * 8 : slot * 8 + 8]),
                )

    def digest(self, pk: int) -> int | None:
        """The digest stored with row `pk`, or None if the ledger does not hold it."""
        slot = self._index.slot(pk)
        return None if slot < 0 else int(self._digests[slot])

    def keys_and_digests(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Every key held and its row's digest, as two aligned arrays."""
        slots = self._index.slots()
        return self._index.keys_of(slots), self._digests[slots].astype(np.int64)

    def records(self) -> Records:
        """Every row held, as `from_records` takes them (the ledger's whole state, e.g. for a snapshot)."""
        slots = self._index.slots()
        keys = self._index.keys_of(slots)
        packed = np.empty((len(slots), RECORD_BYTES), dtype=np.uint8)
        packed[:, :ROW_BYTES] = self._block[slots].view(np.uint8)
        packed[:, ROW_BYTES:] = self._digests[slots].view(np.uint8).reshape(-1, 8)
        return keys, packed

    @classmethod
    def restore(
        cls, source_country: str, rows: Iterable[tuple[int, bytes]], aggregates: Aggregates
    ) -> Ledger:
        """A ledger holding checkpointed rows (packed as `take_changes` gave them), added to `aggregates`."""
        return cls.from_records(source_country, records_of(source_country, rows), aggregates)

    @classmethod
    def from_records(cls, source_country: str, records: Records, aggregates: Aggregates) -> Ledger:
        """A ledger holding these rows, added to `aggregates`: in bulk (numpy), so a worker taking a
        source of 30,000 rows over spends milliseconds here, not a second."""
        keys, packed = records
        n = len(keys)
        ledger = cls(source_country, max(n, _INITIAL_CAPACITY))
        rows = packed[:, :ROW_BYTES].copy().view("<i4")
        countries = rows[:, COUNTRY]
        bad = (countries < 0) | (countries >= len(COUNTRY_CODES))
        if bad.any():
            raise PisaPulseError(f"checkpointed row {int(keys[bad.argmax()])} of {source_country} is corrupt")
        unique, counts = np.unique(keys, return_counts=True)
        if len(unique) != n:
            twice = int(unique[counts > 1][0])
            raise PisaPulseError(f"checkpointed row {twice} of {source_country} is corrupt (held twice)")
        ledger._index = KeyIndex(len(ledger._block), keys)
        ledger._block[:n] = rows
        ledger._digests[:n] = packed[:, ROW_BYTES:].copy().view("<i8").reshape(n)
        ledger._used = n
        ledger._count_block(rows)
        aggregates.add_rows(rows)
        return ledger

    # -- per-column counts ------------------------------------------------------------------------

    def missing_counts(self) -> dict[str, int]:
        """Per column (cnt and the numeric ones): rows held whose value is missing (NULL or 'NA')."""
        return dict(zip(COUNTED_COLUMNS, self._missing, strict=True))

    def invalid_counts(self) -> dict[str, int]:
        """Per column: rows held whose value is present but invalid (see `values.py`)."""
        return dict(zip(COUNTED_COLUMNS, self._invalid, strict=True))

    def _count(self, row: Sequence[int], sign: int = 1) -> None:
        status = row[CNT_STATUS]
        if status == CNT_MISSING:
            self._missing[0] += sign
        elif status == CNT_INVALID:
            self._invalid[0] += sign
        if min(row[FIRST_VALUE:]) >= VALID_MIN:
            return
        for column, value in enumerate(row[FIRST_VALUE:], start=1):
            if value == MISSING:
                self._missing[column] += sign
            elif value == INVALID:
                self._invalid[column] += sign

    def _count_block(self, rows: npt.NDArray[np.int32]) -> None:
        """`_count` of every row of an (n, ROW_WIDTH) block."""
        status, values = rows[:, CNT_STATUS], rows[:, FIRST_VALUE:]
        missing = [int((status == CNT_MISSING).sum()), *(values == MISSING).sum(axis=0).tolist()]
        invalid = [int((status == CNT_INVALID).sum()), *(values == INVALID).sum(axis=0).tolist()]
        self._missing = [a + b for a, b in zip(self._missing, missing, strict=True)]
        self._invalid = [a + b for a, b in zip(self._invalid, invalid, strict=True)]

    def _uncount(self, row: Sequence[int]) -> None:
        self._count(row, -1)

    # -- storage ----------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes held by the row block, the digests and the key index (allocated, not only used)."""
        return int(self._block.nbytes + self._digests.nbytes) + self._index.memory_bytes()

    def _allocate(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self._block):
            self._resize(2 * len(self._block))
        self._used += 1
        return self._used - 1

    def _resize(self, capacity: int) -> None:
        block: npt.NDArray[np.int32] = np.zeros((capacity, ROW_WIDTH), dtype="<i4")
        kept = min(self._used, capacity)
        block[:kept] = self._block[:kept]
        digests: npt.NDArray[np.int64] = np.zeros(capacity, dtype="<i8")
        digests[:kept] = self._digests[:kept]
        self._view.release()
        self._digest_view.release()
        self._block, self._digests = block, digests
        self._index.reserve(capacity)
        self._view = block.data.cast("B")
        self._digest_view = digests.data.cast("B")
