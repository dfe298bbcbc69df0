"""Which live worker should own each source: spread evenly, with the fewest moves.

Every worker computes the same plan from the same view (the sources, the live workers, who holds
what), so no coordinator is needed: each then releases what the plan gives to others and takes what it
gives to it. "Evenly" means the live workers' source counts differ by at most one. "Fewest moves":
the workers that hold the most keep the larger quotas, every worker keeps the sources it holds up to
its quota, and only the rest (sources of workers that left, new sources, a worker's surplus) move.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def quotas(count: int, workers: Collection[str], owners: Mapping[str, str]) -> dict[str, int]:
    """How many of `count` sources each worker should hold: `count // len(workers)`, plus one for the
    `count % len(workers)` workers holding the most now (ties by name)."""
    base, extra = divmod(count, len(workers))
    held = {w: 0 for w in workers}
    for owner in owners.values():
        if owner in held:
            held[owner] += 1
    ranked = sorted(workers, key=lambda w: (-held[w], w))
    return {w: base + (1 if i < extra else 0) for i, w in enumerate(ranked)}


def plan(sources: Collection[str], workers: Collection[str], owners: Mapping[str, str]) -> dict[str, str]:
    """The owner each source should have, given the live `workers` and the current `owners` (source
    -> worker; sources of workers not live, or not in `sources`, count as free). Empty without workers."""
    if not workers:
        return {}
    live = {s: w for s, w in owners.items() if s in sources and w in workers}
    quota = quotas(len(sources), workers, live)
    target: dict[str, str] = {}
    kept = {w: 0 for w in workers}
    for source in sorted(live):  # each worker keeps what it holds, up to its quota
        worker = live[source]
        if kept[worker] < quota[worker]:
            target[source] = worker
            kept[worker] += 1
    short = [w for w in sorted(workers) for _ in range(quota[w] - kept[w])]
    free = [s for s in sorted(sources) if s not in target]
    target.update(zip(free, short, strict=True))
    return target


def moves(before: Mapping[str, str], after: Mapping[str, str]) -> int:
    """Sources whose owner differs between two plans (a source new in `after` counts as a move)."""
    return sum(1 for source, worker in after.items() if before.get(source) != worker)
