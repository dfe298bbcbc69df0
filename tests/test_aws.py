"""The cloud form on a real endpoint: `serve` publishing to DynamoDB served by moto in server mode (a real
HTTP endpoint, boto3 unmodified), and the Lambda handler answering API Gateway's sample events (payload
2.0 and 1.0, tests/data/aws/) from that table: byte for byte what `serve` answers for the same data,
bodies and ETags, by default and for several `countries` sets; 304 on a matching `If-None-Match`; the
one error shape on bad input, a malformed event or an unknown route. Also: the S3 target (the
dashboard and the parameterless charts), conditional writes that no older publisher gets past, two
`api` replicas of which one publishes at a time and the other takes over, the handler's guard, and its
slim package answering with the standard library alone."""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from pisa_pulse.aws import handler
from pisa_pulse.aws.table import ATTRIBUTES, KEY_SCHEMA
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.cluster import free_port
from pisa_pulse.web import static_dir
from tests import independent_oracle as oracle
from tests.conftest import SharedServer, serving, stop, wait_for
from tests.moto_server import running_moto
from tests.nats_cluster import NatsCluster
from tests.test_independent_oracle import traffic

EVENTS = Path(__file__).parent / "data" / "aws"
TABLE = "pisa-pulse-charts"
BUCKET = "pisa-pulse-site"
CHARTS = (
    "submissions",
    "submissions-over-time",
    "early-education-and-belonging",
    "escs",
    "learning-hours-per-week",
    "performance",
)
COUNTRY_SETS = (
    "",
    "countries=alb,arg",
    "countries=%20ARG%20,%20ALB%20",
    "countries=AUS,ALB",
    "countries=ALB,ZZZ",
)


@pytest.fixture(scope="module")
def moto(scratch: Path) -> Iterator[str]:
    """moto in server mode on 127.0.0.1, and this process's AWS settings pointing at it (restored after)."""
    with running_moto(scratch / f"moto-{uuid.uuid4().hex[:8]}.log", TABLE) as url:
        yield url


def event(version: str, path: str, query: str = "", headers: dict[str, str] | None = None) -> dict[str, Any]:
    """API Gateway's sample event of that payload version, for `path?query`."""
    sample: dict[str, Any] = json.loads(
        (EVENTS / f"{'http-api-2.0' if version == '2.0' else 'rest-api-1.0'}.json").read_text()
    )
    sample = copy.deepcopy(sample)
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    decoded = {k: urllib.request.unquote(v) for k, v in params.items()}
    if version == "2.0":
        sample["rawPath"] = sample["requestContext"]["http"]["path"] = path
        sample["rawQueryString"] = query
        sample["queryStringParameters"] = decoded or None
        sample["headers"].update(headers or {})
    else:
        sample["path"] = path
        sample["queryStringParameters"] = decoded or None
        sample["multiValueQueryStringParameters"] = {k: [v] for k, v in decoded.items()} or None
        sample["headers"].update(headers or {})
    return sample


