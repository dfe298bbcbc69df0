"""Past one machine: workers, NATS and API replicas, side by side with `serve` in one run (issue 15).

The 20 default countries (full schema) seeded with `students`, a three-node NATS JetStream cluster
on loopback (tests/nats_cluster.py), two `pisa-pulse worker` processes (the default 6 s lease) and
two `pisa-pulse api` replicas, then, on the same sources and machine:

- **freshness through the fleet**: traffic at `rate` operations/s (5 % corrections, 2 % withdrawals)
  on 19 countries and e2e_bench's probe on the 20th, read over HTTP from one replica: commit ->
  worker -> NATS -> replica -> chart;
- **what goes into NATS** meanwhile: bytes and messages per second from the workers' connections
  (every server's `/connz`: parts, checkpoints, leases, JetStream API calls), and the checkpoints'
  share (log and snapshots, from the workers' published counters), per minute;
- **requests/s** of one replica, then of both at once (one wrk each), on e2e's chart, with the static
  answer of limits_bench as this machine's ceiling in the same run;
- **failover**: SIGKILL of the worker that owns the probe's country, traffic on: the time until every
  source it owned streams again under the other worker, and until the replica's data is fresh again
  (its `X-Data-As-Of` past the kill); each moved source's restore time (claim, read, rebuild);
- **serve** afterwards on the same sources, probed the same way (its own fresh copy first).

Both probes run after `poll_bench.vacuum` (autovacuum paused, as e2e_bench does), so the two sides
see the same database; each side is then probed again with autovacuum running (PostgreSQL's
default), the unpaused case.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.js import api
from tests.nats_cluster import NatsCluster, connected, running_cluster

from api_bench import CONNECTIONS, ServeProcess, serve_command, wrk_load
from capture_bench import CLI, _percentile, _traffic, spread
from cpu import process_cpu_s
from e2e_bench import _probe, probed_sources
from limits_bench import static_http
from pisa_pulse.engine.values import COUNTRY_INDEX
from pisa_pulse.fleet import PREFIX, parts
from pisa_pulse.sources.config import SourcesConfig
from poll_bench import autovacuum
from sources_bench import scratch_dir, total_rows

PROBE_CHART = "/api/charts/escs?countries=ALB,ARG,AUS"
WORKERS = ("w1", "w2")
READY = {"streaming", "polling"}
FAILOVER_TIMEOUT_S = 120.0


def fleet(students: int, rate: float, seconds: float) -> dict[str, Any]:
    """Every figure of the module docstring, for one size."""
    with scratch_dir() as data_dir:
        config, held, probe, traffic_dir, postmaster = probed_sources(data_dir, students)
        settings = Path(serve_command(data_dir, config, "replication")[-3])  # the settings file it wrote
        result: dict[str, Any] = {"students": held, "target_ops_per_s": rate}
        with running_cluster(data_dir.parent / "nats", size=3) as nats:
            urls = ",".join(nats.urls)
            workers = {name: _worker(urls, settings, name, data_dir.parent) for name in WORKERS}
            try:
                with (
                    ServeProcess(
                        [*CLI, "api", "--nats", urls, "--port", "0"], data_dir.parent / "r1.log"
                    ) as r1,
                    ServeProcess(
                        [*CLI, "api", "--nats", urls, "--port", "0"], data_dir.parent / "r2.log"
                    ) as r2,
                ):
                    r1.wait_ready("replication", held)
                    r2.wait_ready("replication", held)
                    result["ready_s"] = _ready_seconds(r1)
                    _until_checkpointed(r1)
                    traffic = _traffic(traffic_dir, rate, 4 * seconds + FAILOVER_TIMEOUT_S)
                    try:
                        time.sleep(3)  # warm-up: the traffic reaches its rate
                        pids = [w.pid for w in workers.values()]
                        result.update(_freshness_and_bytes(nats, r1, pids, probe, seconds))
                        result["fleet_autovacuum"] = _unpaused(config, r1.url, probe, seconds, seed=13)
                        result["failover"] = _failover(r1, workers, probe.name)
                    finally:
                        traffic.terminate()
                        traffic.wait()
                    result["one_replica"] = wrk_load(
                        r1, r1.url.rstrip("/") + PROBE_CHART, CONNECTIONS["replication"], seconds
                    )
                    result["two_replicas"] = _two_at_once(r1, r2, seconds)
            finally:
                for process in workers.values():
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                        process.wait(60)
        with ServeProcess(
            serve_command(data_dir, config, "replication"), data_dir.parent / "serve.log"
        ) as serve:
            serve.wait_ready("replication", total_rows(config))  # as the fleet's traffic left them
            autovacuum(config, enabled=False)  # paused again, as for the fleet's first probe
            traffic = _traffic(traffic_dir, rate, 2 * seconds + 5)
            try:
                time.sleep(3)
                latencies, _ = _probe(serve.url, probe.dsn, probe.name, seconds, seed=12)
                result["serve"] = {"markers": len(latencies), **spread(latencies)}
                result["serve_autovacuum"] = _unpaused(config, serve.url, probe, seconds, seed=14)
            finally:
                traffic.terminate()
                traffic.wait()
            result["serve_one"] = wrk_load(
                serve, serve.url.rstrip("/") + PROBE_CHART, CONNECTIONS["replication"], seconds, postmaster
            )
    result["ceiling"] = static_http(seconds)
    return result


def _unpaused(config: SourcesConfig, url: str, probe: Any, seconds: float, seed: int) -> dict[str, Any]:
    """The probe again with autovacuum running (PostgreSQL's default), traffic on."""
    autovacuum(config, enabled=True)
    latencies, _ = _probe(url, probe.dsn, probe.name, seconds, seed=seed)
    return {"markers": len(latencies), **spread(latencies)}


def _worker(urls: str, settings: Path, name: str, logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"worker-{name}.log").open("wb") as log:
        return subprocess.Popen(
            [
                *CLI,
                "--log-level",
                "info",
                "worker",
                "--nats",
                urls,
                "--config",
                str(settings),
                "--name",
                name,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _status(replica: ServeProcess) -> dict[str, Any]:
    with urllib.request.urlopen(replica.url + "api/status", timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def _until_checkpointed(replica: ServeProcess) -> None:
    """Until every source's first checkpoint after its copy is in JetStream (a snapshot at 600,000
    students), so the bytes measured are those of the changes, not the start's."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        sources = _status(replica)["sources"]
        if sources and all(s.get("checkpoint", {}).get("lsn") is not None for s in sources):
            return
        time.sleep(0.5)
    raise TimeoutError(f"not every source checkpointed within {FAILOVER_TIMEOUT_S:g} s of its copy")


def _ready_seconds(replica: ServeProcess) -> float:
    """The slowest source's start (claim, read, restore or copy) as its worker reported it."""
    return float(max(s.get("resumed", {}).get("seconds", 0.0) for s in _status(replica)["sources"]))


def _counters(nats: NatsCluster) -> tuple[int, int]:
    """Bytes and messages the workers' connections have sent to the cluster, over every server."""
    in_bytes = in_msgs = 0
    for node in nats.nodes.values():
        _, connz = node.monitor("/connz?limit=1024")
        for conn in (connz or {}).get("connections", []):
            if str(conn.get("name", "")).startswith("pisa-pulse worker"):
                in_bytes += int(conn.get("in_bytes", 0))
                in_msgs += int(conn.get("in_msgs", 0))
    return in_bytes, in_msgs


def _written(replica: ServeProcess) -> tuple[int, int]:
    """Checkpoint and parts bytes the owners have written (their published counters)."""
    sources = _status(replica)["sources"]
    checkpoint = sum(s.get("checkpoint", {}).get("bytes_written", 0) for s in sources)
    parts = sum(s.get("parts", {}).get("bytes_written", 0) for s in sources)
    return checkpoint, parts


def _freshness_and_bytes(
    nats: NatsCluster, replica: ServeProcess, workers: list[int], probe: Any, seconds: float
) -> dict[str, Any]:
    """The probe through the fleet, and meanwhile what went into NATS and the CPU each part used."""
    nats_pids = [node.process.pid for node in nats.nodes.values() if node.process is not None]

    def cpu_s() -> list[float]:
        return [process_cpu_s(workers), process_cpu_s([replica.pid]), process_cpu_s(nats_pids)]

    bytes0, msgs0 = _counters(nats)
    checkpoint0, parts0 = _written(replica)
    cpu0 = cpu_s()
    started = time.monotonic()
    commits: list[tuple[float, int]] = []
    with PartsTap(nats.urls, probe.name) as tap:
        latencies, _ = _probe(replica.url, probe.dsn, probe.name, seconds, commits=commits)
    time.sleep(2)  # the counters are published about once a second
    elapsed = time.monotonic() - started
    workers_cpu, replica_cpu, nats_cpu = (
        round((b - a) / elapsed, 2) for a, b in zip(cpu0, cpu_s(), strict=True)
    )
    bytes1, msgs1 = _counters(nats)
    checkpoint1, parts1 = _written(replica)
    return {
        "fleet": {"markers": len(latencies), **spread(latencies)},
        "stages": tap.stages(commits, latencies),
        "cpu_cores": {"workers": workers_cpu, "replica": replica_cpu, "nats": nats_cpu},
        "into_nats": {
            "bytes_per_s": round((bytes1 - bytes0) / elapsed),
            "messages_per_s": round((msgs1 - msgs0) / elapsed),
            "checkpoint_bytes_per_min": round((checkpoint1 - checkpoint0) / elapsed * 60),
            "parts_bytes_per_min": round((parts1 - parts0) / elapsed * 60),
        },
    }


class PartsTap:
    """Where a marker's time goes: a NATS client of the benchmark's own hears the probe source's
    `sums` values twice, as published (a core subscription: the worker's write, before JetStream
    stores it) and as a replica hears them (an ordered consumer: stored on a quorum, then delivered),
    each with the probe country's row count. A marker's stages are then commit -> published (the
    worker), published -> delivered (JetStream), delivered -> answered (the replica and HTTP)."""

    def __init__(self, urls: list[str], source: str) -> None:
        self.urls, self.source = urls, source
        self.heard: dict[str, list[tuple[float, int]]] = {"published": [], "delivered": []}
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), name="parts-tap")

    def __enter__(self) -> PartsTap:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the benchmark's NATS client did not subscribe within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _listen(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        subject = f"$KV.{PREFIX}_{parts.PARTS}.{parts.sums_key(self.source)}"
        country = str(COUNTRY_INDEX[self.source.upper()])

        def hearing(stage: str) -> Callable[[Msg], Awaitable[None]]:
            async def heard(msg: Msg) -> None:
                rows = json.loads(msg.data)["countries"].get(country, [0])[0]
                self.heard[stage].append((time.perf_counter(), rows))

            return heard

        async with connected(*self.urls) as client:
            await client.subscribe(subject, cb=hearing("published"))
            js = client.jetstream(timeout=10)
            await js.subscribe(
                subject, cb=hearing("delivered"), ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW
            )
            await client.flush()
            self._ready.set()
            await self._stop.wait()

    def stages(self, commits: list[tuple[float, int]], latencies: list[float]) -> dict[str, Any]:
        """p50 and p99 of each stage over the markers heard at both places (ms)."""
        by_stage: dict[str, list[float]] = {"worker": [], "jetstream": [], "replica": []}
        for (committed, rows), latency in zip(commits, latencies, strict=False):
            published = _first_with(self.heard["published"], committed, rows)
            delivered = _first_with(self.heard["delivered"], committed, rows)
            if published is None or delivered is None:
                continue
            by_stage["worker"].append((published - committed) * 1000)
            by_stage["jetstream"].append((delivered - published) * 1000)
            by_stage["replica"].append(latency - (delivered - committed) * 1000)
        return {
            stage: {"p50_ms": _percentile(ms, 0.5), "p99_ms": _percentile(ms, 0.99)} if ms else {}
            for stage, ms in by_stage.items()
        }


def _first_with(heard: list[tuple[float, int]], after: float, rows: int) -> float | None:
    """When a value with at least `rows` rows was first heard after `after`."""
    return next((at for at, count in heard if at > after and count >= rows), None)


def _failover(
    replica: ServeProcess, workers: dict[str, subprocess.Popen[bytes]], probe: str
) -> dict[str, Any]:
    """SIGKILL of the probe's worker; until its sources stream elsewhere, and the data is fresh again."""
    status = _status(replica)
    victim = next(s["worker"] for s in status["sources"] if s["source"] == probe)
    moved = {s["source"] for s in status["sources"] if s["worker"] == victim}
    workers[victim].kill()
    killed = time.time()
    workers[victim].wait()
    streaming = fresh = None
    while (streaming is None or fresh is None) and time.time() - killed < FAILOVER_TIMEOUT_S:
        status = _status(replica)
        now = time.time()
        by_source = {s["source"]: s for s in status["sources"]}
        if streaming is None and all(
            by_source[s]["worker"] != victim and by_source[s]["state"] in READY for s in moved
        ):
            streaming = now - killed
        if fresh is None and (status["snapshot"]["as_of"] or 0) > killed:
            fresh = now - killed
        time.sleep(0.02)
    restores = [by_source[s].get("resumed", {}).get("seconds") for s in moved]
    reads = [by_source[s].get("resumed", {}).get("read_s") for s in moved]
    claimed = [by_source[s].get("resumed", {}).get("at", killed) - killed for s in moved]
    return {
        "sources_moved": len(moved),
        "streaming_again_s": None if streaming is None else round(streaming, 2),
        "fresh_again_s": None if fresh is None else round(fresh, 2),
        "restore_s_max": max((r for r in restores if r is not None), default=None),
        "read_s_max": max((r for r in reads if r is not None), default=None),  # of which the claim
        "claimed_s": [round(min(claimed), 2), round(max(claimed), 2)],  # first and last take-over
        "restored_from": sorted({by_source[s].get("resumed", {}).get("from", "?") for s in moved}),
    }


def _two_at_once(r1: ServeProcess, r2: ServeProcess, seconds: float) -> dict[str, Any]:
    """wrk on both replicas at once (half the connections each): their requests/s added up."""
    results: list[dict[str, Any]] = []
    half = CONNECTIONS["replication"] // 2
    threads = [
        threading.Thread(
            target=lambda r=r: results.append(wrk_load(r, r.url.rstrip("/") + PROBE_CHART, half, seconds))
        )
        for r in (r1, r2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "requests_per_s": sum(r["requests_per_s"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "server_cpu_cores": round(sum(r["server_cpu_cores"] for r in results), 2),
    }


if __name__ == "__main__":  # a quick look by hand: python bench/fleet_bench.py [students]
    import sys

    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    print(json.dumps(fleet(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, 1_000.0, 10.0), indent=2))
