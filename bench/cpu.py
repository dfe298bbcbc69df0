"""CPU time of processes, read from /proc (proc(5)), for the benchmarks' cost columns."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import EmbeddedCluster

_TICK = os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    """User + system CPU seconds of this process (the in-process pipeline's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def process_cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold blanks
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return total / _TICK


def postmaster_pid(config: cfg.SourcesConfig, data_dir: Path) -> int | None:
    if config.cluster is None:
        return None
    pidfile = EmbeddedCluster(config.cluster, data_dir).pgdata / "postmaster.pid"
    try:
        return int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def cluster_cpu_s(postmaster: int | None) -> float:
    """CPU seconds of the postmaster and its children (the backends, walsenders and workers)."""
    if postmaster is None:
        return 0.0
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == postmaster:  # ppid, field 4 of proc(5)
            children.append(int(entry.name))
    return process_cpu_s([postmaster, *children])


class Window:
    """Wall time and CPU, of one process and of the cluster, from its creation to `close()`."""

    def __init__(self, pid: int, postmaster: int | None) -> None:
        self.pid, self.postmaster = pid, postmaster
        self.t0 = time.perf_counter()
        self.process0, self.cluster0 = process_cpu_s([pid]), cluster_cpu_s(postmaster)

    def close(self) -> dict[str, float]:
        """`elapsed` seconds, and the process's and PostgreSQL's CPU over it, in cores."""
        elapsed = time.perf_counter() - self.t0
        process = process_cpu_s([self.pid]) - self.process0
        cluster = max(0.0, cluster_cpu_s(self.postmaster) - self.cluster0)  # an ended backend takes its CPU
        return {
            "elapsed": elapsed,
            "server_cpu_cores": round(process / elapsed, 2),
            "postgres_cpu_cores": round(cluster / elapsed, 2),
        }
