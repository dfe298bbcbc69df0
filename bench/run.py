"""`make bench` / `pisa-pulse bench`: run the benchmarks, write their figures and tables.

    python bench/run.py [--profile smoke|quick|full] [--suite NAME ...] [--no-docs] [--tables-from JSON]
                        [--code DIR ...] [--compare LABEL=PATH ...]

`full` measures at PISA 2018's size (600,000 students) and beyond; `quick` at a tenth of it, in a few
minutes; `smoke` only checks that the suite runs (tiny sizes, for CI). Each run writes
bench/results/<date>-<host>-<profile>[-<suites>].json and, beside it, the Markdown tables; a `full`
run also replaces the tables it measured in docs/benchmarks.md (each sits between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`), so the page shows what this machine measured.
The 30-minute `soak` runs only when named. `--tables-from` re-renders the tables of an earlier result
(and for a `full` one, embeds them) without measuring. `--code` names the checkouts whose `pisa-pulse`
the `rate` suite runs, one after the other (e.g. a `git worktree` of the commit before a change, then
this one), so that before and after are measured in one sitting. `--compare` puts the tables of runs
of the other suites side by side (for instance each suite run in turn from a worktree of the commit
before a change and from this one), each run's rows labelled; a full run's go into the docs' `compare-`
blocks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.browser, shared with the browser tests

import api_bench
import aws_bench
import capture_bench
import ceiling_bench
import clients_bench
import dashboard_bench
import days_bench
import e2e_bench
import fleet_bench
import footprint_bench
import history_bench
import limits_bench
import live_bench
import poll_bench
import rate_bench
import serving_bench
import soak_bench
import sources_bench
import tables
from pisa_pulse.cli import DEMO_RATE
from pisa_pulse.sources.schema import SchemaName

tables.TABLES.update(history_bench.TABLES)  # the history suite's tables live beside it

CHECKOUT = Path(__file__).resolve().parents[1]
DOCS = CHECKOUT / "docs" / "benchmarks.md"
ADDED_UP = frozenset({"suites", "rate_demo", "rate_big"})
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "students": 2_000,
        "seconds": 2.0,
        "schemas": ("full",),
        "mixes": ((0.05, 0.02),),
        "sizes": (2_000,),
        "crowds": (2, 5),
        "rates": (500.0,),
        "scale_sizes": (2_000,),
        "decode_changes": 2_000,
        "clients_rounds": 1,
        "fleet_sizes": (2_000,),
        "live_sizes": (2_000,),
        "aws_sizes": (2_000,),
        "aws_dashboards": 5,
        "aws_runs": 3,
        # history: countries, boundaries, minutes held; days read, students per country, requests, s
        # per case; sync --once sizes, changes before the second run
        "history": ((20, 79), 5, 60, 7, 100, 20, 1.0, (2_000,), 100),
        "soak": (0.5, 10, 2_000),
        "history_soak": (0.5, 2, 2_000),
        "days": (1, 1_500),  # simulated days (bench/days_bench.py) and initial rows per country
        "page": (0.25, 5.0),
        # rate: demo minutes, warm-up s, sample s, demo options; students, rate, minutes of the big case
        "rate": (0.1, 5.0, 3.0, ["--countries", "alb,arg", "--rows-per-country", "50"], 2_000, 200.0, 0.1),
    },
    "quick": {
        "students": 60_000,
        "seconds": 10.0,
        "schemas": ("slim", "full"),
        "mixes": ((0.0, 0.0), (0.05, 0.02)),
        "sizes": (60_000,),
        "crowds": (10, 100),
        "rates": (500.0, 1_000.0, 2_000.0),
        "scale_sizes": (20_000, 60_000),
        "decode_changes": 50_000,
        "clients_rounds": 2,
        "fleet_sizes": (60_000,),
        "live_sizes": (60_000,),
        "aws_sizes": (60_000,),
        "aws_dashboards": 50,
        "aws_runs": 5,
        "history": ((20, 79), 30, 1_440, 7, 2_000, 200, 10.0, (60_000,), 1_000),
        "soak": (5.0, 200, 60_000),
        "history_soak": (10.0, 10, 60_000),
        "days": (3, 5_000),
        "page": (2.0, 15.0),
        "rate": (2.0, 30.0, 10.0, [], 60_000, 1_000.0, 1.0),
    },
    "full": {
        "students": 600_000,
        "seconds": 30.0,
        "schemas": ("slim", "full"),
        "mixes": ((0.0, 0.0), (0.05, 0.02)),  # shares of corrections and withdrawals in the traffic
        "sizes": (60_000, 600_000, 2_400_000),
        "crowds": serving_bench.CROWDS,
        "rates": (250.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0),
        "scale_sizes": (60_000, 600_000, 2_400_000),
        "decode_changes": 200_000,
        "clients_rounds": 2,
        "fleet_sizes": (60_000, 600_000),  # checkpoint bytes at both; the failover target at 600,000
        "live_sizes": (60_000, 600_000),  # commit to chart, the code before issue 18 beside this one
        "aws_sizes": (60_000, 600_000),  # the Lambda handler and the direct one side by side
        "aws_dashboards": 50,  # polling six charts a second each, through one container
        "aws_runs": 9,  # fresh interpreters per import time (median)
        # history: store writes at 20 and 79 countries (a source each), 60 boundaries on a day held; a
        # week of 20 sources read through serve (make demo's 2,000 students each), 1,000 requests or
        # 30 s per case; sync --once at 60,000 and 600,000 students, 1,000 changes before the rerun
        "history": ((20, 79), 60, 1_440, 7, 2_000, 1_000, 30.0, (60_000, 600_000), 1_000),
        "soak": (30.0, 200, 60_000),  # minutes, dashboards, students, at 1,000 operations/s
        "history_soak": (120.0, 10, 60_000),  # minutes, dashboards, students, at `make demo`'s rate
        "days": (14, 30_000),  # a week to fill the window of arrival minutes, a week beyond; 600,000 rows
        "page": (10.0, 30.0),  # the dashboard left open: minutes, seconds between samples
        "rate": (10.0, 30.0, 10.0, [], 600_000, 1_000.0, 2.0),  # `make demo` as is; 600,000 at 1,000/s
    },
}
RATE = 1_000.0  # submissions/s: the freshness targets' traffic


def run_sources(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["seeding"], r["traffic"] = [], []
    schemas: tuple[SchemaName, ...] = p["schemas"]
    for schema in schemas:
        print(f"seeding {p['students']:,} students, {schema} ...", flush=True)
        r["seeding"].append(sources_bench.seeding(schema, p["students"]))
    for schema in schemas:
        for updates, deletes in p["mixes"]:
            print(f"sustained traffic, {schema}, updates {updates} deletes {deletes} ...", flush=True)
            r["traffic"].append(sources_bench.sustained_traffic(schema, p["seconds"], updates, deletes))


def run_capture(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["latency"] = []
    for rate in p["rates"]:
        print(f"pipeline latency, full, {rate:,.0f} ops/s ...", flush=True)
        r["latency"].append(capture_bench.latency("full", rate, p["seconds"]))
    print("pipeline catch-up (maximum change rate), full, profiled ...", flush=True)
    r["catch_up"] = [capture_bench.catch_up("full", p["seconds"] * 2 / 3)]


def run_memory(p: dict[str, Any], r: dict[str, Any]) -> None:
    print(f"pipeline memory, {p['students']:,} students, full (a fresh process) ...", flush=True)
    r["memory"] = [capture_bench.memory("full", p["students"])]


def run_freshness(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["freshness"] = []
    for mode in ("replication", "poll", "direct"):
        students = p["scale_sizes"][0]
        print(f"end-to-end freshness over HTTP, {mode}, {students:,} students, {RATE:,.0f} ops/s ...")
        r["freshness"].append(e2e_bench.freshness(mode, students, RATE, p["seconds"]))
    for students in p["scale_sizes"][1:]:
        print(f"end-to-end freshness over HTTP, replication, {students:,} students ...", flush=True)
        r["freshness"].append(e2e_bench.freshness("replication", students, RATE, p["seconds"]))


def run_live(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["live"] = []
    for students in p["live_sizes"]:
        print(f"commit to chart before and after issue 18, {students:,} students, {RATE:,.0f} ops/s ...")
        r["live"] += live_bench.commit_to_chart(students, RATE, p["seconds"])


def run_ceiling(p: dict[str, Any], r: dict[str, Any]) -> None:
    students = p["live_sizes"][0]
    print("serving against the same server's static route, before and after issue 18 ...", flush=True)
    r["ceiling"] = ceiling_bench.ceiling(students, p["seconds"])


def run_footprint(p: dict[str, Any], r: dict[str, Any]) -> None:
    students = p["live_sizes"][-1]
    print(
        f"serve at {students:,} students: start to streaming, memory, catch-up, before and after issue 18 ..."
    )
    r["footprint"] = footprint_bench.footprint(students, p["seconds"])


def run_poll_budget(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["poll_budget"] = []
    for students in p["live_sizes"]:
        print(
            f"poll mode, {students:,} students: reads and source CPU per poll, before and after issue 18 ..."
        )
        r["poll_budget"] += poll_bench.budget(students, p["seconds"])


def run_serving(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["serving"] = []
    for students in p["sizes"]:
        print(f"serving, {students:,} students: crowds of dashboards and wrk, both modes ...", flush=True)
        r["serving"] += serving_bench.serving(students, p["seconds"], p["crowds"])


def run_poll(p: dict[str, Any], r: dict[str, Any]) -> None:
    students = p["sizes"][0]
    print(f"poll mode freshness (in process), full, 1,000 ops/s, {students:,} students ...", flush=True)
    r["poll_freshness"] = [poll_bench.freshness(RATE, p["seconds"], students)]
    r["poll_cost"] = []
    for students in p["sizes"][:2]:
        print(f"poll mode source cost, full, {students:,} students ...", flush=True)
        r["poll_cost"].append(poll_bench.source_cost(students, p["seconds"]))


def run_limits(p: dict[str, Any], r: dict[str, Any]) -> None:
    print("physical limits: PostgreSQL inserts, a static HTTP answer, pgoutput decoding ...", flush=True)
    r["limits"] = {
        "postgres_insert": limits_bench.postgres_insert(p["students"] // 10, p["seconds"]),
        "static_http": limits_bench.static_http(p["seconds"]),
        "pgoutput_decode": limits_bench.pgoutput_decode(p["decode_changes"]),
    }


def run_clients(p: dict[str, Any], r: dict[str, Any]) -> None:
    print(f"slow clients: wrk alone and beside {clients_bench.STALLED:,} stalled connections ...", flush=True)
    r["clients"] = clients_bench.clients(p["seconds"], p["clients_rounds"])


def run_fleet(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["fleet"] = []
    for students in p["fleet_sizes"]:
        print(
            f"fleet: workers, NATS and replicas beside serve, {students:,} students, 1,000 ops/s ...",
            flush=True,
        )
        r["fleet"].append(fleet_bench.fleet(students, RATE, p["seconds"]))


def run_aws(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["aws"], r["aws_latency"] = [], []
    for students in p["aws_sizes"]:
        print(
            f"aws: serve publishing to DynamoDB and S3 (moto), the Lambda handler and the direct one, "
            f"{students:,} students, {RATE:,.0f} ops/s ...",
            flush=True,
        )
        case = aws_bench.aws(students, RATE, p["seconds"], p["aws_dashboards"], p["aws_runs"])
        r["aws_latency"] += case.pop("latency")
        r["aws"].append(case)
    print("aws: the slim package against a full install ...", flush=True)
    r["aws_package"] = [aws_bench.sizes()]


def run_history(p: dict[str, Any], r: dict[str, Any]) -> None:
    counts, boundaries, held, days, per_country, requests, budget_s, sizes, changes = p["history"]
    print(f"history: writes per minute boundary, {boundaries} boundaries, DuckDB, PostgreSQL ...", flush=True)
    r["history_writes"] = history_bench.writes(counts, boundaries, held)
    print(f"history: {days} days of minutes read back through serve, DuckDB and PostgreSQL ...", flush=True)
    r["history_reads"] = history_bench.reads(days, per_country, requests, budget_s)
    r["history_sync"] = []
    for students in sizes:
        print(f"history: sync --once, {students:,} students, {changes:,} changes ...", flush=True)
        r["history_sync"] += history_bench.sync_runs(students, changes)


def run_dashboard(p: dict[str, Any], r: dict[str, Any]) -> None:
    minutes, sample_s = p["page"]
    print(f"dashboard left open for {minutes} minutes ...", flush=True)
    r["dashboard"] = [dashboard_bench.page_memory(minutes, sample_s)]


def run_soak(p: dict[str, Any], r: dict[str, Any]) -> None:
    minutes, dashboards, students = p["soak"]
    print(f"soak: {minutes} minutes, 1,000 ops/s, {dashboards} dashboards ...", flush=True)
    r["soak"] = [soak_bench.soak(minutes, RATE, dashboards, students)]


def run_history_soak(p: dict[str, Any], r: dict[str, Any]) -> None:
    minutes, dashboards, students = p["history_soak"]
    print(f"history soak: {minutes} minutes, {DEMO_RATE:,.0f} ops/s, {dashboards} dashboards ...", flush=True)
    r["history_soak"] = [soak_bench.soak(minutes, DEMO_RATE, dashboards, students)]


def run_days(p: dict[str, Any], r: dict[str, Any]) -> None:
    r["days"] = []
    for window in (True, False):
        what = "the window of arrival minutes" if window else "every arrival minute kept (before)"
        days, copied = p["days"]
        print(f"{days} simulated days, {what} ...", flush=True)
        r["days"].append(days_bench.simulate(days, window, copied))


def run_rate(p: dict[str, Any], r: dict[str, Any]) -> None:
    minutes, warmup_s, sample_s, demo_args, students, rate, big_minutes = p["rate"]
    r["rate_demo"], r["rate_big"] = [], []
    for code in p["codes"]:
        print(f"demo as make demo runs it, {minutes} minutes, code {code} ...", flush=True)
        r["rate_demo"].append(rate_bench.demo(code, minutes, warmup_s, sample_s, demo_args))
    for code in p["codes"]:
        print(
            f"{students:,} students, traffic {rate:,.0f}/s, serve's initial copy, code {code} ...", flush=True
        )
        r["rate_big"].append(rate_bench.big(code, students, rate, big_minutes, warmup_s, sample_s))


SUITES: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "sources": run_sources,
    "capture": run_capture,
    "memory": run_memory,
    "freshness": run_freshness,
    "live": run_live,
    "ceiling": run_ceiling,
    "footprint": run_footprint,
    "poll-budget": run_poll_budget,
    "serving": run_serving,
    "poll": run_poll,
    "limits": run_limits,
    "clients": run_clients,
    "fleet": run_fleet,
    "aws": run_aws,
    "history": run_history,
    "dashboard": run_dashboard,
    "soak": run_soak,
    "history-soak": run_history_soak,
    "days": run_days,
    "rate": run_rate,
}
ALL = tuple(s for s in SUITES if s not in ("soak", "history-soak", "rate"))  # the long ones run when named


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


def update_docs(path: Path, blocks: dict[str, str]) -> list[str]:
    """Replace each `<!-- bench:NAME -->...<!-- /bench:NAME -->` block of `path`; returns the names."""
    text = path.read_text()
    replaced = []
    for name, body in blocks.items():
        found = re.search(rf"<!-- bench:{name} -->\n(.*?)<!-- /bench:{name} -->", text, re.S)
        if found:
            text = text[: found.start(1)] + body + "\n" + text[found.end(1) :]
            replaced.append(name)
    path.write_text(text)
    return replaced


def measure(
    profile: str, suites: tuple[str, ...], path: Path, codes: tuple[Path, ...] = (CHECKOUT,)
) -> dict[str, Any]:
    """Run the suites of a profile, saving the result to `path` after each (a crash keeps the rest)."""
    if {"serving", "limits", "clients", "fleet"} & set(suites):
        api_bench.require_wrk()  # before anything runs: fail in one line, not after the other suites
    result: dict[str, Any] = {
        "profile": profile,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "suites": list(suites),
        "suite_seconds": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    for suite in suites:
        started = time.monotonic()
        SUITES[suite]({**PROFILES[profile], "codes": codes}, result)
        result["suite_seconds"][suite] = round(time.monotonic() - started)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{suite}: done in {result['suite_seconds'][suite]} s", flush=True)
    return result


def merged(paths: list[Path]) -> dict[str, Any]:
    """Several results as one (for tables from runs of different suites); later files win.

    Rows of the suites run per checkout (`--code`) add up instead, so that runs of the code before and
    after a change, made one after the other, make one table.
    """
    result: dict[str, Any] = {}
    for path in paths:
        for key, value in json.loads(path.read_text()).items():
            result[key] = result.get(key, []) + value if key in ADDED_UP else value
    return result


def compare(runs: list[str], no_docs: bool) -> int:
    """Print (and for full runs, embed) the tables of several runs side by side."""
    results = []
    for run in runs:
        label, _, where = run.partition("=")
        path = Path(where)
        paths = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not label or not where or not paths or not all(p.is_file() for p in paths):
            raise SystemExit(f"bench: --compare {run!r} names no results; pass LABEL=FILE.json or LABEL=DIR")
        results.append((label, merged(paths)))
    blocks = tables.compared(results, source=", ".join(run.partition("=")[2] for run in runs))
    print("\n\n".join(blocks.values()))
    if results[-1][1]["profile"] == "full" and not no_docs:
        replaced = update_docs(DOCS, blocks)
        print(f"\nupdated {DOCS.name}: {', '.join(replaced) or 'no tables'}")
    return 0


def main() -> int:
    """Run the chosen suites of the chosen profile (or read results) and write the tables."""
    parser = argparse.ArgumentParser(prog="pisa-pulse bench", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="sizes and durations")
    parser.add_argument(
        "--suite", choices=(*SUITES, "all"), nargs="+", default=["all"], help="which benchmarks (default all)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    parser.add_argument("--no-docs", action="store_true", help="full profile: leave docs/benchmarks.md alone")
    parser.add_argument(
        "--tables-from",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: write the tables of these results (merged)",
    )
    parser.add_argument(
        "--code",
        type=Path,
        nargs="+",
        default=[CHECKOUT],
        metavar="DIR",
        help="rate suite: the checkouts whose pisa-pulse to run, in turn (default: this one)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=PATH",
        help="measure nothing: the tables of several runs side by side, e.g. c10b6b1=DIR 45014da=DIR "
        "(a PATH is a results file or a folder of them, merged)",
    )
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare, args.no_docs)
    if args.tables_from:
        result = merged(args.tables_from)
        sources = ", ".join(p.name for p in args.tables_from)
    else:
        suites = ALL if "all" in args.suite else tuple(dict.fromkeys(args.suite))
        name = f"{datetime.date.today().isoformat()}-{socket.gethostname()}-{args.profile}"
        if suites != ALL:
            name += "-" + "-".join(suites)
        path = args.out / f"{name}.json"
        result = measure(args.profile, suites, path, tuple(c.resolve() for c in args.code))
        sources = path.name
    blocks = tables.markdown(result, source=sources)
    if not args.tables_from:
        path.with_suffix(".md").write_text("\n\n".join(blocks.values()) + "\n")
        print(f"\nwrote {path} and {path.with_suffix('.md').name}\n")
    print("\n\n".join(blocks.values()))
    if result["profile"] == "full" and not args.no_docs:
        replaced = update_docs(DOCS, blocks)
        print(f"\nupdated {DOCS.name}: {', '.join(replaced) or 'no tables'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
