"""Soak: `serve` under traffic and a crowd of dashboards for a long time; does anything drift?

The 20 default countries (full schema) with traffic at `rate` operations/s (5 % corrections, 2 %
withdrawals), `serve` (replication) as a child process, and `dashboards` simulated dashboards, each
polling the six chart URLs once a second (crowd.py). Every 10 s it records the server's RSS, the
answers by status, the data age the answers report (`X-Data-Age-Ms`), the rows the snapshot holds and
the WAL the replication slots retain. A healthy run has no error answers, a steady age and bounded
WAL; and since the traffic adds about 900 rows a second, RSS grows with the rows held and by nothing
else: RSS is fitted against rows (bytes per row), and what the rows do not explain must stay flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from api_bench import ServeProcess
from capture_bench import CLI, _percentile, _traffic, _up
from cpu import children
from crowd import Crowd, errors
from figures import slope
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.databases import connected
from sources_bench import scratch_dir, total_rows

SAMPLE_S = 10.0


def soak(minutes: float, rate: float, dashboards: int, students: int) -> dict[str, Any]:
    """Run the soak; returns the samples and their summary."""
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)
        rows = total_rows(config)
        command = [*CLI, "serve", "--data-dir", str(data_dir), "--port", "0"]
        with ServeProcess(command, data_dir.parent / "serve.log") as server:
            server.wait_ready("replication", rows)
            traffic = _traffic(data_dir, rate, minutes * 60 + 30)
            try:
                samples = asyncio.run(_crowd(server.url, server.pid, config, minutes * 60, dashboards))
                history = _status(server.url).get("history")  # the store serve writes each minute to
            finally:
                traffic.terminate()
                traffic.wait()
    rss = [s["rss_mb"] for s in samples]
    held = [float(s["rows"]) for s in samples]
    times = [float(s["s"]) for s in samples]
    per_row = slope(held, rss)  # MB per row held: the data's own growth
    residual = [m - per_row * (n - held[0]) for m, n in zip(rss, held, strict=True)]
    ages = [a for s in samples for a in s["ages_ms"]]
    answers: Counter[str] = Counter()
    for s in samples:
        answers.update(s["answers"])
    return {
        "minutes": minutes,
        "students": rows,
        "rate": rate,
        "dashboards": dashboards,
        "requests": sum(answers.values()),
        "answers": dict(answers),
        "errors": errors(answers),
        "rss_first_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_max_mb": max(rss),
        "rss_slope_mb_per_hour": round(slope(times, rss) * 3600, 1),
        "rows_first": int(held[0]),
        "rows_last": int(held[-1]),
        "rss_bytes_per_row": round(per_row * 2**20),
        "rss_beyond_rows_slope_mb_per_hour": round(slope(times, residual) * 3600, 1),
        "rss_beyond_rows_range_mb": round(max(residual) - min(residual), 1),
        "age_p50_ms": _percentile(ages, 0.5),
        "age_p99_ms": _percentile(ages, 0.99),
        "wal_retained_max_mb": max(s["wal_retained_mb"] for s in samples),
        "wal_retained_last_mb": samples[-1]["wal_retained_mb"],
        "rss_beyond_rows_slope_mb_per_day": round(slope(times, residual) * 86_400, 1),
        "history": history,
        "samples": [{k: v for k, v in s.items() if k != "ages_ms"} for s in samples],
    }


async def _crowd(
    url: str, pid: int, config: cfg.SourcesConfig, seconds: float, dashboards: int
) -> list[dict[str, Any]]:
    crowd = Crowd(url, dashboards)
    crowd.start()
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(SAMPLE_S)
        ages = list(crowd.tally.ages_ms)
        samples.append(
            {
                "s": round(time.monotonic() - started),
                "rss_mb": _rss_mb(pid),
                "rows": await asyncio.to_thread(_rows_served, url),
                "answers": dict(crowd.tally.answers),
                "ages_ms": ages,
                "age_p99_ms": _percentile(ages, 0.99) if ages else None,
                "wal_retained_mb": await asyncio.to_thread(_wal_retained_mb, config),
            }
        )
        crowd.tally.clear()
    await crowd.stop()
    return samples


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + "/api/status", timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def _rows_served(url: str) -> int:
    """The submissions in the snapshot `serve` answers from (/api/status)."""
    return int(_status(url)["snapshot"]["submissions"])


def _rss_mb(pid: int) -> float:
    """Resident memory of `serve`: its HTTP process and its capture process together."""
    total_kb = 0
    for each in (pid, *children(pid)):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def _wal_retained_mb(config: cfg.SourcesConfig) -> float:
    with connected(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(pg_current_wal_lsn() - restart_lsn), 0) FROM pg_replication_slots")
        return round(float(cur.fetchone()[0]) / 2**20, 1)  # type: ignore[index]
