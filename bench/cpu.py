"""CPU time of processes, read from /proc (proc(5)), for the benchmarks' cost columns."""

from __future__ import annotations

import os
import resource
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
