"""The benchmark suite runs end to end at tiny size and writes valid results (no timing is checked).

This is the CI smoke run of `make bench`: `bench/run.py --profile smoke` over every suite but the
soak, on its own embedded sources. It checks that each suite produced figures of the right kind and
that the Markdown tables docs/benchmarks.md embeds are complete; speed is the benchmarks' business.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import ceiling_bench  # noqa: E402
import footprint_bench  # noqa: E402
import rate_bench  # noqa: E402
import run  # noqa: E402  (bench/run.py, found through the path above)
import tables  # noqa: E402

# The smoke run of every suite takes about 6 minutes here; a machine 4 times slower needs 25 and more.
SMOKE_TIMEOUT_S = 2400
pytestmark = [pytest.mark.bench, pytest.mark.timeout(SMOKE_TIMEOUT_S)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("results")
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--profile", "smoke", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = out.glob("*-smoke.json")
    return json.loads(path.read_text()), path.with_suffix(".md").read_text(), path.name


def test_every_suite_reports_figures(smoke: tuple[dict, str, str]) -> None:
    result, _, _ = smoke
    assert result["suites"] == list(run.ALL)
    assert result["machine"]["cores"] >= 1 and "PostgreSQL" in result["machine"]["postgresql"]
    for key in ("seeding", "traffic", "latency", "catch_up", "memory", "freshness", "serving"):
        assert result[key], f"{key} is empty"
    assert all(s["students"] == 2_000 for s in result["seeding"])
    assert {c["mode"] for c in result["freshness"]} == {"replication", "poll", "direct"}
    for case in result["freshness"]:
        assert case["markers"] > 0 and 0 < case["p50_ms"] <= case["p99_ms"] <= case["max_ms"]
    modes = {(c["mode"], c["dashboards"]) for c in result["serving"]}
    assert {("replication", "wrk"), ("direct", "wrk"), ("replication", 2), ("replication", 5)} <= modes
    for case in result["serving"]:
        assert case["requests_per_s"] > 0
    assert result["catch_up"][0]["changes_per_s"] > 0
    assert result["catch_up"][0]["profile"].get("samples", 0) > 0, result["catch_up"][0]["profile"]
    limits = result["limits"]
    assert limits["postgres_insert"]["bulk_rows_per_s"] > 0
    assert limits["postgres_insert"]["single_transactions_per_s"] > 0
    assert limits["static_http"]["requests_per_s"] > 0
    cases = {(c["interface"], c["columns"]) for c in limits["pgoutput_decode"]["cases"]}
    assert cases == {("sql", "chart"), ("sql", "all"), ("stream", "chart"), ("stream", "all")}
    assert all(c["changes_per_s"] > 0 for c in limits["pgoutput_decode"]["cases"])
    assert result["dashboard"][0]["max_requests_per_chart_per_s"] > 0
    stacks = {c["stack"]: c for c in result["clients"]}
    assert set(stacks) == {"uvicorn", "hardened"}
    assert all(c["alone"]["requests_per_s"] > 0 for c in stacks.values())
    assert stacks["hardened"]["stalled_closed"] == stacks["hardened"]["stalled_connections"]
    assert result["poll_freshness"][0]["markers"] > 0
    [fleet] = result["fleet"]
    assert fleet["fleet"]["markers"] > 0 and fleet["serve"]["markers"] > 0
    assert fleet["fleet_autovacuum"]["markers"] > 0 and fleet["serve_autovacuum"]["markers"] > 0
    assert all(stage.get("p50_ms") is not None for stage in fleet["stages"].values())
    assert fleet["failover"]["sources_moved"] > 0 and fleet["failover"]["streaming_again_s"] is not None
    assert fleet["failover"]["restored_from"] == ["checkpoint"]
    assert fleet["into_nats"]["bytes_per_s"] > 0 and fleet["into_nats"]["checkpoint_bytes_per_min"] > 0
    assert fleet["one_replica"]["requests_per_s"] > 0 and fleet["two_replicas"]["requests_per_s"] > 0
    [aws] = result["aws"]
    assert [c["state"] for c in result["aws_latency"]] == ["traffic", "paused"]
    for case in result["aws_latency"]:
        for key in ("hit_default", "hit_countries", "miss_default", "miss_countries", "get_item", "direct"):
            assert case[key]["calls"] > 0 and 0 < case[key]["p50_ms"] <= case[key]["p99_ms"], key
        assert case["direct"]["queries_per_poll"] == 20  # one per source per chart request
    writes = aws["writes"]["per_s"]
    assert set(writes) == {"dynamodb://pisa-pulse-charts", "s3://pisa-pulse-site/dash"}
    assert all(t["writes"] > 0 and t["refused"] == 0 for t in writes.values())
    crowd = aws["crowd"]
    assert crowd["polls"] > 0 and 0 < crowd["batch_gets_per_1000"] < 1000  # the items cache holds
    assert crowd["keys_per_1000"] >= crowd["items_per_1000"] > 0 and crowd["gb_ms_per_poll"] > 0
    imports = aws["imports"]
    assert all(imports[f"{name}_ms"] > 0 for name in ("handler_import", "direct_import", "app_import"))
    assert "boto3" in imports["handler_first_request_imports"]
    assert not {"numpy", "psycopg2"} & set(imports["handler_first_request_imports"])
    assert "psycopg2" in imports["direct_first_request_imports"]
    live = {row["method"]: row for row in result["live"]}
    assert {"poll 2 ms", "live route", "page"} <= set(live)
    assert "before" not in live["live route"]  # the code before issue 18 has no live route
    for row in live.values():
        for code in ("before", "after") if "before" in row else ("after",):
            figures = row[code]
            assert figures["markers"] > 0 and figures["p50_ms"] <= figures["p99_ms"], (row["method"], code)
    ceiling = {(row["code"], row["url"]) for row in result["ceiling"]}
    assert {(code, url) for code in ("before", "after") for url, _ in ceiling_bench.URLS} == ceiling
    assert all(row["requests_per_s"] > 0 and row["share_of_static"] > 0 for row in result["ceiling"])
    footprint = {row["code"]: row for row in result["footprint"]}
    assert set(footprint) == {"before", "after", footprint_bench.WITHOUT_HISTORY}
    for row in footprint.values():
        assert row["students"] > 0 and row["start_to_streaming_s"] > 0
        assert (
            row["copy_peak_rss_mb"] > 0
            and row["rss_capture_process_mb"] > 0
            and row["rss_http_process_mb"] > 0
        )
    assert footprint["before"]["catch_up_changes"] > 0 and footprint["after"]["catch_up_changes"] > 0
    budget = {row["code"]: row for row in result["poll_budget"]}
    unpaused = ("before, autovacuum running", "after, autovacuum running")
    assert set(budget) == {"before", "after", *unpaused} and all(row["polls"] > 0 for row in budget.values())
    for code in ("before", unpaused[0]):
        assert budget[code]["scan_ms_per_poll"] is None  # the code before does not time the parts
    for code in ("after", unpaused[1]):
        assert budget[code]["scan_ms_per_poll"] > 0 and budget[code]["reconcile_ms_per_poll"] is not None
    [package] = result["aws_package"]
    assert 0 < package["slim_zipped_bytes"] < package["slim_unzipped_bytes"]
    assert package["slim_unzipped_bytes"] < package["direct_unzipped_bytes"] < package["full_unzipped_bytes"]
    assert "psycopg2-binary" in package["direct_distributions"] and "numpy" in package["full_distributions"]
    assert "numpy" not in package["direct_distributions"]


def test_the_history_suite_reports_figures(smoke: tuple[dict, str, str]) -> None:
    result, _, _ = smoke
    writes = {(c["store"], c["countries"]): c for c in result["history_writes"]}
    assert set(writes) == {(store, n) for store in ("duckdb", "postgresql") for n in (20, 79)}
    for case in writes.values():
        assert 0 < case["p50_ms"] <= case["p99_ms"] <= case["max_ms"], case
        assert case["write_minute_p50_ms"] > 0 and case["bare_insert_p50_ms"] > 0, case
        assert case["bytes_per_boundary"] > 0 and case["held_bytes"] > 0, case
    reads = result["history_reads"]
    assert [c["store"] for c in reads] == ["duckdb"] * 5 + ["postgresql"] * 5
    for case in reads:
        assert case["status"] == 200 and case["requests"] > 0, case
        assert 0 < case["p50_ms"] <= case["p99_ms"] <= case["max_ms"], case
    points = {c["request"]: c["points"] for c in reads}
    assert 160 < points["series: 7 days, step=1h"] <= 169  # the minutes serve has not written yet: left out
    assert 1_400 < points["series: the last day, step=1m"] <= 1_441
    sync = result["history_sync"]
    assert [c["run"].split()[0] for c in sync] == ["from", "from", "again,"]
    scratch, checkpoint, again = sync
    assert scratch["copied"] == scratch["minutes_written"] == 20 and scratch["rows"] == scratch["students"]
    assert checkpoint["copied"] == 0 and checkpoint["changes"] >= 100 and checkpoint["minutes_written"] > 0
    assert checkpoint["minutes_written"] + checkpoint["unchanged"] == 20
    assert again["minutes_written"] == 0 and again["unchanged"] == 20  # nothing new: nothing written
    assert all(c["wall_s"] > c["idle_process_s"] > 0 for c in sync)


def test_markdown_has_every_table(smoke: tuple[dict, str, str]) -> None:
    result, markdown, name = smoke
    blocks = tables.markdown(result, source=name)
    named_only = {"soak", "history_soak", "rate_demo", "rate_big"}  # suites that run only when named
    expected = {"machine", "headline", "limits", "profile", *tables.TABLES} - named_only
    assert set(blocks) == expected
    for name, body in blocks.items():
        assert body in markdown, name
        if name != "machine":
            header, rule, *rows = body.split("\n\n")[0].splitlines()
            assert rows and all(row.count("|") == header.count("|") == rule.count("|") for row in rows), name


def test_runs_compared_side_by_side_label_each_row(smoke: tuple[dict, str, str]) -> None:
    result, _, name = smoke
    alone = tables.markdown(result, source=name)
    both = tables.compared([("before", result), ("after", result)], source=name)
    assert set(both) == {f"compare-{n}" for n in alone if n != "machine"}
    for block, body in both.items():
        header, rule, *rows = body.split("\n\n")[0].splitlines()
        mine = alone[block.removeprefix("compare-")].split("\n\n")[0].splitlines()
        assert header == "| code " + mine[0] and rule.count("|") == header.count("|")
        assert rows == [f"| {label} {row}" for row in mine[2:] for label in ("before", "after")]


def test_docs_blocks_are_replaced_and_nothing_else(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    b = "<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
    docs.write_text(f"intro\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\nmiddle\n{b}")
    replaced = run.update_docs(docs, {"a": "new a", "c": "nowhere"})
    assert replaced == ["a"]
    assert docs.read_text() == f"intro\n<!-- bench:a -->\nnew a\n<!-- /bench:a -->\nmiddle\n{b}"


def test_docs_have_a_place_for_every_table() -> None:
    text = run.DOCS.read_text()
    for name in {"machine", "headline", "limits", "profile", *tables.TABLES}:
        assert f"<!-- bench:{name} -->" in text and f"<!-- /bench:{name} -->" in text, name


def test_cli_bench_forwards_to_the_runner() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pisa_pulse", "bench", "--profile", "nonsense"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "invalid choice: 'nonsense'" in done.stderr and "pisa-pulse bench" in done.stderr


def test_the_rate_suite_reads_where_the_copy_time_went(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text(
        "2026-12-01 10:00:01,000 INFO pisa_pulse.capture.replicated copying source=alb reason=first\n"
        "2026-12-01 10:00:01,500 INFO pisa_pulse.capture.replication slot created slot=p_alb lsn=0/1\n"
        "2026-12-01 10:00:02,000 INFO pisa_pulse.capture.replicated copying source=arg reason=first\n"
        "2026-12-01 10:00:03,000 INFO pisa_pulse.capture.replication slot created slot=p_arg lsn=0/2\n"
        "2026-12-01 10:00:04,500 INFO pisa_pulse.capture.replicated streaming source=alb lsn=0/1\n"
        "2026-12-01 10:00:09,000 INFO pisa_pulse.capture.replicated streaming source=arg lsn=0/2\n"
    )
    started = rate_bench.datetime(2026, 12, 1, 10, 0, 0).timestamp()
    spans = rate_bench.where_time_went(log, started)
    assert spans["sources_logged"] == 2 and spans["start_to_first_copy_s"] == 1.0
    assert (spans["slot_creation_median_s"], spans["slot_creation_max_s"]) == (0.75, 1.0)
    assert (spans["copy_median_s"], spans["copy_max_s"]) == (4.5, 6.0)
    assert spans["first_copy_to_all_streaming_s"] == 8.0
