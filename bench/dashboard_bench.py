"""Benchmark of the dashboard's own cost: a page left open for minutes, its memory and its requests.

Brings up the 20 default countries (slim schema, 500 students each), starts `pisa-pulse serve` and
traffic at 20 submissions/s (so every chart redraws every second), opens the dashboard in headless
Chromium at 1440x900 and, after a warm-up, samples every `sample_s` seconds after a full garbage
collection (Chrome DevTools Protocol `Performance.getMetrics`): the live JavaScript heap, DOM nodes
and event listeners. A page that leaks shows a heap that climbs from sample to sample; the slope of
a least-squares line through the samples (all, and the second half) says by how much per hour. It
also counts the page's requests per chart: the contract is at most one per chart per second.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import ConsoleMessage, Request, sync_playwright
from tests.browser import launch

from api_bench import ServeProcess
from capture_bench import CLI, _traffic, _up
from figures import slope
from sources_bench import scratch_dir, total_rows

TRAFFIC_RATE = 20.0
PER_COUNTRY = 500
WARM_UP_S = 30.0


def page_memory(minutes: float, sample_s: float) -> dict[str, Any]:
    """Heap, DOM nodes and listeners of an open dashboard over `minutes`, sampled every `sample_s`."""
    with scratch_dir() as data_dir:
        config = _up(data_dir, "slim", PER_COUNTRY)
        rows = total_rows(config)
        command = [*CLI, "serve", "--data-dir", str(data_dir), "--port", "0"]
        with ServeProcess(command, data_dir.parent / "serve.log") as server:
            server.wait_ready("replication", rows)
            traffic = _traffic(data_dir, TRAFFIC_RATE, WARM_UP_S + minutes * 60 + 60)
            try:
                return {"students": rows, **_watch(server.url, minutes, sample_s)}
            finally:
                traffic.terminate()
                traffic.wait()


def _watch(url: str, minutes: float, sample_s: float) -> dict[str, Any]:
    errors: list[str] = []
    requests: Counter[str] = Counter()
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1440, "height": 900})

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                errors.append(message.text)

        def count(request: Request) -> None:
            path = urlsplit(request.url).path
            if path.startswith("/api/"):
                requests[path] += 1

        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", on_console)
        page.on("request", count)
        page.goto(url)
        page.wait_for_timeout(WARM_UP_S * 1000)  # data in, the JIT warm, the first animations over
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        requests.clear()
        started = time.monotonic()
        samples = []
        while True:
            page.evaluate("window.gc(); window.gc()")  # a second pass frees what the first unlinked
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            at = time.monotonic() - started
            samples.append(
                {
                    "s": round(at, 1),
                    "heap_mb": round(metrics["JSHeapUsedSize"] / 1e6, 2),
                    "nodes": int(metrics["Nodes"]),
                    "listeners": int(metrics["JSEventListeners"]),
                }
            )
            if at >= minutes * 60:
                break
            page.wait_for_timeout(sample_s * 1000)
        elapsed = time.monotonic() - started
        browser.close()
    heap = [s["heap_mb"] for s in samples]
    half = len(samples) // 2
    return {
        "minutes": round(elapsed / 60, 1),
        "heap_first_mb": heap[0],
        "heap_last_mb": heap[-1],
        "heap_max_mb": max(heap),
        "heap_slope_mb_per_hour": round(slope([s["s"] for s in samples], heap) * 3600, 2),
        # The charts' histories (sparkline, minute series) fill during the first minutes: the second
        # half says whether the heap keeps growing once they are full.
        "heap_slope_second_half_mb_per_hour": round(
            slope([s["s"] for s in samples[half:]], heap[half:]) * 3600, 2
        ),
        "nodes_first": samples[0]["nodes"],
        "nodes_last": samples[-1]["nodes"],
        "listeners_first": samples[0]["listeners"],
        "listeners_last": samples[-1]["listeners"],
        "max_requests_per_chart_per_s": round(max(requests.values()) / elapsed, 2),
        "requests": dict(requests),
        "console_errors": errors,
        "samples": samples,
    }
