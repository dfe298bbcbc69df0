"""Serving against the ceiling of the same server: chart answers beside a static answer, before and after.

The app `serve` runs (`create_app` over the sources' live snapshots, `server_config`'s hardened
protocol), with one route more, `/api/static`: 1 KiB of fixed JSON behind the same middleware (the
request timer, the Host check, CORS as on the chart routes, the headers every answer carries). wrk
(one thread, `CONNECTIONS` connections, `seconds` per URL) loads in turn the static route, chart 1
and chart 6 with five countries; each chart's requests/s is given as a share of the static route's
in the same run, and its p99 beside the static one's. The code before issue 18
(`live_bench.BEFORE`, exported from git) runs the same child with its own `PYTHONPATH`, on the same
sources, right before this code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CONNECTIONS = 32
STATIC_BODY = b'{"static":"' + b"x" * 1011 + b'"}'  # 1 KiB
URLS = (
    ("static, same middleware", "/api/static"),
    ("chart 1", "/api/charts/submissions"),
    ("chart 6, 5 countries", "/api/charts/performance?countries=ALB,ARG,AUS,AUT,BEL"),
)


def ceiling(students: int, seconds: float) -> list[dict[str, Any]]:
    """One row per URL and code: wrk's figures and the share of the static route's requests/s."""
    # The parent's modules (the child below runs with another code's PYTHONPATH, and without them).
    from api_bench import ServeProcess, wrk_load
    from capture_bench import _up
    from live_bench import BEFORE, CHECKOUT, drop_slots, export, settings_of
    from sources_bench import scratch_dir, total_rows

    rows: list[dict[str, Any]] = []
    with scratch_dir() as data_dir:
        config = _up(data_dir, "full", students // 20)  # autovacuum left on: nothing is paused
        trees = {"before": export(BEFORE, data_dir.parent / "before"), "after": CHECKOUT / "src"}
        for code, src in trees.items():
            settings = settings_of(data_dir, config, code)
            command = ["env", f"PYTHONPATH={src}", sys.executable, __file__, "--serve", str(settings)]
            print(f"  {code}: wrk on the static route and two charts ...", flush=True)
            with ServeProcess(command, data_dir.parent / f"ceiling-{code}.log") as server:
                server.wait_ready("replication", total_rows(config))
                static: dict[str, Any] = {}
                for name, path in URLS:
                    figures = wrk_load(server, server.url.rstrip("/") + path, CONNECTIONS, seconds)
                    static = static or figures
                    rows.append(
                        {
                            "code": code,
                            "url": name,
                            "students": students,
                            **figures,
                            "share_of_static": round(figures["requests_per_s"] / static["requests_per_s"], 2),
                            "p99_of_static": round(figures["p99_ms"] / static["p99_ms"], 2),
                        }
                    )
            drop_slots(config, f"pp_{code}")
    return rows


def serve_with_static(settings_path: Path) -> None:
    """The child: `serve`'s app and server over the settings, with `/api/static`, on a free port."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from pisa_pulse.api import guard
    from pisa_pulse.api import settings as api_settings
    from pisa_pulse.api.app import create_app
    from pisa_pulse.api.connections import server_config
    from pisa_pulse.api.snapshots import LiveSnapshots
    from pisa_pulse.cli_serve import listening_socket

    async def static(request: Request) -> Response:
        return Response(STATIC_BODY, media_type="application/json")

    guard.CORS_PATHS = guard.CORS_PATHS | {"/api/static"}  # CORS as on the charts: the same middleware
    settings = api_settings.load(settings_path)
    app = create_app(
        LiveSnapshots(settings), traffic_routes=[Route("/api/static", static)], settings=settings
    )
    sock = listening_socket("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    print(f"serving the charts and a static route at http://{host}:{port}/ (ceiling bench)", flush=True)
    uvicorn.Server(server_config(app, settings.server)).run(sockets=[sock])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=Path, required=True, help="settings file (the child of ceiling())")
    serve_with_static(parser.parse_args().serve)
