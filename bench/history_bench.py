"""The history (README, History): what keeping it costs `serve` at each minute, what reading it back
costs a user, and what the batch form (`sync --once`) takes.

- **writes** (`writes`): a store as `serve`'s writer thread keeps it (history/recorder.py): one
  connection, and at every minute boundary one `write_minute` per source, in order, here one source
  per country: the 20 default countries, and the 79 PISA 2018 participants; into DuckDB (a file
  opened in this process, as `serve` holds it) and into PostgreSQL (a database on this run's own
  embedded cluster). Each store first holds `held_minutes` minutes of the same sources, written in
  bulk, so the key lookups run on a store that has been in use. The totals are realistic: the sums
  of `SAMPLE_STUDENTS` generated students of each country (its own calibration, parsed by the
  engine), scaled exactly to its PISA 2018 sample size, then grown each minute by its share of `make
  demo`'s new students (200 operations/s, shared by sample size as its traffic shares them). Per
  boundary: the wall time of its writes (p50/p99/max over `boundaries` boundaries written back to
  back; building the totals is the recorder's `observe`, not its writer, and is not timed), and the
  store's bytes per boundary (DuckDB: its file and WAL after a CHECKPOINT; PostgreSQL: the two
  tables with their indexes), times 1,440 for a day. The ceiling beside it: a bare one-row INSERT
  transaction in the same store (p50), times the writes of a boundary.
- **reads** (`reads`): 7 days of minutes for the 20 default sources, written in bulk straight into
  the store (COPY, not through `serve`: a week of `serve` would take a week) up to the minute before
  `pisa-pulse serve` starts with that store as its `history.store` (its settings file), over the 20
  default sources seeded as `make demo` seeds them (2,000 students each, full schema) and with
  `make demo`'s traffic (`pisa-pulse traffic`, 200 operations/s, 2 % corrections, 1 % withdrawals)
  running. Then, one request at a time on one keep-alive connection (http.client), each case for
  `requests` requests or `budget_s` seconds: `GET /api/history/performance?from=<7 days
  ago>&to=<now>&step=1h`, `step=1m` over the last day, and `?at=` of minutes of the week in turn;
  beside them, in the same run, from the same server: the ceiling, `GET /api/health`, and the live
  chart from memory, `GET /api/charts/performance`. A server that does not answer the series
  (`?from=` answered with an error) gets its series rows with that status and no figures.
- **sync** (`sync_runs`): `pisa-pulse sync --once` as a scheduler runs it (a subprocess, its settings
  file, the default DuckDB store in its state dir) over the 20 default sources (full schema, seeded,
  vacuumed, then autovacuum on as PostgreSQL's default): from scratch (a new state dir: a consistent
  copy of every source), from its checkpoint after `changes` operations of the project's traffic
  generator at `make demo`'s rate and shares, and once more with nothing new (which must write
  nothing). The subprocess's wall time and the figures of its one-line summary; beside them, a
  `pisa-pulse` process that does nothing (`sync --help`, median of 3): the start every run pays.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import http.client
import json
import math
import os
import random
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from api_bench import ServeProcess
from aws_bench import _q
from capture_bench import CLI, _up
from pisa_pulse.cli import DEMO_DELETES, DEMO_RATE, DEMO_UPDATES
from pisa_pulse.engine.aggregates import Aggregates, CountryTotals
from pisa_pulse.engine.values import RowParser
from pisa_pulse.history.store import COLUMNS, CountryMinute, Store, row_of, totals_of
from pisa_pulse.pisa2018 import DEFAULT_COUNTRIES, countries
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster
from pisa_pulse.sources.databases import connected
from pisa_pulse.sources.schema import CHART_COLUMNS, columns
from pisa_pulse.sources.students import StudentFactory
from pisa_pulse.sources.traffic import Traffic
from poll_bench import autovacuum, vacuum
from sources_bench import scratch_dir, total_rows
from tables import _cells, _p50_p99

SAMPLE_STUDENTS = 500  # generated per country; their sums, scaled, are the country's totals
CHART = "performance"
DAY = 1_440  # minutes
STORES = ("duckdb", "postgresql")
MIN_REQUESTS = 3  # per case, whatever the budget
SUMMARY = re.compile(
    r"sync: (\d+) sources caught up in ([\d.]+) s \(([\d,]+) rows(?:, (\d+) copied afresh)?\); "
    r"history: (\d+) minutes written, (\d+) unchanged"
)


# -- realistic totals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Country:
    """One country's totals model: its generated students' sums, its PISA 2018 sample size (the rows
    at the start) and its share of `make demo`'s new students per minute."""

    code: str
    sums: tuple[int, ...]  # `country_minutes`' value columns after rows and arrivals, for `sampled` rows
    sampled: int
    start_rows: int
    arrivals_per_minute: float

    def totals(self, rows: int) -> CountryTotals:
        """The totals of `rows` students like the generated ones (each sum scaled by rows, exactly)."""
        return totals_of(rows, [s * rows // self.sampled for s in self.sums])  # in TOTAL_COLUMNS' order

    def arrivals(self, rng: random.Random) -> int:
        """One minute's new students (about Poisson: a normal draw of the same mean and variance)."""
        mean = self.arrivals_per_minute
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))


