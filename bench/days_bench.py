"""Simulated days: does `serve`'s memory stay flat as arrival minutes pile up?

A real soak (`history-soak`) lasts hours; the minute buckets grow by 1,440 per country per day, so
what matters shows over days. This runs `serve`'s memory holders in one process on an injected
clock that moves a minute per step: per source a ledger and its part (the engine, what
`Pipeline.run` does each second: apply, then `keep_window(now)`), the parts as the API process
holds them and their merged snapshot (`LiveSnapshots`, fed `feed.Update`s as the capture process
sends them). Not here: PostgreSQL, the capture's decoding, HTTP, and the history store (its
`Recorder` writes a minute of 20 sources in about 10 ms, so a simulated day took 5 minutes: its queue
is bounded by design, and the hours soak, `history-soak`, runs it and its DuckDB for real).

Each minute, every country gets one new row (its arrival minute: now) and loses one of the initial
copy's (so the rows held stay level, 600,000 in all at the full profile, while every minute's bucket
keeps its row, as submissions that stay do); every tenth minute a random arrived row, often days old
(the forgotten minutes' case), is withdrawn or corrected. Memory is the RSS after a collection,
sampled every simulated day, each variant in a process of its own, and beside it the bytes of the
minute buckets themselves in every holder (RSS moves by tens of MB at once when a ledger's dict is
rebuilt by its churn, in both variants alike); `window=False` runs the code as it
was before the window (`Aggregates.keep_window` a no-op), side by side in the same run.
"""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import random
import sys
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


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _values(rng: random.Random, pk: int, country: str) -> list[object]:
    return [str(pk), country, *(str(rng.randint(1, 900)) for _ in NUMERIC_COLUMNS)]


def simulate(days: int, window: bool, copied_per_country: int) -> dict[str, Any]:
    """`days` simulated days in a process of its own (RSS is the process's); see `_simulate`."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as child:
        return child.submit(_simulate, days, window, copied_per_country).result()


def _simulate(days: int, window: bool, copied_per_country: int) -> dict[str, Any]:
    """`days` simulated days (see the module docstring), from `copied_per_country` rows of the initial
    copy a country (more than `days` x 1,440: one leaves each minute). `window=False`: the arrival
    minutes are never forgotten (the code before)."""
    countries = [code.upper() for code in DEFAULT_COUNTRIES]
    rng = random.Random(7)
    now = START
    with tempfile.TemporaryDirectory(prefix="pisa-pulse-days-") as folder:
        settings = Settings(sources=(), mode="replication", state_dir=Path(folder), history_store="none")
        snapshots = LiveSnapshots(settings, clock=lambda: now)
        ledgers = {code: Ledger(code) for code in countries}
        parts = {code: Aggregates() for code in countries}
        copied: dict[str, list[int]] = {code: [] for code in countries}  # the initial copy's rows left
        arrived: dict[str, list[int]] = {code: [] for code in countries}
        next_pk = 0
        for code in countries:
            for _ in range(copied_per_country):
                ledgers[code].upsert(next_pk, _values(rng, next_pk, code), -1, parts[code])
                copied[code].append(next_pk)
                next_pk += 1
            list(ledgers[code].take_changes())
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
                    ledger, part = ledgers[code], parts[code]
                    ledger.upsert(next_pk, _values(rng, next_pk, code), arrival, part)
                    arrived[code].append(next_pk)
                    next_pk += 1
                    ledger.delete(copied[code].pop(), part)
                    if minute % 10 == 9:  # a withdrawal, then a correction, of rows of any age
                        ledger.delete(arrived[code].pop(rng.randrange(len(arrived[code]))), part)
                        fixed = rng.choice(arrived[code])  # it keeps its first arrival
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
        "arrivals_per_minute": len(countries),
        "rows_held": sum(len(k) for k in [*copied.values(), *arrived.values()]),
        "seconds": round(seconds, 1),
        "rss_first_mb": samples[0]["rss_mb"],
        "rss_last_mb": samples[-1]["rss_mb"],
        "slope_mb_per_day": round(slope([s["day"] for s in samples], [s["rss_mb"] for s in samples]), 2),
        "slope_after_a_week_mb_per_day": round(
            slope([s["day"] for s in later], [s["rss_mb"] for s in later]), 2
        ),
        "minutes_mb_last": samples[-1]["minutes_mb"],
        "minutes_slope_mb_per_day": round(
            slope([s["day"] for s in samples], [s["minutes_mb"] for s in samples]), 2
        ),
        "minutes_slope_after_a_week_mb_per_day": round(
            slope([s["day"] for s in later], [s["minutes_mb"] for s in later]), 2
        ),
        "minutes_held_last": samples[-1]["minutes_held"],
        "samples": samples,
    }


def _sample(day: int, snapshots: LiveSnapshots, parts: dict[str, Aggregates]) -> dict[str, Any]:
    gc.collect()
    holders = [*parts.values(), *snapshots._parts.values(), snapshots.snapshot().aggregates]
    return {
        "day": day,
        "rss_mb": _rss_mb(),
        "minutes_held": sum(len(p.by_minute()) for p in holders),
        "minutes_mb": round(sum(_minutes_bytes(p) for p in holders) / 2**20, 2),
    }


def _minutes_bytes(part: Aggregates) -> int:
    """What `part`'s rows per arrival minute take: each dict and the ints it holds (small ones are
    shared by the interpreter, so not counted). RSS alone does not show them apart from the rest: a
    ledger's dict rebuilt by its churn moves it by tens of MB at once."""
    total = 0
    for tally in part._tallies.values():
        minutes = tally.minutes
        total += sys.getsizeof(minutes) + sum(sys.getsizeof(m) for m in minutes)
        total += sum(sys.getsizeof(n) for n in minutes.values() if not -5 <= n <= 256)
    return total
