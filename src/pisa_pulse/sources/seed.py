"""Bulk seeding: fill each country's `responses` up to N students with COPY.

Work is cut into chunks of at most `CHUNK` students; each chunk is generated and copied in one
transaction by a pool of worker processes (generation is CPU-bound Python, so processes, not
threads). A chunk's students and ids depend only on the seed, the country and the chunk's row offset,
so a seeding run is deterministic whatever the scheduling. Seeding tops up: a table that already has
N rows gets none.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pisa_pulse.pisa2018 import Country
from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.schema import TABLE, SchemaName
from pisa_pulse.sources.students import StudentFactory

CHUNK = 10_000
MAX_ID = 2**62  # ids are random in [1, 2**62): rows land at random positions of the primary key


@dataclass(frozen=True)
class SeedChunk:
    """One unit of seeding work: `rows` students of `country` starting at row `offset`."""

    country: Country
    source: Source  # where the rows go: its DSN and password
    schema: SchemaName
    seed: int
    messy: float
    offset: int
    rows: int


def random_ids(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct random positive ids (the order they are drawn in is not increasing)."""
    ids = list(dict.fromkeys(rng.integers(1, MAX_ID, size=n, dtype=np.int64).tolist()))
    while len(ids) < n:  # a duplicate among 2**62 values is astronomically rare, but stay exact
        ids = list(dict.fromkeys(ids + rng.integers(1, MAX_ID, size=n - len(ids)).tolist()))
    return ids


# COPY without a column list: the rows carry every column in table order, which `databases.ensure`
# guarantees (it accepts only a table whose columns are exactly one of our layouts, in order). Naming
# 1,119 columns costs the server about 6 ms per statement (it matches each name against every
# attribute); this costs 0.4 ms per single-row transaction at full width.
COPY_SQL = f'COPY "{TABLE}" FROM STDIN'


def plan(
    targets: list[tuple[Country, Source, int]], schema: SchemaName, seed: int, messy: float, rows: int
) -> list[SeedChunk]:
    """Chunks that bring each (country, source, current row count) up to `rows` students."""
    chunks = []
    for country, source, current in targets:
        for offset in range(current, rows, CHUNK):
            chunks.append(SeedChunk(country, source, schema, seed, messy, offset, min(CHUNK, rows - offset)))
    return chunks


def copy_chunk(chunk: SeedChunk) -> tuple[str, int]:
    """Generate one chunk's students and COPY them in one transaction; returns (country, rows)."""
    state = np.random.SeedSequence([chunk.seed, chunk.country.cntryid, chunk.offset])
    rng = np.random.default_rng(state)
    factory = StudentFactory(
        chunk.country, chunk.schema, seed=int(state.generate_state(1)[0]), messy=chunk.messy
    )
    lines = factory.copy_lines(random_ids(rng, chunk.rows))
    with connected(chunk.source.dsn, autocommit=False, password=chunk.source.password) as conn:
        with conn.cursor() as cur:
            cur.copy_expert(COPY_SQL, io.StringIO("".join(lines)))
        conn.commit()
    return chunk.country.code, chunk.rows


def run(chunks: list[SeedChunk], workers: int | None = None) -> Iterator[tuple[str, int]]:
    """Copy every chunk with a pool of worker processes, yielding (country, rows) as each lands."""
    if not chunks:
        return
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        yield from map(copy_chunk, chunks)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap_unordered(copy_chunk, chunks)


def seed_all(chunks: list[SeedChunk], on_rows: Callable[[str, int], None], workers: int | None = None) -> int:
    """Run every chunk, calling `on_rows(country, rows)` as each lands; returns rows written."""
    total = 0
    for code, rows in run(chunks, workers):
        on_rows(code, rows)
        total += rows
    return total
