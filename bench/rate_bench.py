"""Sources that hold their rate (issue 13): does the traffic reach the rate it is asked for?

- `demo`: `pisa-pulse demo` exactly as `make demo` runs it (its own data dir, a free HTTP port, every
  other option at its default: 20 countries, 2,000 full-width students each, 200 operations/s). From
  `warmup_s` after the traffic starts, every `sample_s`: the operations the traffic did (its own
  counts, read from its control endpoint), the 1-minute load average, and the CPU of the cluster's
  processes by kind (autovacuum workers, client backends, walsenders, the rest; each process's kind
  from its title in /proc, polled every half second) and of pisa-pulse's own processes.
- `big`: full-width students over the 20 default countries (600,000 in the full profile), traffic
  asked for 1,000/s in its own process, and `pisa-pulse serve` started `warmup_s` later: the rate
  achieved before, during and after the initial copy, and the time from serve's start to every source
  streaming (polled on /api/status), split by serve's log into start-up, slot creation and copy.

Both run a given checkout's code (`--code DIR`: the children get DIR/src first on PYTHONPATH), so the
code before and after a change runs side by side in one sitting; every row names its code (`git
describe`). Other work may share the cores, so every row also carries the load average of its run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from api_bench import ServeProcess, serve_command
from background import Background
from capture_bench import CLI, _traffic, _up
from cpu import postmaster_pid, process_cpu_s
from pisa_pulse.cli import stop_process
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import control
from sources_bench import scratch_dir, total_rows

POLL_S = 0.5  # /proc is read this often: an autovacuum worker lives a few seconds at least
START_TIMEOUT_S = 600.0
KINDS = ("autovacuum", "backends", "walsenders", "other postgres", "pisa-pulse", "serve")
BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "launcher", "logger")


@contextlib.contextmanager
def running_code(code: Path) -> Iterator[str]:
    """Children started inside run `code`'s pisa-pulse (its src first on PYTHONPATH); yields its label."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(code / "src") + (os.pathsep + before if before else "")
    try:
        yield describe(code)
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def describe(code: Path) -> str:
    """`git describe --always --dirty` of a checkout (its short commit, `-dirty` with local edits)."""
    done = subprocess.run(
        ["git", "-C", str(code), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return done.stdout.strip() or str(code)


def load1() -> float:
    """The 1-minute load average (processes running or waiting for a core)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _kind(pid: int) -> str:
    """A PostgreSQL child's kind, from its process title (`postgres: autovacuum worker alb`, ...)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other postgres"
    if "autovacuum worker" in title:
        return "autovacuum"
    if "walsender" in title:
        return "walsenders"
    if any(name in title for name in BACKGROUND):
        return "other postgres"
    return "backends"


class ProcessCpu:
    """CPU seconds of the postmaster's children by kind, and of pisa-pulse's processes, from /proc.

    Polled every POLL_S: a process seen first after the first poll counts all its CPU; one that ends
    counts up to its last poll (at most half a second of it is lost). `ours`: pisa-pulse's processes
    (each with its children) and the kind each counts as; `watch` adds one.
    """

    def __init__(self, postmaster: int | None, ours: dict[int, str]) -> None:
        self.postmaster, self.ours = postmaster, dict(ours)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.started = False

    def poll(self) -> None:
        """Read the CPU of every process of interest."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if pid in self.ours or ppid in self.ours:
                kind = self.ours.get(pid) or self.ours[ppid]
            elif pid == self.postmaster:
                kind = "other postgres"
            elif ppid == self.postmaster and self.postmaster is not None:
                kind = self.kinds.get(pid) or _kind(pid)
            else:
                continue
            used = process_cpu_s([pid])
            self.kinds[pid] = kind
            self.first.setdefault(pid, used if not self.started else 0.0)
            self.last[pid] = used
        self.started = True

    def watch(self, pid: int, kind: str) -> None:
        """Count process `pid` (and its children) as `kind` from now on."""
        self.ours[pid] = kind

    def totals(self) -> dict[str, float]:
        """CPU seconds by kind since the first poll."""
        sums = dict.fromkeys(KINDS, 0.0)
        for pid, used in self.last.items():
            sums[self.kinds[pid]] += used - self.first[pid]
        return sums


class RateSampler(Background):
    """Every `sample_s` in a thread: the traffic's operations/s (its counts), CPU by kind, the load."""

    def __init__(self, data_dir: Path, cpu: ProcessCpu, sample_s: float) -> None:
        super().__init__("rate-sampler")
        self.data_dir, self.cpu, self.sample_s = data_dir, cpu, sample_s
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def run(self) -> None:
        self.cpu.poll()
        ops, cpu, at = _operations(self.data_dir)[0], self.cpu.totals(), time.monotonic()
        next_at = at + self.sample_s
        while not self.stopped.wait(max(0.0, min(POLL_S, next_at - time.monotonic()))):
            self.cpu.poll()
            if time.monotonic() < next_at:
                continue
            now_ops, reported = _operations(self.data_dir)
            now_cpu, now = self.cpu.totals(), time.monotonic()
            elapsed = now - at
            self.samples.append(
                {
                    "s": round(now - self.t0, 1),
                    "ops_per_s": round((now_ops - ops) / elapsed, 1),
                    "reported_per_s": reported,
                    "load1": load1(),
                    **{f"{k} cores": round((now_cpu[k] - cpu[k]) / elapsed, 3) for k in KINDS},
                }
            )
            ops, cpu, at = now_ops, now_cpu, now
            next_at += self.sample_s

    def since(self, seconds: float) -> list[dict[str, Any]]:
        """The samples taken from `seconds` after the start on."""
        return [s for s in self.samples if s["s"] >= seconds]


def _operations(data_dir: Path) -> tuple[int, float | None]:
    """Rows the running traffic has inserted, updated and deleted, and the rate it reports itself."""
    status = control.send(data_dir, "status")
    return int(status["inserted"] + status["updated"] + status["deleted"]), status.get("achieved_rate")


def _wait_traffic(data_dir: Path, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Until the traffic's control endpoint answers (the traffic writes from then on)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"exited with {process.returncode} before the traffic started: {tail}")
        with contextlib.suppress(Exception):
            control.send(data_dir, "status")
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the traffic did not start")
        time.sleep(0.2)


def summary(samples: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Min, median and mean of the achieved rate, the samples under target, mean cores by kind, load."""
    rates = [s["ops_per_s"] for s in samples]
    if not rates:
        return {}
    return {
        "samples": len(rates),
        "min_ops_per_s": min(rates),
        "median_ops_per_s": round(statistics.median(rates), 1),
        "mean_ops_per_s": round(statistics.fmean(rates), 1),
        "samples_under_target": sum(r < target for r in rates),
        **{f"{k} cores": round(statistics.fmean(s[f"{k} cores"] for s in samples), 3) for k in KINDS},
        "load1_mean": round(statistics.fmean(s["load1"] for s in samples), 2),
        "load1_max": max(s["load1"] for s in samples),
    }


def demo(code: Path, minutes: float, warmup_s: float, sample_s: float, args: list[str]) -> dict[str, Any]:
    """`pisa-pulse demo ARGS` (none: as `make demo`) of `code`: its achieved rate and CPU over `minutes`."""
    with running_code(code) as label, scratch_dir() as data_dir:
        data_dir.mkdir(parents=True)
        log = data_dir.parent / "demo.log"
        started = time.monotonic()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*CLI, "demo", "--data-dir", str(data_dir), "--port", "0", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_traffic(data_dir, process, log)
            traffic_after_s = time.monotonic() - started
            config = cfg.load(data_dir)
            rows = total_rows(config)
            cpu = ProcessCpu(postmaster_pid(config, data_dir), {process.pid: "pisa-pulse"})
            with RateSampler(data_dir, cpu, sample_s) as sampler:
                time.sleep(warmup_s + minutes * 60)
        finally:
            _stop(process)
    rate = float(args[args.index("--rate") + 1]) if "--rate" in args else 200.0
    measured = sampler.since(warmup_s)
    return {
        "code": label,
        "students": rows,
        "target_ops_per_s": rate,
        "minutes": minutes,
        "traffic_started_after_s": round(traffic_after_s, 1),
        **summary(measured, rate * 0.95),
        "warmup": sampler.samples[: len(sampler.samples) - len(measured)],
        "series": measured,
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as the tests stop `demo` and `serve`; SIGKILL after a minute."""
    stop_process(process, 60)


def big(
    code: Path, students: int, rate: float, minutes: float, warmup_s: float, sample_s: float
) -> dict[str, Any]:
    """Traffic at `rate` on `students` full-width rows, `serve` started after `warmup_s`; see the module."""
    with running_code(code) as label, scratch_dir() as data_dir:
        seed_started = time.monotonic()
        config = _up(data_dir, "full", students // 20)
        seed_s = time.monotonic() - seed_started
        rows = total_rows(config)
        traffic = _traffic(data_dir, rate, 24 * 3600)
        try:
            _wait_traffic(data_dir, traffic)
            cpu = ProcessCpu(postmaster_pid(config, data_dir), {traffic.pid: "pisa-pulse"})
            command = serve_command(data_dir, config, "replication")
            command[len(CLI) : len(CLI)] = ["--log-level", "info"]  # the copy's steps, timed
            with RateSampler(data_dir, cpu, sample_s) as sampler:
                time.sleep(warmup_s)
                with ServeProcess(command, data_dir.parent / "serve.log") as server:
                    cpu.watch(server.pid, "serve")
                    copy = _until_streaming(server, len(config.sources))
                    time.sleep(minutes * 60)
        finally:
            _stop(traffic)
    served_at = warmup_s
    streaming_at = warmup_s + copy["serve_to_streaming_s"]
    before = [s for s in sampler.samples if s["s"] <= served_at]
    during = [s for s in sampler.samples if served_at < s["s"] <= streaming_at + sample_s]
    after = [s for s in sampler.samples if s["s"] > streaming_at + sample_s]
    return {
        "code": label,
        "students": rows,
        "seed_s": round(seed_s, 1),
        "target_ops_per_s": rate,
        "minutes": minutes,
        **copy,
        **{f"{k} (before serve)": v for k, v in summary(before, rate * 0.95).items()},
        **{f"{k} (copy)": v for k, v in summary(during, rate * 0.95).items()},
        **summary(after, rate * 0.95),
        "series": sampler.samples,
    }


def _until_streaming(server: ServeProcess, sources: int) -> dict[str, Any]:
    """Poll /api/status until every source streams; how long from `serve`'s start, and where it went."""
    wall0, started = time.time(), time.monotonic()
    url = ""
    states: dict[str, int] = {}
    while states != {"streaming": sources}:
        server.alive()
        if time.monotonic() - started > START_TIMEOUT_S:
            raise TimeoutError(f"not every source streams after {START_TIMEOUT_S:.0f} s: {states}")
        time.sleep(0.2)
        if not url:
            found = re.search(r"serving .* at (http://\S+/) ", server.log.read_text(errors="replace"))
            url = found.group(1) if found else ""
            continue
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url + "api/status", timeout=30) as response:
                listed = [s["state"] for s in json.loads(response.read())["sources"]]
            states = {state: listed.count(state) for state in listed}
    seconds = time.monotonic() - started
    return {"serve_to_streaming_s": round(seconds, 1), **where_time_went(server.log, wall0)}


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \S+ (copying|slot created|streaming) (.*)$")


def where_time_went(log: Path, started: float) -> dict[str, Any]:
    """Per source, from serve's log (info): start to `copying`, to `slot created`, to `streaming`."""
    events: dict[str, dict[str, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        fields = dict(f.split("=", 1) for f in found.group(3).split() if "=" in f)
        source = fields.get("source") or fields.get("slot", "").rsplit("_", 1)[-1]
        events.setdefault(source, {}).setdefault(found.group(2), at)
    spans = [
        (e["copying"] - started, e["slot created"] - e["copying"], e["streaming"] - e["slot created"])
        for e in events.values()
        if {"copying", "slot created", "streaming"} <= e.keys()
    ]
    if not spans:
        return {"sources_logged": 0}
    waits, slots, copies = zip(*spans, strict=True)
    first_copy = min(started + w for w in waits)
    last_stream = max(started + w + s + c for w, s, c in spans)
    return {
        "sources_logged": len(spans),
        "start_to_first_copy_s": round(first_copy - started, 2),
        "start_to_copy_median_s": round(statistics.median(waits), 2),
        "slot_creation_median_s": round(statistics.median(slots), 2),
        "slot_creation_max_s": round(max(slots), 2),
        "slot_creation_sum_s": round(sum(slots), 1),
        "copy_median_s": round(statistics.median(copies), 2),
        "copy_max_s": round(max(copies), 2),
        "copy_sum_s": round(sum(copies), 1),
        "first_copy_to_all_streaming_s": round(last_stream - first_copy, 1),
    }
