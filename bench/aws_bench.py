"""The cloud form (issue 16): the Lambda handler against DynamoDB (moto), beside the `direct` handler.

Per size, the 20 default countries (full schema) seeded and vacuumed (autovacuum then runs, as
PostgreSQL's default), moto in server mode on loopback (a real HTTP endpoint, boto3 unmodified)
with the table and a bucket, and `pisa-pulse serve` publishing to both (`[publish] to`, the default
1 s interval) until it holds every row. Then, with traffic at `rate` operations/s (5 % corrections,
2 % withdrawals) on all 20:

- **writes**: what `serve` wrote to each target over `seconds` (its /api/status counters: writes,
  deletions, refused writes), and the sizes of the table's items;
- **reads per 1,000 polls**: a crowd of dashboards, each polling the six charts once a second (with
  `If-None-Match`, as the page does), answered in real time by ONE container's handler (one request
  at a time, the real `ITEM_TTL_S`): the BatchGetItem requests, items and read units (by DynamoDB's
  rule, from the items' sizes) it sent, per 1,000 polls; the duration of each poll, billed as Lambda
  bills it (whole ms at 128 MB);
- **warm latency** of the handler in this process (`handler.respond`, API Gateway's sample event):
  a cache hit (its items read less than `ITEM_TTL_S` ago, the body rendered), a cache miss (items
  read again with one BatchGetItem and the body rendered again, as after each second when the data
  moved), for the default query and a `countries=` one, cycling through the six charts; beside them
  this machine's ceiling, a bare GetItem round trip to the same moto;
- the **direct handler** (`direct_handler.handle`): its warm latency, SQL queries, rows read and
  PostgreSQL CPU per chart request.

The latencies are measured again with the traffic stopped (the paused case; the unpaused one is
above). Then the start: import times in fresh interpreters (median of `runs`, less a bare
`python -c pass`), the handler from the slim package as Lambda loads it (with the unchecked-hash
bytecode `make lambda` ships, since /var/task is read-only) and compiled here, its first request
cold, the direct handler,
and the ASGI app an adapter would wrap. `sizes` measures the slim package against a full install.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata as metadata
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import boto3
from tests.moto_server import running_moto

from api_bench import ServeProcess, serve_command
from capture_bench import _traffic, _up
from cpu import cluster_cpu_s, postmaster_pid
from pisa_pulse.api.charts import CHARTS
from pisa_pulse.api.direct import DirectSnapshots
from pisa_pulse.aws import direct_handler, package
from pisa_pulse.aws.handler import ITEM_TTL_S, Charts, Items, from_table, respond
from pisa_pulse.aws.table import ATTRIBUTES, KEY_SCHEMA, SUMS
from pisa_pulse.sources import config as cfg
from poll_bench import autovacuum, vacuum
from sources_bench import scratch_dir, total_rows

EVENT = Path(__file__).resolve().parents[1] / "tests" / "data" / "aws" / "http-api-2.0.json"
TABLE, BUCKET = "pisa-pulse-charts", "pisa-pulse-site"
QUERIES = {"default": "", "countries": "countries=ALB,ARG,AUS"}
LAMBDA_GB = 128 / 1024  # the smallest function: GB-ms per poll = this x billed ms
HANDLER_CALLS, DIRECT_CALLS = 3_000, 60  # at most, per case; each case also stops at its time budget


def aws(students: int, rate: float, seconds: float, dashboards: int, runs: int) -> dict[str, Any]:
    """Every figure of the module docstring but the package's, for one size."""
    with scratch_dir() as data_dir, running_moto(data_dir.parent / "moto.log", TABLE):
        config = _up(data_dir, "full", students // 20)
        held = total_rows(config)
        vacuum(config)
        autovacuum(config, enabled=True)  # vacuumed after the load; from here PostgreSQL's default
        postmaster = postmaster_pid(config, data_dir)
        client = boto3.client("dynamodb")
        client.create_table(
            TableName=TABLE,
            KeySchema=KEY_SCHEMA,
            AttributeDefinitions=ATTRIBUTES,
            BillingMode="PAY_PER_REQUEST",
        )
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        command = serve_command(data_dir, config, "replication")
        settings = Path(command[-3]).with_name("publishing.toml")
        targets = f'["dynamodb://{TABLE}", "s3://{BUCKET}/dash"]'
        settings.write_text(Path(command[-3]).read_text() + f"\n[publish]\nto = {targets}\n")
        command[-3] = str(settings)
        result: dict[str, Any] = {"students": held, "target_ops_per_s": rate, "latency": []}
        result["load1_at_start"] = round(os.getloadavg()[0], 2)  # anything else on the machine?
        with ServeProcess(command, data_dir.parent / "serve.log") as serve:
            serve.wait_ready("replication", held)
            _until_published(serve, client)
            traffic = _traffic(data_dir, rate, 3600)
            try:
                _until_moving(serve)
                time.sleep(3)  # warm-up: the traffic reaches its rate
                result["writes"] = _writes(serve, client, seconds)
                result["crowd"] = _crowd(client, dashboards, seconds)
                unpaused = _latencies(client, "traffic", seconds, held, rate)
                unpaused["direct"] = _direct(config, data_dir, postmaster, seconds)
                result["latency"].append(unpaused)
            finally:
                traffic.terminate()
                traffic.wait()
            time.sleep(3)  # serve's last round of writes
            paused = _latencies(client, "paused", seconds, held, 0.0)
            paused["direct"] = _direct(config, data_dir, postmaster, seconds)
            result["latency"].append(paused)
            result["direct"] = unpaused["direct"]  # what a request costs the sources, traffic on
            result["imports"] = imports(cfg.config_path(data_dir), runs)
            result["load1_at_end"] = round(os.getloadavg()[0], 2)
    return result


@functools.cache
def _sample() -> dict[str, Any]:
    sample: dict[str, Any] = json.loads(EVENT.read_text())
    return sample


def event(path: str, query: str = "", headers: dict[str, str] | None = None) -> dict[str, Any]:
    """API Gateway's sample event (HTTP API, payload 2.0) for `path?query`, as tests/test_aws.py makes it."""
    sample = copy.deepcopy(_sample())
    sample["rawPath"] = sample["requestContext"]["http"]["path"] = path
    sample["rawQueryString"] = query
    sample["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&") if p) or None
    sample["headers"].update(headers or {})
    return sample


