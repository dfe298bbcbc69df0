"""The ledger's primary key -> slot map: an open-addressing hash table in two numpy arrays.

A dict of Python ints cost about 110 bytes per row held (the key and slot objects, the entry), 155
after a turnover of every row; this costs 16 to 24 (8 for the key, 8 to 16 for the table).
`keys[slot]` is the int64 key of the row in that slot (as long as the ledger's row block, so it grows
with it), and `table` (int32, a power of two long) holds slots or EMPTY. A key's entry is found from
its home, the top bits of a Fibonacci hash of the key (a multiply, so keys that are multiples of a
power of two spread too), by linear probing up to an EMPTY entry.

A delete moves back the entries after it that a probe would no longer reach (backward-shift deletion)
rather than leaving a tombstone. Measured over a turnover of 600,000 rows (bench/ledger_memory.py),
tombstones made a delete about 0.75 us cheaper (of 6 to 9) but doubled the table, which needs room
for them between rebuilds: 9 bytes more per row, for good. Deletes are the rarest change.

The table doubles once half full: a Python-level probe step reads two memoryview entries, and linear
probing at load a takes about (1 + 1/(1-a)^2)/2 steps to miss (2.5 at 0.5, 8.5 at 0.75; every insert
misses first), while an entry costs only 4 bytes (8 to 16 per key at a load of 1/4 to 1/2).

Per key it is pure Python over memoryviews (a numpy scalar read costs twice as much); in bulk (growing,
restoring a checkpoint) it is numpy: every key steps to its next entry in rounds until it lands in an
empty one, one key per entry and round.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EMPTY = -1
MIN_TABLE = 1024
_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio, odd: Knuth's multiplicative hash
_MASK64 = 2**64 - 1

Keys = npt.NDArray[np.int64]
Slots = npt.NDArray[np.int32]


def table_size(keys: int) -> int:
    """The power of two, at least MIN_TABLE, that holds `keys` at most half full."""
    size = MIN_TABLE
    while size < 2 * keys:
        size *= 2
    return size


def homes(keys: Keys, size: int) -> npt.NDArray[np.int64]:
    """Each key's first table entry (what `KeyIndex._home` computes for one key)."""
    shift = np.uint64(64 - (size.bit_length() - 1))
    hashed = np.ascontiguousarray(keys, dtype=np.int64).view(np.uint64) * np.uint64(_GOLDEN)
    return (hashed >> shift).astype(np.int64)


def placed(keys: Keys, slots: Slots, size: int) -> Slots:
    """A table of `size` entries holding these distinct keys' slots (`keys[i]` is held in `slots[i]`).

    In rounds: every key not yet placed writes its slot into its current entry if that is empty;
    the one whose write stayed wins the entry, the others step on. A key only steps past an entry
    that holds another key, so each is found where a probe from its home would find it.
    """
    table: Slots = np.full(size, EMPTY, dtype=np.int32)
    waiting, at = slots, homes(keys, size)
    while waiting.size:
        empty = table[at] == EMPTY
        table[at[empty]] = waiting[empty]
        won = table[at] == waiting
        waiting, at = waiting[~won], (at[~won] + 1) & (size - 1)
    return table


class KeyIndex:
    """Distinct int64 keys, each with the slot of its row in the ledger's block (see module doc)."""

    def __init__(self, capacity: int, keys: Keys | None = None) -> None:
        """An index for slots below `capacity`; with `keys`, already holding keys[i] in slot i."""
        held = 0 if keys is None else len(keys)
        self._keys: Keys = np.zeros(max(1, capacity, held), dtype=np.int64)
        if keys is None:
            self._set_table(np.full(MIN_TABLE, EMPTY, dtype=np.int32))
        else:
            self._keys[:held] = keys
            self._set_table(placed(self._keys[:held], np.arange(held, dtype=np.int32), table_size(held)))
        self._key_view = self._keys.data.cast("B").cast("q")
        self._held = held

    def __len__(self) -> int:
        return self._held

    def slot(self, pk: int) -> int:
        """The slot holding `pk`, or -1."""
        table, keys, mask = self._view, self._key_view, self._size - 1
        at = ((pk * _GOLDEN) & _MASK64) >> self._shift  # _home and the probe inlined: the hot path
        while (slot := table[at]) != EMPTY:
            if keys[slot] == pk:
                return slot
            at = (at + 1) & mask
        return -1

    def add(self, pk: int, slot: int) -> None:
        """Hold `pk` (not held yet) in `slot` (below the capacity)."""
        self._key_view[slot] = pk
        if self._held >= self._size // 2:
            self._grow()
        table, mask = self._view, self._size - 1
        at = self._home(pk)
        while table[at] != EMPTY:
            at = (at + 1) & mask
        table[at] = slot
        self._held += 1

    def remove(self, pk: int) -> int:
        """Forget `pk`; returns the slot it was held in, or -1 if it was not held."""
        table, keys, mask, shift = self._view, self._key_view, self._size - 1, self._shift
        at = ((pk * _GOLDEN) & _MASK64) >> shift  # as in `slot`
        while (slot := table[at]) != EMPTY and keys[slot] != pk:
            at = (at + 1) & mask
        if slot == EMPTY:
            return -1
        hole, at = at, (at + 1) & mask
        while (other := table[at]) != EMPTY:
            home = ((keys[other] * _GOLDEN) & _MASK64) >> shift
            if (at - home) & mask >= (at - hole) & mask:  # the hole is on its probe: move it there
                table[hole], hole = other, at
            at = (at + 1) & mask
        table[hole] = EMPTY
        self._held -= 1
        return slot

    def slots(self) -> Slots:
        """Every slot held, in increasing order."""
        held = np.zeros(len(self._keys), dtype=np.bool_)
        held[self._table[self._table != EMPTY]] = True
        return np.flatnonzero(held).astype(np.int32)

    def keys_of(self, slots: Slots) -> Keys:
        """The keys held in these slots."""
        return self._keys[slots]

    def reserve(self, capacity: int) -> None:
        """Make room for slots below `capacity` (the ledger's block grew)."""
        if capacity > len(self._keys):
            keys: Keys = np.zeros(capacity, dtype=np.int64)
            keys[: len(self._keys)] = self._keys
            self._key_view.release()
            self._keys, self._key_view = keys, keys.data.cast("B").cast("q")

    def memory_bytes(self) -> int:
        """Bytes held by the keys and the table."""
        return int(self._keys.nbytes + self._table.nbytes)

    # -- the table --------------------------------------------------------------------------------

    def _home(self, pk: int) -> int:
        return ((pk * _GOLDEN) & _MASK64) >> self._shift

    def _grow(self) -> None:
        """The table again at twice the size."""
        held = self._table[self._table != EMPTY]
        self._set_table(placed(self._keys[held], held, 2 * self._size))

    def _set_table(self, table: Slots) -> None:
        self._table, self._size = table, len(table)
        self._shift = 64 - (self._size.bit_length() - 1)
        self._view = table.data.cast("B").cast("i")
