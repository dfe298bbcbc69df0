"""The live route: every chart a page shows, pushed the moment a new version of it exists.

    GET /api/live?charts=performance,escs&countries=FRA,DEU&bucket=minute&hours=48

**Server-sent events, not a long poll.** One response carries all of a page's charts for as long as
the page is open (a browser allows six HTTP/1.1 connections per host: one stream leaves five for
everything else); the browser's `EventSource` reconnects by itself and resumes with `Last-Event-ID`;
it is a plain response to every proxy, with no upgrade; and a change reaches the page in one write,
where a long poll pays a new request (and the six charts one each, or a combined body) after every
change. `countries`, `hours` and `bucket` apply to each chart that takes them, exactly as on
`/api/charts/<name>`; `charts` defaults to all of them. Bad parameters answer 400 before the stream
starts, in the API's error shape.

What the stream says:

    retry: 1000                       once, first: how long EventSource waits before reconnecting

    event: chart                      a chart whose body differs from what the client holds
    id: 1a2b3c4d5f0,77aa00ff61b,...   the ETags the client now holds, one per chart (in `charts` order)
    data: {"chart":"escs","etag":"\\"1a2b3c4d5f0\\"","version":12,"as_of":"...","age_ms":3,"body":{...}}

    event: fresh                      every second at most, when the data's time moved and no chart
    data: {"version":12,"as_of":"...","age_ms":4}     changed: what the page shows is that fresh

    : keep-alive                      after HEARTBEAT_S with nothing else (keeps idle streams alive
                                      through proxies that close silent connections)

`body` is byte for byte the body `/api/charts/<name>` answers with the same parameters, and `etag`
its ETag. A reconnecting EventSource sends the last `id` as `Last-Event-ID`; a new one may pass the
same list as `?since=`: charts whose ETag is unchanged are then not sent again.

**Bounded per connection.** A stream holds no queue: when it wakes (a new snapshot version, or a
second passed; at most every `MIN_GAP_S` after a write, so a torrent of versions goes out as one
every 20 ms), it looks up each chart's current body in the chart cache and writes those that
changed. Each chart has a token bucket (`CHART_RATE` a second after a burst of `CHART_BURST`): a chart
that changes with every version (the count, chart 2, under traffic) goes out 20 times a second, the
latest body each time, while one that changes now and then goes out at once; a page then has the
time to draw the rare change the moment it comes. A slow reader's writes wait for the socket
(uvicorn's flow control); when they resume, the stream takes whatever is current then, so versions
in between are skipped (counted), never queued.

**Capped apart from polls** (`server.max_streams`, default 1,000; 0 turns the route off): past the
cap a new stream gets 503 with `Retry-After`, and the page polls. Open streams do not count against
`server.max_requests`. Direct mode computes on each request, so it has no changes to push: 503.
Streams are cut when the server shuts down (`connections.HardenedProtocol.shutdown`); clients
reconnect, to another replica if there is one.

Counted in `/metrics` (`LiveHub.collect`): streams open, opened and refused, events by type, and
snapshot versions skipped by streams that were busy writing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from pisa_pulse.api import charts
from pisa_pulse.api.bodies import Snapshot, age_ms, iso_time, json_bytes
from pisa_pulse.api.connections import STREAMING, STREAMS
from pisa_pulse.api.exceptions import BadRequest
from pisa_pulse.api.responses import error_response

if TYPE_CHECKING:
    from pisa_pulse.api.handlers import ApiState

RETRY_MS = 1000  # EventSource's wait before it reconnects (its own default is about 3 s)
HEARTBEAT_S = 15.0  # silence before a keep-alive comment (proxies commonly close idle ones at 30-60 s)
FRESH_S = 1.0  # at most one `fresh` event per this many seconds
WAKE_S = 1.0  # a stream looks again at least this often (chart 2's window moves with the clock)
MIN_GAP_S = 0.02  # ... and at most this often: changes closer than that go out together
CHART_RATE = 20.0  # a chart's events per second, at most, sustained (a token bucket per chart) ...
CHART_BURST = 10.0  # ... after a burst of this many
MAX_SINCE = 2048  # characters of Last-Event-ID / ?since= read (6 ETags take about 80)
EVENT_TYPES = ("chart", "fresh", "heartbeat")
ChartBody = Callable[["ApiState", charts.Chart, charts.Query, Snapshot], Awaitable[tuple[bytes, str]]]


class LiveHub:
    """The app's open streams: their wake-ups, their cap and their counters."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting: set[asyncio.Event] = set()  # one per stream waiting for a change
        self.pending = False  # a wake-up is on its way to the loop
        self.open = 0
        self.opened = 0
        self.refused = 0
        self.skipped = 0  # snapshot versions that streams never looked at (busy writing meanwhile)
        self.events: Counter[str] = Counter()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve streams on `loop` (the app's, at startup)."""
        self.loop = loop

    def notify(self) -> None:
        """A new snapshot version exists (from any thread): wake every stream, once per loop turn."""
        if self.loop is None or self.pending:
            return
        self.pending = True
        self.loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        self.pending = False
        for event in self.waiting:
            event.set()

    def offered(self, mode: str) -> bool:
        """Whether this server takes streams at all (the index then lists the route)."""
        return self.max_streams > 0 and mode != "direct"

    def refusal(self, mode: str) -> str | None:
        """Why a new stream cannot open now (None: it can)."""
        if self.max_streams == 0:
            return "the live route is off here (server.max_streams = 0); poll /api/charts/<name>"
        if mode == "direct":
            return "direct mode computes each answer on request: nothing to push; poll /api/charts/<name>"
        if self.loop is None:
            return "the server is starting; retry in a second"
        if self.open >= self.max_streams:
            return f"{self.max_streams} live streams are open (server.max_streams); poll, or retry later"
        return None

    def collect(self) -> Iterator[Metric]:
        """The live route's metrics (`Metrics` collects them at each scrape)."""
        yield GaugeMetricFamily("pisa_pulse_live_streams", "Live streams open", value=self.open)
        yield CounterMetricFamily("pisa_pulse_live_streams_opened", "Live streams opened", value=self.opened)
        yield CounterMetricFamily(
            "pisa_pulse_live_streams_refused",
            "Live streams refused (503: cap, off, direct mode)",
            value=self.refused,
        )
        events = CounterMetricFamily("pisa_pulse_live_events", "Events sent on live streams", labels=["type"])
        for kind in EVENT_TYPES:
            events.add_metric([kind], self.events[kind])
        yield events
        yield CounterMetricFamily(
            "pisa_pulse_live_skipped_versions",
            "Snapshot versions a live stream never sent: it was still writing an older one",
            value=self.skipped,
        )


@dataclasses.dataclass
class Wanted:
    """One chart of a stream: its query, the ETag the client holds ("": none), and its token bucket
    (`CHART_RATE`, `CHART_BURST`)."""

    chart: charts.Chart
    query: charts.Query
    held: str = ""
    tokens: float = CHART_BURST
    filled: float = 0.0  # time.monotonic() of the last refill

    def wait(self, ticks: float) -> float:
        """0 when the chart may be sent now (a token is taken), else the seconds until it may."""
        self.tokens = min(CHART_BURST, self.tokens + (ticks - self.filled) * CHART_RATE)
        self.filled = ticks
        if self.tokens < 1:
            return (1 - self.tokens) / CHART_RATE
        self.tokens -= 1
        return 0.0


def parse_charts(raw: str | None) -> list[charts.Chart]:
    """`?charts=a,b` (default: every chart), in the order given, each once; BadRequest."""
    if raw is None or not raw.strip():
        return list(charts.REGISTRY)
    found: list[charts.Chart] = []
    for name in (part.strip() for part in raw.split(",")):
        chart = charts.BY_NAME.get(name)
        if chart is None:
            raise BadRequest(f"charts: no chart {name!r}", f"the charts are {', '.join(charts.CHARTS)}")
        if chart not in found:
            found.append(chart)
    return found


def parse_since(raw: str, count: int) -> list[str]:
    """The ETags a client holds, from `Last-Event-ID` or `?since=` (see the module docstring);
    anything unreadable counts as holding nothing."""
    held = [f'"{tag}"' if tag else "" for tag in raw[:MAX_SINCE].split(",")] if raw else []
    return (held + [""] * count)[:count]


def event_id(wanted: list[Wanted]) -> bytes:
    return ",".join(w.held.strip('"') for w in wanted).encode()


def freshness(snap: Snapshot, now: float) -> dict[str, object]:
    return {
        "version": snap.version,
        "as_of": iso_time(snap.as_of) if snap.as_of else None,
        "age_ms": age_ms(snap, now),
    }


class LiveStream(Response):
    """One stream (see the module docstring); a Response whose body is written as changes come."""

    def __init__(self, api: ApiState, wanted: list[Wanted], body: ChartBody) -> None:
        """`body`: a chart's body and ETag in a snapshot (handlers.chart_body, as the chart route's)."""
        super().__init__(
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # (nginx: do not buffer)
        )
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # (chunked)
        self.api = api
        self.wanted = wanted
        self.build = body
        self.wake = asyncio.Event()
        self.closed = False
        self.due = WAKE_S  # seconds until the stream looks again, at most
        self.holding = False  # a changed chart waits for its bucket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.api.live
        scope[STREAMING] = True  # the protocol cuts it at shutdown and leaves it out of max_requests
        hub.open += 1
        hub.opened += 1
        STREAMS.open += 1
        watching = asyncio.create_task(self.watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send(
                {"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode(), "more_body": True}
            )
            await self.stream(send)
        finally:
            watching.cancel()
            hub.waiting.discard(self.wake)
            hub.open -= 1
            STREAMS.open -= 1

    async def watch(self, receive: Receive) -> None:
        """Until the client goes: then the stream ends at its next wake-up, which is now."""
        message: Message = {}
        while message.get("type") != "http.disconnect":
            message = await receive()
        self.closed = True
        self.wake.set()

    async def stream(self, send: Send) -> None:
        api, hub = self.api, self.api.live
        assert hub.loop is not None
        seen = -1
        as_of_sent = 0.0
        fresh_at = last_write = time.monotonic()
        while not self.closed:
            self.wake.clear()
            hub.waiting.add(self.wake)  # before reading the snapshot: a change after it wakes us
            snap = await api.snapshot(frozenset())
            if seen >= 0 and snap.version > seen + 1:
                hub.skipped += snap.version - seen - 1
            seen = snap.version
            now, ticks = api.clock(), time.monotonic()
            self.due, self.holding = WAKE_S, False
            chunks = [await self.chart_event(w, snap, now, ticks) for w in self.wanted]
            out = b"".join(c for c in chunks if c)
            if out:
                as_of_sent = snap.as_of
            elif snap.as_of != as_of_sent and ticks - fresh_at >= FRESH_S and not self.holding:
                out = b"event: fresh\ndata: " + json_bytes(freshness(snap, now)) + b"\n\n"
                hub.events["fresh"] += 1
                as_of_sent, fresh_at = snap.as_of, ticks
            elif ticks - last_write >= HEARTBEAT_S:
                out = b": keep-alive\n\n"
                hub.events["heartbeat"] += 1
            if out:
                last_write = ticks
                await send({"type": "http.response.body", "body": out, "more_body": True})
                if self.closed:
                    break
            timer = hub.loop.call_later(self.due, self.wake.set)
            await self.wake.wait()
            timer.cancel()
            if out and (pause := ticks + MIN_GAP_S - time.monotonic()) > 0:
                await asyncio.sleep(pause)

    async def chart_event(self, wanted: Wanted, snap: Snapshot, now: float, ticks: float) -> bytes:
        """The event for a chart whose body is not the one the client holds; b"" when it is, or when
        the chart has used up its rate (then `due` says when to look again)."""
        query = dataclasses.replace(wanted.query, now=now)
        body, etag = await self.build(self.api, wanted.chart, query, snap)
        if etag == wanted.held:
            return b""
        if (wait := wanted.wait(ticks)) > 0:
            self.due, self.holding = min(self.due, wait), True  # (no `fresh` meanwhile: it would lie)
            return b""
        wanted.held = etag
        self.api.live.events["chart"] += 1
        head = json_bytes({"chart": wanted.chart.name, "etag": etag, **freshness(snap, now)})
        return (
            b"event: chart\nid: "
            + event_id(self.wanted)
            + b"\ndata: "
            + head[:-1]
            + b',"body":'
            + body
            + b"}\n\n"
        )


def open_stream(api: ApiState, request: Request, longest: int, body: ChartBody) -> Response:
    """`GET /api/live`: the stream, a 400 for bad parameters, or a 503 when none can open."""
    params: Mapping[str, str] = request.query_params
    now = api.clock()
    wanted = [
        Wanted(chart, charts.parse_query(chart, params, now, longest))
        for chart in parse_charts(params.get("charts"))
    ]
    refusal = api.live.refusal(api.snapshots.mode)
    if refusal is not None:
        api.live.refused += 1
        response = error_response(503, refusal)
        response.headers["Retry-After"] = "5"
        return response
    since = request.headers.get("last-event-id") or params.get("since", "")
    for held, w in zip(parse_since(since, len(wanted)), wanted, strict=True):
        w.held = held
    return LiveStream(api, wanted, body)
