"""The Markdown tables of a benchmark result: one block per table, named as in docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crowd import answered_per_s
from figures import per_second

Row = dict[str, Any]


def markdown(result: dict[str, Any], source: str) -> dict[str, str]:
    """Every table the result has figures for, each ending with the results file it comes from."""
    blocks = {"machine": _machine(result)}
    for name, (header, rows) in _tables(result).items():
        blocks[name] = "\n".join(_table(header, rows))
    note = f"\n\n<sub>From bench/results/: {source} (profile `{result['profile']}`, {result['date']}).</sub>"
    return {name: body + (note if name != "machine" else "") for name, body in blocks.items()}


def compared(results: list[tuple[str, dict[str, Any]]], source: str) -> dict[str, str]:
    """The tables of runs of the same suites (the code before and after a change) side by side.

    Each block is named `compare-<table>`; its first column names the run, and each case's rows follow
    one another, in the order the runs are given.
    """
    tabled = [(label, _tables(result)) for label, result in results]
    blocks = {}
    for name, (header, _) in tabled[-1][1].items():
        rows = []
        longest = max(len(t[name][1]) for _, t in tabled if name in t)
        for i in range(longest):
            rows += [f"| {label} {t[name][1][i]}" for label, t in tabled if name in t and i < len(t[name][1])]
        blocks[f"compare-{name}"] = "\n".join(_table("| code " + header, rows))
    dates = sorted({r["date"] for _, r in results})
    note = f"\n\n<sub>From {source} (profile `{results[-1][1]['profile']}`, {', '.join(dates)}).</sub>"
    return {name: body + note for name, body in blocks.items()}


def _tables(result: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """Every table the result has figures for: its header and rows, by block name."""
    tables = {}
    for name, (key, header, row) in TABLES.items():
        rows = result.get(key) or []
        if rows:
            tables[name] = (header, [row(r) for r in rows])
    if result.get("limits"):
        tables["limits"] = _limits(result)
    headline = _headline(result.get("serving") or [])
    if headline:
        tables["headline"] = headline
    profile = (result.get("catch_up") or [{}])[0].get("profile", {}).get("top")
    if profile:
        tables["profile"] = (
            "| where the pipeline's time goes at full speed (py-spy) | share of samples |",
            [f"| `{f['function']}` | {f['share']:.1%} |" for f in profile],
        )
    return tables


def _machine(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['postgresql']}, "
        f"Python {m['python']}. Profile `{result['profile']}`, {result['date']}."
    )


def _table(header: str, rows: list[str]) -> list[str]:
    """One Markdown table: a header row `| a | b |`, its rule (first column left, others right), rows."""
    columns = header.count("|") - 1
    return [header, "|---|" + "---:|" * (columns - 1), *rows]


def _n(value: Any) -> str:
    """A figure for a table: thousands separated, `-` for none."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _wrk_rate(run: Row) -> float:
    """wrk's requests/s from its count (direct mode answers a few requests in a whole run)."""
    return per_second(run["requests"], run["seconds"])


def _cores(case: Row, *more: str) -> str:
    """CPU cores by kind of process (rate_bench.KINDS), as `a / b / c / d / e`."""
    kinds = ("autovacuum", "backends", "walsenders", "other postgres", "pisa-pulse", *more)
    return " / ".join(_n(case.get(f"{k} cores")) for k in kinds)


def _after_copies(case: Row) -> float | None:
    """Seconds from the last source's `streaming` log line to /api/status saying every source streams."""
    if "first_copy_to_all_streaming_s" not in case:
        return None
    logged = case["start_to_first_copy_s"] + case["first_copy_to_all_streaming_s"]
    return round(float(case["serve_to_streaming_s"] - logged), 1)


def _soaked(c: Row) -> list[Any]:
    """A soak's run (minutes, rate, dashboards), its answers and its rows and RSS, first and last."""
    return [
        c["minutes"],
        c["rate"],
        c["dashboards"],
        c["requests"],
        c["errors"],
        f"{c['rows_first']:,} / {c['rows_last']:,}",
        f"{c['rss_first_mb']} / {c['rss_last_mb']}",
        c["rss_bytes_per_row"],
    ]


def _cells(*values: Any) -> str:
    return "| " + " | ".join(_n(v) for v in values) + " |"


