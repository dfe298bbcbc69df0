"""The plan of which worker owns which source: even, stable, with the fewest moves (no server)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pisa_pulse.fleet.assign import moves, plan

SOURCES = [f"s{i:02d}" for i in range(20)]


def counts(target: dict[str, str], workers: list[str]) -> list[int]:
    return [sum(1 for w in target.values() if w == worker) for worker in workers]


def test_a_first_plan_spreads_the_sources_evenly() -> None:
    target = plan(SOURCES, ["a", "b", "c"], {})
    assert set(target) == set(SOURCES)
    assert sorted(counts(target, ["a", "b", "c"])) == [6, 7, 7]


def test_a_worker_joining_takes_only_what_it_needs() -> None:
    first = plan(SOURCES, ["a", "b", "c"], {})
    joined = plan(SOURCES, ["a", "b", "c", "d"], first)
    assert counts(joined, ["a", "b", "c", "d"]) == [5, 5, 5, 5]
    assert moves(first, joined) == 5  # the newcomer's five, and nothing else
    assert all(joined[s] == first[s] for s in SOURCES if joined[s] != "d")


def test_a_worker_leaving_gives_up_only_its_own() -> None:
    first = plan(SOURCES, ["a", "b", "c", "d"], {})
    left = plan(SOURCES, ["a", "b", "c"], first)
    assert sorted(counts(left, ["a", "b", "c"])) == [6, 7, 7]
    assert moves(first, left) == 5  # d's five
    assert all(left[s] == first[s] for s in SOURCES if first[s] != "d")


def test_the_plan_does_not_move_what_is_already_even() -> None:
    first = plan(SOURCES, ["a", "b", "c"], {})
    assert plan(SOURCES, ["c", "b", "a"], first) == first


def test_a_removed_source_and_a_new_one() -> None:
    first = plan(SOURCES, ["a", "b"], {})
    changed = [*SOURCES[1:], "new"]
    target = plan(changed, ["a", "b"], first)
    assert set(target) == set(changed)
    assert moves({s: w for s, w in first.items() if s in changed}, target) == 1  # only the new one


def test_no_workers_no_plan() -> None:
    assert plan(SOURCES, [], {"s00": "a"}) == {}


@given(
    n_sources=st.integers(0, 30),
    before=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True),
    after=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True),
)
def test_any_change_of_workers_is_even_and_minimal(
    n_sources: int, before: list[str], after: list[str]
) -> None:
    sources = SOURCES[:n_sources] + [f"t{i}" for i in range(max(0, n_sources - 20))]
    owners = plan(sources, before, {})
    target = plan(sources, after, owners)
    assert set(target) == set(sources) and set(target.values()) <= set(after)
    spread = counts(target, after)
    assert max(spread) - min(spread) <= 1
    # Fewest moves: a source must move when its owner left, or when its owner holds more than the
    # largest quota allows; no plan with even counts moves fewer.
    base, extra = divmod(len(sources), len(after))
    held = {w: sum(1 for o in owners.values() if o == w) for w in after}
    must_move = sum(1 for o in owners.values() if o not in after)
    ranked = sorted(after, key=lambda w: -held[w])
    quota = {w: base + (1 if i < extra else 0) for i, w in enumerate(ranked)}
    must_move += sum(max(0, held[w] - quota[w]) for w in after)
    assert moves(owners, target) == must_move


def test_every_small_case_by_brute_force() -> None:
    # For 5 sources and up to 3 workers, no even plan moves fewer sources than `plan`.
    sources = SOURCES[:5]
    for workers in (["a"], ["a", "b"], ["a", "b", "c"]):
        for owners_of in itertools.product(["a", "b", "c", "x"], repeat=len(sources)):
            owners = dict(zip(sources, owners_of, strict=True))
            target = plan(sources, workers, owners)
            best = min(
                moves(owners, dict(zip(sources, choice, strict=True)))
                for choice in itertools.product(workers, repeat=len(sources))
                if max(c := [choice.count(w) for w in workers]) - min(c) <= 1
            )
            assert moves(owners, target) == best, (workers, owners, target)