def _status(serve: ServeProcess) -> dict[str, Any]:
    with urllib.request.urlopen(serve.url + "api/status", timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def _until_published(serve: ServeProcess, client: Any, timeout: float = 120.0) -> None:
    """Until both targets were written and the table's sums count every row serve holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(serve)
        item = client.get_item(TableName=TABLE, Key={"key": {"S": SUMS}}).get("Item")
        written = all(p["writes"] > 0 for p in status["publish"])
        if written and item and int(item["version"]["N"]) >= int(status["snapshot"]["as_of"] * 1_000_000):
            return
        time.sleep(0.5)
    raise TimeoutError(f"serve did not publish its snapshot within {timeout:g} s")


def _until_moving(serve: ServeProcess, timeout: float = 120.0) -> None:
    """Until the traffic's rows reach serve (its writer takes a few seconds to start)."""
    held, deadline = _status(serve)["snapshot"]["submissions"], time.monotonic() + timeout
    while _status(serve)["snapshot"]["submissions"] == held:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no traffic reached serve within {timeout:g} s")
        time.sleep(0.2)


def _writes(serve: ServeProcess, client: Any, seconds: float) -> dict[str, Any]:
    """Writes, deletions and refused writes per second to each target over `seconds`; item sizes."""
    before, started = {p["to"]: p for p in _status(serve)["publish"]}, time.monotonic()
    time.sleep(seconds)
    after, elapsed = {p["to"]: p for p in _status(serve)["publish"]}, time.monotonic() - started
    per_target = {
        to: {k: round((p[k] - before[to][k]) / elapsed, 2) for k in ("writes", "deletes", "refused")}
        for to, p in after.items()
    }
    sizes = {i["key"]["S"]: item_bytes(i) for i in client.scan(TableName=TABLE)["Items"]}
    minutes = [size for key, size in sizes.items() if key != SUMS]
    return {
        "seconds": round(elapsed, 1),
        "per_s": per_target,
        "sums_item_bytes": sizes.get(SUMS),
        "minutes_items": len(minutes),
        "minutes_item_bytes_max": max(minutes, default=None),
    }


def item_bytes(item: dict[str, Any]) -> int:
    """An item's size by DynamoDB's rule: the attribute names' lengths plus their values'."""
    size = 0
    for name, value in item.items():
        kind, held = next(iter(value.items()))
        if kind == "N":  # about one byte per two significant digits, plus one
            held = (len(str(held).strip("-").replace(".", "").strip("0")) + 1) // 2 + 1
        size += len(name.encode()) + (held if isinstance(held, int) else len(held))
    return size


class Reads:
    """The BatchGetItem requests a client sends, their keys, the items answered, and the read units
    they cost by DynamoDB's rule (eventually consistent: half a unit per 4 KB of each item, rounded
    up; a key with no item costs half a unit too), from botocore's events."""

    def __init__(self, client: Any) -> None:
        self.requests = self.keys = self.items = 0
        self.units = 0.0
        client.meta.events.register("before-parameter-build.dynamodb.BatchGetItem", self._asked)
        client.meta.events.register("after-call.dynamodb.BatchGetItem", self._answered)

    def _asked(self, params: dict[str, Any], **_: Any) -> None:
        keys = sum(len(t["Keys"]) for t in params["RequestItems"].values())
        self.requests += 1
        self.keys += keys
        self.units += 0.5 * keys  # each key's first 4 KB, whether an item is there or not

    def _answered(self, parsed: dict[str, Any], **_: Any) -> None:
        for items in parsed.get("Responses", {}).values():
            self.items += len(items)
            self.units += sum(0.5 * (max(1, math.ceil(item_bytes(i) / 4096)) - 1) for i in items)

    def counts(self) -> tuple[int, int, int, float]:
        return self.requests, self.keys, self.items, self.units


def container(client: Any, clock: Callable[[], float] = time.monotonic) -> Charts:
    """One warm container's charts, as `handler._charts()` builds them (with a client of ours)."""
    return Charts(from_table(Items(TABLE, client, clock)))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The handler's JSON log line (CloudWatch's, in Lambda) written to /dev/null, not the terminal."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def _crowd(client: Any, dashboards: int, seconds: float) -> dict[str, Any]:
    """`dashboards` pages polling the six charts once a second each, in real time, answered one at a
    time by one container; what it read per 1,000 polls, and what a poll costs (billed ms)."""
    reads = Reads(client)
    charts_ = container(client)
    etags: dict[tuple[int, str], str] = {}
    durations, cpu, lags, statuses = [], [], [], {200: 0, 304: 0}
    with _quiet():
        start = time.monotonic() + 0.5
        schedule = sorted(
            (start + d / dashboards + k, d) for d in range(dashboards) for k in range(int(seconds))
        )
        before = reads.counts()
        for due, dashboard in schedule:
            time.sleep(max(0.0, due - time.monotonic()))
            lags.append(time.monotonic() - due)
            for chart in CHARTS:
                path = f"/api/charts/{chart}"
                asked = event(path, "", {"if-none-match": etags.get((dashboard, chart), "")})
                t0, c0 = time.perf_counter(), time.thread_time()
                answer = respond(lambda: charts_, asked)
                durations.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.thread_time() - c0) * 1000)
                statuses[answer["statusCode"]] = statuses.get(answer["statusCode"], 0) + 1
                etags[(dashboard, chart)] = answer["headers"].get("ETag", "")
        elapsed = time.monotonic() - start
    requests, keys, items, units = (b - a for a, b in zip(before, reads.counts(), strict=True))
    polls = len(durations)
    thousand = 1000 / polls
    return {
        "dashboards": dashboards,
        "containers": 1,
        "seconds": round(elapsed, 1),
        "polls": polls,
        "polls_per_s": round(polls / elapsed, 1),
        "statuses": statuses,
        "lag_p99_ms": _q(lags, 0.99, 1000),
        "batch_gets_per_1000": round(requests * thousand, 2),
        "keys_per_1000": round(keys * thousand, 2),
        "items_per_1000": round(items * thousand, 2),
        "read_units_per_1000": round(units * thousand, 2),
        "batch_gets_per_s": round(requests / elapsed, 2),
        "ms_mean": round(statistics.fmean(durations), 3),
        "cpu_ms_mean": round(statistics.fmean(cpu), 3),
        "gb_ms_per_poll": round(LAMBDA_GB * statistics.fmean(math.ceil(d) for d in durations), 4),
    }


