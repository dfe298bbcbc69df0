"""Simulated dashboards: each polls the six chart URLs once a second, as the real page does.

One asyncio task per dashboard, one keep-alive HTTP/1.1 connection each, the six URLs in turn with
`If-None-Match` (so unchanged data costs a 304), then a sleep to the next second. The dashboards are
spread evenly over the second. Answers are counted by status; each request's latency and each
answer's `X-Data-Age-Ms` are recorded. A request that takes longer than `TIMEOUT_S` counts as
`timeout` and its dashboard reconnects, as a page would retry.

The soak (soak_bench.py) and the serving benchmark (serving_bench.py) share it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from figures import per_second

URLS = (
    "/api/charts/submissions",
    "/api/charts/submissions-over-time",
    "/api/charts/early-education-and-belonging",
    "/api/charts/escs",
    "/api/charts/learning-hours-per-week",
    "/api/charts/performance",
)
TIMEOUT_S = 10.0


@dataclass
class Tally:
    """What the dashboards saw since the last `clear()`."""

    answers: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    ages_ms: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.answers.clear()
        self.latencies_ms.clear()
        self.ages_ms.clear()


def host_port(url: str) -> tuple[str, int]:
    """`http://127.0.0.1:8000/` -> ("127.0.0.1", 8000)."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return host, int(port)


def errors(answers: Counter[str] | dict[str, int]) -> int:
    """Answers that a dashboard would show as a failure: anything but 200 and 304."""
    return sum(n for status, n in answers.items() if status not in ("200", "304"))


def answered_per_s(run: dict[str, Any]) -> float:
    """Answers a dashboard could use (200 and 304) per second of a crowd's run."""
    return per_second(run["answers"].get("200", 0) + run["answers"].get("304", 0), run["seconds"])


class Crowd:
    """`dashboards` pages polling `url` (http://host:port/) until `stop()`."""

    def __init__(self, url: str, dashboards: int) -> None:
        self.host, self.port = host_port(url)
        self.dashboards = dashboards
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._dashboard(i / self.dashboards)) for i in range(self.dashboards)
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _dashboard(self, offset: float) -> None:
        await asyncio.sleep(offset)  # spread the dashboards over the second
        etags: dict[str, str] = {}
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), TIMEOUT_S
                )
            except (OSError, TimeoutError):
                self.tally.answers["refused"] += 1
                await asyncio.sleep(1.0)
                continue
            try:
                await self._poll(reader, writer, etags)
            except TimeoutError:
                self.tally.answers["timeout"] += 1
            except (ConnectionError, asyncio.IncompleteReadError):
                self.tally.answers["disconnected"] += 1
                await asyncio.sleep(1.0)
            finally:
                writer.close()

    async def _poll(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, etags: dict[str, str]
    ) -> None:
        while not self._stop.is_set():
            tick = time.monotonic()
            for path in URLS:
                etag = etags.get(path)
                head = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n" + (
                    f"If-None-Match: {etag}\r\n" if etag else ""
                )
                sent = time.perf_counter()
                writer.write((head + "\r\n").encode())
                status, headers = await asyncio.wait_for(_response(reader), TIMEOUT_S)
                self.tally.latencies_ms.append((time.perf_counter() - sent) * 1000)
                self.tally.answers[status] += 1
                if "etag" in headers:
                    etags[path] = headers["etag"]
                if headers.get("x-data-age-ms", "unknown") != "unknown":
                    self.tally.ages_ms.append(float(headers["x-data-age-ms"]))
                if headers.get("connection") == "close":
                    return
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


async def _response(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("the server closed the connection")
    status = line.decode().split(" ", 2)[1]
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers
