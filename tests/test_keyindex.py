"""The ledger's key index (a numpy hash table) against a dict: random changes, growth, deletes, bulk.

Most tests shrink the smallest table to 8 entries, so keys collide, probes wrap past the end of the
table and it is rebuilt often.
"""

from __future__ import annotations

import random
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pisa_pulse.engine import keyindex
from pisa_pulse.engine.keyindex import EMPTY, KeyIndex, homes, table_size

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
KEYS = st.one_of(
    st.integers(0, 40),  # few enough to come back: updates, deletes of held keys, reinserts
    st.sampled_from([I64_MIN, I64_MIN + 1, -1, 2**62, 2**63 - 2**40, I64_MAX]),
    st.integers(I64_MIN, I64_MAX),
)
OPS = st.lists(st.tuples(st.sampled_from(["add", "remove"]), KEYS), max_size=300)


class Model:
    """A KeyIndex and the dict it should equal, slots handed out as the ledger hands them out."""

    def __init__(self, capacity: int = 8) -> None:
        self.index, self.capacity = KeyIndex(capacity), capacity
        self.held: dict[int, int] = {}
        self.free: list[int] = []
        self.used = 0

    def add(self, pk: int) -> None:
        if pk in self.held:  # an update: the ledger keeps the slot
            assert self.index.slot(pk) == self.held[pk]
            return
        if self.free:
            slot = self.free.pop()
        else:
            if self.used == self.capacity:
                self.capacity *= 2
                self.index.reserve(self.capacity)
            slot, self.used = self.used, self.used + 1
        self.index.add(pk, slot)
        self.held[pk] = slot

    def remove(self, pk: int) -> None:
        slot = self.held.pop(pk, -1)
        assert self.index.remove(pk) == slot
        if slot >= 0:
            self.free.append(slot)

    def check(self, absent: list[int]) -> None:
        index = self.index
        assert len(index) == len(self.held)
        assert all(index.slot(pk) == slot for pk, slot in self.held.items())
        assert all(index.slot(pk) == -1 for pk in absent if pk not in self.held)
        slots = index.slots()
        assert slots.tolist() == sorted(self.held.values())
        assert dict(zip(index.keys_of(slots).tolist(), slots.tolist(), strict=True)) == self.held
        table = index._table
        assert int((table != EMPTY).sum()) == len(self.held) <= len(table) // 2


def small_tables() -> mock._patch[int]:
    """The smallest table at 8 entries instead of MIN_TABLE."""
    return mock.patch.object(keyindex, "MIN_TABLE", 8)


@settings(max_examples=500)
@given(OPS, st.lists(KEYS, max_size=20))
def test_random_changes_agree_with_a_dict(ops: list[tuple[str, int]], absent: list[int]) -> None:
    with small_tables():
        model = Model()
        for op, pk in ops:
            getattr(model, op)(pk)
        model.check([pk for _, pk in ops] + absent)


def test_long_random_runs_agree_with_a_dict() -> None:
    """Tens of thousands of changes, the held keys growing, churning and shrinking."""
    rng = random.Random(18)
    with small_tables():
        model = Model()
        for keys, adds in [(3_000, 0.9), (3_000, 0.5), (200_000, 0.5), (3_000, 0.1)]:
            for _ in range(20_000):
                pk = rng.randrange(keys) * 7919 - 10**6  # negative ones too
                model.add(pk) if rng.random() < adds else model.remove(pk)
            model.check([rng.randrange(I64_MIN, I64_MAX) for _ in range(100)])


def test_deletes_leave_no_trace() -> None:
    """Keys withdrawn and new ones submitted, many times over: the table keeps its size."""
    rng = random.Random(5)
    with small_tables():
        model = Model()
        for pk in range(3_000):
            model.add(pk)
        assert len(model.index._table) == 8_192
        for pk in range(3_000, 60_000):
            model.remove(rng.choice(list(model.held)) if pk % 1_000 == 0 else pk - 3_000)
            model.add(pk)
        assert len(model.index._table) == 8_192
        model.check(list(range(60_000)))


def _homed_at(entry: int, size: int, count: int) -> list[int]:
    """`count` keys whose first entry in a table of `size` is `entry`."""
    candidates = np.arange(1, 100_000, dtype=np.int64)
    return candidates[homes(candidates, size) == entry][:count].tolist()


def test_a_delete_moves_back_the_keys_a_probe_would_miss() -> None:
    a, b, c = _homed_at(6, 8, 3)
    (d,) = _homed_at(0, 8, 1)
    with small_tables():
        index = KeyIndex(8)
        for slot, pk in enumerate([a, b, c]):
            index.add(pk, slot)
        assert index._table.tolist() == [2, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, 0, 1]  # c wrapped
        assert index.remove(a) == 0
        assert index._table.tolist() == [EMPTY] * 6 + [1, 2]  # b and c moved back, c past the end
        index.add(d, 3)
        index.add(a, 0)
        assert index._table.tolist() == [3, 0, EMPTY, EMPTY, EMPTY, EMPTY, 1, 2]
        assert index.remove(c) == 2
        assert index._table.tolist() == [3, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, 1, 0]  # d is home: stays
        assert [index.slot(pk) for pk in (a, b, c, d)] == [0, 1, -1, 3]


def test_the_table_doubles_while_it_fills_and_stays_at_most_half_full() -> None:
    index = KeyIndex(1)
    sizes = set()
    for pk in range(10_000):
        index.reserve(pk + 1)
        index.add(pk * 2**40, pk)
        sizes.add(len(index._table))
    assert sorted(sizes) == [2**k for k in range(10, 16)]  # 10,000 keys: past half of 16,384
    assert all(index.slot(pk * 2**40) == pk for pk in range(10_000))  # multiples of 2**40 spread too


def test_a_table_built_in_bulk_answers_as_one_built_key_by_key() -> None:
    rng = np.random.default_rng(4)
    keys = np.unique(rng.integers(I64_MIN, I64_MAX, size=5_000, dtype=np.int64, endpoint=True))
    keys = np.concatenate([keys, [I64_MIN, I64_MAX, -1, 0]])
    keys = np.unique(keys)
    rng.shuffle(keys)
    bulk = KeyIndex(len(keys), keys)
    assert len(bulk) == len(keys) and len(bulk._table) == table_size(len(keys)) == 16_384
    assert [bulk.slot(pk) for pk in keys.tolist()] == list(range(len(keys)))
    assert bulk.slots().tolist() == list(range(len(keys)))
    assert (bulk.keys_of(bulk.slots()) == keys).all()
    one_by_one = KeyIndex(len(keys))
    for slot, pk in enumerate(keys.tolist()):
        one_by_one.add(pk, slot)
    probe = [*keys.tolist(), *rng.integers(I64_MIN, I64_MAX, size=1_000, dtype=np.int64).tolist()]
    assert [bulk.slot(pk) for pk in probe] == [one_by_one.slot(pk) for pk in probe]


def test_homes_in_bulk_are_homes_key_by_key() -> None:
    keys = [I64_MIN, I64_MIN + 1, -(2**40), -1, 0, 1, 2**40, 2**62 + 5, I64_MAX]
    index = KeyIndex(1)
    assert homes(np.array(keys, dtype=np.int64), len(index._table)).tolist() == [
        index._home(pk) for pk in keys
    ]
