"""Serving: the chart API under crowds of dashboards and at its maximum, pipeline against direct mode.

One size at a time: the 20 default countries (full schema) seeded with `students`, vacuumed (as
autovacuum would after a bulk load) and autovacuum paused, traffic at `TRAFFIC` operations/s so that
the charts change every second, as they do live. Then, for each mode, `pisa-pulse serve` as a child
process (settings file: api_bench.serve_command) and, in turn:

- crowds of simulated dashboards (crowd.py), each polling the six chart URLs once a second for
  `seconds`: requests/s achieved against the offered rate, latency percentiles, error answers, and
  the CPU of the server and of PostgreSQL;
- wrk at full speed on one chart (api_bench.max_throughput): the most requests/s the mode gives.

Direct mode runs the charts' SQL on every source per request, so its crowds are small
(`DIRECT_CROWDS`): a larger crowd only queues more requests behind the same queries. Its crowd runs
after wrk, so abandoned requests (a dashboard gives up after crowd.TIMEOUT_S) do not slow wrk down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from api_bench import ServeProcess, max_throughput, serve_command
from capture_bench import _percentile, _traffic, _up
from cpu import Window, postmaster_pid
from crowd import URLS, Crowd, answered_per_s, errors
from poll_bench import vacuum
from sources_bench import scratch_dir, total_rows

TRAFFIC = 100.0
CROWDS = (10, 100, 1_000)
DIRECT_CROWDS = (10,)


def serving(students: int, seconds: float, crowds: tuple[int, ...] = CROWDS) -> list[dict[str, Any]]:
    """One row per (mode, crowd) and one per mode at full speed, at `students` students."""
    rows: list[dict[str, Any]] = []
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)
        held = total_rows(config)
        vacuum(config)
        postmaster = postmaster_pid(config, data_dir)
        traffic = None
        try:
            for mode, mode_crowds in (("replication", crowds), ("direct", DIRECT_CROWDS)):
                command = serve_command(data_dir, config, mode)
                with ServeProcess(command, data_dir.parent / f"serve-{mode}.log") as server:
                    server.wait_ready(mode, held)
                    if traffic is None:  # once every row is held, so that readiness is exact
                        traffic = _traffic(data_dir, TRAFFIC, 24 * 3600)
                        time.sleep(2)
                    figures = max_throughput(server, postmaster, mode, seconds)
                    rows.append({"mode": mode, "students": held, "dashboards": "wrk", **figures})
                    for dashboards in mode_crowds:
                        load = _crowd(server, postmaster, dashboards, seconds)
                        rows.append({"mode": mode, "students": held, "dashboards": dashboards, **load})
        finally:
            if traffic is not None:
                traffic.terminate()
                traffic.wait()
    return rows


def _crowd(server: ServeProcess, postmaster: int | None, dashboards: int, seconds: float) -> dict[str, Any]:
    async def run() -> tuple[dict[str, int], list[float], dict[str, float]]:
        crowd = Crowd(server.url, dashboards)
        crowd.start()
        await asyncio.sleep(min(2.0, seconds / 5))  # every dashboard has started and connected
        crowd.tally.clear()
        window = Window(server.pid, postmaster)
        await asyncio.sleep(seconds)
        answers, latencies = dict(crowd.tally.answers), list(crowd.tally.latencies_ms)
        cpu = window.close()
        await crowd.stop()
        return answers, latencies, cpu

    answers, latencies, cpu = uvloop.run(run())
    elapsed = cpu.pop("elapsed")
    requests = sum(answers.values())
    return {
        "seconds": round(elapsed, 1),
        "offered_per_s": dashboards * len(URLS),
        "requests": requests,
        "requests_per_s": answered_per_s({"answers": answers, "seconds": elapsed}),
        "p50_ms": _percentile(latencies, 0.5),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": round(max(latencies), 1) if latencies else None,
        "answers": answers,
        "errors": errors(answers),
        **cpu,
    }
