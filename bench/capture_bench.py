"""Benchmarks of the pipeline: commit-to-aggregate latency, maximum change rate, CPU, memory.

The pipeline runs in this process (so its CPU time and memory are this process's); seeding and
traffic run in child processes (`pisa-pulse sources up`, `pisa-pulse traffic`), so they are not
counted in it. Latency is per transaction, from the source's commit timestamp to the moment the
batch is applied to the aggregates (both clocks are this machine's).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cpu import cluster_cpu_s, postmaster_pid, process_cpu_s, self_cpu_s
from pisa_pulse.engine.pipeline import Pipeline
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.schema import SchemaName
from sampling import sampled
from sources_bench import scratch_dir

CLI = [sys.executable, "-m", "pisa_pulse"]


def _up(data_dir: Path, schema: SchemaName, per_country: int) -> cfg.SourcesConfig:
    subprocess.run(
        [*CLI, "sources", "up", "--data-dir", str(data_dir), "--schema", schema],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [*CLI, "sources", "up", "--data-dir", str(data_dir), "--rows-per-country", str(per_country)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return cfg.load(data_dir)


def _traffic(data_dir: Path, rate: float, seconds: float) -> subprocess.Popen[bytes]:
    options = ["--rate", str(rate), "--duration", str(seconds), "--updates", "0.05", "--deletes", "0.02"]
    command = [*CLI, "traffic", "--data-dir", str(data_dir), *options]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _changes(pipeline: Pipeline) -> int:
    return sum(r.transactions for r in pipeline.statuses() if r.mode == "replication")


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return round(values[0], 1) if values else 0.0
    return round(statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1], 1)


def spread(latencies_ms: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max of latencies in ms, for the results."""
    return {
        "p50_ms": _percentile(latencies_ms, 0.5),
        "p95_ms": _percentile(latencies_ms, 0.95),
        "p99_ms": _percentile(latencies_ms, 0.99),
        "max_ms": round(max(latencies_ms), 1),
    }


class Running:
    """The pipeline in a thread of this process (`mode`: every source's capture mode)."""

    def __init__(
        self, config: cfg.SourcesConfig, data_dir: Path, mode: str = "replication", **options: Any
    ) -> None:
        sources = [replace(s, mode=mode) for s in config.sources]
        self.pipeline = Pipeline(sources, data_dir, **options)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.pipeline.run, args=(self.stop,))

    def __enter__(self) -> Pipeline:
        self.thread.start()
        return self.pipeline

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def wait_streaming(self, timeout: float = 1800) -> float:
        """Seconds until every source has been copied and is streaming (or polling)."""
        start = time.perf_counter()
        p = self.pipeline
        while any(r.state not in ("streaming", "polling") for r in p.statuses()):
            if time.perf_counter() - start > timeout:
                raise TimeoutError("sources not streaming")
            time.sleep(0.05)
        return time.perf_counter() - start