def _q(values: Sequence[float], q: float, scale: float = 1.0) -> float | None:
    """The q-quantile of values (x scale), to 3 significant digits."""
    if not values:
        return None
    if len(values) == 1:
        found = values[0]
    else:
        found = statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]
    found *= scale
    return round(found, max(0, 2 - math.floor(math.log10(abs(found))))) if found else 0.0


def _timed(
    call: Callable[[], Any], budget: float, limit: int, before: Callable[[], None] = lambda: None
) -> list[float]:
    """ms of `call`, repeated until `budget` seconds or `limit` calls (`before` each, not timed)."""
    times: list[float] = []
    end = time.monotonic() + budget
    while len(times) < limit and (time.monotonic() < end or not times):
        before()
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _latencies(client: Any, state: str, seconds: float, students: int, rate: float) -> dict[str, Any]:
    """The handler's warm latency, cache hit and miss, by query; a bare GetItem's beside it."""
    budget = max(1.0, seconds / 3)
    result: dict[str, Any] = {"students": students, "state": state, "ops_per_s": rate}
    with _quiet():
        for query_name, query in QUERIES.items():
            for case, polls in (
                ("hit", _Polls(client, query, miss=False)),
                ("miss", _Polls(client, query, miss=True)),
            ):
                for _ in CHARTS:  # warm: the hit's items and bodies
                    polls()
                ms = _timed(polls, budget, HANDLER_CALLS, polls.prepare)
                result[f"{case}_{query_name}"] = {
                    "calls": len(ms),
                    "p50_ms": _q(ms, 0.5),
                    "p99_ms": _q(ms, 0.99),
                }
    key = {"key": {"S": SUMS}}
    client.get_item(TableName=TABLE, Key=key)
    ms = _timed(lambda: client.get_item(TableName=TABLE, Key=key), budget, HANDLER_CALLS)
    result["get_item"] = {"calls": len(ms), "p50_ms": _q(ms, 0.5), "p99_ms": _q(ms, 0.99)}
    return result


