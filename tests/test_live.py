"""The live route (`GET /api/live`, api/live.py) on `serve` as a subprocess over real sources.

- Each chart asked for arrives once, byte for byte the chart route's body with its ETag; a committed
  row then pushes the charts it changed, and only those.
- A client resuming with `Last-Event-ID` (or `?since=`) gets only the charts that changed since.
- Bad parameters answer 400 before any stream starts; past `server.max_streams`, 503 (and polls are
  still served); `/metrics` counts streams, refusals and events.
- Under a crowd: many streams that never read while rows keep changing do not grow the server's
  memory (each skips to the latest version, counted), and every reading stream still gets the last
  count; the server shuts down promptly with them open.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pisa_pulse.api.charts import CHARTS, PER_COUNTRY
from pisa_pulse.sources import config as cfg
from tests.conftest import Server, serving, share_of, wait_for

pytestmark = pytest.mark.server

MAX_STREAMS = 60
CROWD = 40  # streams that never read, in the crowd test
STALLED = "charts=submissions,submissions-over-time&bucket=minute&hours=24"  # 1,440 points: 40 kB a body
PARAMS = "countries=ALB,ARG&bucket=minute"


@dataclass
class Event:
    type: str
    id: str | None
    data: dict[str, Any]


class Stream:
    """A client of the live route: one HTTP/1.1 connection, read as server-sent events."""

    def __init__(self, url: str, query: str, headers: dict[str, str] | None = None, timeout: float = 30):
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.conn.request("GET", f"/api/live?{query}", headers=headers or {})
        self.response = self.conn.getresponse()
        self.last_id: str | None = None

    def next(self) -> Event:
        """The next event that carries data (comments and the `retry` line are skipped)."""
        kind, data = "message", ""
        while True:
            line = self.response.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if not line:
                if data:
                    return Event(kind, self.last_id, json.loads(data))
                kind = "message"
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "id":
                self.last_id = value
            elif field == "data":
                data += value

    def charts(self, count: int) -> dict[str, Event]:
        """The next `count` chart events (fresh ones in between are skipped), by chart."""
        found: dict[str, Event] = {}
        while len(found) < count:
            event = self.next()
            if event.type == "chart":
                found[event.data["chart"]] = event
        return found

    def close(self) -> None:
        self.conn.close()


def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def metric(url: str, name: str) -> float:
    _, body, _ = get(url + "metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, shared_cluster: Any
) -> Iterator[tuple[Server, cfg.SourcesConfig]]:
    """`serve` over three small sources, with `server.max_streams = MAX_STREAMS`."""

    root = tmp_path_factory.mktemp("live")
    with share_of(shared_cluster) as shared:
        config = shared.up(root / "data", countries="alb,arg,aus", schema="slim", rows_per_country=50)
        settings = root / "settings.toml"
        sources = "".join(f'[[sources]]\nname = "{s.name}"\ndsn = "{s.dsn}"\n' for s in config.sources)
        settings.write_text(
            f"[server]\nmax_streams = {MAX_STREAMS}\n"
            f'[capture]\nmode = "replication"\nslot_prefix = "{shared.slot_prefix}"\nstate_dir = "state"\n'
            + sources
        )
        with serving("--config", str(settings)) as server:
            wait_for(
                lambda: json.loads(get(server.url + "api/charts/submissions")[1])["count"] == 150,
                timeout=90,
                what="the three sources copied",
            )
            yield server, config


def insert(config: cfg.SourcesConfig, rows: int, first_id: int, pause: float = 0) -> None:
    """`rows` new ALB students, each committed on its own, `pause` seconds apart (so that each makes a
    snapshot version of its own: commits closer than the capture's coalescing share one)."""
    conn = psycopg2.connect(config.sources[0].dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for i in range(rows):
                cur.execute("INSERT INTO responses (id, cnt) VALUES (%s, 'ALB')", (first_id + i,))
                time.sleep(pause)
    finally:
        conn.close()


def test_each_chart_arrives_as_the_chart_route_answers_it_then_only_changes(
    live: tuple[Server, cfg.SourcesConfig],
) -> None:
    server, config = live
    stream = Stream(server.url, PARAMS)
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("Content-Type", "").startswith("text/event-stream")
        first = stream.charts(len(CHARTS))
        for name, event in first.items():
            query = (
                f"?{PARAMS}"
                if name in PER_COUNTRY
                else ("?bucket=minute" if name == "submissions-over-time" else "")
            )
            status, body, headers = get(server.url + f"api/charts/{name}{query}")
            # Nothing changes meanwhile: the same body, byte for byte, and ETag.
            assert status == 200 and headers["etag"] == event.data["etag"], name
            assert body == json.dumps(event.data["body"], separators=(",", ":"), ensure_ascii=False).encode()
        count = first["submissions"].data["body"]["count"]
        insert(config, 1, 900_000)
        # The next chart events are for what the row changed: the count among them, one more.
        changed = stream.charts(1)
        while "submissions" not in changed:
            changed.update(stream.charts(1))
        assert changed["submissions"].data["body"]["count"] == count + 1
        assert set(changed) <= set(CHARTS)
        etags = stream.last_id
        assert etags is not None and len(etags.split(",")) == len(CHARTS)
    finally:
        stream.close()


def test_a_resumed_stream_sends_only_what_changed(live: tuple[Server, cfg.SourcesConfig]) -> None:
    server, config = live
    first = Stream(server.url, "charts=submissions,escs")
    held = first.charts(2)
    last_id = first.last_id
    first.close()
    assert last_id is not None
    count = held["submissions"].data["body"]["count"]
    # Resumed by EventSource (Last-Event-ID) and by a new page (?since=): nothing until a change...
    resumed = Stream(server.url, "charts=submissions,escs", headers={"Last-Event-ID": last_id})
    again = Stream(server.url, f"charts=submissions,escs&since={last_id}")
    try:
        insert(config, 1, 900_100)
        for stream in (resumed, again):
            event = stream.next()
            while event.type != "chart":
                event = stream.next()
            # ... then the count that changed, never escs's body they already hold (a country's index
            # mean does not move for a row without values).
            assert event.data["chart"] == "submissions" and event.data["body"]["count"] == count + 1
    finally:
        resumed.close()
        again.close()


def test_bad_parameters_answer_400_before_a_stream(live: tuple[Server, cfg.SourcesConfig]) -> None:
    server, _ = live
    for query, says in (
        ("charts=escs,nope", "no chart 'nope'"),
        ("countries=AL1", "countries"),
        ("bucket=week", "bucket"),
    ):
        status, body, _ = get(server.url + f"api/live?{query}")
        assert status == 400, query
        message = json.loads(body)["error"]["message"]
        assert says in message and "; " in message, message


def test_past_the_cap_a_stream_gets_503_and_polls_are_still_served(
    live: tuple[Server, cfg.SourcesConfig],
) -> None:
    server, _ = live
    refused = metric(server.url, "pisa_pulse_live_streams_refused_total")
    streams = [Stream(server.url, "charts=submissions") for _ in range(MAX_STREAMS)]
    try:
        for stream in streams:
            assert stream.charts(1)["submissions"].data["body"]["count"] >= 150
        assert metric(server.url, "pisa_pulse_live_streams") == MAX_STREAMS
        status, body, headers = get(server.url + "api/live?charts=submissions")
        assert (
            status == 503
            and headers["retry-after"]
            and "server.max_streams" in json.loads(body)["error"]["message"]
        )
        assert metric(server.url, "pisa_pulse_live_streams_refused_total") == refused + 1
        # Open streams are not requests in progress: every chart still answers a poll.
        for name in CHARTS:
            assert get(server.url + f"api/charts/{name}")[0] == 200
        streams.pop().close()
        wait_for(
            lambda: metric(server.url, "pisa_pulse_live_streams") == MAX_STREAMS - 1, what="a stream closed"
        )
        streams.append(Stream(server.url, "charts=submissions"))
        assert streams[-1].response.status == 200
    finally:
        for stream in streams:
            stream.close()


def test_streams_that_never_read_do_not_grow_memory_and_readers_get_the_latest(
    live: tuple[Server, cfg.SourcesConfig],
) -> None:
    server, config = live
    stalled: list[socket.socket] = []
    for _ in range(CROWD):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = server.url.removeprefix("http://").rstrip("/").split(":")
        sock.connect((host, int(port)))
        sock.sendall(f"GET /api/live?{STALLED} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        stalled.append(sock)
    reader = Stream(server.url, "charts=submissions")
    try:
        count = reader.charts(1)["submissions"].data["body"]["count"]
        skipped = metric(server.url, "pisa_pulse_live_skipped_versions_total")
        # Each version changes a 40 kB body: a stream that queued them would hold 40 kB more per change.
        insert(config, 100, 910_000, pause=0.01)
        warm = rss_kb(server.process.pid)
        insert(config, 300, 920_000, pause=0.01)
        grown = rss_kb(server.process.pid) - warm
        assert grown < 20_000, (
            f"the server grew {grown} kB over 300 more changes with {CROWD} stalled streams"
        )
        # The reader gets to the last count (it may skip versions in between, never the last).
        final = count + 400
        latest = count
        deadline = time.monotonic() + 60
        while latest != final and time.monotonic() < deadline:
            latest = reader.charts(1)["submissions"].data["body"]["count"]
        assert latest == final
        # A stalled stream, read at last, also ends on the last count.
        sock = stalled[0]
        sock.settimeout(30)
        seen = b""
        while f'"count":{final}'.encode() not in seen:
            data = sock.recv(65536)
            assert data, "the stalled stream ended"
            seen = seen[-200:] + data
        # ... having skipped versions while it could not write, rather than queue them.
        assert metric(server.url, "pisa_pulse_live_skipped_versions_total") > skipped
    finally:
        reader.close()
        for sock in stalled:
            sock.close()
