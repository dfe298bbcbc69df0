"""What the ledgers cost at 600,000 students: bytes per row held, and Python time per row changed.

One `Ledger` per country (the 20 default ones, 30,000 rows each by default), filled as the initial
copy fills them: ids drawn as the sources draw them (`seed.random_ids`, random in [1, 2**62)), values
of calibrated students (`StudentFactory`, slim schema, 1 % messy), a pool of distinct students per
country reused across its rows (holding 600,000 rows of text would dwarf what is measured). After the
fill the changes are taken, as the first checkpoint takes them, so what stays is what a ledger holds.
Then every row is withdrawn and a new one arrives in its place, one after the other (a full turnover,
as traffic's withdrawals and submissions make over time), and the memory is measured again.

Memory is measured in fresh processes (this one keeps the memory of whatever ran before): the RSS
growth from just before the fill to just after it and after the turnover (garbage collected), and, in
another process, tracemalloc's count of the bytes still allocated (Python objects and numpy's buffers
both; it slows the fill, so the RSS process does not trace). Times are CPU time per row (the machine
may be busy with other work, which wall time would count), from the RSS process after the turnover:
inserts (the fill itself), updates and deletes of random held rows of one country (values parsed,
aggregates kept: the engine's hot path), and the lookups polling makes (`pk in ledger`,
`digest(pk)`). Each figure is the median of chunks of rows, so a burst of load from elsewhere moves
it little.

Run by hand: `python bench/ledger_memory.py [--students N] [--json]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import multiprocessing
import random
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.ledger import Ledger
from pisa_pulse.pisa2018 import DEFAULT_COUNTRIES, countries
from pisa_pulse.sources.schema import CHART_COLUMNS, column_names
from pisa_pulse.sources.seed import random_ids
from pisa_pulse.sources.students import StudentFactory

STUDENTS = 600_000
POOL = 1_000  # distinct students per country
SAMPLE = 50_000  # rows per timed operation
CHUNK = 5_000  # rows per timed chunk
FILL_SEED, TURNOVER_SEED = 2018, 2019
Values = tuple[str | None, ...]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _pool(code: str) -> list[Values]:
    """POOL students of a country as `CHART_COLUMNS` text (the id column's text is not parsed)."""
    slim = StudentFactory(countries()[code], "slim", seed=42, messy=0.01).slim_values(POOL)
    where = [column_names("slim").index(name) - 1 for name in CHART_COLUMNS[1:]]
    return [("0", *(row[i] for i in where)) for row in slim]


def _ids(codes: list[str], per_country: int, seed: int) -> Iterator[tuple[str, list[int]]]:
    """Each country's ids, drawn again alike for the same seed (so none has to be kept meanwhile)."""
    rng = np.random.default_rng(seed)
    for code in codes:
        yield code, random_ids(rng, per_country)


def _fill(
    codes: list[str], per_country: int, pools: dict[str, list[Values]]
) -> tuple[dict[str, Ledger], dict[str, Aggregates], float]:
    """One ledger per country with `per_country` rows, changes taken; and the seconds the upserts took."""
    ledgers = {code: Ledger(code) for code in codes}
    parts = {code: Aggregates() for code in codes}
    seconds = 0.0
    for code, ids in _ids(codes, per_country, FILL_SEED):
        ledger, part, pool = ledgers[code], parts[code], pools[code]
        t0 = time.process_time()
        for i, pk in enumerate(ids):
            ledger.upsert(pk, pool[i % POOL], -1, part)
        seconds += time.process_time() - t0
        _take_changes(ledger)
    return ledgers, parts, seconds


def _turn_over(
    ledgers: dict[str, Ledger], parts: dict[str, Aggregates], pools: dict[str, list[Values]], per_country: int
) -> None:
    """Every row withdrawn and a new one submitted in its place, one after the other."""
    codes = list(ledgers)
    for (code, gone), (_, new) in zip(
        _ids(codes, per_country, FILL_SEED), _ids(codes, per_country, TURNOVER_SEED), strict=True
    ):
        ledger, part, pool = ledgers[code], parts[code], pools[code]
        for i, (old, pk) in enumerate(zip(gone, new, strict=True)):
            ledger.delete(old, part)
            ledger.upsert(pk, pool[i % POOL], 1, part)
        _take_changes(ledger)


def _take_changes(ledger: Ledger) -> None:
    for _ in ledger.take_changes():  # what a checkpoint does
        pass


def _prepare(students: int) -> tuple[list[str], int, dict[str, list[Values]]]:
    codes = [code.upper() for code in DEFAULT_COUNTRIES]
    return codes, students // len(codes), {code: _pool(code) for code in codes}


def rss_and_times(students: int) -> dict[str, Any]:
    """RSS growth per row held, and per-row times (see the module docstring); run in a fresh process."""
    codes, per_country, pools = _prepare(students)
    gc.collect()
    before = _rss_bytes()
    ledgers, parts, fill_s = _fill(codes, per_country, pools)
    gc.collect()
    held = sum(len(ledger) for ledger in ledgers.values())
    result: dict[str, Any] = {
        "rows": held,
        "rss_bytes_per_row": round((_rss_bytes() - before) / held, 1),
        "rss_after_mb": round(_rss_bytes() / 2**20, 1),
        "insert_us": round(fill_s / held * 1e6, 2),
    }
    _turn_over(ledgers, parts, pools, per_country)
    gc.collect()
    result["rss_bytes_per_row_turned_over"] = round((_rss_bytes() - before) / held, 1)
    result.update(_times(ledgers, parts, pools))
    return result


def _times(
    ledgers: dict[str, Ledger], parts: dict[str, Aggregates], pools: dict[str, list[Values]]
) -> dict[str, float]:
    """Median per-row microseconds of updates, lookups, deletes and re-inserts of random held rows."""
    rng = random.Random(7)
    code = next(iter(ledgers))
    ledger, part, pool = ledgers[code], parts[code], pools[code]
    chosen = rng.sample(sorted(ledger.keys()), min(SAMPLE, len(ledger)))
    chunks = [chosen[i : i + CHUNK] for i in range(0, len(chosen), CHUNK)]
    rows = [pool[rng.randrange(POOL)] for _ in range(CHUNK)]

    def update(pks: list[int]) -> None:
        for pk, values in zip(pks, rows, strict=False):
            ledger.upsert(pk, values, 1, part)

    def contains(pks: list[int]) -> None:
        for pk in pks:
            _ = pk in ledger

    def digest(pks: list[int]) -> None:
        for pk in pks:
            ledger.digest(pk)

    def delete(pks: list[int]) -> None:
        for pk in pks:
            ledger.delete(pk, part)

    times = {}
    for name, operation in (
        ("update_us", update),
        ("contains_us", contains),
        ("digest_us", digest),
        ("delete_us", delete),
        ("reinsert_us", update),  # into the slots the deletes freed
    ):
        times[name] = _median_per_row(operation, chunks)
        _take_changes(ledger)
    return times


def _median_per_row(operation: Any, chunks: list[list[int]]) -> float:
    per_row = []
    for pks in chunks:
        t0 = time.process_time()
        operation(pks)
        per_row.append((time.process_time() - t0) / len(pks))
    return round(statistics.median(per_row) * 1e6, 3)


def traced(students: int) -> dict[str, Any]:
    """tracemalloc's bytes per row held (see the module docstring); run in a fresh process."""
    codes, per_country, pools = _prepare(students)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ledgers, parts, _ = _fill(codes, per_country, pools)
    gc.collect()
    held = sum(len(ledger) for ledger in ledgers.values())
    filled = tracemalloc.get_traced_memory()[0]
    _turn_over(ledgers, parts, pools, per_country)
    gc.collect()
    turned_over = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "traced_bytes_per_row": round((filled - before) / held, 1),
        "traced_bytes_per_row_turned_over": round((turned_over - before) / held, 1),
    }


def measure(students: int = STUDENTS) -> dict[str, Any]:
    """Both measurements, each in a fresh process."""
    spawn = multiprocessing.get_context("spawn")
    result: dict[str, Any] = {}
    for how in (traced, rss_and_times):
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            result.update(pool.submit(how, students).result())
    return result


def main() -> None:
    """Print the figures, as a table or as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--students", type=int, default=STUDENTS, help="rows in all (20 countries)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    result = measure(args.students)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>32}  {value}")


if __name__ == "__main__":
    main()