def latency(schema: SchemaName, rate: float, seconds: float, per_country: int = 1000) -> dict[str, Any]:
    """Commit-to-aggregate latency of live traffic at `rate` operations/s over the 20 sources.

    Beside the pipeline's CPU, the traffic writer's and PostgreSQL's: on two shared cores, whichever
    of the three runs out first is where the rate stops rising.
    """
    with scratch_dir() as data_dir:
        config = _up(data_dir, schema, per_country)
        postmaster = postmaster_pid(config, data_dir)
        running = Running(config, data_dir)
        with running as pipeline:
            running.wait_streaming()
            traffic = _traffic(data_dir, rate, seconds + 2)
            time.sleep(2)  # warm-up
            pipeline.latencies_ms.clear()
            cpu0, tx0, ch0, t0 = self_cpu_s(), _changes(pipeline), _applied_ops(pipeline), time.perf_counter()
            writer0, pg0 = process_cpu_s([traffic.pid]), cluster_cpu_s(postmaster)
            time.sleep(seconds)
            cpu1, tx1, ch1, t1 = self_cpu_s(), _changes(pipeline), _applied_ops(pipeline), time.perf_counter()
            writer, pg = process_cpu_s([traffic.pid]) - writer0, max(0.0, cluster_cpu_s(postmaster) - pg0)
            samples = list(pipeline.latencies_ms)
            traffic.wait()
            rows = sum(len(pipeline.ledger(name)) for name in pipeline.held)
    elapsed, changes = t1 - t0, ch1 - ch0
    return {
        "schema": schema,
        "students": per_country * 20,
        "target_ops_per_s": rate,
        "transactions_per_s": round((tx1 - tx0) / elapsed),
        "changes_per_s": round(changes / elapsed),
        "p50_ms": _percentile(samples, 0.5),
        "p99_ms": _percentile(samples, 0.99),
        "max_ms": round(max(samples), 1) if samples else None,
        "pipeline_cpu_share": round((cpu1 - cpu0) / elapsed, 3),
        "cpu_us_per_change": round((cpu1 - cpu0) / changes * 1e6, 1) if changes else None,
        "writer_cpu_cores": round(writer / elapsed, 2),
        "postgres_cpu_cores": round(pg / elapsed, 2),
        "rows_held": rows,
    }


def catch_up(schema: SchemaName, backlog_seconds: float) -> dict[str, Any]:
    """Maximum change rate: write a backlog while the pipeline is down, then time its catch-up.

    py-spy samples this process (the pipeline's threads) meanwhile: where the time goes at full speed.
    """
    with scratch_dir() as data_dir:
        config = _up(data_dir, schema, 1000)
        running = Running(config, data_dir)
        with running:
            running.wait_streaming()
        traffic = _traffic(data_dir, 1_000_000, backlog_seconds)
        traffic.wait()
        running = Running(config, data_dir)
        profile: dict[str, Any] = {}
        with running as pipeline:
            running.wait_streaming()
            with sampled(os.getpid(), backlog_seconds * 3, profile):
                cpu0, t0 = self_cpu_s(), time.perf_counter()
                ops0 = _applied_ops(pipeline)
                idle = 0
                while idle < 5:  # until nothing new for half a second
                    before = _changes(pipeline)
                    time.sleep(0.1)
                    idle = idle + 1 if _changes(pipeline) == before else 0
                elapsed = time.perf_counter() - t0 - 0.5
                ops = _applied_ops(pipeline) - ops0
                cpu = self_cpu_s() - cpu0
    return {
        "schema": schema,
        "changes": ops,
        "seconds": round(elapsed, 2),
        "changes_per_s": round(ops / elapsed),
        "cpu_us_per_change": round(cpu / ops * 1e6, 1) if ops else None,
        "profile": profile,
    }


def _applied_ops(pipeline: Pipeline) -> int:
    return sum(r.changes for r in pipeline.statuses() if r.mode == "replication")


def memory(schema: SchemaName, students: int) -> dict[str, Any]:
    """RSS of the pipeline holding `students` rows, and the time of their initial copy.

    Measured in a fresh process: this one keeps the memory of the cases it ran before (Python does
    not give freed arenas back), which would count as the pipeline's.
    """
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(_memory_here, schema, students).result()


def _memory_here(schema: SchemaName, students: int) -> dict[str, Any]:
    with scratch_dir() as data_dir:
        config = _up(data_dir, schema, students // 20)
        rss0 = _rss_mb()
        running = Running(config, data_dir)
        with running as pipeline:
            seconds = running.wait_streaming()
            rows = sum(len(pipeline.ledger(name)) for name in pipeline.held)
            rss = _rss_mb()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "schema": schema,
        "students": rows,
        "copy_seconds": round(seconds, 1),
        "rss_mb": round(rss),
        "rss_before_mb": round(rss0),
        "peak_rss_mb": round(peak),
    }
