"""The chart API at full speed, and the pieces the serving, freshness and soak benchmarks share.

`ServeProcess` runs `pisa-pulse serve` as a child process (settings file: `serve_command`) and waits
until it serves every row; `max_throughput` loads one chart with wrk (`apt-get install wrk`) from
another process:

    wrk -t1 -c32 -d10s --timeout 30s --latency http://127.0.0.1:PORT/api/charts/escs?countries=ALB,ARG,AUS

The pipeline answers from the snapshot in memory, so its figures should not depend on the number of
rows; direct mode runs the aggregate SQL on all 20 sources per request, so it gets fewer connections
(its requests queue on one pooled connection per source anyway). CPU is read from /proc/<pid>/stat
over the run: the server process's, and the cluster's (postmaster and its children), in cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from capture_bench import CLI
from cpu import Window
from figures import per_second
from pisa_pulse.cli import stop_process
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.databases import connected

CHART = "/api/charts/escs?countries=ALB,ARG,AUS"
CONNECTIONS = {"replication": 32, "direct": 4}
# Ready within 5 minutes plus a copy at 400 rows/s (600,000 full-width students: 30 minutes, a tenth of
# the measured speed), so that a hang at the smoke profile fails in minutes, not half an hour.
READY_BASE_S, READY_ROWS_PER_S = 300.0, 400.0
LIVE = {"streaming", "polling"}  # a source's states once its copy is done
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def require_wrk() -> str:
    """The path of wrk, or a one-line exit saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("the api benchmark needs wrk, the HTTP load generator: apt-get install wrk")
    return path


def max_throughput(server: ServeProcess, postmaster: int | None, mode: str, seconds: float) -> dict[str, Any]:
    """Requests/s, p50/p99 latency, non-2xx and CPU of a running `serve` loaded by wrk on one chart."""
    return wrk_load(server, server.url.rstrip("/") + CHART, CONNECTIONS[mode], seconds, postmaster)


def wrk_load(
    server: ServeProcess, url: str, connections: int, seconds: float, postmaster: int | None = None
) -> dict[str, Any]:
    """wrk on `url` of a running server for `seconds`: its figures, and the server's and cluster's CPU."""
    wrk = require_wrk()
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    window = Window(server.pid, postmaster)
    run = subprocess.run([*command, "--latency", url], capture_output=True, text=True)
    cpu = window.close()
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    return {
        "connections": connections,
        "seconds": round(cpu.pop("elapsed"), 1),
        **parse_wrk(run.stdout),
        **cpu,
        "command": " ".join(["wrk", *command[1:], "--latency", "URL"]),
    }


def _settle(config: cfg.SourcesConfig) -> None:
    """Keep the servers' housekeeping out of the measurement: no autovacuum during the load.

    Right after bulk seeding, autovacuum works through every full-width table for many minutes, and
    on two shared cores that would measure PostgreSQL's housekeeping, which serving from memory does
    not touch. The bench's own throwaway cluster is the only one changed.
    """
    for source in config.sources:
        with connected(source.dsn) as conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE responses SET (autovacuum_enabled = off)")
    with connected(config.sources[0].dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
        )
        cur.execute("CHECKPOINT")


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests, requests/s, the latency percentiles (ms) and the error counts of wrk's --latency output."""
    percentiles = {
        f"p{q}_ms": round(float(value) * _UNITS_MS[unit], 2)
        for q, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    }
    requests = re.search(r"^\s+(\d+) requests in ", text, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if requests is None or rate is None or "p50_ms" not in percentiles or "p99_ms" not in percentiles:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": int(requests.group(1)),
        "requests_per_s": per_second(float(rate.group(1)), 1.0),
        **percentiles,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    }


def serve_command(data_dir: Path, config: cfg.SourcesConfig, mode: str) -> list[str]:
    """`pisa-pulse serve` over the data dir's sources in `mode`, through a settings file.

    The file lists the embedded cluster's sources as a real deployment would list its servers, with
    the capture mode; the server keeps its default limits.
    """
    settings = data_dir.parent / f"{mode}.toml"
    body = {
        "capture": {"mode": mode},
        "sources": [{"name": s.name, "dsn": s.dsn} for s in config.sources],
    }
    fd = os.open(settings, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(body, f)
    return [*CLI, "serve", "--data-dir", str(data_dir), "--config", str(settings), "--port", "0"]


class ServeProcess:
    """`pisa-pulse serve` as a child process, its output in a log file; stopped (SIGTERM) on exit."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.command = command
        self.log = log
        self.url = ""
        self.pid = 0
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServeProcess:
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self._process.pid
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_process(self._process, 60)

    def alive(self) -> None:
        """Raise, with the log's tail, if the server has exited."""
        assert self._process is not None
        if self._process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"serve exited with {self._process.returncode}: {tail}")

    def wait_ready(self, mode: str, rows: int) -> None:
        """Until the server prints its URL, /api/health is 200 and (replication) every row is served."""
        limit = READY_BASE_S + rows / READY_ROWS_PER_S
        deadline = time.monotonic() + limit
        while not self.found_url():
            self.alive()
            if time.monotonic() > deadline:
                raise TimeoutError("serve printed no URL")
            time.sleep(0.1)
        waiting_for = "/api/health to answer 200"
        while True:
            self.alive()
            if self._get("/api/health")[0] == 200:
                status = self._get("/api/status")[1]
                behind = {s["source"]: s["state"] for s in status["sources"] if s["state"] not in LIVE}
                served = status["snapshot"]["submissions"]
                if mode == "direct" or (not behind and served == rows):
                    break
                waiting_for = f"{served:,} of {rows:,} rows served; not streaming: {behind}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"serve not ready after {limit:.0f} s: {waiting_for}")
            time.sleep(0.2)
        code, body = self._get(CHART)
        if code != 200 or len(body["datasets"]) != 3:
            raise RuntimeError(f"GET {CHART} answered {code}: {body}")

    def found_url(self) -> bool:
        """Whether the server has printed its URL (then in `url`)."""
        if self.url:
            return True
        found = re.search(r"serving .* at (http://\S+/) ", self.log.read_text(errors="replace"))
        if found:
            self.url = found.group(1)
        return bool(self.url)

    def _get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None