class _Polls:
    """One container answering the six charts in turn, for one query. A hit: its items were read less
    than ITEM_TTL_S ago and the body is rendered. A miss: its clock says the TTL passed at every call
    (one BatchGetItem), and the data moved (the body rendered again: `prepare`, untimed)."""

    def __init__(self, client: Any, query: str, miss: bool) -> None:
        self.now, self.miss, self.turn = 0.0, miss, 0
        self.charts = container(client, self._clock)
        self.events = [event(f"/api/charts/{c}", query) for c in CHARTS]

    def _clock(self) -> float:
        if self.miss:
            self.now += ITEM_TTL_S
        return self.now

    def prepare(self) -> None:
        if self.miss:
            self.charts.cache.version = -1

    def __call__(self) -> None:
        answer = respond(lambda: self.charts, self.events[self.turn % len(self.events)])
        self.turn += 1
        if answer["statusCode"] != 200:
            raise RuntimeError(f"the handler answered {answer}")


class _CountedSnapshots(DirectSnapshots):
    """Direct mode's snapshots, counting the SQL queries they run; the instances made (to stop them)."""

    made: ClassVar[list[_CountedSnapshots]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queries = 0
        _CountedSnapshots.made.append(self)

    def _query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return super()._query(*args, **kwargs)


def _direct(
    config: cfg.SourcesConfig, data_dir: Path, postmaster: int | None, seconds: float
) -> dict[str, Any]:
    """The direct handler, warm (its sources from the sources config): latency, SQL queries and
    PostgreSQL CPU per chart request (the cluster's, less its rate just before without the handler)."""
    by_chart: dict[str, list[float]] = {c: [] for c in CHARTS}

    def one(chart: str = CHARTS[0]) -> None:
        answer = direct_handler.handle(event(f"/api/charts/{chart}"))
        if answer["statusCode"] != 200:
            raise RuntimeError(f"the direct handler answered {answer}")

    def rounds() -> None:  # whole rounds of the six charts, as a dashboard asks for them
        for chart in CHARTS:
            started = time.perf_counter()
            one(chart)
            by_chart[chart].append((time.perf_counter() - started) * 1000)

    with (
        mock.patch.dict(os.environ, PISA_PULSE_SETTINGS=str(cfg.config_path(data_dir))),
        mock.patch.object(direct_handler, "DirectSnapshots", _CountedSnapshots),
        mock.patch.object(direct_handler, "_CHARTS", None),
        _quiet(),
    ):
        try:
            one()  # the connections opened
            [snapshots] = _CountedSnapshots.made
            baseline = _cpu_rate(postmaster, min(5.0, max(1.0, seconds / 6)))
            queries0, pg0, t0 = snapshots.queries, cluster_cpu_s(postmaster), time.monotonic()
            _timed(rounds, max(1.0, seconds), DIRECT_CALLS // len(CHARTS))
            pg_s = cluster_cpu_s(postmaster) - pg0 - baseline * (time.monotonic() - t0)
            queries = snapshots.queries - queries0
            ms = [m for times in by_chart.values() for m in times]
        finally:
            for made in _CountedSnapshots.made:
                made.stop()
            _CountedSnapshots.made.clear()
    rows = total_rows(config)
    return {
        "calls": len(ms),
        "p50_ms": _q(ms, 0.5),
        "p99_ms": _q(ms, 0.99),
        "queries_per_poll": round(queries / len(ms), 2),
        "rows_read_per_poll": rows,  # each query scans its source's table
        "pg_cpu_ms_per_poll": _q([max(0.0, pg_s) * 1000 / len(ms)], 0.5),
        "gb_ms_per_poll": round(LAMBDA_GB * statistics.fmean(math.ceil(m) for m in ms), 1),
        "by_chart_p50_ms": {chart: _q(times, 0.5) for chart, times in by_chart.items()},
    }


def _cpu_rate(postmaster: int | None, seconds: float) -> float:
    """The cluster's CPU (cores) over `seconds` of whatever else runs (traffic, serve, autovacuum)."""
    cpu0, t0 = cluster_cpu_s(postmaster), time.monotonic()
    time.sleep(seconds)
    return (cluster_cpu_s(postmaster) - cpu0) / (time.monotonic() - t0)


FIRST_REQUEST = """
import json, sys
started = set(sys.modules)
from pisa_pulse.aws import {module}
sample = json.load(open({event!r}))
sample["rawPath"] = sample["requestContext"]["http"]["path"] = "/api/charts/escs"
sample["rawQueryString"], sample["queryStringParameters"] = "", None
answer = {module}.handle(sample)
assert answer["statusCode"] == 200, answer
foreign = {{m.split(".")[0] for m in set(sys.modules) - started}} - set(sys.stdlib_module_names)
foreign.discard("pisa_pulse")
print(json.dumps(sorted(foreign)), file=sys.stderr)
"""


COLD_STAGES = """
import json, sys, time
marks = [time.perf_counter()]
from pisa_pulse.aws import handler
marks.append(time.perf_counter())
import boto3
marks.append(time.perf_counter())
client = boto3.client("dynamodb")
marks.append(time.perf_counter())
charts = handler.Charts(handler.from_table(handler.Items({table!r}, client)))
hour = int(time.time() // 3600)
charts.snapshot(frozenset(), range(hour - 12, hour + 1))
marks.append(time.perf_counter())
sample = json.load(open({event!r}))
for chart in {charts!r}:
    sample["rawPath"] = sample["requestContext"]["http"]["path"] = "/api/charts/" + chart
    sample["rawQueryString"], sample["queryStringParameters"] = "", None
    assert handler.answer(charts, sample)[0] == 200
marks.append(time.perf_counter())
names = ["import_handler", "import_boto3", "client", "first_read", "six_first_bodies"]
stages = {{n: (b - a) * 1000 for n, a, b in zip(names, marks, marks[1:])}}
# VmHWM, not getrusage's maxrss: that one keeps the forking parent's peak across exec
hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
stages["peak_rss_mb"] = int(hwm) / 1024
print(json.dumps(stages), file=sys.stderr)
"""


def imports(settings: Path, runs: int) -> dict[str, Any]:
    """Import and first-request times in fresh interpreters (ms, median of `runs`, less a bare start)."""
    with tempfile.TemporaryDirectory(prefix="pisa-pulse-lambda-") as tmp:
        shipped, _, _ = package.build(Path(tmp) / "shipped")
        compiled = Path(tmp) / "compiled"
        package.build(compiled)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(compiled)], check=True)
        slim = {"PYTHONPATH": str(shipped.with_suffix("")), "PYTHONDONTWRITEBYTECODE": "1"}
        with_pyc = {"PYTHONPATH": str(compiled)}
        direct = {"PISA_PULSE_SETTINGS": str(settings)}
        handler_first = FIRST_REQUEST.format(module="handler", event=str(EVENT))
        direct_first = FIRST_REQUEST.format(module="direct_handler", event=str(EVENT))
        bare = _median_ms("pass", {}, runs)[0]
        cases = {
            "handler_import": _median_ms("import pisa_pulse.aws.handler", slim, runs),
            "handler_import_pyc": _median_ms("import pisa_pulse.aws.handler", with_pyc, runs),
            "handler_first_request": _median_ms(handler_first, slim, runs),
            "handler_first_request_pyc": _median_ms(handler_first, with_pyc, runs),
            "direct_import": _median_ms("import pisa_pulse.aws.direct_handler", {}, runs),
            "direct_first_request": _median_ms(direct_first, direct, max(3, runs // 3)),
            "app_import": _median_ms("import pisa_pulse.api.app", {}, runs),
        }
        stages = COLD_STAGES.format(table=TABLE, event=str(EVENT), charts=CHARTS)
        result: dict[str, Any] = {"runs": runs, "bare_python_ms": round(bare, 1)}
        result["handler_cold_stages_ms"] = _stages(stages, slim, runs)
    for name, (ms, foreign) in cases.items():
        result[f"{name}_ms"] = round(ms - bare, 1)
        if foreign is not None:
            result[f"{name}_imports"] = foreign
    return result


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -c code` in a fresh interpreter of this venv, with `env` added; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -c failed: {done.stderr[-2000:]}")
    return done


def _stages(code: str, env: dict[str, str], runs: int) -> dict[str, float]:
    """The ms of each stage `code` reports (a JSON object on its last line of stderr), median of `runs`."""
    reports = [json.loads(_python(code, env).stderr.strip().splitlines()[-1]) for _ in range(runs)]
    return {stage: round(statistics.median(r[stage] for r in reports), 1) for stage in reports[0]}


def _median_ms(code: str, env: dict[str, str], runs: int) -> tuple[float, list[str] | None]:
    """Wall ms of `python -c code` in a fresh interpreter, median of `runs`; the modules it reported."""
    times, foreign = [], None
    for _ in range(runs):
        started = time.perf_counter()
        done = _python(code, env)
        times.append((time.perf_counter() - started) * 1000)
        said = done.stderr.strip().splitlines()
        if said and said[-1].startswith("["):
            foreign = json.loads(said[-1])
    return statistics.median(times), foreign


def sizes() -> dict[str, Any]:
    """The slim package (built as `make lambda` builds it) against what a full install ships, and what
    the direct handler and the ASGI app need beside our code (their distributions, as installed here)."""
    with tempfile.TemporaryDirectory(prefix="pisa-pulse-lambda-") as tmp:
        archive, unzipped, zipped = package.build(Path(tmp) / "lambda")
        slim_files = len(zipfile.ZipFile(archive).namelist())
        ours = [p for p in package.source_root().rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        runtime = _closure(["pisa-pulse"])
        full = [*ours, *(f for dist in runtime for f in _files(dist))]
        full_zipped = _zipped(full, Path(tmp) / "full.zip")
        direct = _closure(_distributions(_foreign_of("import pisa_pulse.aws.direct_handler")))
        app = _closure(_distributions(_foreign_of("import pisa_pulse.api.app")))
        boto = _closure(["boto3"])
    return {
        "slim_unzipped_bytes": unzipped,
        "slim_zipped_bytes": zipped,
        "slim_files": slim_files,
        "full_unzipped_bytes": sum(f.stat().st_size for f in full),
        "full_zipped_bytes": full_zipped,
        "full_distributions": sorted(runtime),
        "direct_unzipped_bytes": unzipped + _bytes(direct),
        "direct_distributions": sorted(direct),
        "app_unzipped_bytes": sum(f.stat().st_size for f in ours) + _bytes(app),
        "app_distributions": sorted(app),
        "boto3_unzipped_bytes": _bytes(boto),
    }


def _closure(names: list[str]) -> set[str]:
    """These distributions and everything they require (no extras; markers as on this machine)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen - {"pisa-pulse"}


def _files(dist: str) -> list[Path]:
    found = []
    for f in metadata.distribution(dist).files or []:
        path = Path(str(f.locate()))
        if path.is_file():
            found.append(path)
    return found


def _bytes(dists: set[str]) -> int:
    return sum(p.stat().st_size for d in dists for p in _files(d))


def _zipped(paths: list[Path], out: Path) -> int:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zipped:
        for i, path in enumerate(paths):
            zipped.write(path, f"{i}/{path.name}")
    return out.stat().st_size


def _foreign_of(code: str) -> list[str]:
    """The top-level modules outside the standard library that `code` leaves imported."""
    new = "{m.split('.')[0] for m in set(sys.modules) - started} - set(sys.stdlib_module_names)"
    script = f"import sys\nstarted = set(sys.modules)\n{code}\nprint(' '.join({new}))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return sorted(set(done.stdout.split()) - {"pisa_pulse"})


def _distributions(modules: list[str]) -> list[str]:
    """The installed distributions that provide these top-level modules."""
    providers = metadata.packages_distributions()
    return sorted({d for m in modules for d in providers.get(m, [])})


if __name__ == "__main__":  # a quick look by hand: python bench/aws_bench.py [students]
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    print(json.dumps(aws(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, 1_000.0, 10.0, 20, 5), indent=2))
    print(json.dumps(sizes(), indent=2))
