"""`make bench`: run the benchmarks, write bench/results/<date>-<host>.json and a Markdown table.

    python bench/run.py [--profile quick|full|smoke]

`full` measures at PISA 2018's size (600,000 students); `quick` at a tenth of it; `smoke` only checks
that the suite runs (tiny sizes, for CI). The Markdown printed at the end is what docs/benchmarks.md
embeds. `--suite soak` (30 minutes in `full`) runs only when named: it is not part of `all`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from pisa_pulse.sources.schema import SchemaName

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.browser, shared with the browser tests

import api_bench
import capture_bench
import dashboard_bench
import poll_bench
import soak_bench
import sources_bench

PROFILES = {
    "smoke": {"students": 2_000, "traffic_s": 2.0, "latency_s": 3.0, "backlog_s": 2.0, "api_s": 3.0},
    "quick": {"students": 60_000, "traffic_s": 10.0, "latency_s": 10.0, "backlog_s": 5.0, "api_s": 10.0},
    "full": {"students": 600_000, "traffic_s": 30.0, "latency_s": 30.0, "backlog_s": 20.0, "api_s": 30.0},
}
# The soak: (minutes, dashboards, students), at 1,000 operations/s.
SOAK = {"smoke": (0.5, 10, 2_000), "quick": (5.0, 200, 60_000), "full": (30.0, 200, 60_000)}
# The dashboard left open: (minutes, seconds between samples).
PAGE_MINUTES = {"smoke": (0.25, 5.0), "quick": (2.0, 15.0), "full": (10.0, 30.0)}
# The API under load at each size, in both modes: the pipeline's cost should not grow with rows.
API_STUDENTS = {"smoke": (2_000,), "quick": (60_000,), "full": (60_000, 600_000)}
SUITES = ("sources", "capture", "api", "poll", "dashboard")


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and PostgreSQL version of this machine."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    pg = subprocess.run(["pg_config", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "postgresql": pg,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def _table(header: str, rows: list[str]) -> list[str]:
    """One Markdown table: a header row `| a | b |`, its rule (first column left, others right), rows."""
    if not rows:
        return []
    columns = header.count("|") - 1
    return ["", header, "|---|" + "---:|" * (columns - 1), *rows]


def markdown(result: dict[str, Any]) -> str:
    """The tables docs/benchmarks.md embeds, one per suite that ran."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['postgresql']}, "
        f"Python {m['python']}. Profile `{result['profile']}`, {result['date']}."
    ]
    lines += _table(
        "| seeding | students | seconds | students/s |",
        [
            f"| {s['schema']} | {s['students']:,} | {s['seconds']} | {s['rows_per_s']:,} |"
            for s in result.get("seeding", [])
        ],
    )
    lines += _table(
        "| sustained traffic | updates | deletes | operations/s | net rows/s (counted by PostgreSQL) |",
        [
            f"| {t['schema']} | {t['updates']} | {t['deletes']} | {t['ops_per_s']:,} | "
            f"{t['net_rows_per_s_counted_by_postgres']:,} |"
            for t in result.get("traffic", [])
        ],
    )
    lines += _table(
        "| commit-to-aggregate latency | target ops/s | changes/s | transactions/s | p50 ms | p99 ms | "
        "max ms | pipeline CPU (cores) |",
        [
            f"| {c['schema']} | {c['target_ops_per_s']:,.0f} | {c['changes_per_s']:,} | "
            f"{c['transactions_per_s']:,} | {c['p50_ms']} | {c['p99_ms']} | {c['max_ms']} | "
            f"{c['pipeline_cpu_share']} |"
            for c in result.get("latency", [])
        ],
    )
    lines += _table(
        "| catch-up (max change rate) | changes | seconds | changes/s | CPU µs/change |",
        [
            f"| {c['schema']} | {c['changes']:,} | {c['seconds']} | {c['changes_per_s']:,} | "
            f"{c['cpu_us_per_change']} |"
            for c in result.get("catch_up", [])
        ],
    )
    lines += _table(
        "| pipeline memory | students | initial copy s | RSS MB | peak RSS MB |",
        [
            f"| {c['schema']} | {c['students']:,} | {c['copy_seconds']} | {c['rss_mb']} | "
            f"{c['peak_rss_mb']} |"
            for c in result.get("memory", [])
        ],
    )
    lines += _table(
        f"| chart API under load (`GET {api_bench.CHART}`) | students | connections | requests/s | "
        "p50 ms | p99 ms | non-2xx | server CPU (cores) | PostgreSQL CPU (cores) |",
        [
            f"| {c['mode']}, {c['schema']} | {c['students']:,} | {c['connections']} | "
            f"{c['requests_per_s']:,} | {c['p50_ms']} | {c['p99_ms']} | {c['non_2xx']:,} | "
            f"{c['server_cpu_cores']} | {c['postgres_cpu_cores']} |"
            for c in result.get("api", [])
        ],
    )
    lines += _table(
        "| poll mode freshness (commit to applied) | students | traffic ops/s | markers | p50 ms | p95 ms | "
        "p99 ms | max ms | pipeline CPU (cores) | poll p50 / p99 ms |",
        [
            f"| {c['schema']} | {c['students']:,} | {c['target_ops_per_s']:,.0f} | {c['markers']} | "
            f"{c['p50_ms']} | {c['p95_ms']} | {c['p99_ms']} | {c['max_ms']} | {c['pipeline_cpu_share']} | "
            f"{c['poll_p50_ms']} / {c['poll_p99_ms']} |"
            for c in result.get("poll_freshness", [])
        ],
    )
    lines += _table(
        "| source cost | students | polls/s | PostgreSQL CPU ms per poll | CPU cores for polling | "
        "index entries per poll | ids read per poll | rows read per poll | reconciling everything at once: "
        "ms (CPU ms, all sources) | direct mode: CPU ms per round | direct: rows read per round |",
        [
            f"| {c['schema']} | {c['students']:,} | {c['polls_per_s']} | {c['pg_cpu_ms_per_poll']} | "
            f"{c['pg_cpu_cores_polling']} | {c['index_entries_per_poll']:,} | {c['ids_read_per_poll']} | "
            f"{c['rows_read_per_poll']} | {c['reconcile_ms']} ({c['reconcile_pg_cpu_ms']:,}) | "
            f"{c['direct_pg_cpu_ms_per_round']:,} | {c['direct_rows_read_per_round']:,} |"
            for c in result.get("poll_cost", [])
        ],
    )
    lines += _table(
        "| soak | minutes | students | ops/s | dashboards | requests | errors | RSS first / last / max MB | "
        "RSS slope MB/hour | data age p50 / p99 ms | WAL retained by slots max / last MB |",
        [
            f"| full | {c['minutes']} | {c['students']:,} | {c['rate']:,.0f} | {c['dashboards']} | "
            f"{c['requests']:,} | {c['errors']} | {c['rss_first_mb']} / {c['rss_last_mb']} / "
            f"{c['rss_max_mb']} | {c['rss_slope_mb_per_hour']} | {c['age_p50_ms']} / {c['age_p99_ms']} | "
            f"{c['wal_retained_max_mb']} / {c['wal_retained_last_mb']} |"
            for c in result.get("soak", [])
        ],
    )
    lines += _table(
        "| dashboard left open | minutes | JS heap first / last / max MB | "
        "heap slope MB/hour (all / 2nd half) | DOM nodes first / last | listeners first / last | "
        "max requests per chart per s | console errors |",
        [
            f"| {d['students']:,} students, 20/s traffic | {d['minutes']} | {d['heap_first_mb']} / "
            f"{d['heap_last_mb']} / {d['heap_max_mb']} | {d['heap_slope_mb_per_hour']} / "
            f"{d['heap_slope_second_half_mb_per_hour']} | "
            f"{d['nodes_first']} / {d['nodes_last']} | {d['listeners_first']} / {d['listeners_last']} | "
            f"{d['max_requests_per_chart_per_s']} | {len(d['console_errors'])} |"
            for d in result.get("dashboard", [])
        ],
    )
    return "\n".join(lines)


