"""`serve` at size: start to streaming, its memory after the copy and at the copy's peak, and catch-up.

The 20 default countries at full width, seeded with `students` as `sources up` leaves them (nothing
vacuumed, nothing paused). Each code (the code before issue 18, `live_bench.BEFORE`, exported from
git, then this one, then this one with `[history] store = "none"`, which leaves DuckDB out of the
HTTP process) runs `pisa-pulse serve` over the same sources with slots and state of its own:

- **start to streaming**: from starting `serve` to `/api/status` showing every source streaming with
  every seeded row counted (the initial copy of all 20 sources included);
- **RSS**: of all of `serve`'s processes together (the HTTP process and its capture process), read
  from /proc every 20 ms from the start until `SETTLED_S` after streaming: the peak of that sum
  (the copy, and the first checkpoint, which waits for the copies and then writes every row), and
  the sum at the end (with the HTTP process's share; the rest is the capture process's);
- **catch-up**: `serve` stopped (SIGTERM: it checkpoints), traffic written as fast as the writer can
  for `backlog_s` seconds (5 % corrections, 2 % withdrawals), `serve` started again: changes applied
  per second, from the first status (`/api/status`, polled every 50 ms) that counts any change to
  the last: `catch_up_s` is that span, `catch_up_changes` every change applied (not for the third
  case, whose capture is the second's).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from api_bench import ServeProcess
from background import Background
from capture_bench import CLI, _traffic, _up
from cpu import children
from live_bench import BEFORE, CHECKOUT, drop_slots, export, settings_of
from sources_bench import scratch_dir, total_rows

SAMPLE_S = 0.02
SETTLED_S = 15.0  # after streaming; the first checkpoint saves 600,000 rows in about 2 s
STATUS_EVERY_S = 0.05
TIMEOUT_S = 1800.0
WITHOUT_HISTORY = "after, history store off"  # this code with `[history] store = "none"`: no DuckDB


def footprint(students: int, backlog_s: float) -> list[dict[str, Any]]:
    """One row per code: start to streaming, RSS after the copy and its peak, catch-up changes/s."""
    rows: dict[str, dict[str, Any]] = {}
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)
        seeded = total_rows(config)
        before = export(BEFORE, data_dir.parent / "before")
        commands = {}
        for i, (code, src, more) in enumerate(
            (
                ("before", before, {}),
                ("after", CHECKOUT / "src", {}),
                (WITHOUT_HISTORY, CHECKOUT / "src", {"history": {"store": "none"}}),
            )
        ):
            settings = settings_of(data_dir, config, f"c{i}", more)
            command = ["env", f"PYTHONPATH={src}", *CLI, "serve", "--config", str(settings), "--port", "0"]
            commands[code] = (f"c{i}", command)
        for code, (slug, command) in commands.items():  # each starts on the sources as seeded
            print(f"  {code}: serve from a cold start on {seeded:,} rows ...", flush=True)
            with ServeProcess(command, data_dir.parent / f"footprint-{slug}.log") as server:
                started = time.perf_counter()
                with RssSampler(server.pid) as rss:
                    server.wait_ready("replication", seeded)
                    streaming_s = time.perf_counter() - started
                    time.sleep(SETTLED_S)  # the first checkpoint writes every copied row meanwhile
                    copy_peak = rss.peak_mb
                after_copy = RssSampler.family_mb(server.pid)
                http = RssSampler.process_mb(server.pid)
            if code == WITHOUT_HISTORY:
                drop_slots(config, f"pp_{slug}")  # no catch-up for it: its slot would only pin WAL
            rows[code] = {
                "code": code,
                "students": seeded,
                "start_to_streaming_s": round(streaming_s, 1),
                "rss_after_copy_mb": round(after_copy),
                "rss_http_process_mb": round(http),
                "rss_capture_process_mb": round(after_copy - http),
                "copy_peak_rss_mb": round(copy_peak),
                "peak_over_after": round(copy_peak / after_copy, 2),
            }
        print(f"  a backlog of {backlog_s:.0f} s of traffic at full speed, while none serves ...", flush=True)
        _traffic(data_dir, 1_000_000, backlog_s).wait()
        for code, (slug, command) in commands.items():  # each slot holds the same backlog
            if code == WITHOUT_HISTORY:
                continue  # the same capture as `after`'s: its start and memory were the point
            print(f"  {code}: catch-up from its checkpoint ...", flush=True)
            with ServeProcess(command, data_dir.parent / f"footprint-{slug}-2.log") as server:
                total, timed, seconds = _caught_up(server)
            rows[code].update(
                catch_up_changes=total,
                catch_up_s=round(seconds, 2),
                catch_up_changes_per_s=round(timed / seconds) if seconds else None,
            )
            drop_slots(config, f"pp_{slug}")
    return list(rows.values())


class RssSampler(Background):
    """The summed RSS of a process and its children, sampled in a thread; `peak_mb` the largest sum."""

    def __init__(self, pid: int) -> None:
        super().__init__("rss-sampler")
        self.pid = pid
        self.peak_mb = 0.0

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_S):
            self.peak_mb = max(self.peak_mb, self.family_mb(self.pid))

    @staticmethod
    def family_mb(pid: int) -> float:
        """VmRSS of `pid` and its children, in MiB."""
        return sum(RssSampler.process_mb(p) for p in (pid, *children(pid)))

    @staticmethod
    def process_mb(pid: int) -> float:
        """VmRSS of one process in MiB (0 if it vanished while read)."""
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0


def _caught_up(server: ServeProcess) -> tuple[int, int, float]:
    """Once nothing came for 2 s: every change applied, and the rate's base: the changes applied and
    seconds from the first status that counted any to the last (what came before that has no start)."""
    deadline = time.monotonic() + TIMEOUT_S
    first: tuple[int, float] | None = None
    last = (0, 0.0)
    while True:
        server.alive()
        changes = _changes(server)
        now = time.perf_counter()
        if changes is not None and changes > last[0]:
            first = first or (changes, now)
            last = (changes, now)
        elif first is not None and now - last[1] > 2.0:
            return last[0], last[0] - first[0], last[1] - first[1]
        if time.monotonic() > deadline:
            raise TimeoutError("catch-up did not end")
        time.sleep(STATUS_EVERY_S)


def _changes(server: ServeProcess) -> int | None:
    """The sum of every source's applied changes in `/api/status`, None until the server answers."""
    if not server.url and not server.found_url():
        return None
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + "/api/status", timeout=10) as response:
            status = json.loads(response.read())
    except OSError:
        return None
    return sum(int(s.get("changes", 0)) for s in status["sources"])


if __name__ == "__main__":  # a quick look: python bench/footprint_bench.py STUDENTS BACKLOG_S
    sys.path.insert(0, os.path.dirname(__file__))
    print(json.dumps(footprint(int(sys.argv[1]), float(sys.argv[2])), indent=1))
