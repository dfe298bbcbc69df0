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


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:  # ppid, field 4 of proc(5)
            found.append(int(entry.name))
    return found


def family_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children: `serve` and its capture process, or the postmaster
    and its backends, walsenders and workers."""
    return process_cpu_s([pid, *children(pid)])


def cluster_cpu_s(postmaster: int | None) -> float:
    """CPU seconds of the postmaster and its children (the backends, walsenders and workers)."""
    return 0.0 if postmaster is None else family_cpu_s(postmaster)


class Window:
    """Wall time and CPU of a server (with its capture process) and of the cluster, until `close()`."""

    def __init__(self, pid: int, postmaster: int | None) -> None:
        self.pid, self.postmaster = pid, postmaster
        self.t0 = time.perf_counter()
        self.http0, self.server0 = process_cpu_s([pid]), family_cpu_s(pid)
        self.cluster0 = cluster_cpu_s(postmaster)

    def close(self) -> dict[str, float]:
        """`elapsed` seconds, and CPU over it in cores: the server's processes together, its HTTP
        process alone, and PostgreSQL's."""
        elapsed = time.perf_counter() - self.t0
        http = process_cpu_s([self.pid]) - self.http0
        server = max(http, family_cpu_s(self.pid) - self.server0)  # a restarted child takes its CPU along
        cluster = max(0.0, cluster_cpu_s(self.postmaster) - self.cluster0)  # an ended backend takes its CPU
        return {
            "elapsed": elapsed,
            "server_cpu_cores": round(server / elapsed, 2),
            "http_cpu_cores": round(http / elapsed, 2),
            "postgres_cpu_cores": round(cluster / elapsed, 2),
        }
