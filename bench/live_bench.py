"""Commit to chart, the code before issue 18 beside this one, in one run on the same sources.

The 20 default countries at full width, seeded with `students`; traffic at `rate` operations/s (5 %
corrections, 2 % withdrawals) on 19 of them, as in e2e_bench.py. A probe commits marker transactions
of `MARKER_ROWS` rows into the 20th country, which gets no other traffic, and notes when each commit
returned; the next marker follows a random 0 to 100 ms after the last one was seen. Each code serves
the same sources in turn (`pisa-pulse serve`, replication, its own slots and checkpoint), and each
way of watching gets a window of `seconds`:

- **poll 2 ms**: that country's bubble chart read over HTTP every 2 ms with `If-None-Match` (as in
  e2e_bench.py): seen when an answer counts the marker.
- **..., commit flushed**: the same, with the probe's session at `synchronous_commit = on` (a server's
  default): `make demo`'s sources commit without waiting for the WAL to reach disk and flush it every
  10 ms (`wal_writer_delay`), and logical decoding sends only flushed WAL, so a marker there waits up
  to 10 ms before capture can see it; flushed at commit, it can be seen at once.
- **live route**: a stream of the same chart (`/api/live?charts=...&countries=<it>`): seen when an
  event counts it. The code before has no such route.
- **page**: headless Chromium's dashboard at `?countries=<it>`, as a viewer opens it: the code before
  polls once a second; this code streams. Seen when the bubble card's `data-total` (the country's
  submissions, set as the chart is drawn) counts the marker, timed in the page
  (`performance.timeOrigin + performance.now()`, corrected by its offset from the wall clock measured
  in the page at the start) against the commit's wall time (one host, one clock).

"before" is a git revision (`BEFORE`, the last commit before issue 18) exported from this checkout
into the scratch directory and run with the same interpreter and packages (`PYTHONPATH`), with one
file of this checkout laid over it: the bubble chart's view, which differs only in setting the
`data-total` the page method reads.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import psycopg2
import tomli_w
from playwright.sync_api import sync_playwright
from tests.browser import launch

from api_bench import ServeProcess
from capture_bench import CLI, _traffic, spread
from crowd import host_port
from e2e_bench import CHART, TIMEOUT_S, _CountReader, probed_sources
from pisa_pulse.sources import config as cfg
from sources_bench import scratch_dir, total_rows

BEFORE = "3971266"  # main before issue 18 (the ledger's table, the live route, event-driven snapshots)
MARKER_ROWS = 50
FLUSHED = ", commit flushed"  # the probe's markers with synchronous_commit = on (`markers`)
BUBBLES = "early-education-and-belonging"
READ_EVERY_S = 0.002
CHECKOUT = Path(__file__).resolve().parents[1]
VIEW = "src/pisa_pulse/web/static/js/views/belonging.js"

# Seen(expected count, commit's perf_counter, commit's wall time) -> latency in ms
Seen = Callable[[int, float, float], float]


def commit_to_chart(students: int, rate: float, seconds: float, before: str = BEFORE) -> list[dict[str, Any]]:
    """One row per way of watching, with the latencies of the code before and of this code."""
    rows: dict[str, dict[str, Any]] = {}
    windows = 0  # each window's markers get ids of their own (a seed each)
    with scratch_dir() as data_dir:
        config, _, probe, traffic_dir, _ = probed_sources(data_dir, students)
        trees = {"before": export(before, data_dir.parent / "before"), "after": CHECKOUT / "src"}
        for code, src in trees.items():
            print(f"  {code}: serve from {src} ...", flush=True)
            with serving(data_dir, config, code, src) as url:
                traffic = _traffic(traffic_dir, rate, 3 * seconds + 60)
                try:
                    time.sleep(3)  # the traffic reaches its rate
                    for method, seen, page, flushed in watchers(url, probe.name, code):
                        windows += 1
                        latencies = markers(probe.dsn, probe.name, seconds, seen, windows, flushed)
                        measured = {method: latencies}
                        if page is not None and page.arrivals:
                            measured["page: its stream's event received"] = page.arrivals
                        for name, latencies in measured.items():
                            row = rows.setdefault(name, {"method": name, "students": students, "rate": rate})
                            row[code] = {"markers": len(latencies), **spread(latencies)}
                finally:
                    traffic.terminate()
                    traffic.wait()
            drop_slots(config, f"pp_{code}")
    return list(rows.values())


def export(revision: str, where: Path) -> Path:
    """This checkout's `src` at `revision`, written under `where`; the path of that `src`."""
    archive = subprocess.run(
        ["git", "-C", str(CHECKOUT), "archive", "--format=tar", revision, "src"],
        check=True,
        capture_output=True,
    ).stdout
    where.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    shutil.copy(CHECKOUT / VIEW, where / VIEW)  # (the module docstring says why)
    return where / "src"