def _headline(serving: list[Row]) -> tuple[str, list[str]] | None:
    """Pipeline against direct mode at full speed (wrk), per size."""
    best = {(r["mode"], r["students"]): r for r in serving if r["dashboards"] == "wrk"}
    rows = []
    for (mode, students), pipeline in sorted(best.items(), key=lambda kv: kv[0][1]):
        direct = best.get(("direct", students))
        if mode != "replication" or direct is None:
            continue
        direct_rate = direct["requests"] / direct["seconds"]  # a few answers in the run: no rounding
        ratio = pipeline["requests_per_s"] / direct_rate if direct["requests"] else float("inf")
        rows.append(
            _cells(
                students,
                pipeline["requests_per_s"],
                pipeline["p99_ms"],
                round(direct_rate, 3),
                direct["p99_ms"],
                f"{ratio:,.0f}x",
            )
        )
    if not rows:
        return None
    header = (
        "| students (pipeline against direct mode, one chart, wrk) | pipeline requests/s | pipeline p99 ms | "
        "direct requests/s | direct p99 ms | pipeline / direct |"
    )
    return header, rows


def _limits(result: dict[str, Any]) -> tuple[str, list[str]]:
    """The machine's best beside ours, as a fraction where the same run measured ours."""
    limits = result["limits"]
    insert, http = limits["postgres_insert"], limits["static_http"]
    decode = {(c["interface"], c["columns"]): c["changes_per_s"] for c in limits["pgoutput_decode"]["cases"]}
    wrk = [r["requests_per_s"] for r in result.get("serving", []) if r["dashboards"] == "wrk"]
    writes = [t["ops_per_s"] for t in result.get("traffic", []) if t["schema"] == "full" and not t["updates"]]
    seeding = [s["rows_per_s"] for s in result.get("seeding", []) if s["schema"] == "full"]
    catch_up = [c["changes_per_s"] for c in result.get("catch_up", [])]

    def row(limit: str, best: float, ours: str, figures: list[float]) -> str:
        mine = max(figures, default=None)
        return _cells(
            limit, best, ours if mine else "-", mine, f"{mine / best:.0%}" if mine and best else "-"
        )

    return "| physical limit of this machine | best | ours | figure | fraction of the limit |", [
        row(
            "PostgreSQL: rows/s of INSERT ... SELECT inside the server, full width",
            insert["bulk_rows_per_s"],
            "seeding, students/s (generated in Python, COPY)",
            seeding,
        ),
        row(
            "the same",
            insert["bulk_rows_per_s"],
            "traffic writer, inserts/s (generated in Python, COPY in batches)",
            writes,
        ),
        row(
            f"PostgreSQL: one-row INSERT transactions/s, full width, {insert['single_writers']} writers",
            insert["single_transactions_per_s"],
            "",
            [],
        ),
        row(
            "pgoutput: changes/s decoded and streamed to a client that drops them (one slot, chart columns)",
            decode[("stream", "chart")],
            "pipeline catch-up, changes/s (20 slots, applied)",
            catch_up,
        ),
        row("pgoutput: the same, every column published", decode[("stream", "all")], "", []),
        row(
            "pgoutput: changes/s decoded in SQL (no client, chart columns)", decode[("sql", "chart")], "", []
        ),
        row(
            "a static 1 KB answer from the same server stack (uvicorn, Starlette), requests/s",
            http["requests_per_s"],
            "a chart from memory, requests/s (wrk)",
            wrk,
        ),
    ]


def _p50_p99(spread: dict[str, Any]) -> tuple[Any, Any]:
    """A latency spread's p50 and p99 (None where it has none)."""
    return spread.get("p50_ms"), spread.get("p99_ms")


def _ratio(part: float | None, whole: float | None) -> str:
    return "-" if not part or not whole else f"{part / whole:.2f}"


def _mb(count: int | None) -> str:
    return "-" if count is None else f"{count / 1e6:,.2f}"


def _per_s(case: Row, to: str, what: str) -> Any:
    """Writes, deletions or refused writes per second to the first target of that kind."""
    found = [figures for target, figures in case["writes"]["per_s"].items() if target.startswith(to)]
    return found[0][what] if found else None


