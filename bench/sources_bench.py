"""Benchmarks of the sources: seeding time and the sustained traffic rate, slim and full.

Each case brings up its own embedded cluster in a scratch dir, measures, and removes it. Rates are
counted by PostgreSQL (rows in the tables), not by the writer.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2

from pisa_pulse.pisa2018 import DEFAULT_COUNTRIES
from pisa_pulse.sources import lifecycle
from pisa_pulse.sources.config import SourcesConfig
from pisa_pulse.sources.schema import SchemaName
from pisa_pulse.sources.traffic import Traffic


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A data dir path under a traversable temporary folder, removed (cluster included) after."""
    root = Path(tempfile.mkdtemp(prefix="pisa-pulse-bench-"))
    root.chmod(0o711)
    try:
        yield root / "data"
    finally:
        if (root / "data" / "sources.toml").exists():
            lifecycle.reset(root / "data")
        shutil.rmtree(root, ignore_errors=True)


def total_rows(config: SourcesConfig) -> int:
    """Rows in every source's `responses`."""
    total = 0
    for s in config.sources:
        with psycopg2.connect(s.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM responses")
            total += int((cur.fetchone() or (0,))[0])
    return total


def seeding(schema: SchemaName, students: int) -> dict[str, Any]:
    """Time to seed `students` over the 20 default countries (databases created beforehand)."""
    per_country = students // len(DEFAULT_COUNTRIES)
    with scratch_dir() as data_dir:
        lifecycle.up(lifecycle.UpRequest(data_dir=data_dir, schema=schema))
        start = time.perf_counter()
        config = lifecycle.up(lifecycle.UpRequest(data_dir=data_dir, rows_per_country=per_country))
        seconds = time.perf_counter() - start
        rows = total_rows(config)
    return {
        "schema": schema,
        "students": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
    }


def sustained_traffic(
    schema: SchemaName, seconds: float, updates: float = 0.0, deletes: float = 0.0
) -> dict[str, Any]:
    """Operations per second the traffic sustains when asked for far more than it can do."""
    with scratch_dir() as data_dir:
        config = lifecycle.up(lifecycle.UpRequest(data_dir=data_dir, schema=schema, rows_per_country=1000))
        traffic = Traffic(config, rate=1_000_000, updates=updates, deletes=deletes, seed=5)
        writer = threading.Thread(target=traffic.run, args=(threading.Event(), seconds + 2))
        writer.start()
        time.sleep(2)  # warm-up: connections, first generated blocks
        before, start = traffic.counts.operations, time.perf_counter()
        rows_before = total_rows(config)
        time.sleep(seconds)
        ops = traffic.counts.operations - before
        elapsed = time.perf_counter() - start
        rows_after = total_rows(config)
        writer.join()
    return {
        "schema": schema,
        "updates": updates,
        "deletes": deletes,
        "ops_per_s": round(ops / elapsed),
        "net_rows_per_s_counted_by_postgres": round((rows_after - rows_before) / elapsed),
        "batch": traffic.batch or "auto",
    }