def served(url: str, path: str, query: str = "") -> tuple[int, bytes, str]:
    """`serve`'s status, body and ETag for `path?query`."""
    try:
        with urllib.request.urlopen(
            f"{url}{path.lstrip('/')}{'?' + query if query else ''}", timeout=10
        ) as r:
            return r.status, r.read(), r.headers.get("ETag", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""


def answered(
    version: str, path: str, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    """The handler's status, body and ETag for the same request as an API Gateway event."""
    answer = handler.handle(event(version, path, query, headers))
    return answer["statusCode"], answer["body"].encode(), answer["headers"].get("ETag", "")


def test_the_handler_answers_from_dynamodb_what_serve_answers(
    moto: str, shared: SharedServer, new_dir: Path, tmp_path: Path
) -> None:
    config = shared.up(new_dir, countries="alb,arg,aus", schema="slim", rows_per_country=150, messy=0.05)
    boto3.client("dynamodb").create_table(
        TableName=TABLE, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTES, BillingMode="PAY_PER_REQUEST"
    )
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="dash/js/gone.js", Body=b"an older dashboard's file")
    targets = f'["dynamodb://{TABLE}", "s3://{BUCKET}/dash"]'
    settings = tmp_path / "serve.toml"
    # No history: the handler answers chart 2 over a week at most, as a serve without a history store
    # does (with one, serve takes windows up to its retention, and its 400 names that limit).
    settings.write_text(
        cfg.config_path(new_dir).read_text()
        + f'\n[publish]\nto = {targets}\ninterval = 0.2\n[history]\nstore = "none"\n'
    )
    with serving("--config", str(settings)) as serve:

        def caught_up() -> bool:
            rows = sum(len(oracle.ids_of(source.dsn)) for source in config.sources)
            return bool(json.loads(served(serve.url, "/api/status")[1])["snapshot"]["submissions"] == rows)

        wait_for(caught_up, 60, what="serve holding every row (its copy)")
        traffic(config, 200)  # while serve runs: rows in this hour, corrections, withdrawals; then paused
        wait_for(caught_up, 60, what="serve holding every row (the traffic)")
        over_time = json.loads(served(serve.url, "/api/charts/submissions-over-time")[1])
        assert any(point["y"] for point in over_time["datasets"][0]["data"])  # chart 2 needs the minutes

        def same() -> bool:
            return all(served(serve.url, f"/api/charts/{c}")[1:] == answered("2.0", f"/api/charts/{c}")[1:]
                       for c in CHARTS)  # fmt: skip

        wait_for(same, 60, what="the handler's charts equal serve's")

        def in_bucket(key: str, **conditions: str) -> bytes:
            return bytes(s3.get_object(Bucket=BUCKET, Key=f"dash/{key}", **conditions)["Body"].read())

        def same_in_bucket() -> bool:
            return all(
                served(serve.url, f"/api/charts/{c}")[1] == in_bucket(f"api/charts/{c}") for c in CHARTS
            )

        wait_for(same_in_bucket, 60, what="the bucket's charts equal serve's")
        # The bucket's index is serve's without the live route: a dashboard served from S3 polls the API.
        index = json.loads(served(serve.url, "/api")[1])
        assert index.pop("live") == "/api/live"
        assert json.loads(in_bucket("api")) == index
        for page in ("index.html", "js/main.js", "css/dashboard.css"):
            assert in_bucket(page) == (static_dir() / page).read_bytes()
        head = s3.head_object(Bucket=BUCKET, Key="dash/api/charts/escs")
        assert head["ContentType"] == "application/json"
        assert s3.head_object(Bucket=BUCKET, Key="dash/js/main.js")["ContentType"] == "text/javascript"
        with pytest.raises(ClientError) as unchanged:  # S3's own ETag, answered 304
            in_bucket("index.html", IfNoneMatch=s3.head_object(Bucket=BUCKET, Key="dash/index.html")["ETag"])
        assert unchanged.value.response["Error"]["Code"] == "304"
        with pytest.raises(ClientError):  # a file the dashboard no longer has
            in_bucket("js/gone.js")
        for version in ("2.0", "1.0"):
            for chart in CHARTS:
                for query in COUNTRY_SETS:
                    path = f"/api/charts/{chart}"
                    assert answered(version, path, query) == served(serve.url, path, query), (
                        version,
                        chart,
                        query,
                    )
        status, body, etag = answered("2.0", "/api/charts/escs", "countries=ALB")
        assert status == 200 and etag
        assert answered("2.0", "/api/charts/escs", "countries=ALB", {"if-none-match": etag})[:2] == (304, b"")
        assert answered("1.0", "/api/charts/escs", "countries=ALB", {"If-None-Match": etag})[:2] == (304, b"")
        for bad in ("countries=ALB,,", "countries=" + "A" * 400, "hours=0"):
            path = "/api/charts/submissions-over-time" if bad.startswith("hours") else "/api/charts/escs"
            status, body, _ = answered("2.0", path, bad)
            assert (status, body) == served(serve.url, path, bad)[:2] and status == 400
        wait_for(lambda: answered("2.0", "/api/health")[0] == 200, 30, what="the handler's health ok")
        status_body = json.loads(urllib.request.urlopen(serve.url + "api/status", timeout=10).read())
        assert [p["to"] for p in status_body["publish"]] == [f"dynamodb://{TABLE}", f"s3://{BUCKET}/dash"]
        assert all(p["writes"] > 0 and p["refused"] == 0 for p in status_body["publish"])
        metrics = urllib.request.urlopen(serve.url + "metrics", timeout=10).read().decode()
        for published in status_body["publish"]:
            assert f'pisa_pulse_publish_refused_total{{to="{published["to"]}"}} 0.0' in metrics
            assert f'pisa_pulse_publish_writes_total{{to="{published["to"]}"}}' in metrics


@pytest.mark.parametrize("broken", [None, [], {"version": "2.0"}, {"httpMethod": "GET", "path": "api"}])
def test_a_malformed_event_answers_400_in_the_error_shape(moto: str, broken: Any) -> None:
    answer = handler.handle(broken)
    assert answer["statusCode"] == 400
    assert set(json.loads(answer["body"])) == {"error"} and "Traceback" not in answer["body"]


def test_unknown_routes_and_methods_answer_in_the_error_shape(moto: str) -> None:
    assert answered("2.0", "/api/traffic")[0] == 404
    assert answered("1.0", "/api/charts/nothing")[0] == 404
    posted = event("2.0", "/api/charts/escs")
    posted["requestContext"]["http"]["method"] = "POST"
    answer = handler.handle(posted)
    assert answer["statusCode"] == 405 and json.loads(answer["body"])["error"]["status"] == 405


def test_the_handler_guards_as_serve_does_for_api_gateways_host_names(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def headers(path: str, sent: dict[str, str], version: str = "2.0", method: str = "GET") -> dict[str, str]:
        asked = event(version, path, "", sent)
        if version == "2.0":
            asked["requestContext"]["http"]["method"] = method
        else:
            asked["httpMethod"] = method
        answer = handler.handle(asked)
        assert answer["headers"]["X-Content-Type-Options"] == "nosniff"  # on every answer
        return {"status": str(answer["statusCode"]), "body": answer["body"], **answer["headers"]}

    origin = {"origin": "https://dashboard.example.org"}
    for version in ("2.0", "1.0"):
        assert headers("/api/charts/nothing", origin, version)["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Origin" not in headers("/api/health", origin, version)
        assert "Access-Control-Allow-Origin" not in headers("/api/charts/escs", {}, version)
    preflight = headers(
        "/api/charts/escs", {**origin, "access-control-request-method": "GET"}, method="OPTIONS"
    )
    assert preflight["status"] == "204" and "GET" in preflight["Access-Control-Allow-Methods"]
    assert headers("/api/charts/escs", origin, method="OPTIONS")["status"] == "405"  # not a preflight
    elsewhere = {"host": "rebound.example.net"}
    for version in ("2.0", "1.0"):
        refused = headers("/api/charts/escs", {**elsewhere, "Host": elsewhere["host"]}, version)
        assert refused["status"] == "400" and handler.ALLOWED_HOSTS_ENV in refused["body"]
    monkeypatch.setenv(handler.ALLOWED_HOSTS_ENV, "charts.example.org, rebound.example.net")
    assert headers("/api/charts/nothing", elsewhere)["status"] == "404"  # past the guard


def test_the_slim_package_answers_with_the_standard_library_alone(tmp_path: Path) -> None:
    from pisa_pulse.api.bodies import Snapshot
    from pisa_pulse.aws import package
    from pisa_pulse.engine.aggregates import Aggregates

    archive, unzipped, zipped = package.build(tmp_path / "lambda")
    assert 0 < zipped < unzipped and archive.exists()
    assert not (tmp_path / "lambda" / "pisa_pulse" / "web" / "static").exists()
    code = f"""
import json, sys, time
sys.path.insert(0, {str(tmp_path / "lambda")!r})
from pisa_pulse.aws import handler
from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.engine.aggregates import Aggregates
agg = Aggregates()
agg.add([0, int(time.time() // 60), 0, *([1000] * 35)])
charts = handler.Charts(lambda columns, hours: Snapshot(1, agg, time.time()))
event = json.load(open({str(EVENTS / "http-api-2.0.json")!r}))
event["rawPath"], event["rawQueryString"] = "/api/charts/submissions", "countries=ALB"
status, _, body, _ = handler.answer(charts, event)
foreign = [m for m in sys.modules if m.split(".")[0] not in sys.stdlib_module_names | {{"pisa_pulse"}}]
print(json.dumps([status, json.loads(body), handler.__file__, foreign]))
"""
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, body, where, foreign = json.loads(done.stdout)
    agg = Aggregates()
    agg.add([0, int(time.time() // 60), 0, *([1000] * 35)])
    here = handler.Charts(lambda columns, hours: Snapshot(1, agg, time.time()))
    sample = event("2.0", "/api/charts/submissions", "countries=ALB")
    assert status == 200 and body == json.loads(handler.answer(here, sample)[2]) and body != {"datasets": []}
    assert where.startswith(str(tmp_path)) and foreign == ["__main__"]


def test_the_handler_imports_neither_numpy_nor_psycopg2() -> None:
    code = "import sys, pisa_pulse.aws.handler; print([m for m in ('numpy', 'psycopg2') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_one_api_replica_publishes_at_a_time_and_another_takes_over(
    moto: str,
    nats_cluster: NatsCluster,
    shared: SharedServer,
    new_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = shared.up(new_dir, countries="alb,arg", schema="slim", rows_per_country=100)
    table_name = f"fleet-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb").create_table(
        TableName=table_name,
        KeySchema=KEY_SCHEMA,
        AttributeDefinitions=ATTRIBUTES,
        BillingMode="PAY_PER_REQUEST",
    )
    settings = tmp_path / "fleet.toml"
    settings.write_text(
        cfg.config_path(new_dir).read_text()
        + f'\n[capture]\nslot_prefix = "{shared.slot_prefix}"\n'
        + f'\n[publish]\nto = "dynamodb://{table_name}"\ninterval = 0.2\n'
    )
    nats = ["--nats", nats_cluster.servers, "--nats-prefix", f"p{uuid.uuid4().hex[:8]}"]
    pisa_pulse = [sys.executable, "-m", "pisa_pulse"]
    logs = (tmp_path / "fleet.log").open("a")
    processes = [
        subprocess.Popen([*pisa_pulse, "worker", *nats, "--config", str(settings), "--name", "w1"],
                         stdout=logs, stderr=subprocess.STDOUT)
    ]  # fmt: skip
    replicas = {}
    try:
        for name in ("r1", "r2"):
            port = free_port()
            processes.append(
                subprocess.Popen([*pisa_pulse, "api", *nats, "--config", str(settings), "--port", str(port)],
                                 stdout=logs, stderr=subprocess.STDOUT)
            )  # fmt: skip
            replicas[name] = (processes[-1], f"http://127.0.0.1:{port}/")

        def publishing() -> dict[str, dict[str, Any]]:
            found = {}
            for name, (process, url) in replicas.items():
                if process.poll() is None:
                    with contextlib.suppress(OSError, ValueError):
                        found[name] = json.loads(served(url, "/api/status")[1])["publish"][0]
            return found

        rows = sum(len(oracle.ids_of(source.dsn)) for source in config.sources)
        monkeypatch.setenv("PISA_PULSE_TABLE", table_name)
        monkeypatch.setattr(handler, "_CHARTS", None)  # a new container: this table

        def table_equals(url: str) -> bool:
            try:
                body = served(url, "/api/charts/submissions")[1]
            except OSError:
                return False  # not serving yet
            return bool(answered("2.0", "/api/charts/submissions")[1] == body and str(rows).encode() in body)

        first = replicas["r1"][1]
        wait_for(
            lambda: table_equals(first), 90, what="the table holding every row, as the replicas serve them"
        )
        wait_for(lambda: sum(p["active"] for p in publishing().values()) == 1, 30, what="one publisher")
        statuses = publishing()
        active = next(name for name, status in statuses.items() if status["active"])
        idle = next(name for name in replicas if name != active)
        assert statuses[active]["writes"] > 0 and statuses[idle]["writes"] == 0
        replicas[active][0].kill()  # a crash: its lease expires
        traffic(config, 200)
        rows = sum(len(oracle.ids_of(source.dsn)) for source in config.sources)
        wait_for(
            lambda: publishing().get(idle, {}).get("active") is True, 60, what="the other replica publishing"
        )
        wait_for(lambda: table_equals(replicas[idle][1]), 60, what="the table following the new publisher")
        assert publishing()[idle]["refused"] == 0
    finally:
        for process in processes:
            stop(process)


def test_an_older_publisher_cannot_roll_the_table_back(moto: str) -> None:
    from pisa_pulse.api.bodies import Snapshot
    from pisa_pulse.aws.publish import DynamoPublisher
    from pisa_pulse.aws.table import aggregates_of
    from pisa_pulse.engine.aggregates import Aggregates

    name = "rollback"
    client = boto3.client("dynamodb")
    client.create_table(
        TableName=name, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTES, BillingMode="PAY_PER_REQUEST"
    )
    now = 1_796_000_000.0

    def aggregates(rows: int) -> Aggregates:
        agg = Aggregates()
        for i in range(rows):  # country 0, arrival minutes in the current hour
            agg.add([0, int(now // 60) - i % 30, 0, *([1000] * 35)])
        return agg

    newer, older = DynamoPublisher(name, client, lambda: now), DynamoPublisher(name, client, lambda: now)
    newer.publish(Snapshot(1, aggregates(50), now))
    older.publish(Snapshot(1, aggregates(20), now - 60))  # woke up with data a minute older
    items = client.scan(TableName=name)["Items"]
    held, as_of, _ = aggregates_of(items)
    assert held == aggregates(50) and as_of == now
    assert older.refused > 0 and older.writes == 0 and newer.refused == 0
    newer.publish(Snapshot(2, aggregates(10), now + 1))  # rows withdrawn: fewer minutes, stale ones deleted
    held, _, _ = aggregates_of(client.scan(TableName=name)["Items"])
    assert held == aggregates(10)


def test_an_older_publisher_cannot_roll_the_bucket_back(moto: str) -> None:
    from pisa_pulse.api.bodies import Snapshot
    from pisa_pulse.aws.bucket import BucketPublisher
    from pisa_pulse.engine.aggregates import Aggregates

    client = boto3.client("s3")
    client.create_bucket(Bucket="rollback")
    now = 1_796_000_000.0

    def aggregates(rows: int) -> Aggregates:
        agg = Aggregates()
        for _ in range(rows):
            agg.add([0, int(now // 60), 0, *([1000] * 35)])
        return agg

    def body() -> bytes:
        return bytes(client.get_object(Bucket="rollback", Key="api/charts/submissions")["Body"].read())

    newer = BucketPublisher("s3://rollback", client, lambda: now)
    older = BucketPublisher("s3://rollback", client, lambda: now)
    older.publish(Snapshot(1, aggregates(20), now - 120))
    old_body = body()
    newer.publish(Snapshot(1, aggregates(50), now))  # overwrites the older publisher's charts
    new_body = body()
    assert new_body != old_body and newer.refused == 0
    older.publish(Snapshot(2, aggregates(30), now - 60))  # woke up with data a minute older than the bucket's
    assert body() == new_body and older.refused > 0
    newer.publish(Snapshot(2, aggregates(10), now + 1))  # its own ETag still holds: written in place
    assert body() != new_body and newer.refused == 0


def test_the_direct_handler_answers_what_the_independent_oracle_computes(
    shared: SharedServer, new_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pisa_pulse.aws import direct_handler

    config = shared.up(new_dir, countries="alb,arg,aus", schema="slim", rows_per_country=150, messy=0.05)
    traffic(config, 100)
    monkeypatch.setenv("PISA_PULSE_SETTINGS", str(cfg.config_path(new_dir)))
    monkeypatch.setattr(direct_handler, "_CHARTS", None)
    totals = oracle.all_totals({s.name.upper(): s.dsn for s in config.sources})
    for version in ("2.0", "1.0"):
        for asked in (None, ["ARG", "ALB"]):
            query = f"countries={','.join(asked)}" if asked else ""
            for chart in CHARTS:
                answer = direct_handler.handle(event(version, f"/api/charts/{chart}", query))
                expected = oracle.chart_bodies(totals, time.time(), {}, asked)[chart]  # direct: no arrivals
                assert answer["statusCode"] == 200 and json.loads(answer["body"]) == expected, (chart, asked)
    assert direct_handler.handle(event("2.0", "/api/charts/escs", "countries=ALB,,"))["statusCode"] == 400
