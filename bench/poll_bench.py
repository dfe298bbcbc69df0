"""Benchmark of read-only capture (`mode = "poll"`): freshness under traffic, and what polls cost a source.

- `freshness`: the 20 default countries (full schema) polled by an in-process pipeline while traffic
  writes at a set rate; a probe commits a marker row into a random source every 50 ms and a watcher
  looks for it in that source's ledger every 2 ms: commit-to-applied latency.
- `source_cost`: what the polls cost PostgreSQL at a given size. PostgreSQL's CPU (the postmaster
  and its children, from /proc) is measured twice for the same time and the same traffic (100
  operations/s, so nearly every poll finds changes): without the pipeline, then with it; the
  difference is the polls' cost (each with its slice of the rolling reconciliation), divided by the
  polls that read something; then the cost of reconciling every range at once. Beside it, the direct
  mode's cost: the CPU of one round of the `escs` chart's SQL on all 20 sources.

Before measuring, the sources are vacuumed (what autovacuum does after a bulk load): index-only scans
skip the heap only for pages the visibility map marks all-visible. Autovacuum is then paused, as in
the API benchmark, so its background work is not counted as the polls'; `budget` also reports the
unpaused case.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

from capture_bench import Running, _traffic, _up, spread
from cpu import cluster_cpu_s, postmaster_pid, self_cpu_s
from pisa_pulse.api.direct import DirectSnapshots
from pisa_pulse.capture.polled import PolledSource
from pisa_pulse.engine.pipeline import Pipeline
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.databases import connected
from sources_bench import scratch_dir, total_rows

PROBE_EVERY_S = 0.05
COST_TRAFFIC = 100.0
ESCS_COLUMNS = frozenset({"cnt", "escs"})
TIMED = ("ms", "scan_ms", "reconcile_ms")  # polled.TIMED_PARTS, which the code before issue 18 lacks


def freshness(rate: float, seconds: float, students: int) -> dict[str, Any]:
    """Commit-to-applied latency of marker rows in poll mode, with traffic at `rate` operations/s."""
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)
        vacuum(config)
        running = Running(config, data_dir, mode="poll")
        with running as pipeline:
            running.wait_streaming()
            traffic = _traffic(data_dir, rate, seconds + 3)
            time.sleep(2)  # warm-up
            cpu0, t0 = self_cpu_s(), time.perf_counter()
            latencies = _probe(config, pipeline, seconds)
            cpu = (self_cpu_s() - cpu0) / (time.perf_counter() - t0)
            traffic.wait()
            polls = [p.status().details["poll"] for p in polled(pipeline)]
    return {
        "mode": "poll",
        "schema": "full",
        "students": students,
        "target_ops_per_s": rate,
        "markers": len(latencies),
        **spread(latencies),
        "pipeline_cpu_share": round(cpu, 3),
        "poll_p50_ms": round(statistics.median(p["p50_ms"] for p in polls), 1),
        "poll_p99_ms": round(max(p["p99_ms"] for p in polls), 1),
    }


def _probe(config: cfg.SourcesConfig, pipeline: Any, seconds: float) -> list[float]:
    """Marker rows every PROBE_EVERY_S for `seconds`; returns their commit-to-applied latencies (ms)."""
    conns = [psycopg2.connect(s.dsn) for s in config.sources]
    for conn in conns:
        conn.autocommit = True
    pending: dict[int, tuple[int, float]] = {}  # pk -> (source index, commit time)
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() or pending:
            now = time.perf_counter()
            with lock:
                for pk, (i, committed) in list(pending.items()):
                    if pk in pipeline.ledger(config.sources[i].name):
                        latencies.append((now - committed) * 1000)
                        del pending[pk]
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    rng = random.Random(7)
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            i = rng.randrange(len(conns))
            pk = rng.randrange(1, 2**62)
            with conns[i].cursor() as cur:
                cur.execute(
                    "INSERT INTO responses (id, cnt) VALUES (%s, %s)", (pk, config.sources[i].name.upper())
                )
            with lock:
                pending[pk] = (i, time.perf_counter())
            time.sleep(PROBE_EVERY_S)
    finally:
        deadline = time.perf_counter() + 30
        while pending and time.perf_counter() < deadline:
            time.sleep(0.05)
        done.set()
        pending.clear()
        watcher.join()
        for conn in conns:
            conn.close()
    return latencies


def source_cost(students: int, seconds: float) -> dict[str, Any]:
    """PostgreSQL CPU per poll (and rows read per poll) against one direct-mode round, at `students`."""
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)
        vacuum(config)
        rows = total_rows(config)
        postmaster = postmaster_pid(config, data_dir)
        direct_ms = _direct_cpu_ms(config, postmaster)
        baseline = _pg_cpu_under_traffic(data_dir, postmaster, seconds)
        # The default intervals: each poll also compares the digests of its slice of the ranges.
        running = Running(config, data_dir, mode="poll")
        with running as pipeline:
            before, after, pg, elapsed = _polled_under_traffic(running, data_dir, postmaster, seconds)
            reconcile_ms, reconcile_cpu_ms = _one_reconciliation(pipeline, postmaster)
    polls = after["polls"] - before["polls"]
    read = {k: (after[k] - before[k]) / max(1, polls) for k in ("index_entries", "ids_read", "rows_read")}
    polls_cpu_ms = max(0.0, pg - baseline * elapsed) * 1000
    return {
        "schema": "full",
        "students": rows,
        "seconds": round(elapsed, 1),
        "polls": polls,
        "polls_per_s": round(polls / elapsed, 1),
        "pg_cpu_ms_per_poll": round(polls_cpu_ms / max(1, polls), 2),
        "pg_cpu_cores_polling": round(polls_cpu_ms / 1000 / elapsed, 3),
        "index_entries_per_poll": round(read["index_entries"]),
        "ids_read_per_poll": round(read["ids_read"], 1),
        "rows_read_per_poll": round(read["rows_read"], 1),
        "reconcile_ms": round(reconcile_ms, 1),
        "reconcile_pg_cpu_ms": round(reconcile_cpu_ms, 1),
        "direct_pg_cpu_ms_per_round": round(direct_ms, 1),
        "direct_rows_read_per_round": rows,
    }


def budget(students: int, seconds: float) -> list[dict[str, Any]]:
    """What a poll reads and costs the source, the code before issue 18 beside this one, one run.

    As `source_cost` (vacuumed sources, autovacuum paused, 100 operations/s of traffic, PostgreSQL's
    CPU with the polls minus without), each code's pipeline in a child process of its own (its
    `PYTHONPATH`, its own checkpoint) on the same sources, one after the other. This code's polls also
    time their two parts on the client: the range summary (an index-only scan of the whole key) and
    the reconciliation slice (its rows read and hashed). Then both again with autovacuum running, as
    `sources up` leaves it (its own baseline, traffic alone with autovacuum on, measured first): the
    unpaused case, where autovacuum's work lands in the difference whenever it runs.
    """
    from live_bench import BEFORE, CHECKOUT, export

    rows = []
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)
        vacuum(config)
        postmaster = postmaster_pid(config, data_dir)
        trees = {"before": export(BEFORE, data_dir.parent / "before"), "after": CHECKOUT / "src"}
        for autovacuum_on in (False, True):
            autovacuum(config, enabled=autovacuum_on)
            baseline = _pg_cpu_under_traffic(data_dir, postmaster, seconds)
            for code, src in trees.items():
                label = f"{code}, autovacuum running" if autovacuum_on else code
                print(f"  {label}: polls for {seconds:.0f} s under traffic ...", flush=True)
                state = data_dir.parent / f"poll-state-{code}-{autovacuum_on}"
                figures = _polls_in_child(src, data_dir, state, seconds)
                polls_cpu_ms = max(0.0, figures.pop("pg_cpu_s") - baseline * figures["seconds"]) * 1000
                rows.append(
                    {
                        "code": label,
                        "students": total_rows(config),
                        **figures,
                        "pg_cpu_ms_per_poll": round(polls_cpu_ms / max(1, figures["polls"]), 2),
                        "pg_cpu_cores_polling": round(polls_cpu_ms / 1000 / figures["seconds"], 3),
                    }
                )
    return rows


def _polls_in_child(src: Path, data_dir: Path, state: Path, seconds: float) -> dict[str, Any]:
    """`_polls_here` in a child process whose `PYTHONPATH` is `src` (one code's tree)."""
    command = ["env", f"PYTHONPATH={src}", sys.executable, __file__, str(data_dir), str(state), str(seconds)]
    child = subprocess.run(command, check=True, capture_output=True, text=True)
    figures: dict[str, Any] = json.loads(child.stdout.splitlines()[-1])
    return figures


def _polls_here(data_dir: Path, state_dir: Path, seconds: float) -> dict[str, Any]:
    """`budget`'s child: this code's pipeline polling the sources under traffic for `seconds`."""
    config = cfg.load(data_dir)
    postmaster = postmaster_pid(config, data_dir)
    running = Running(config, state_dir, mode="poll")
    with running as pipeline:
        before, after, pg, elapsed = _polled_under_traffic(running, data_dir, postmaster, seconds)
        details = [p.status().details["poll"] for p in polled(pipeline)]
    polls = after["polls"] - before["polls"]
    per_poll = {k: (after[k] - before[k]) / max(1, polls) for k in after if k != "polls"}
    return {
        "seconds": round(elapsed, 1),
        "polls": polls,
        "polls_per_s": round(polls / elapsed, 1),
        "pg_cpu_s": pg,
        "ranges_per_source": max(d["ranges"] for d in details),
        "poll_p50_ms": round(statistics.median(d["p50_ms"] for d in details), 1),
        "index_entries_per_poll": round(per_poll["index_entries"]),
        "ids_read_per_poll": round(per_poll["ids_read"], 1),
        "rows_read_per_poll": round(per_poll["rows_read"], 1),
        # wall time on the client; the code before does not time the parts (its polls: `ms` only)
        **{f"{k}_per_poll": round(per_poll[k], 2) if k in per_poll else None for k in TIMED},
    }


def _polled_under_traffic(
    running: Running, data_dir: Path, postmaster: int | None, seconds: float
) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Once every source polls: the cost traffic for `seconds`; the poll totals before and after,
    PostgreSQL's CPU seconds meanwhile and the seconds it took."""
    running.wait_streaming()
    before = _poll_totals(running.pipeline)
    traffic = _traffic(data_dir, COST_TRAFFIC, seconds)
    pg0, t0 = cluster_cpu_s(postmaster), time.perf_counter()
    traffic.wait()
    pg, elapsed = cluster_cpu_s(postmaster) - pg0, time.perf_counter() - t0
    return before, _poll_totals(running.pipeline), pg, elapsed


def _one_reconciliation(pipeline: Any, postmaster: int | None) -> tuple[float, float]:
    """Every range of every source reconciled at once, idle: (median time until a source is done,
    PostgreSQL CPU of the whole round), in ms. The rolling reconciliation spreads this over 30 s."""
    started = time.time()
    pg0 = cluster_cpu_s(postmaster)
    for p in polled(pipeline):
        p.reconcile_everything = True
    done: dict[str, float] = {}
    while len(done) < len(polled(pipeline)):
        for p in polled(pipeline):
            if p.reconciled_as_of > started and p.source.name not in done:
                done[p.source.name] = time.time() - started
        time.sleep(0.01)
    cpu_ms = (cluster_cpu_s(postmaster) - pg0) * 1000
    return statistics.median(done.values()) * 1000, cpu_ms


def polled(pipeline: Pipeline) -> list[PolledSource]:
    """The pipeline's polled sources."""
    return [h.capture for h in pipeline.held.values() if isinstance(h.capture, PolledSource)]


def _poll_totals(pipeline: Any) -> dict[str, float]:
    """Polls that read something, what they read and (where the code times them) how long they took,
    summed over every source so far."""
    totals: dict[str, float] = {"polls": 0, "index_entries": 0, "ids_read": 0, "rows_read": 0}
    for p in polled(pipeline):
        totals["polls"] += p.polls - p.skipped
        for key in ("index_entries", "ids_read", "rows_read"):
            totals[key] += p.read[key]
        for key, ms in getattr(p, "spent_ms", {}).items():
            totals[key] = totals.get(key, 0.0) + ms
    return totals


def _pg_cpu_under_traffic(data_dir: Any, postmaster: int | None, seconds: float) -> float:
    """PostgreSQL's CPU (cores) under the cost traffic alone: the baseline the polls add to."""
    traffic = _traffic(data_dir, COST_TRAFFIC, seconds)
    pg0, t0 = cluster_cpu_s(postmaster), time.perf_counter()
    traffic.wait()
    return (cluster_cpu_s(postmaster) - pg0) / (time.perf_counter() - t0)


def _direct_cpu_ms(config: cfg.SourcesConfig, postmaster: int | None, rounds: int = 3) -> float:
    """PostgreSQL CPU of one direct-mode round (the escs chart's SQL on every source), median of a few."""
    direct = DirectSnapshots(config.sources)
    try:
        direct.snapshot(ESCS_COLUMNS)  # connections open, caches warm
        costs = []
        for _ in range(rounds):
            pg0 = cluster_cpu_s(postmaster)
            direct.snapshot(ESCS_COLUMNS)
            costs.append((cluster_cpu_s(postmaster) - pg0) * 1000)
    finally:
        direct.stop()
    return statistics.median(costs)


def autovacuum(config: cfg.SourcesConfig, enabled: bool) -> None:
    """Pause autovacuum on every source's table, or let it run again (PostgreSQL's default)."""
    statement = "RESET (autovacuum_enabled)" if enabled else "SET (autovacuum_enabled = off)"
    for source in config.sources:
        with connected(source.dsn) as conn, conn.cursor() as cur:
            cur.execute(f"ALTER TABLE responses {statement}")


def vacuum(config: cfg.SourcesConfig) -> None:
    """VACUUM every source and ANALYZE its key, as autovacuum would after the load; pause autovacuum.

    Only the key's statistics: the polls plan on it, and ANALYZE of all 1,119 text columns takes
    about 20 s per 30,000 full-width rows, minutes at the larger sizes, for statistics no query uses.
    """
    for source in config.sources:
        with connected(source.dsn) as conn, conn.cursor() as cur:
            cur.execute("VACUUM responses")
            cur.execute("ANALYZE responses (id)")
    autovacuum(config, enabled=False)


if __name__ == "__main__":  # `budget`'s child: DATA_DIR STATE_DIR SECONDS
    print(json.dumps(_polls_here(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))))
