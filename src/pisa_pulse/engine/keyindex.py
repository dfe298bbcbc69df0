"""The ledger's primary key -> slot map: an open-addressing hash table in two numpy arrays.

A dict of Python ints cost about 110 bytes per row held (the key object, the slot object, the entry);
this costs about 17 at 30,000 rows. `keys[slot]` is the int64 key of the row in that slot (as long
as the ledger's row block, so it grows with it), and `table` (int32, a power of two long) holds
slots: a key's entries start at its home, the top bits of a Fibonacci hash of the key (a multiply,
so keys that are multiples of a power of two still spread), and go on by linear probing. EMPTY ends
a probe; a deleted key leaves a TOMBSTONE that probes pass over and inserts reuse (or EMPTY where
the next entry is empty, as no probe can pass it then). The table stays at most half full counting
tombstones: a Python-level probe reads two memoryview entries per step, and linear probing at load
a takes about (1 + 1/(1-a)^2)/2 steps to miss (2.5 at 0.5, 8.5 at 0.75), while each table entry
costs 4 bytes. Past half full the table is rebuilt in bulk without its tombstones, at twice the
size it needs for its keys (so it doubles while it fills, and after a rebuild has room for as many
tombstones as keys before the next).

Per key it is pure Python over memoryviews (a numpy scalar read costs twice as much); in bulk
(rebuilding, restoring a checkpoint) it is numpy: every key steps to its next entry in rounds
until it lands in an empty one, one key per entry and round.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EMPTY, TOMBSTONE = -1, -2
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
        self._held = self._filled = held  # keys; entries not EMPTY (keys and tombstones)

    def __len__(self) -> int:
        return self._held

    def slot(self, pk: int) -> int:
        """The slot holding `pk`, or -1."""
        at = self._find(pk)
        return -1 if at < 0 else self._view[at]

    def add(self, pk: int, slot: int) -> None:
        """Hold `pk` (not held yet) in `slot` (below the capacity)."""
        self._key_view[slot] = pk
        if self._filled >= self._size // 2:
            self._rebuild(table_size(2 * self._held))
        table, mask = self._view, self._size - 1
        at = self._home(pk)
        while table[at] >= 0:
            at = (at + 1) & mask
        if table[at] == EMPTY:
            self._filled += 1
        table[at] = slot
        self._held += 1

    def remove(self, pk: int) -> int:
        """Forget `pk`; returns the slot it was held in, or -1 if it was not held."""
        at = self._find(pk)
        if at < 0:
            return -1
        table = self._view
        slot = table[at]
        if table[(at + 1) & (self._size - 1)] == EMPTY:
            table[at] = EMPTY
            self._filled -= 1
        else:
            table[at] = TOMBSTONE
        self._held -= 1
        return slot

    def slots(self) -> Slots:
        """Every slot held, in increasing order."""
        held = np.zeros(len(self._keys), dtype=np.bool_)
        held[self._table[self._table >= 0]] = True
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

    def _find(self, pk: int) -> int:
        """The table entry holding `pk`, or -1."""
        table, keys, mask = self._view, self._key_view, self._size - 1
        at = self._home(pk)
        while True:
            slot = table[at]
            if slot == EMPTY:
                return -1
            if slot >= 0 and keys[slot] == pk:
                return at
            at = (at + 1) & mask

    def _rebuild(self, size: int) -> None:
        """The table again at `size` entries, without tombstones."""
        held = self._table[self._table >= 0]
        self._set_table(placed(self._keys[held], held, size))
        self._filled = self._held

    def _set_table(self, table: Slots) -> None:
        self._table, self._size = table, len(table)
        self._shift = 64 - (self._size.bit_length() - 1)
        self._view = table.data.cast("B").cast("i")
