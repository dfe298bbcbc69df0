"""End-to-end freshness over HTTP: from a row's commit in a source to the chart that counts it.

The 20 default countries (full schema) seeded with `students`, `pisa-pulse serve` in `mode`
(replication, poll or direct) as a child process, and traffic at `rate` operations/s (5 %
corrections, 2 % withdrawals) on 19 of them. The 20th, the probe's country, gets no traffic, so its
count moves only with the probe's markers; it shares the cluster, its WAL and the CPU with the others,
so decoding and applying the traffic still stands between a marker and its chart.

The probe commits one marker row at a time into the probe's country and notes the time the commit
returned; then it reads `/api/charts/early-education-and-belonging?countries=<it>` over one
keep-alive HTTP connection every `READ_EVERY_S` (with `If-None-Match`, as a dashboard does) until
the country's `submissions` counts the marker; commit-to-visible is the time the answer arrived. It
waits a random 0-100 ms before the next marker, so markers fall at every phase of the poll interval.

A dashboard polls once a second, so what a viewer sees is this latency plus up to a second of its own
polling. Direct mode reads the sources per request, so its rows are visible at the first request
after the commit; its cost is in the CPU columns: every request runs the chart's SQL.
"""

from __future__ import annotations

import http.client
import json
import random
import time
from pathlib import Path
from typing import Any

import psycopg2

from api_bench import ServeProcess, serve_command
from capture_bench import _traffic, _up, spread
from cpu import Window, postmaster_pid
from crowd import host_port
from pisa_pulse.sources import config as cfg
from poll_bench import vacuum
from sources_bench import scratch_dir, total_rows

CHART = "/api/charts/early-education-and-belonging?countries="
READ_EVERY_S = 0.002
TIMEOUT_S = 30.0


def freshness(mode: str, students: int, rate: float, seconds: float) -> dict[str, Any]:
    """Commit-to-visible latency over HTTP of marker rows in `mode`, with traffic at `rate` ops/s."""
    with scratch_dir() as data_dir:
        config, held, probe, traffic_dir, postmaster = probed_sources(data_dir, students)
        with ServeProcess(serve_command(data_dir, config, mode), data_dir.parent / "serve.log") as server:
            server.wait_ready(mode, held)
            traffic = _traffic(traffic_dir, rate, seconds + 5)
            try:
                time.sleep(3)  # warm-up: the traffic reaches its rate
                window = Window(server.pid, postmaster)
                latencies, reads = _probe(server.url, probe.dsn, probe.name, seconds)
                cpu = window.close()
            finally:
                traffic.terminate()
                traffic.wait()
    return {
        "mode": mode,
        "students": held,
        "target_ops_per_s": rate,
        "markers": len(latencies),
        **spread(latencies),
        "reads_per_s": round(reads / cpu.pop("elapsed")),
        **cpu,
    }


def probed_sources(
    data_dir: Path, students: int
) -> tuple[cfg.SourcesConfig, int, cfg.Source, Path, int | None]:
    """The 20 countries seeded and vacuumed; their config, rows, the probe's source (the last), a
    traffic data dir of the others, and the cluster's postmaster pid."""
    config = _up(data_dir, "full", students // 20)
    held = total_rows(config)
    vacuum(config)
    probe, others = config.sources[-1], config.sources[:-1]
    traffic_dir = _traffic_dir(data_dir.parent / "traffic", config, others)
    return config, held, probe, traffic_dir, postmaster_pid(config, data_dir)


def _traffic_dir(path: Path, config: cfg.SourcesConfig, sources: tuple[cfg.Source, ...]) -> Path:
    """A data dir whose sources config lists only `sources` (no cluster), for a `pisa-pulse traffic` run."""
    path.mkdir(parents=True)
    cfg.save(path, cfg.SourcesConfig(config.schema, config.seed, sources))
    return path


def _probe(
    url: str,
    dsn: str,
    country: str,
    seconds: float,
    seed: int = 11,
    commits: list[tuple[float, int]] | None = None,
) -> tuple[list[float], int]:
    """Markers for `seconds`; returns their commit-to-visible latencies (ms) and the reads made (`seed`:
    of the markers' ids, another one for a second probe of the same sources). `commits` gets each
    marker's commit time (`time.perf_counter`) and the country's row count it makes."""
    client = http.client.HTTPConnection(*host_port(url), timeout=TIMEOUT_S)
    reader = _CountReader(client, CHART + country.upper())
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    rng = random.Random(seed)
    latencies: list[float] = []
    try:
        expected = reader.count()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO responses (id, cnt) VALUES (%s, %s)",
                    (rng.randrange(1, 2**62), country.upper()),
                )
            committed = time.perf_counter()
            expected += 1
            if commits is not None:
                commits.append((committed, expected))
            while reader.count() < expected:
                if time.perf_counter() - committed > TIMEOUT_S:
                    raise TimeoutError(f"a marker in {country} was not visible after {TIMEOUT_S:.0f} s")
                time.sleep(READ_EVERY_S)
            latencies.append((reader.answered - committed) * 1000)
            time.sleep(rng.uniform(0.0, 0.1))
    finally:
        conn.close()
        client.close()
    return latencies, reader.reads


class _CountReader:
    """The probe country's `submissions` from the bubble chart, read with `If-None-Match`."""

    def __init__(self, http: http.client.HTTPConnection, path: str) -> None:
        self.http, self.path = http, path
        self.etag = ""
        self.last = -1
        self.answered = 0.0
        self.reads = 0

    def count(self) -> int:
        self.http.request("GET", self.path, headers={"If-None-Match": self.etag} if self.etag else {})
        response = self.http.getresponse()
        body = response.read()
        self.answered = time.perf_counter()
        self.reads += 1
        if response.status == 200:
            self.etag = response.getheader("ETag", "")
            datasets = json.loads(body)["datasets"]
            self.last = sum(point["submissions"] for d in datasets for point in d["data"])
        elif response.status != 304:
            raise RuntimeError(f"GET {self.path} answered {response.status}: {body[:200]!r}")
        return self.last