@functools.cache
def _sample_sums(code: str) -> tuple[int, ...]:
    """The totals of SAMPLE_STUDENTS generated students of a country, as the engine parses them."""
    slim = [v.name for v in columns("slim")]
    where = [slim.index(name) for name in CHART_COLUMNS[1:]]  # all but the id
    parser, aggregates = RowParser(code), Aggregates()
    for values in StudentFactory(countries()[code], "slim").slim_values(SAMPLE_STUDENTS):
        aggregates.add(parser.parse_row([None, *(values[i] for i in where)], 0))
    entry = CountryMinute(aggregates.totals(code, minutes=False), 0)
    return tuple(int(v) for v in row_of(0, "", code, entry)[5:])


def models(codes: Sequence[str]) -> list[Country]:
    """The countries' totals models; `make demo`'s new students shared by sample size, as its traffic
    shares its operations (a country without a published size gets the median)."""
    known = countries()
    sizes = [known[c].n_students or 0 for c in codes]
    fallback = sorted(s for s in sizes if s)[len(sizes) // 2]
    sizes = [s or fallback for s in sizes]
    per_minute = DEMO_RATE * 60 * (1 - DEMO_UPDATES - DEMO_DELETES)
    return [
        Country(code, _sample_sums(code), SAMPLE_STUDENTS, size, per_minute * size / sum(sizes))
        for code, size in zip(codes, sizes, strict=True)
    ]


def bulk_fill(
    store: Store, chosen: Sequence[Country], first: int, minutes: int, folder: Path
) -> dict[str, Any]:
    """`minutes` minutes from minute `first`, one source per country (named by its code in lower case),
    written in bulk (COPY of two CSV files), not through `write_minute`. Returns each country's rows
    at the end, the rows written and the seconds it took."""
    started = time.perf_counter()
    rng = random.Random(11)
    ends: dict[str, int] = {}
    keys, values = folder / "minutes.csv", folder / "country_minutes.csv"
    written_at = time.time()
    with keys.open("w", newline="") as k, values.open("w", newline="") as v:
        key_out, value_out = csv.writer(k), csv.writer(v)
        for country in chosen:
            source, rows = country.code.lower(), country.start_rows
            for minute in range(first, first + minutes):
                arrivals = country.arrivals(rng)
                rows += arrivals
                key_out.writerow((minute, source, written_at))
                value_out.writerow(
                    row_of(minute, source, country.code, CountryMinute(country.totals(rows), arrivals))
                )
            ends[country.code] = rows
    try:
        if store.dialect == "duckdb":
            for table, path in (("minutes", keys), ("country_minutes", values)):
                quoted = str(path).replace("'", "''")  # our own temporary file
                store.connection.execute(f"COPY {table} FROM '{quoted}' (FORMAT csv, HEADER false)")
        else:
            with store.connection.cursor() as cur:
                for table, path, names in (
                    ("minutes", keys, "minute, source, written_at"),
                    ("country_minutes", values, ", ".join(COLUMNS)),
                ):
                    with path.open() as f:
                        cur.copy_expert(f"COPY {table} ({names}) FROM STDIN WITH (FORMAT csv)", f)
    finally:
        keys.unlink()
        values.unlink()
    return {"ends": ends, "rows": minutes * len(chosen), "seconds": round(time.perf_counter() - started, 1)}


# -- 1. writes per minute boundary ----------------------------------------------------------------


def writes(counts: Sequence[int], boundaries: int, held_minutes: int) -> list[dict[str, Any]]:
    """Per number of countries and store: the time of each boundary's writes, the bytes it adds."""
    results = []
    with scratch_dir() as data_dir:
        _cluster_up(data_dir)
        cluster = _cluster(data_dir)
        for count in counts:
            codes = DEFAULT_COUNTRIES if count == len(DEFAULT_COUNTRIES) else tuple(countries())[:count]
            chosen = models(codes)
            for kind in STORES:
                if kind == "duckdb":
                    target = f"duckdb:{data_dir.parent / f'writes-{count}.duckdb'}"
                else:
                    target = _database(cluster, f"history_writes_{count}")
                print(f"  writes: {kind}, {count} countries, {boundaries} boundaries ...", flush=True)
                results.append(_writes(kind, target, data_dir.parent, chosen, boundaries, held_minutes))
    return results


def _writes(
    kind: str, target: str, folder: Path, chosen: list[Country], boundaries: int, held_minutes: int
) -> dict[str, Any]:
    store = Store.open(target, folder)
    try:
        empty = _size(store)
        first = int(time.time() // 60) - held_minutes - boundaries
        filled = bulk_fill(store, chosen, first, held_minutes, folder)
        held = _size(store) - empty  # checkpointed: the bulk-written minutes at rest
        rows, rng = dict(filled["ends"]), random.Random(5)
        per_boundary, per_write = [], []
        for minute in range(first + held_minutes, first + held_minutes + boundaries):
            due = {}
            for country in chosen:  # what the recorder queues (its `observe`, not its writer): untimed
                arrivals = country.arrivals(rng)
                rows[country.code] += arrivals
                totals = country.totals(rows[country.code])
                due[country.code.lower()] = {country.code: CountryMinute(totals, arrivals)}
            started = time.perf_counter()
            for source, entry in sorted(due.items()):  # the recorder's `_write`
                t0 = time.perf_counter()
                if not store.write_minute(minute, source, entry):
                    raise RuntimeError(f"minute {minute} of {source} was in the store already")
                per_write.append((time.perf_counter() - t0) * 1000)
            per_boundary.append((time.perf_counter() - started) * 1000)
        added = _size(store, checkpoint=False) - empty - held  # as written: DuckDB's WAL holds it
        floor = _q(_bare_inserts(store, min(2_000, boundaries * len(chosen))), 0.5) or 0.0
    finally:
        store.close()
    return {
        "store": kind,
        "load1": round(os.getloadavg()[0], 2),  # anything else on the machine?
        "countries": len(chosen),
        "boundaries": boundaries,
        "held_minutes": held_minutes,
        "bulk_fill_s": filled["seconds"],
        **_spread(per_boundary),
        "write_minute_p50_ms": _q(per_write, 0.5),
        "write_minute_p99_ms": _q(per_write, 0.99),
        "bare_insert_p50_ms": floor,
        "bare_inserts_per_boundary_ms": _q([floor * len(chosen)], 0.5),
        "bytes_per_boundary": round(added / boundaries),
        "mb_per_day": round(added / boundaries * DAY / 1e6, 1),
        "held_bytes": held,
        "held_mb_per_day": round(held / held_minutes * DAY / 1e6, 1) if held_minutes else None,
    }


def _size(store: Store, checkpoint: bool = True) -> int:
    """The store's bytes: DuckDB's file and WAL (after a checkpoint, which moves the WAL into the file,
    compressed, unless `checkpoint` is False); PostgreSQL's two tables (indexes and TOAST included)."""
    if store.dialect == "duckdb":
        if checkpoint:
            store.connection.execute("CHECKPOINT")
        path = Path(store.where)
        wal = path.with_name(path.name + ".wal")
        return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    with store.connection.cursor() as cur:
        cur.execute("SELECT pg_total_relation_size('minutes') + pg_total_relation_size('country_minutes')")
        found = cur.fetchone()
    return int(found[0]) if found else 0


def _bare_inserts(store: Store, n: int) -> list[float]:
    """ms of each of `n` one-row INSERT transactions (autocommit) into a table of their own in the store."""
    if store.dialect == "duckdb":

        def run(statement: str, params: tuple[int, ...] = ()) -> None:
            store.connection.execute(statement.replace("%s", "?"), params)

    else:
        cursor = store.connection.cursor()

        def run(statement: str, params: tuple[int, ...] = ()) -> None:
            cursor.execute(statement, params)

    ms = []
    run("CREATE TABLE bench_floor (k BIGINT PRIMARY KEY, v BIGINT)")
    for i in range(n):
        t0 = time.perf_counter()
        run("INSERT INTO bench_floor VALUES (%s, %s)", (i, i))
        ms.append((time.perf_counter() - t0) * 1000)
    run("DROP TABLE bench_floor")
    return ms


# -- 2. reads: a week's series from serve ---------------------------------------------------------


def reads(days: int, per_country: int, requests: int, budget_s: float) -> list[dict[str, Any]]:
    """Per store: `serve` over a store of `days` days of the 20 default sources, its answers timed."""
    results = []
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", per_country)
        cluster = _cluster(data_dir)
        chosen = models(DEFAULT_COUNTRIES)
        for kind in STORES:
            print(
                f"  reads: {kind}, {days} days of {len(chosen)} sources, serve with traffic ...", flush=True
            )
            target = "duckdb" if kind == "duckdb" else _database(cluster, "history_reads")
            results += _reads(kind, target, data_dir, config, chosen, days, requests, budget_s)
            _drop_slots(cluster, f"hist_{kind}")
    return results


def _reads(
    kind: str,
    target: str,
    data_dir: Path,
    config: cfg.SourcesConfig,
    chosen: list[Country],
    days: int,
    requests: int,
    budget_s: float,
) -> list[dict[str, Any]]:
    state = data_dir.parent / f"serve-{kind}"
    state.mkdir()
    minutes = days * DAY
    first = int(time.time() // 60) - minutes  # up to the minute before serve starts
    store = Store.open(target, state)
    try:
        filled = bulk_fill(store, chosen, first, minutes, data_dir.parent)
    finally:
        store.close()
    settings = _settings(data_dir.parent / f"serve-{kind}.toml", config, state, target, f"hist_{kind}")
    command = [*CLI, "serve", "--data-dir", str(data_dir), "--config", str(settings), "--port", "0"]
    held = total_rows(config)  # the traffic of the store before added some
    with ServeProcess(command, data_dir.parent / f"serve-{kind}.log") as serve:
        serve.wait_ready("replication", held)
        traffic = _demo_traffic(data_dir)
        try:
            time.sleep(3)  # the traffic reaches its rate
            client = _Client(serve.url)
            rng = random.Random(3)
            week = [first + rng.randrange(minutes) for _ in range(997)]
            cases: list[tuple[str, Callable[[int], str]]] = [
                ("ceiling: GET /api/health", lambda i: "/api/health"),
                (f"live: GET /api/charts/{CHART} (memory)", lambda i: f"/api/charts/{CHART}"),
                (
                    "?at= a minute of the week",
                    lambda i: f"/api/history/{CHART}?at={_iso(week[i % len(week)])}",
                ),
                (f"series: {days} days, step=1h", lambda i: _series(days * DAY, "1h")),
                ("series: the last day, step=1m", lambda i: _series(DAY, "1m")),
            ]
            rows = []
            for label, path_of in cases:
                row = {"store": kind, "request": label, "held_minutes": filled["rows"] // len(chosen)}
                row |= {"sources": len(chosen), **_timed(client, path_of, requests, budget_s)}
                rows.append(row)
        finally:
            traffic.terminate()
            traffic.wait()
    ceiling = rows[0]["p50_ms"]
    for row in rows:
        row["bulk_fill_s"] = filled["seconds"]
        row["ceiling_p50_ms"] = ceiling
        row["load1"] = round(os.getloadavg()[0], 2)
    return rows


def _iso(minute: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(minute * 60))


def _series(span: int, step: str) -> str:
    """The series of the last `span` minutes to now, every `step`."""
    now = int(time.time() // 60)
    return f"/api/history/{CHART}?from={_iso(now - span)}&to={_iso(now)}&step={step}"


class _Client:
    """One keep-alive HTTP/1.1 connection to the server, one request at a time."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=300)

    def fresh(self) -> None:
        """A new connection (the server closes one idle for 5 s)."""
        self.connection.close()
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=300)

    def get(self, path: str) -> tuple[int, bytes]:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        return response.status, response.read()


def _timed(client: _Client, path_of: Callable[[int], str], requests: int, budget_s: float) -> dict[str, Any]:
    """ms of each request (a new connection, two requests untimed first), until `requests` or `budget_s`."""
    client.fresh()
    status, body = client.get(path_of(0))
    if status != 200:
        message = json.loads(body).get("error", {}).get("message", "") if body.startswith(b"{") else ""
        return {"status": status, "message": message[:200], "requests": 0}
    client.get(path_of(1))
    ms: list[float] = []
    end = time.monotonic() + budget_s
    while len(ms) < requests and (time.monotonic() < end or len(ms) < MIN_REQUESTS):
        path = path_of(len(ms) + 2)
        t0 = time.perf_counter()
        status, body = client.get(path)
        ms.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    return {"status": 200, "requests": len(ms), **_spread(ms), "bytes": len(body), "points": _points(body)}


def _points(body: bytes) -> int | None:
    """The points of a series (the longest dataset), 1 for another answer."""
    answer = json.loads(body)
    if isinstance(answer, dict) and "from" in answer and answer.get("datasets"):
        return max(len(d.get("data", [])) for d in answer["datasets"])
    return 1


def _demo_traffic(data_dir: Path) -> subprocess.Popen[bytes]:
    """`pisa-pulse traffic` as `make demo` runs it: its rate and shares, in its own process."""
    options = ["--rate", str(DEMO_RATE), "--updates", str(DEMO_UPDATES), "--deletes", str(DEMO_DELETES)]
    command = [*CLI, "traffic", "--data-dir", str(data_dir), *options]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


# -- 3. sync --once -------------------------------------------------------------------------------


def sync_runs(students: int, changes: int) -> list[dict[str, Any]]:
    """`sync --once` from scratch, from its checkpoint after `changes` operations, and with nothing new."""
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // len(DEFAULT_COUNTRIES))
        vacuum(config)
        autovacuum(config, enabled=True)  # vacuumed after the load; from here PostgreSQL's default
        held = total_rows(config)
        settings = _settings(
            data_dir.parent / "sync.toml", config, data_dir.parent / "sync-state", "duckdb", "pisa_pulse"
        )
        idle = _idle_process_s()
        runs = [_sync(settings, "from scratch (a consistent copy)", held, {"operations": 0}, idle)]
        made = _changes(config, changes)
        runs.append(_sync(settings, "from the checkpoint", held, made, idle))
        runs.append(_sync(settings, "again, nothing new", held, {"operations": 0}, idle))
        _drop_slots(_cluster(data_dir), "pisa_pulse")
    return runs


def _sync(settings: Path, run: str, students: int, changes: dict[str, int], idle_s: float) -> dict[str, Any]:
    """One `sync --once` subprocess: its wall time and its summary's figures."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [*CLI, "sync", "--once", "--config", str(settings)], capture_output=True, text=True, timeout=3600
    )
    wall = time.perf_counter() - t0
    found = SUMMARY.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(
            f"sync --once failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-2000:]}"
        )
    sources, caught_up, rows, copied, written, unchanged = found.groups()
    return {
        "students": students,
        "run": run,
        "changes": changes["operations"],
        "changed": changes,
        "wall_s": round(wall, 2),
        "summary_s": float(caught_up),
        "sources": int(sources),
        "rows": int(rows.replace(",", "")),
        "copied": int(copied or 0),
        "minutes_written": int(written),
        "unchanged": int(unchanged),
        "idle_process_s": idle_s,
        "load1": round(os.getloadavg()[0], 2),
        "summary": found.group(0),
    }


def _changes(config: cfg.SourcesConfig, operations: int) -> dict[str, int]:
    """`operations` operations of the traffic generator at `make demo`'s rate and shares, then stop."""
    traffic = Traffic(config, DEMO_RATE, DEMO_UPDATES, DEMO_DELETES)
    stop = threading.Event()
    writer = threading.Thread(target=traffic.run, args=(stop,))
    writer.start()
    deadline = time.monotonic() + operations / DEMO_RATE * 3 + 60
    try:
        while traffic.counts.operations < operations:
            if time.monotonic() > deadline or not writer.is_alive():
                raise RuntimeError(f"the traffic made {traffic.counts.operations} of {operations} operations")
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join()
    c = traffic.counts
    return {"operations": c.operations, "inserted": c.inserted, "updated": c.updated, "deleted": c.deleted}


def _idle_process_s(runs: int = 3) -> float:
    """Wall seconds of a `pisa-pulse` process that does nothing (`sync --help`), median of `runs`."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*CLI, "sync", "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 2)


# -- shared ---------------------------------------------------------------------------------------


def _times(part: float | None, whole: float | None) -> str:
    """part / whole as a factor: 0.63x, 42x, 1,868x ('-' without both)."""
    if not part or not whole:
        return "-"
    factor = part / whole
    return f"{factor:.2f}x" if factor < 10 else f"{factor:,.0f}x"


def _spread(ms: Sequence[float]) -> dict[str, Any]:
    return {"p50_ms": _q(ms, 0.5), "p99_ms": _q(ms, 0.99), "max_ms": _q([max(ms)], 0.5)}


def _cluster_up(data_dir: Path) -> None:
    """The embedded cluster, with the 20 default sources empty (the PostgreSQL stores go beside them)."""
    command = [*CLI, "sources", "up", "--data-dir", str(data_dir), "--schema", "slim"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def _cluster(data_dir: Path) -> EmbeddedCluster:
    config = cfg.load(data_dir)
    if config.cluster is None:
        raise RuntimeError(f"{data_dir} has no embedded cluster")
    return EmbeddedCluster(config.cluster, data_dir)


def _database(cluster: EmbeddedCluster, name: str) -> str:
    """A new, empty database on the embedded cluster; its DSN."""
    from psycopg2 import sql

    with connected(cluster.dsn()) as admin, admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # A store's commits durable, as on a server of PostgreSQL's defaults (the cluster's sources
        # commit asynchronously: cluster.py)
        cur.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(sql.Identifier(name)))
    return cluster.dsn(name)


def _drop_slots(cluster: EmbeddedCluster, prefix: str, timeout: float = 30.0) -> None:
    """Drop the replication slots named `<prefix>_...` once their walsenders have gone (they pin WAL)."""
    deadline = time.monotonic() + timeout
    with connected(cluster.dsn()) as admin, admin.cursor() as cur:
        while True:
            cur.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE starts_with(slot_name, %s)",
                (prefix + "_",),
            )
            slots = cur.fetchall()
            for name, active in slots:
                if not active:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            if not any(active for _, active in slots) or time.monotonic() > deadline:
                return
            time.sleep(0.5)


def _settings(path: Path, config: cfg.SourcesConfig, state: Path, store: str, slot_prefix: str) -> Path:
    """A settings file over the data dir's sources (replication), with its state dir and history store."""
    body = {
        "capture": {"mode": "replication", "state_dir": str(state), "slot_prefix": slot_prefix},
        "history": {"store": store},
        "sources": [{"name": s.name, "dsn": s.dsn} for s in config.sources],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(body, f)
    return path


# -- tables (registered by run.py into tables.TABLES) ---------------------------------------------

_NAMES = {"duckdb": "DuckDB", "postgresql": "PostgreSQL"}

TABLES: dict[str, tuple[str, str, Callable[[dict[str, Any]], str]]] = {
    "history_writes": (
        "history_writes",
        "| store | countries (a source each) | minutes held before | boundaries | writes per minute "
        "boundary: p50 ms | p99 ms | max ms | one source's `write_minute`: p50 ms | p99 ms | ceiling: a "
        "bare one-row INSERT transaction, p50 ms | x sources, ms | bytes per boundary, as written | MB "
        "per day (x 1,440) | at rest (the minutes held, checkpointed): MB per day |",
        lambda c: _cells(
            _NAMES[c["store"]],
            c["countries"],
            c["held_minutes"],
            c["boundaries"],
            c["p50_ms"],
            c["p99_ms"],
            c["max_ms"],
            c["write_minute_p50_ms"],
            c["write_minute_p99_ms"],
            c["bare_insert_p50_ms"],
            c["bare_inserts_per_boundary_ms"],
            c["bytes_per_boundary"],
            c["mb_per_day"],
            c["held_mb_per_day"],
        ),
    ),
    "history_reads": (
        "history_reads",
        "| store (minutes of 20 sources, bulk-written) | days | `serve` beside `make demo`'s traffic: "
        "request | answered | requests | points | answer bytes | p50 ms | p99 ms | max ms | p50 / ceiling "
        "p50 |",
        lambda c: _cells(
            _NAMES[c["store"]],
            round(c["held_minutes"] / DAY, 1),
            c["request"],
            c["status"] if c["status"] == 200 else f"{c['status']}: {c['message']}",
            c["requests"],
            c.get("points"),
            c.get("bytes"),
            *_p50_p99(c),
            c.get("max_ms"),
            _times(c.get("p50_ms"), c.get("ceiling_p50_ms")),
        ),
    ),
    "history_sync": (
        "history_sync",
        "| students | `sync --once` | operations before it | wall s (the subprocess) | its summary: "
        "caught up in s | rows | copied afresh | minutes written | unchanged | a `pisa-pulse` process "
        "doing nothing, s |",
        lambda c: _cells(
            c["students"],
            c["run"],
            c["changes"],
            c["wall_s"],
            c["summary_s"],
            c["rows"],
            c["copied"],
            c["minutes_written"],
            c["unchanged"],
            c["idle_process_s"],
        ),
    ),
}


if __name__ == "__main__":  # a quick look by hand: python bench/history_bench.py
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(writes((20,), 10, 60), indent=2))
