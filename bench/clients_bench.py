"""Slow and hostile clients: what the hardened connection layer (api/connections.py) costs and gives.

Two HTTP stacks serve the limits benchmark's static answer (a minimal Starlette app, 1 KiB of JSON),
each in a child process, one after the other in the same run:

- `uvicorn` : uvicorn's own httptools protocol, configured as `serve` was before issue 14 (one cap of
  1,000 on open connections and requests in progress together, no request deadline, no head bound);
- `hardened`: `serve`'s configuration now (`connections.server_config`, default settings).

They take turns, ABBA (`uvicorn`, `hardened`, `hardened`, `uvicorn`) when the profile asks for two
rounds, so that drift in the machine's speed during the run falls on both alike. For each: wrk on 32
keep-alive connections (what a request costs); then the same wrk while 1,500 connections hold half a
request (sent at once, then nothing), started just before it and inside the 10 s request deadline,
so they stall for the whole run (what a normal client gets then: answers, 503s, latency); then how
long the stalled connections stay open (EOF seen by the client, up to `STALL_WATCH_S` after they
were opened).

    python bench/run.py --suite clients [--profile smoke|quick|full]
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from api_bench import ServeProcess, wrk_load
from limits_bench import STATIC_CONNECTIONS, wait_static

STALLED = 1_500
STALL_WATCH_S = 25.0  # the default request deadline (10 s) with room; past it a connection "stays"
WRK_MAX_S = 6.0  # wrk under the stall runs inside the deadline, so that every stalled socket stalls
STACKS = ("uvicorn", "hardened")


def clients(seconds: float, rounds: int = 1) -> list[dict[str, Any]]:
    """One row per stack and round (ABBA): wrk alone, wrk beside 1,500 stalled connections, how long
    those stayed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, STALLED + 1024)), hard))
    order = [stack for i in range(rounds) for stack in (STACKS if i % 2 == 0 else STACKS[::-1])]
    return [_stack(stack, seconds) for stack in order]


def _stack(stack: str, seconds: float) -> dict[str, Any]:
    limits = Path(__file__).resolve().parent / "limits_bench.py"
    log = Path(tempfile.gettempdir()) / f"clients-bench-{stack}-{os.getpid()}.log"
    try:
        with ServeProcess([sys.executable, str(limits), "--serve-static", "--stack", stack], log) as server:
            wait_static(server)
            alone = wrk_load(server, server.url, STATIC_CONNECTIONS, seconds)
            stalled = _stall(server.url)
            try:
                beside = wrk_load(server, server.url, STATIC_CONNECTIONS, min(seconds, WRK_MAX_S))
                lived = _lifetimes(stalled)
            finally:
                for sock in stalled:
                    sock.close()
    finally:
        log.unlink(missing_ok=True)
    closed = sorted(t for t in lived if t is not None)
    return {
        "stack": stack,
        "alone": _wrk_figures(alone),
        "stalled": _wrk_figures(beside),
        "stalled_connections": STALLED,
        "stalled_closed": len(closed),
        "stalled_closed_p50_s": round(closed[len(closed) // 2], 2) if closed else None,
        "stalled_closed_max_s": round(closed[-1], 2) if closed else None,
    }


def _wrk_figures(run: dict[str, Any]) -> dict[str, Any]:
    keep = ("requests_per_s", "p50_ms", "p99_ms", "non_2xx", "socket_errors", "server_cpu_cores", "seconds")
    return {k: run[k] for k in keep if k in run}


def _stall(url: str) -> dict[socket.socket, float]:
    """STALLED connections that each send half a request, with when each was opened."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    opened = {}
    for i in range(STALLED):
        t0 = time.monotonic()
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stalled: %d" % i)
        opened[sock] = t0
    return opened


def _lifetimes(opened: dict[socket.socket, float]) -> list[float | None]:
    """Seconds from opening to EOF of each connection (None: still open STALL_WATCH_S after opening)."""
    closed: dict[socket.socket, float] = {}
    until = min(opened.values()) + STALL_WATCH_S
    with selectors.DefaultSelector() as selector:
        for each in opened:
            each.setblocking(False)
            selector.register(each, selectors.EVENT_READ, each)
        while len(closed) < len(opened) and time.monotonic() < until:
            for key, _ in selector.select(timeout=0.5):
                sock: socket.socket = key.data
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:  # (an answer, which neither stack sends, is read past)
                    closed[sock] = time.monotonic() - opened[sock]
                    selector.unregister(sock)
    return [closed.get(sock) for sock in opened]
