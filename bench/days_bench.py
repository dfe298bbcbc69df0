"""Simulated days: does `serve`'s memory stay flat as arrival minutes pile up?

A real soak (`history-soak`) lasts hours; the minute buckets grow by 1,440 per country per day, so
what matters shows over days. This runs `serve`'s memory holders in one process on an injected
clock that moves a minute per step: per source a ledger and its part (the engine, what
`Pipeline.run` does each second: apply, then `keep_window(now)`), the parts as the API process
holds them and their merged snapshot (`LiveSnapshots`, fed `feed.Update`s as the capture process
sends them). Not here: PostgreSQL, the capture's decoding, HTTP, and the history store (its
`Recorder` writes a minute of 20 sources in about 10 ms, so a simulated day took 5 minutes: its queue
is bounded by design, and the hours soak, `history-soak`, runs it and its DuckDB for real).

Each minute, every country gets `arrivals` new rows (their arrival minute: now), as many
withdrawals of random earlier rows (often days old: the forgotten minutes' case) and a correction,
so the rows held stay level and only the minutes could grow (the ledger's changes are taken each
minute, as the checkpoint takes them each second). Memory is the process's RSS after a
collection, sampled every simulated day; `window=False` runs the code as it was before the window
(`Aggregates.keep_window` a no-op), side by side in the same run.
"""

from __future__ import annotations

import gc
import random
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from figures import slope
from pisa_pulse.api.settings import Settings
from pisa_pulse.api.snapshots import LiveSnapshots
from pisa_pulse.engine import feed
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.ledger import Ledger
from pisa_pulse.engine.values import NUMERIC_COLUMNS
from pisa_pulse.pisa2018 import DEFAULT_COUNTRIES

START = 1_780_000_020.0  # a Unix time (2026-05-28 20:27 UTC); the clock then moves a minute per step
ROWS_PER_COUNTRY = 3_000  # from the initial copy (arrival minute -1), as `make demo`'s sources


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _values(rng: random.Random, pk: int, country: str) -> list[object]:
    return [str(pk), country, *(str(rng.randint(1, 900)) for _ in NUMERIC_COLUMNS)]


def simulate(days: int, arrivals: int, window: bool) -> dict[str, Any]:
    """`days` simulated days at `arrivals` rows per country per minute; RSS per day (see the module
    docstring). `window=False`: the arrival minutes are never forgotten (the code before)."""
    countries = [code.upper() for code in DEFAULT_COUNTRIES]
    rng = random.Random(7)
    now = START
    with tempfile.TemporaryDirectory(prefix="pisa-pulse-days-") as folder:
        settings = Settings(sources=(), mode="replication", state_dir=Path(folder), history_store="none")
        snapshots = LiveSnapshots(settings, min_interval=0.0, clock=lambda: now)
        ledgers = {code: Ledger(code) for code in countries}
        parts = {code: Aggregates() for code in countries}
        keys: dict[str, list[int]] = {code: [] for code in countries}
        next_pk = 0
        for code in countries:
            for _ in range(ROWS_PER_COUNTRY):
                ledgers[code].upsert(next_pk, _values(rng, next_pk, code), -1, parts[code])
                keys[code].append(next_pk)
                next_pk += 1
        snapshots._take(feed.Update(now, {c: p.export(full=True) for c, p in parts.items()}, full=True))
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        forgetting = mock.patch.object(Aggregates, "keep_window", lambda self, now: 0) if not window else None
        if forgetting is not None:
            forgetting.start()
        try:
            for minute in range(days * 1440 + 1):
                if minute % 1440 == 0:
                    samples.append(_sample(minute // 1440, snapshots, parts))
                now = START + 60 * minute
                arrival = int(now // 60)
                for code in countries:
                    ledger, part, held = ledgers[code], parts[code], keys[code]
                    for _ in range(arrivals):
                        ledger.upsert(next_pk, _values(rng, next_pk, code), arrival, part)
                        held.append(next_pk)
                        next_pk += 1
                        gone = held.pop(rng.randrange(len(held)))  # a withdrawal, of any age
                        ledger.delete(gone, part)
                    fixed = rng.choice(held)  # a correction keeps its first arrival
                    ledger.upsert(fixed, _values(rng, fixed, code), arrival, part)
                    part.keep_window(now)
                    list(ledger.take_changes())  # what the checkpoint takes each second
                update = feed.Update(now, {c: p.export() for c, p in parts.items()})
                snapshots._take(update)
                if minute % 10 == 0:  # a dashboard's poll merges the parts (at most every 20 ms live)
                    snapshots.snapshot()
        finally:
            if forgetting is not None:
                forgetting.stop()
        seconds = time.monotonic() - started
    later = [s for s in samples if s["day"] >= 8]  # once the week's window is full
    return {
        "days": days,
        "window": window,
        "countries": len(countries),
        "arrivals_per_minute": arrivals * len(countries),
        "rows_held": sum(len(k) for k in keys.values()),
        "seconds": round(seconds, 1),
        "rss_first_mb": samples[0]["rss_mb"],
        "rss_last_mb": samples[-1]["rss_mb"],
        "slope_mb_per_day": round(slope([s["day"] for s in samples], [s["rss_mb"] for s in samples]), 2),
        "slope_after_a_week_mb_per_day": round(
            slope([s["day"] for s in later], [s["rss_mb"] for s in later]), 2
        ),
        "minutes_held_last": samples[-1]["minutes_held"],
        "samples": samples,
    }


def _sample(day: int, snapshots: LiveSnapshots, parts: dict[str, Aggregates]) -> dict[str, Any]:
    gc.collect()
    engine = sum(len(p.by_minute()) for p in parts.values())
    api = len(snapshots.snapshot().aggregates.by_minute())
    return {"day": day, "rss_mb": _rss_mb(), "minutes_held": engine + api}