def main() -> int:
    """Run the chosen profile and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument(
        "--suite", choices=(*SUITES, "all", "soak"), default="all", help="which benchmarks to run"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="students for the api and poll suites (default: the profile's)"
    )
    args = parser.parse_args()
    p = PROFILES[args.profile]
    sizes = tuple(args.sizes or API_STUDENTS[args.profile])
    result: dict[str, Any] = {
        "profile": args.profile,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
    }
    schemas: tuple[SchemaName, ...] = ("slim", "full")
    if args.suite in ("api", "all"):
        api_bench.require_wrk()  # before anything runs: fail in one line, not after the other suites
    if args.suite in ("sources", "all"):
        result["seeding"], result["traffic"] = [], []
        for schema in schemas:
            print(f"seeding {p['students']:,} students, {schema} ...", flush=True)
            result["seeding"].append(sources_bench.seeding(schema, int(p["students"])))
        for schema in schemas:
            for updates, deletes in ((0.0, 0.0), (0.05, 0.02)):
                print(f"sustained traffic, {schema}, updates {updates} deletes {deletes} ...", flush=True)
                result["traffic"].append(
                    sources_bench.sustained_traffic(schema, float(p["traffic_s"]), updates, deletes)
                )
    if args.suite in ("capture", "all"):
        result["latency"] = []
        for rate in (1_000.0, 5_000.0):
            print(f"pipeline latency, full, {rate:,.0f} ops/s ...", flush=True)
            result["latency"].append(capture_bench.latency("full", rate, float(p["latency_s"])))
        print("pipeline catch-up, full ...", flush=True)
        result["catch_up"] = [capture_bench.catch_up("full", float(p["backlog_s"]))]
        print(f"pipeline memory, {p['students']:,} students, full ...", flush=True)
        result["memory"] = [capture_bench.memory("full", int(p["students"]))]
    if args.suite in ("api", "all"):
        result["api"] = []
        for mode, students in [(mode, n) for mode in ("replication", "direct") for n in sizes]:
            print(f"chart API under load, {mode}, {students:,} students, full ...", flush=True)
            result["api"].append(api_bench.load(mode, students, float(p["api_s"])))
    if args.suite in ("poll", "all"):
        print(f"poll mode freshness, full, 1,000 ops/s, {sizes[0]:,} students ...")
        result["poll_freshness"] = [poll_bench.freshness(1_000.0, float(p["latency_s"]), sizes[0])]
        result["poll_cost"] = []
        for students in sizes:
            print(f"poll mode source cost, full, {students:,} students ...", flush=True)
            result["poll_cost"].append(poll_bench.source_cost(students, float(p["api_s"])))
    if args.suite == "soak":
        minutes, dashboards, students = SOAK[args.profile]
        print(f"soak: {minutes} minutes, 1,000 ops/s, {dashboards} dashboards ...", flush=True)
        result["soak"] = [soak_bench.soak(minutes, 1_000.0, dashboards, students)]
    if args.suite in ("dashboard", "all"):
        minutes, sample_s = PAGE_MINUTES[args.profile]
        print(f"dashboard left open for {minutes} minutes ...", flush=True)
        result["dashboard"] = [dashboard_bench.page_memory(minutes, sample_s)]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['date']}-{result['machine']['host']}-{args.profile}-{args.suite}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
