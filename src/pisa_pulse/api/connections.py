"""Connections on a real network: uvicorn's httptools protocol with the limits a public server needs.

uvicorn (0.54, httptools) times a connection out only between requests (its keep-alive timer starts
after a response), puts no bound on a request head's size, and counts every open connection against
its one cap (`limit_concurrency`), so a thousand sockets that send half a request and stall make
every other client get 503 for as long as they stay. `HardenedProtocol` changes that:

- **A deadline for each request** (`server.request_timeout`, default 10 s): its line, headers and body
  must arrive within that many seconds of the connection opening or of the request's first byte;
  past it the connection is closed without an answer (as nginx and Go's ReadHeaderTimeout do).
  Between requests uvicorn's keep-alive timeout (5 s) still closes an idle connection.
- **A bound on a request head** (line and headers, `MAX_HEAD_BYTES`): past it the answer is 431 in
  the API's error shape, and the connection is closed.
- **Requests in progress, not connections, against the cap that protects request handling**
  (`server.max_requests`): past it a request is answered 503 at once. A connection that has not sent
  a whole request takes no part of it.
- **A hard cap on open connections** (`server.max_connections`): past it a new connection is closed
  at once, and `raise_open_files` lifts the process's open-file limit to what the cap needs.

Every connection dropped for one of these reasons is counted in `DROPPED` (`/metrics`:
`pisa_pulse_http_dropped_connections_total{reason}`). WebSocket upgrades are not served (the API has
no WebSocket route), so a connection keeps this protocol for its whole life.

A request the app marks as a stream (`scope[STREAMING]`: the live route, live.py) counts in
`STREAMS.open` instead of against `server.max_requests` (streams have their own cap), and its
connection is closed when the server shuts down rather than waited for.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pisa_pulse.api.responses import error_response
from pisa_pulse.api.settings import ServerSettings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # a request's line and headers (Node's default; nginx allows 1 + 4 x 8 KiB)
KEEP_ALIVE_S = 5  # uvicorn's default: an idle connection between two requests is closed after it
LINGER_S = 2  # after an error answer: how long a half-closed connection is read (and discarded)
SPARE_FILES = 256  # open files the process needs besides its connections (logs, sockets, libraries)

# Connections dropped, by reason (one counter per process: uvicorn makes a protocol per connection).
DROP_REASONS = ("request_timeout", "head_too_large", "max_connections")
DROPPED: collections.Counter[str] = collections.Counter()

STREAMING = "pisa_pulse.streaming"  # a scope key: this request's response is a stream


class _Streams:
    open = 0  # requests in progress that are streams (live.py counts them)


STREAMS = _Streams()

BUSY = error_response(503, "too many requests in progress; retry in a second")
BUSY.headers["Retry-After"] = "1"
BUSY.headers["X-Content-Type-Options"] = "nosniff"


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past MAX_HEAD_BYTES."""


@dataclass(frozen=True)
class Limits:
    """What `HardenedProtocol` enforces (from the [server] settings)."""

    request_timeout: float
    max_requests: int
    max_connections: int


class HardenedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request deadline, a head size bound, a cap on requests in
    progress and a hard cap on connections (the module's docstring says why). Subclassed per server
    by `protocol_for`, which sets `limits`."""

    limits: Limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # uvicorn's one cap counts connections: ours are below
        self.served_app: ASGIApp = self.app
        self.deadline: asyncio.TimerHandle | None = None
        self.reading_head = True  # from the end of one request to the end of the next one's headers
        self.head_bytes = 0  # of the head being read, as parsed (line and headers)
        self.pending_bytes = 0  # received while a head spans several reads
        self.heads = 0  # heads complete on this connection
        self.refusal: tuple[int, str] | None = None
        self.lingering = False

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.drop("max_connections")
            return
        self.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, which waits for responses in progress, except for a stream:
        that one never ends by itself, so it is cut (its client reconnects, to another replica)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.scope.get(STREAMING):
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        heads = self.heads
        super().data_received(data)
        if self.heads != heads or not self.reading_head:
            self.pending_bytes = 0
            return
        # httptools keeps a header's value to itself until the next one starts: bound the bytes of
        # a head that is still arriving, as well as what the callbacks have seen.
        self.pending_bytes += len(data)
        if self.pending_bytes > MAX_HEAD_BYTES and not self.lingering:
            self.refuse_head()
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser rejects, in our error shape (431 for a head past
        the bound)."""
        status, message = self.refusal or (400, "not a valid HTTP/1.1 request")
        response = error_response(status, message)
        head = [f"HTTP/1.1 {status} {'Request Header Fields Too Large' if status == 431 else 'Bad Request'}"]
        head += [f"{name}: {value}" for name, value in response.headers.items()]
        head += ["x-content-type-options: nosniff", "connection: close"]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        self.linger()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.arm()

    def on_url(self, url: bytes) -> None:
        self.count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.heads += 1
        self.reading_head = False
        self.head_bytes = 0
        # The cap on requests in progress: uvicorn's own check is off (limit_concurrency is None).
        busy = len(self.tasks) - STREAMS.open >= self.limits.max_requests
        self.app = BUSY if busy else self.served_app
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.disarm()
        self.reading_head = True
        super().on_message_complete()

    # Limits

    def arm(self) -> None:
        """Start the request deadline, unless it runs already."""
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.limits.request_timeout, self.drop, "request_timeout")

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def linger(self) -> None:
        """Half-close after an error answer and discard what the client still sends, until it closes
        or for LINGER_S: closing at once, with its request unread, would reset the connection and
        could destroy the answer before the client reads it."""
        self.lingering = True
        self.disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)  # (a no-op once the client has closed)

    def drop(self, reason: str) -> None:
        """Close the connection without an answer, counted by `reason`."""
        self.deadline = None
        DROPPED[reason] += 1
        if not self.transport.is_closing():
            self.transport.close()

    def count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            self.refuse_head()
            raise _HeadTooLarge  # httptools stops and uvicorn answers through send_400_response

    def refuse_head(self) -> None:
        DROPPED["head_too_large"] += 1
        self.disarm()
        self.refusal = (
            431,
            f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes; send a shorter one",
        )


def protocol_for(limits: Limits) -> type[HardenedProtocol]:
    """`HardenedProtocol` enforcing `limits`, for `uvicorn.Config(http=...)`."""
    return type("HardenedProtocol", (HardenedProtocol,), {"limits": limits})


def raise_open_files(max_connections: int) -> int:
    """Lift the soft open-file limit to fit `max_connections` (up to the hard limit); return the
    connections it fits, with a warning naming the fix when that is fewer than asked."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + SPARE_FILES
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    fits = max(wanted, soft) - SPARE_FILES
    if fits < max_connections:
        log.warning(
            "server.max_connections lowered to %d: the open-file hard limit is %d; raise it "
            "(ulimit -Hn, or LimitNOFILE= in a systemd unit) to allow %d",
            fits,
            hard,
            max_connections,
        )
        return max(fits, 1)
    return max_connections


def server_config(app: ASGIApp, server: ServerSettings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration `serve` (and the benchmarks' static ceiling) run with."""
    limits = Limits(server.request_timeout, server.max_requests, raise_open_files(server.max_connections))
    return uvicorn.Config(
        app,
        http=protocol_for(limits),
        ws="none",
        log_level="warning",
        log_config=None,  # uvicorn's loggers reach ours (terminal.setup_logging): one format, scrubbed
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_S,
        **options,
    )
