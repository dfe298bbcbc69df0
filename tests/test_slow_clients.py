"""Slow and hostile clients against `serve` as a subprocess (api/connections.py).

- 1,500 connections that send half a request and stall neither take service from a normal client nor
  outlive the request deadline (`server.request_timeout`, default 10 s: they see EOF after it, not
  before it).
- A request line or headers past 16 KiB get 431, a malformed request 400, in the API's error shape,
  whether the head comes in one piece or trickles in; the server goes on serving.
- `server.max_connections` closes connections past it at once; `server.max_requests` answers 503 to
  requests past it that are in progress, and only those.
"""

from __future__ import annotations

import json
import resource
import select
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pisa_pulse.api.charts import CHARTS
from pisa_pulse.api.settings import BY_NAME
from tests.conftest import SharedServer, serving, wait_for

pytestmark = pytest.mark.server

STALLED = 1_500
DEADLINE_S: float = BY_NAME["server.request_timeout"].default  # type: ignore[assignment]  # (README's)
EARLY_MARGIN_S = 0.5  # the server's timer starts after our connect() began: EOF before this is a fault
LATE_MARGIN_S = 8.0  # a loaded slow machine closes 1,500 sockets late, but not by this much


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)


def raw_answer(url: str, chunks: list[bytes], pause: float = 0) -> tuple[int | None, bytes]:
    """Send `chunks` on a new connection (`pause` seconds apart), then read to EOF: the answer's status
    (None: closed without one) and body."""
    with socket.create_connection(address(url), timeout=30) as sock:
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # answered already: stop sending
                sock.sendall(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-way: the answer is already waiting
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            pass
    if not received:
        return None, b""
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@contextmanager
def more_open_files(needed: int) -> Iterator[None]:
    """This process's soft open-file limit raised to at least `needed` for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"the open-file hard limit is {hard}; this test needs {needed} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def eof_times(socks: dict[socket.socket, float], timeout: float) -> dict[socket.socket, float]:
    """When each socket saw EOF (or a reset), by time.monotonic(); any data before it fails the test."""
    seen: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
        deadline = time.monotonic() + timeout
        while len(seen) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                ready: socket.socket = key.data
                try:
                    data = ready.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"a stalled connection got an answer: {data[:200]!r}"
                seen[ready] = time.monotonic()
                selector.unregister(ready)
    return seen


def dropped(url: str, reason: str) -> float:
    """`pisa_pulse_http_dropped_connections_total{reason}` as /metrics says."""
    status, body = get(url + "metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(f'pisa_pulse_http_dropped_connections_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no dropped-connections counter for {reason} in /metrics")


def test_stalled_connections_neither_block_a_client_nor_outlive_the_deadline(
    new_dir: Path, shared: SharedServer
) -> None:
    shared.up(new_dir, countries="alb,arg", schema="slim", rows_per_country=20)
    with more_open_files(STALLED + 256), serving("--data-dir", str(new_dir)) as server:
        wait_for(lambda: get(server.url + "api/charts/escs")[0] == 200, what="the first chart answer")
        started: dict[socket.socket, float] = {}
        try:
            for i in range(STALLED):
                t0 = time.monotonic()
                sock = socket.create_connection(address(server.url), timeout=10)
                started[sock] = t0
                sock.sendall(b"GET /api/charts/escs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stalled: " + b"%d" % i)
            # While they stall, every chart answers a normal client, within a generous wait.
            answers = [get(server.url + f"api/charts/{chart}", timeout=10)[0] for chart in CHARTS * 2]
            assert answers == [200] * len(answers)
            closed = eof_times(started, DEADLINE_S + LATE_MARGIN_S + 5)
        finally:
            for sock in started:
                sock.close()
        assert len(closed) == STALLED, f"{STALLED - len(closed)} stalled connections were never closed"
        lived = [closed[sock] - started[sock] for sock in started]
        assert min(lived) >= DEADLINE_S - EARLY_MARGIN_S, f"closed before the deadline: {min(lived):.2f} s"
        assert max(lived) <= DEADLINE_S + LATE_MARGIN_S, f"closed long after the deadline: {max(lived):.2f} s"
        assert dropped(server.url, "request_timeout") >= STALLED
        assert get(server.url + "api/charts/escs")[0] == 200


@pytest.mark.parametrize(
    ("what", "chunks", "pause"),
    [
        (
            "a 64 KiB request line",
            [b"GET /api/charts/escs?countries=" + b"A" * 65536 + b" HTTP/1.1\r\n\r\n"],
            0,
        ),
        (
            "a 64 KiB header",
            [b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"v" * 65536 + b"\r\n\r\n"],
            0,
        ),
        ("4,000 small headers", [b"GET /api HTTP/1.1\r\n" + b"X-Many: 12345678\r\n" * 4000 + b"\r\n"], 0),
        ("a header trickling in", [b"GET /api HTTP/1.1\r\nX-Slow: "] + [b"v" * 1024] * 40, 0.01),
    ],
)
def test_oversized_heads_get_431_and_the_server_goes_on(
    tmp_path: Path, what: str, chunks: list[bytes], pause: float
) -> None:
    with serving("--config", str(direct_settings(tmp_path))) as server:
        status, body = raw_answer(server.url, chunks, pause)
        assert status == 431, f"{what}: {status} {body[:200]!r}"
        assert "16384 bytes" in json.loads(body)["error"]["message"]
        assert get(server.url + "api")[0] == 200
        assert dropped(server.url, "head_too_large") == 1


def test_a_malformed_request_gets_400_in_the_error_shape(tmp_path: Path) -> None:
    with serving("--config", str(direct_settings(tmp_path))) as server:
        status, body = raw_answer(server.url, [b"GET /api HTTP/1.1\r\nBad Header\r\n\r\n"])
        assert status == 400
        assert json.loads(body)["error"]["status"] == 400
        assert get(server.url + "api")[0] == 200


def test_connections_past_max_connections_are_closed_at_once(tmp_path: Path) -> None:
    cap = int(BY_NAME["server.max_connections"].least or 16)
    with serving("--config", str(direct_settings(tmp_path, f"max_connections = {cap}\n"))) as server:
        opened = {
            socket.create_connection(address(server.url), timeout=10): time.monotonic()
            for _ in range(cap + 10)
        }
        try:
            closed = eof_times(opened, DEADLINE_S / 2)
        finally:
            for sock in opened:
                sock.close()
        # The ten past the cap, and only those: the others stay open until the request deadline.
        assert len(closed) == 10, (
            f"{len(closed)} of {cap + 10} connections, {cap} allowed, were closed at once"
        )
        wait_for(lambda: get(server.url + "api")[0] == 200, what="serving again once they are gone")
        assert dropped(server.url, "max_connections") >= 10


def test_requests_past_max_requests_get_503_and_only_those(tmp_path: Path) -> None:
    # A source that accepts connections and never answers: each chart request in direct mode waits on
    # it, in progress, until the test closes it (its connect_timeout is longer than any wait here).
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        dsn = f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/alb?connect_timeout=300"
        settings = direct_settings(tmp_path, "max_requests = 2\n", dsn)
        with serving("--config", str(settings)) as server:
            answers: list[bytes] = []
            threads = [
                threading.Thread(target=lambda: answers.append(get(server.url + "api/charts/escs", 120)[1]))
                for _ in range(3)
            ]
            for thread in threads:
                thread.start()
            try:
                # Three at once: two are let in and wait on the source, the third is one too many.
                wait_for(lambda: answers, what="one of three requests answered while two wait")
                [refused] = answers
                assert "too many requests in progress" in json.loads(refused)["error"]["message"]
                # ... and so is any other request, even on a route that would not wait, while they do.
                status, body = get(server.url + "api")
                assert status == 503 and b"too many requests in progress" in body
                assert len(answers) == 1  # the two are still waiting
            finally:
                silent.close()  # the source goes away: the two waiting requests end
                for thread in threads:
                    thread.join(120)
            # The two in progress ran to their end (the source's failure), not into the cap.
            assert len(answers) == 3 and sum(b"too many requests" in body for body in answers) == 1, answers
            wait_for(lambda: get(server.url + "api")[0] == 200, what="serving again once they ended")
    finally:
        silent.close()


def direct_settings(
    tmp_path: Path, server: str = "", dsn: str = "postgresql://nobody@127.0.0.1:1/alb"
) -> Path:
    """A settings file for `serve` in direct mode over one source at `dsn`, with `server` in [server]."""
    path = tmp_path / "settings.toml"
    path.write_text(
        f'[server]\n{server}[capture]\nmode = "direct"\n[[sources]]\nname = "alb"\ndsn = "{dsn}"\n'
    )
    return path
