"""Soak: `serve` under traffic and a crowd of dashboards for a long time; does anything drift?

The 20 default countries (full schema) with traffic at `rate` operations/s (5 % corrections, 2 %
withdrawals), `serve` (replication) as a child process, and `dashboards` simulated dashboards, each
polling the six chart URLs once a second with `If-None-Match`, as the real page does (asyncio, one
keep-alive connection per dashboard). Every 10 s it records the server's RSS, the answers by status,
the data age the answers report (`X-Data-Age-Ms`) and the WAL the replication slots retain. A
healthy run has a flat RSS, no error answers, a steady age and bounded WAL.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from api_bench import ServeProcess
from capture_bench import CLI, _percentile, _traffic, _up
from figures import slope
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.databases import connected
from sources_bench import scratch_dir, total_rows

URLS = (
    "/api/charts/submissions",
    "/api/charts/submissions-over-time",
    "/api/charts/early-education-and-belonging",
    "/api/charts/escs",
    "/api/charts/learning-hours-per-week",
    "/api/charts/performance",
)
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
            finally:
                traffic.terminate()
                traffic.wait()
    rss = [s["rss_mb"] for s in samples]
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
        "errors": sum(n for code, n in answers.items() if code not in ("200", "304")),
        "rss_first_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_max_mb": max(rss),
        "rss_slope_mb_per_hour": round(slope([s["s"] for s in samples], rss) * 3600, 1),
        "age_p50_ms": _percentile(ages, 0.5),
        "age_p99_ms": _percentile(ages, 0.99),
        "wal_retained_max_mb": max(s["wal_retained_mb"] for s in samples),
        "wal_retained_last_mb": samples[-1]["wal_retained_mb"],
        "samples": [{k: v for k, v in s.items() if k != "ages_ms"} for s in samples],
    }


async def _crowd(
    url: str, pid: int, config: cfg.SourcesConfig, seconds: float, dashboards: int
) -> list[dict[str, Any]]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    answers: Counter[str] = Counter()
    ages: list[float] = []
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_dashboard(host, int(port), answers, ages, stop, i / dashboards))
        for i in range(dashboards)
    ]
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(SAMPLE_S)
        samples.append(
            {
                "s": round(time.monotonic() - started),
                "rss_mb": _rss_mb(pid),
                "answers": dict(answers),
                "ages_ms": list(ages),
                "age_p99_ms": _percentile(ages, 0.99) if ages else None,
                "wal_retained_mb": await asyncio.to_thread(_wal_retained_mb, config),
            }
        )
        answers.clear()
        ages.clear()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples


async def _dashboard(
    host: str, port: int, answers: Counter[str], ages: list[float], stop: asyncio.Event, offset: float
) -> None:
    """One page: the six URLs every second on one keep-alive connection, ETags sent back."""
    await asyncio.sleep(offset)  # spread the dashboards over the second
    etags: dict[str, str] = {}
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not stop.is_set():
            tick = time.monotonic()
            for path in URLS:
                etag = etags.get(path)
                head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n" + (
                    f"If-None-Match: {etag}\r\n" if etag else ""
                )
                writer.write((head + "\r\n").encode())
                status, headers = await _response(reader)
                answers[status] += 1
                if "etag" in headers:
                    etags[path] = headers["etag"]
                if headers.get("x-data-age-ms", "unknown") != "unknown":
                    ages.append(float(headers["x-data-age-ms"]))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    except (ConnectionError, asyncio.IncompleteReadError):
        answers["disconnected"] += 1
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    status = (await reader.readline()).decode().split(" ", 2)[1]
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _wal_retained_mb(config: cfg.SourcesConfig) -> float:
    with connected(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(pg_current_wal_lsn() - restart_lsn), 0) FROM pg_replication_slots")
        return round(float(cur.fetchone()[0]) / 2**20, 1)  # type: ignore[index]
