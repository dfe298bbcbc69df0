"""`pisa-pulse serve`: capture, engine and the HTTP API in one process (also what `demo` ends with)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from pisa_pulse.api import settings as api_settings
from pisa_pulse.api.app import create_app
from pisa_pulse.api.connections import server_config
from pisa_pulse.api.snapshots import LiveSnapshots, Snapshots
from pisa_pulse.api.traffic import TOKEN_FILE, new_token, traffic_routes
from pisa_pulse.capture.contract import MODES
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.history.sync import exclusive
from pisa_pulse.sources import config as cfg
from pisa_pulse.terminal import on_stop_signals, out

log = logging.getLogger(__name__)


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], data_dir: Callable[..., None]
) -> None:
    """Add `serve` to the CLI."""
    serve = commands.add_parser("serve", help="run capture, engine and the chart API until Ctrl+C")
    serve.add_argument(
        "--config", type=Path, help="settings file (TOML); default: the data dir's sources.toml"
    )
    data_dir(serve)
    http_options(serve)
    _setting_option(
        serve,
        "capture.mode",
        choices=[str(m) for m in MODES],
        prefix="capture mode of every source, over the settings: ",
    )
    serve.add_argument(
        "--traffic-control",
        action="store_true",
        help="add token-protected routes that steer the data dir's traffic (token in <data-dir>/api-token)",
    )


def http_options(parser: argparse.ArgumentParser, traffic_controls: bool = True) -> None:
    """--host and --port, shared by serve, demo and api (help and defaults from the settings table),
    and --allow-remote-control where there are traffic controls."""
    _setting_option(parser, "server.host")
    _setting_option(parser, "server.port", type=int)
    if not traffic_controls:
        return
    parser.add_argument(
        "--allow-remote-control",
        action="store_true",
        help="let the traffic controls run on a --host other than loopback (their token then crosses "
        "the network, in clear unless a TLS proxy is in front)",
    )


def check_control_host(host: str | None, allowed: bool) -> None:
    """Refuse traffic controls on a non-loopback address (None: the default) unless `allowed`
    (--allow-remote-control)."""
    host = host or str(api_settings.BY_NAME["server.host"].default)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allowed:
        raise PisaPulseError(
            f"traffic controls on --host {host} would send their token over the network in clear",
            "serve on 127.0.0.1 (behind a TLS proxy for other machines), or pass --allow-remote-control",
        )


def _setting_option(parser: argparse.ArgumentParser, name: str, prefix: str = "", **options: object) -> None:
    """The option that overrides setting `name`, with its help and default from the table."""
    row = api_settings.BY_NAME[name]
    assert row.option is not None
    default = row.shown_default.replace("`", "")
    parser.add_argument(
        row.option,
        default=None,
        help=f"{prefix}{row.help} (setting {name}; default {default})".replace("%", "%%"),
        **options,  # type: ignore[arg-type]
    )


def load_settings(
    config: Path | None, data_dir: Path, host: str | None, port: int | None, mode: str | None = None
) -> api_settings.Settings:
    """The settings file given, or the sources config of the data dir with the checkpoint beside it."""
    if config is not None:
        return api_settings.load(config, host, port, mode)
    path = cfg.config_path(data_dir)
    if not path.exists():
        raise PisaPulseError(
            f"no sources config in {data_dir}", "run `pisa-pulse sources up` first, or pass --config FILE"
        )
    return api_settings.load(path, host, port, mode)


def snapshots_for(settings: api_settings.Settings) -> Snapshots:
    """Snapshots pushed by a capture process, or direct SQL per request, as the settings say."""
    if settings.mode == "direct":
        # Only direct mode talks to the sources from this process: import its driver only then.
        from pisa_pulse.api.direct import DirectSnapshots

        return DirectSnapshots(settings.sources)
    return LiveSnapshots(settings)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket (so port 0 resolves to a free port we can print), with a clear error if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PisaPulseError(
            f"cannot listen on {host}:{port}: {exc.strerror}", "pass another --port (0 picks a free one)"
        ) from None
    sock.listen(2048)
    return sock


def run_server(
    settings: api_settings.Settings,
    traffic_control: Path | None = None,
    snapshots: Snapshots | None = None,
    what: str = "",
) -> None:
    """Serve until Ctrl+C or SIGTERM; `traffic_control`: the data dir whose traffic the API may steer;
    `snapshots` (and `what` they are, for the banner): those the settings call for when None."""
    sock = listening_socket(settings.server.host, settings.server.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    routes = traffic_routes(traffic_control, new_token(traffic_control)) if traffic_control else None
    own_state = snapshots is None and settings.mode != "direct"  # capture's checkpoint and slots
    if snapshots is None:
        snapshots, what = snapshots_for(settings), f"{len(settings.sources)} sources ({settings.mode})"
    app = create_app(snapshots, traffic_routes=routes, settings=settings)
    config = server_config(app, settings.server)
    server = uvicorn.Server(config)
    out.print(f"serving {what} at {url} (API: {url}api/openapi.json)")
    if traffic_control:
        out.print(
            f"traffic controls on: paste the token in {traffic_control / TOKEN_FILE} into the dashboard's "
            f"traffic panel, or open {url}#token=<that token>"
        )
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was
    # there before it: make that one a no-op, so a requested stop exits 0 like the other commands.
    with contextlib.ExitStack() as held:
        if own_state:  # one serve or sync at a time per state dir (history/sync.py)
            held.enter_context(exclusive(settings.state_dir, f"pisa-pulse serve at {url}"))
        with on_stop_signals(lambda: None):
            server.run(sockets=[sock])


def cmd_serve(data_dir: Path, args: argparse.Namespace) -> int:
    """`serve`."""
    settings = load_settings(args.config, data_dir, args.host, args.port, args.mode)
    if args.traffic_control:
        check_control_host(settings.server.host, args.allow_remote_control)
    run_server(settings, data_dir if args.traffic_control else None)
    return 0