def settings_of(
    data_dir: Path, config: cfg.SourcesConfig, code: str, more: dict[str, Any] | None = None
) -> Path:
    """A settings file for `code`'s server over the sources: replication, slots and state of its own
    (and the tables in `more`)."""
    settings = data_dir.parent / f"{code}.toml"
    body = {
        "capture": {"mode": "replication", "slot_prefix": f"pp_{code}", "state_dir": f"state-{code}"},
        **(more or {}),
        "sources": [{"name": s.name, "dsn": s.dsn} for s in config.sources],
    }
    fd = os.open(settings, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(body, f)
    return settings


@contextmanager
def serving(data_dir: Path, config: cfg.SourcesConfig, code: str, src: Path) -> Iterator[str]:
    """`serve` of the code in `src` over the sources (replication, its own slots and state)."""
    settings = settings_of(data_dir, config, code)
    command = ["env", f"PYTHONPATH={src}", *CLI, "serve", "--config", str(settings), "--port", "0"]
    with ServeProcess(command, data_dir.parent / f"serve-{code}.log") as server:
        server.wait_ready("replication", total_rows(config))
        yield server.url


def drop_slots(config: cfg.SourcesConfig, prefix: str) -> None:
    """The replication slots a code's serve left (they would hold WAL back while the next one runs)."""
    for source in config.sources:
        with psycopg2.connect(source.dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name LIKE %s AND database = current_database()",
                (prefix + "%",),
            )
        conn.close()


def watchers(url: str, country: str, code: str) -> Iterator[tuple[str, Seen, Page | None, bool]]:
    """Each way of watching the country's count, set up in turn (the live route: this code only),
    with the page when it is the page (which also times its stream's events), and whether the
    markers' commits are flushed (see `markers`)."""
    client = http.client.HTTPConnection(*host_port(url), timeout=TIMEOUT_S)
    reader = _CountReader(client, CHART + country.upper())
    for flushed in (False, True):
        method = "poll 2 ms" + (FLUSHED if flushed else "")
        yield method, lambda expected, committed, wall: polled(reader, expected, committed), None, flushed
    client.close()
    if code == "after":
        with Stream(url, country) as stream:
            for flushed in (False, True):
                yield "live route" + (FLUSHED if flushed else ""), stream.seen, None, flushed
    with Page(url, country) as page:
        yield "page", page.seen, page, False


def markers(
    dsn: str, country: str, seconds: float, seen: Seen, seed: int, flushed: bool = False
) -> list[float]:
    """Marker transactions for `seconds`; their commit-to-seen latencies (ms). `flushed`: each commit
    waits for its WAL to reach disk (`synchronous_commit = on` for the probe's session, as a server's
    default is), where `make demo`'s sources return at once and flush every 10 ms."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    rng = random.Random(seed)
    latencies: list[float] = []
    try:
        with conn.cursor() as cur:
            if flushed:
                cur.execute("SET synchronous_commit = on")
            cur.execute("SELECT count(*) FROM responses")
            expected = int(cur.fetchone()[0])  # type: ignore[index]
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                ids = [(rng.randrange(1, 2**62), country.upper()) for _ in range(MARKER_ROWS)]
                args = ",".join(cur.mogrify("(%s,%s)", row).decode() for row in ids)
                cur.execute(f"INSERT INTO responses (id, cnt) VALUES {args}")
                committed, wall = time.perf_counter(), time.time()
                expected += MARKER_ROWS
                latencies.append(seen(expected, committed, wall))
                time.sleep(rng.uniform(0.0, 0.1))
    finally:
        conn.close()
    return latencies


def polled(reader: _CountReader, expected: int, committed: float) -> float:
    while reader.count() < expected:
        if time.perf_counter() - committed > TIMEOUT_S:
            raise TimeoutError(f"a marker was not visible after {TIMEOUT_S:.0f} s")
        time.sleep(READ_EVERY_S)
    return (reader.answered - committed) * 1000


class Stream:
    """The live route for the bubble chart of one country, read in a thread: (arrival, count) pairs."""

    def __init__(self, url: str, country: str) -> None:
        self.conn = http.client.HTTPConnection(*host_port(url), timeout=TIMEOUT_S)
        self.conn.request("GET", f"/api/live?charts={BUBBLES}&countries={country.upper()}")
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"/api/live answered {self.response.status}")
        self.counts: list[tuple[float, int]] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.read, daemon=True)

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def read(self) -> None:
        try:
            while line := self.response.readline():
                if line.startswith(b'data: {"chart"'):
                    arrived = time.perf_counter()
                    body = json.loads(line[6:])["body"]
                    count = sum(point["submissions"] for d in body["datasets"] for point in d["data"])
                    with self.changed:
                        self.counts.append((arrived, count))
                        self.changed.notify_all()
        except (OSError, ValueError, AttributeError):
            pass  # closed (http.client's response has no file any more: AttributeError)

    def seen(self, expected: int, committed: float, wall: float) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: self.counts and self.counts[-1][1] >= expected, TIMEOUT_S):
                raise TimeoutError(f"a marker was not on the stream after {TIMEOUT_S:.0f} s")
            arrived = next(at for at, count in self.counts if count >= expected)
            self.counts = self.counts[-1:]
        return (arrived - committed) * 1000


WATCH = """() => {
  window.__seen = [];
  // performance.timeOrigin + now() runs on the monotonic clock from the page's start: its offset
  // from the wall clock (Date.now(), 1 ms steps) is measured once, as the median of many readings.
  const offsets = [];
  for (let i = 0; i < 2001; i++) offsets.push(Date.now() - (performance.timeOrigin + performance.now()));
  offsets.sort((a, b) => a - b);
  window.__offset = offsets[1000] + 0.5; // Date.now() truncates: on average half a step behind
  const stamp = () => performance.timeOrigin + performance.now() + window.__offset;
  // When the stream's events for the bubble chart arrive (this code's page only), before drawing.
  window.__arrived = [];
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("chart", (event) => {
        const data = JSON.parse(event.data);
        if (data.chart !== "early-education-and-belonging") return;
        const total = data.body.datasets.reduce((sum, d) => sum + d.data[0].submissions, 0);
        window.__arrived.push([stamp(), total]);
      });
    }
  };
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.target.dataset.feed !== "early-education-and-belonging") continue; // (chart 2 has one too)
      const total = Number(record.target.dataset.total);
      window.__seen.push([stamp(), total]);
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-total"] });
}"""


class Page:
    """The dashboard at `?countries=<country>` in headless Chromium; seen when the bubble card's
    `data-total` counts the marker (timed in the page)."""

    def __init__(self, url: str, country: str) -> None:
        self.url = f"{url}?countries={country.upper()}"
        self.arrivals: list[float] = []  # commit to the stream's event in the page (this code only)

    def __enter__(self) -> Page:
        self.playwright = sync_playwright().start()
        self.browser = launch(self.playwright)
        self.page = self.browser.new_page(viewport={"width": 1440, "height": 900})
        self.page.add_init_script(f"({WATCH})()")
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.__seen.length > 0", timeout=60_000)
        return self

    def __exit__(self, *exc: object) -> None:
        self.browser.close()
        self.playwright.stop()

    def seen(self, expected: int, committed: float, wall: float) -> float:
        found = self.page.wait_for_function(
            """expected => {
                 const hit = window.__seen.find(([, total]) => total >= expected);
                 if (hit) window.__seen = window.__seen.slice(-1);
                 return hit ? hit[0] : null;
               }""",
            arg=expected,
            timeout=TIMEOUT_S * 1000,
            polling=5,
        )
        arrived = self.page.evaluate(
            """expected => {
                 const hit = window.__arrived.find(([, total]) => total >= expected);
                 window.__arrived = window.__arrived.slice(-1);
                 return hit ? hit[0] : null;
               }""",
            expected,
        )
        if arrived is not None:
            self.arrivals.append(float(arrived) - wall * 1000)
        return float(found.json_value()) - wall * 1000


if __name__ == "__main__":  # a quick look: python bench/live_bench.py [students] [seconds]
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
    for result in commit_to_chart(size, 1_000.0, float(sys.argv[2]) if len(sys.argv) > 2 else 10.0):
        print(json.dumps(result))