TABLES: dict[str, tuple[str, str, Callable[[Row], str]]] = {
    "aws_latency": (
        "aws_latency",
        "| students | traffic ops/s | Lambda handler in process, cache hit: p50 ms | p99 ms | `countries=`: "
        "p50 ms | p99 ms | cache miss (BatchGetItem, body rendered): p50 ms | p99 ms | `countries=`: p50 ms "
        "| p99 ms | ceiling, a bare GetItem to moto: p50 ms | p99 ms | miss / ceiling (p50) | `direct` "
        "handler: p50 ms | p99 ms | requests | direct / miss (p50) |",
        lambda c: _cells(
            c["students"],
            c["ops_per_s"] or "paused",
            *_p50_p99(c["hit_default"]),
            *_p50_p99(c["hit_countries"]),
            *_p50_p99(c["miss_default"]),
            *_p50_p99(c["miss_countries"]),
            *_p50_p99(c["get_item"]),
            _ratio(c["miss_default"]["p50_ms"], c["get_item"]["p50_ms"]),
            *_p50_p99(c["direct"]),
            c["direct"]["calls"],
            f"{c['direct']['p50_ms'] / c['miss_default']['p50_ms']:,.0f}x",
        ),
    ),
    "aws_reads": (
        "aws",
        "| students | dashboards (six charts/s each) | polls/s answered by one container | BatchGetItem per "
        "1,000 polls | keys | items | read units | handler ms per poll (mean) | CPU ms | GB-ms per poll at "
        "128 MB | `direct`: SQL queries per poll | rows read per poll | PostgreSQL CPU ms per poll | GB-ms "
        "per poll at 128 MB |",
        lambda c: _cells(
            c["students"],
            c["crowd"]["dashboards"],
            c["crowd"]["polls_per_s"],
            c["crowd"]["batch_gets_per_1000"],
            c["crowd"]["keys_per_1000"],
            c["crowd"]["items_per_1000"],
            c["crowd"]["read_units_per_1000"],
            c["crowd"]["ms_mean"],
            c["crowd"]["cpu_ms_mean"],
            c["crowd"]["gb_ms_per_poll"],
            c["direct"]["queries_per_poll"],
            c["direct"]["rows_read_per_poll"],
            c["direct"]["pg_cpu_ms_per_poll"],
            c["direct"]["gb_ms_per_poll"],
        ),
    ),
    "aws_writes": (
        "aws",
        "| students | traffic ops/s | DynamoDB: writes/s | deletions/s | refused/s | S3: writes/s | "
        "deletions/s | refused/s | `sums` item bytes | `minutes.<hour>` items | largest bytes |",
        lambda c: _cells(
            c["students"],
            c["target_ops_per_s"],
            _per_s(c, "dynamodb://", "writes"),
            _per_s(c, "dynamodb://", "deletes"),
            _per_s(c, "dynamodb://", "refused"),
            _per_s(c, "s3://", "writes"),
            _per_s(c, "s3://", "deletes"),
            _per_s(c, "s3://", "refused"),
            c["writes"]["sums_item_bytes"],
            c["writes"]["minutes_items"],
            c["writes"]["minutes_item_bytes_max"],
        ),
    ),
    "aws_start": (
        "aws",
        "| students | fresh interpreters per figure (ms beyond a bare `python -c pass`, median) | handler "
        "import, as `make lambda` ships it (bytecode included) | compiled here | handler's first "
        "request cold, as shipped | compiled "
        "| `direct` handler import | its first request cold | `pisa_pulse.api.app` import (for an "
        "adapter) | app / handler (compiled) | bare python ms |",
        lambda c: _cells(
            c["students"],
            c["imports"]["runs"],
            c["imports"]["handler_import_ms"],
            c["imports"]["handler_import_pyc_ms"],
            c["imports"]["handler_first_request_ms"],
            c["imports"]["handler_first_request_pyc_ms"],
            c["imports"]["direct_import_ms"],
            c["imports"]["direct_first_request_ms"],
            c["imports"]["app_import_ms"],
            _ratio(c["imports"]["app_import_ms"], c["imports"]["handler_import_pyc_ms"]),
            c["imports"]["bare_python_ms"],
        ),
    ),
    "aws_cold": (
        "aws",
        "| students | the handler's cold start by stage, as shipped (median ms): import the handler | import "
        "boto3 | make the client | first read (sums and 13 hours) | the six charts' first bodies | peak RSS "
        "MB |",
        lambda c: _cells(
            c["students"],
            *(
                c["imports"]["handler_cold_stages_ms"][stage]
                for stage in (
                    "import_handler",
                    "import_boto3",
                    "client",
                    "first_read",
                    "six_first_bodies",
                    "peak_rss_mb",
                )
            ),
        ),
    ),
    "aws_package": (
        "aws_package",
        "| MB | slim package (`make lambda`): unzipped | zipped | full install (ours and the runtime "
        "dependencies): unzipped | zipped | `direct` handler's need (slim, and what its import brings: "
        "psycopg2 ...) | the ASGI app's need (ours and what `pisa_pulse.api.app` imports) | boto3 and its "
        "dependencies (in Lambda's runtime) |",
        lambda c: _cells(
            "bytes / 10^6",
            _mb(c["slim_unzipped_bytes"]),
            _mb(c["slim_zipped_bytes"]),
            _mb(c["full_unzipped_bytes"]),
            _mb(c["full_zipped_bytes"]),
            _mb(c["direct_unzipped_bytes"]),
            _mb(c["app_unzipped_bytes"]),
            _mb(c["boto3_unzipped_bytes"]),
        ),
    ),
    "fleet": (
        "fleet",
        "| students | commit to chart via workers, NATS, a replica: p50 ms | p99 ms | `serve`: p50 ms | "
        "p99 ms | SIGKILL of a worker: sources moved | streaming again s | charts fresh again s | "
        "restore s (slowest) | into NATS: bytes/s | messages/s | checkpoints bytes/min | parts bytes/min |",
        lambda c: _cells(
            c["students"],
            *_p50_p99(c["fleet"]),
            *_p50_p99(c["serve"]),
            c["failover"]["sources_moved"],
            c["failover"]["streaming_again_s"],
            c["failover"]["fresh_again_s"],
            c["failover"]["restore_s_max"],
            c["into_nats"]["bytes_per_s"],
            c["into_nats"]["messages_per_s"],
            c["into_nats"]["checkpoint_bytes_per_min"],
            c["into_nats"]["parts_bytes_per_min"],
        ),
    ),
    "fleet_stages": (
        "fleet",
        "| students | commit -> published by the worker: p50 ms | p99 ms | published -> delivered by "
        "JetStream: p50 ms | p99 ms | delivered -> answered by the replica: p50 ms | p99 ms |",
        lambda c: _cells(
            c["students"],
            *_p50_p99(c["stages"]["worker"]),
            *_p50_p99(c["stages"]["jetstream"]),
            *_p50_p99(c["stages"]["replica"]),
        ),
    ),
    "fleet_autovacuum": (
        "fleet",
        "| students | autovacuum running: commit to chart via the fleet, p50 ms | p99 ms | `serve`: p50 ms "
        "| p99 ms |",
        lambda c: _cells(
            c["students"],
            *_p50_p99(c["fleet_autovacuum"]),
            *_p50_p99(c["serve_autovacuum"]),
        ),
    ),
    "fleet_serving": (
        "fleet",
        "| students | requests/s: static ceiling | `serve` | one replica | ratio to ceiling | two replicas "
        "at once | ratio to ceiling | p99 ms: one replica | two |",
        lambda c: _cells(
            c["students"],
            c["ceiling"]["requests_per_s"],
            c["serve_one"]["requests_per_s"],
            c["one_replica"]["requests_per_s"],
            _ratio(c["one_replica"]["requests_per_s"], c["ceiling"]["requests_per_s"]),
            c["two_replicas"]["requests_per_s"],
            _ratio(c["two_replicas"]["requests_per_s"], c["ceiling"]["requests_per_s"]),
            c["one_replica"]["p99_ms"],
            c["two_replicas"]["p99_ms"],
        ),
    ),
    "clients": (
        "clients",
        "| HTTP stack (static 1 KiB answer, wrk 32 connections) | requests/s | p99 ms | server CPU (cores) | "
        "beside 1,500 stalled connections: requests/s | p99 ms | non-2xx | stalled ones closed | "
        "after (p50 s) | after (max s) |",
        lambda c: _cells(
            c["stack"],
            c["alone"]["requests_per_s"],
            c["alone"]["p99_ms"],
            c["alone"].get("server_cpu_cores"),
            c["stalled"]["requests_per_s"],
            c["stalled"]["p99_ms"],
            c["stalled"]["non_2xx"],
            f"{c['stalled_closed']:,} of {c['stalled_connections']:,}",
            c["stalled_closed_p50_s"],
            c["stalled_closed_max_s"],
        ),
    ),
    "seeding": (
        "seeding",
        "| seeding (20 countries) | students | seconds | students/s |",
        lambda s: _cells(s["schema"], s["students"], s["seconds"], s["rows_per_s"]),
    ),
    "traffic": (
        "traffic",
        "| sustained traffic | updates | deletes | operations/s | net rows/s (counted by PostgreSQL) |",
        lambda t: _cells(
            t["schema"], t["updates"], t["deletes"], t["ops_per_s"], t["net_rows_per_s_counted_by_postgres"]
        ),
    ),
    "latency": (
        "latency",
        "| commit-to-aggregate latency, by traffic rate | students | target ops/s | changes/s reached | "
        "p50 ms | p99 ms | max ms | CPU µs per change | CPU cores: pipeline / writer / PostgreSQL |",
        lambda c: _cells(
            c["schema"],
            c.get("students"),
            c["target_ops_per_s"],
            c["changes_per_s"],
            c["p50_ms"],
            c["p99_ms"],
            c["max_ms"],
            c.get("cpu_us_per_change"),
            f"{c['pipeline_cpu_share']} / {c.get('writer_cpu_cores', '-')} / "
            f"{c.get('postgres_cpu_cores', '-')}",
        ),
    ),
    "catch_up": (
        "catch_up",
        "| maximum change rate (catch-up of a backlog) | changes | seconds | changes/s | CPU µs/change |",
        lambda c: _cells(c["schema"], c["changes"], c["seconds"], c["changes_per_s"], c["cpu_us_per_change"]),
    ),
    "memory": (
        "memory",
        "| pipeline memory | students | initial copy s | RSS MB after the copy | peak RSS MB |",
        lambda c: _cells(c["schema"], c["students"], c["copy_seconds"], c["rss_mb"], c["peak_rss_mb"]),
    ),
    "freshness": (
        "freshness",
        "| end-to-end freshness over HTTP (commit to chart) | students | traffic ops/s | markers | "
        "p50 ms | p95 ms | p99 ms | max ms | CPU µs per change (server) | server CPU (cores) | "
        "PostgreSQL CPU (cores) |",
        lambda c: _cells(
            c["mode"],
            c["students"],
            c["target_ops_per_s"],
            c["markers"],
            c["p50_ms"],
            c["p95_ms"],
            c["p99_ms"],
            c["max_ms"],
            round(c["server_cpu_cores"] / c["target_ops_per_s"] * 1e6) if c["mode"] != "direct" else None,
            c["server_cpu_cores"],
            c["postgres_cpu_cores"],
        ),
    ),
    "live": (
        "live",
        "| commit to chart, 50-row markers (issue 18) | students | traffic ops/s | markers before / after | "
        "before p50 / p99 ms | after p50 / p95 / p99 / max ms |",
        lambda c: _cells(
            c["method"],
            c["students"],
            c["rate"],
            f"{c['before']['markers'] if 'before' in c else '-'} / {c['after']['markers']}",
            f"{c['before']['p50_ms']} / {c['before']['p99_ms']}" if "before" in c else "no such route",
            " / ".join(str(c["after"][k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
        ),
    ),
    "ceiling": (
        "ceiling",
        "| serving against the same server's static route (wrk, 32 connections) | code | requests/s | "
        "share of static | p50 ms | p99 ms | p99 / static's |",
        lambda c: _cells(
            c["url"],
            c["code"],
            c["requests_per_s"],
            c["share_of_static"],
            c["p50_ms"],
            c["p99_ms"],
            c["p99_of_static"],
        ),
    ),
    "footprint": (
        "footprint",
        "| `serve` at size (all its processes) | code | students | start to streaming s | RSS MB after the "
        "copy (HTTP process + capture process) | copy's peak RSS MB (x after) | catch-up: changes | s | "
        "changes/s |",
        lambda c: _cells(
            "full width, as `sources up` leaves them",
            c["code"],
            c["students"],
            c["start_to_streaming_s"],
            f"{c['rss_after_copy_mb']} ({c.get('rss_http_process_mb', '-')} + "
            f"{c.get('rss_capture_process_mb', '-')})",
            f"{c['copy_peak_rss_mb']} ({c['peak_over_after']}x)",
            c.get("catch_up_changes"),
            c.get("catch_up_s"),
            c.get("catch_up_changes_per_s"),
        ),
    ),
    "poll_budget": (
        "poll_budget",
        "| poll mode, per poll (100 ops/s of traffic) | code | students | polls/s | PostgreSQL CPU ms | "
        "index entries | rows read | poll ms: p50 of the sources' p50 (mean) | of which, mean: range "
        "summary ms / reconciliation slice ms |",
        lambda c: _cells(
            "full",
            c["code"],
            c["students"],
            c["polls_per_s"],
            c["pg_cpu_ms_per_poll"],
            c["index_entries_per_poll"],
            c["rows_read_per_poll"],
            f"{c['poll_p50_ms']} ({c['ms_per_poll'] if c['ms_per_poll'] is not None else '-'})",
            "-"
            if c["scan_ms_per_poll"] is None
            else f"{c['scan_ms_per_poll']} / {c['reconcile_ms_per_poll']}",
        ),
    ),
    "serving": (
        "serving",
        "| serving (six charts per dashboard per second) | students | dashboards | offered/s | requests/s | "
        "p50 ms | p99 ms | errors | server CPU (cores) | PostgreSQL CPU (cores) |",
        lambda c: _cells(
            c["mode"],
            c["students"],
            c["dashboards"] if c["dashboards"] != "wrk" else f"wrk, {c['connections']} connections",
            c.get("offered_per_s", "as fast as answered"),
            answered_per_s(c) if "answers" in c else _wrk_rate(c),
            c["p50_ms"],
            c["p99_ms"],
            c.get("errors", c.get("non_2xx", 0) + c.get("socket_errors", 0)),
            c["server_cpu_cores"],
            c["postgres_cpu_cores"],
        ),
    ),
    "poll_freshness": (
        "poll_freshness",
        "| poll mode freshness (commit to applied, in process) | students | traffic ops/s | markers | "
        "p50 ms | p95 ms | p99 ms | max ms | pipeline CPU (cores) | poll p50 / p99 ms |",
        lambda c: _cells(
            "full",
            c["students"],
            c["target_ops_per_s"],
            c["markers"],
            c["p50_ms"],
            c["p95_ms"],
            c["p99_ms"],
            c["max_ms"],
            c["pipeline_cpu_share"],
            f"{c['poll_p50_ms']} / {c['poll_p99_ms']}",
        ),
    ),
    "poll_cost": (
        "poll_cost",
        "| source cost | students | polls/s | PostgreSQL CPU ms per poll | CPU cores for polling | "
        "index entries per poll | ids read per poll | rows read per poll | reconciling everything at once: "
        "ms (CPU ms, all sources) | direct mode: CPU ms per round | direct: rows read per round |",
        lambda c: _cells(
            "full",
            c["students"],
            c["polls_per_s"],
            c["pg_cpu_ms_per_poll"],
            c["pg_cpu_cores_polling"],
            c["index_entries_per_poll"],
            c["ids_read_per_poll"],
            c["rows_read_per_poll"],
            f"{c['reconcile_ms']:,} ({c['reconcile_pg_cpu_ms']:,})",
            c["direct_pg_cpu_ms_per_round"],
            c["direct_rows_read_per_round"],
        ),
    ),
    "soak": (
        "soak",
        "| soak | minutes | ops/s | dashboards | requests | errors | rows first / last | "
        "RSS first / last MB | RSS bytes per row | RSS beyond rows: slope MB/hour (range MB) | "
        "data age p50 / p99 ms | WAL retained by slots max / last MB |",
        lambda c: _cells(
            "full",
            *_soaked(c),
            f"{c['rss_beyond_rows_slope_mb_per_hour']} ({c['rss_beyond_rows_range_mb']})",
            f"{c['age_p50_ms']} / {c['age_p99_ms']}",
            f"{c['wal_retained_max_mb']} / {c['wal_retained_last_mb']}",
        ),
    ),
    "history_soak": (
        "history_soak",
        "| `serve` with its history (DuckDB) | minutes | ops/s | dashboards | requests | errors | rows first "
        "/ last | RSS first / last MB | RSS bytes per row | RSS beyond rows: MB per day (range MB) | "
        "history: minutes written / pending / dropped | data age p50 / p99 ms |",
        lambda c: _cells(
            "`make demo`'s traffic",
            *_soaked(c),
            f"{c['rss_beyond_rows_slope_mb_per_day']} ({c['rss_beyond_rows_range_mb']})",
            " / ".join(str((c.get("history") or {}).get(k, "-")) for k in ("written", "pending", "dropped")),
            f"{c['age_p50_ms']} / {c['age_p99_ms']}",
        ),
    ),
    "days": (
        "days",
        "| simulated days (bench/days_bench.py) | code | rows held | arrivals a minute | RSS day 0 / 7 / "
        "last MB | RSS slope, all days / after the first week: MB per day | minute buckets at the end: "
        "entries, MB | their slope, all days / after the first week: MB per day | run s |",
        lambda c: _cells(
            c["days"],
            "a week of arrival minutes (now)" if c["window"] else "every arrival minute kept (before)",
            c["rows_held"],
            c["arrivals_per_minute"],
            " / ".join(
                str(s["rss_mb"]) for s in (c["samples"][0], c["samples"][min(7, c["days"])], c["samples"][-1])
            ),
            f"{c['slope_mb_per_day']} / {c['slope_after_a_week_mb_per_day']}",
            f"{c['minutes_held_last']:,}, {c['minutes_mb_last']}",
            f"{c['minutes_slope_mb_per_day']} / {c['minutes_slope_after_a_week_mb_per_day']}",
            c["seconds"],
        ),
    ),
    "rate_demo": (
        "rate_demo",
        "| `make demo` (200/s asked), every 10 s from 30 s to 10 min | students | samples | achieved min / "
        "median / mean per s | samples under 95 % | CPU cores: autovacuum / backends / walsenders / other "
        "PostgreSQL / demo | load average mean (max) |",
        lambda c: _cells(
            f"code {c['code']}",
            c["students"],
            c.get("samples"),
            f"{_n(c.get('min_ops_per_s'))} / {_n(c.get('median_ops_per_s'))} / {_n(c.get('mean_ops_per_s'))}",
            c.get("samples_under_target"),
            _cores(c),
            f"{c.get('load1_mean')} ({c.get('load1_max')})",
        ),
    ),
    "rate_big": (
        "rate_big",
        "| 1,000/s asked on full-width students, `serve` started 30 s in | students | achieved median per "
        "s: before serve / during the copy / after (min after) | serve to all streaming s | of which: "
        "start to first copy / first copy to last streaming (sum of copies) / then until /api/status "
        "says streaming, s | slot creation median (max) s | copy per source median (max) s | CPU cores "
        "after the copy: autovacuum / backends / walsenders / other PostgreSQL / traffic / serve | load "
        "average mean (max) |",
        lambda c: _cells(
            f"code {c['code']}",
            c["students"],
            f"{_n(c.get('median_ops_per_s (before serve)'))} / {_n(c.get('median_ops_per_s (copy)'))} / "
            f"{_n(c.get('median_ops_per_s'))} ({_n(c.get('min_ops_per_s'))})",
            c["serve_to_streaming_s"],
            f"{_n(c.get('start_to_first_copy_s'))} / {_n(c.get('first_copy_to_all_streaming_s'))} "
            f"({_n(c.get('copy_sum_s'))}) / {_n(_after_copies(c))}",
            f"{_n(c.get('slot_creation_median_s'))} ({_n(c.get('slot_creation_max_s'))})",
            f"{_n(c.get('copy_median_s'))} ({_n(c.get('copy_max_s'))})",
            _cores(c, "serve"),
            f"{c.get('load1_mean')} ({c.get('load1_max')})",
        ),
    ),
    "dashboard": (
        "dashboard",
        "| dashboard left open | minutes | JS heap first / last / max MB | "
        "heap slope MB/hour (all / 2nd half) | DOM nodes first / last | listeners first / last | "
        "max requests per chart per s | console errors |",
        lambda d: _cells(
            f"{d['students']:,} students, 20/s traffic",
            d["minutes"],
            f"{d['heap_first_mb']} / {d['heap_last_mb']} / {d['heap_max_mb']}",
            f"{d['heap_slope_mb_per_hour']} / {d['heap_slope_second_half_mb_per_hour']}",
            f"{d['nodes_first']} / {d['nodes_last']}",
            f"{d['listeners_first']} / {d['listeners_last']}",
            d["max_requests_per_chart_per_s"],
            len(d["console_errors"]),
        ),
    ),
}
