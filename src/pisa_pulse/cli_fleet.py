"""`pisa-pulse worker`, `pisa-pulse api` and `pisa-pulse fleet`: capture workers and API replicas
sharing the sources through NATS JetStream (fleet/, docs/deploy.md).

- `worker` captures the sources its leases give it and publishes their parts and checkpoints.
- `api` serves the charts merged from every published part: the same routes, bodies and ETags as
  `serve`, and no state of its own (any number behind a load balancer).
- `fleet status` prints, per source, its worker, lease epoch, state, position and lag.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from pisa_pulse.api import settings as api_settings
from pisa_pulse.cli_serve import http_options, load_settings, run_server
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.fleet import LEASE_S, connect
from pisa_pulse.terminal import out

LEASE_CHOICES = range(2, 61)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], data_dir: Callable[..., None]
) -> None:
    """Add `worker`, `api` and `fleet` to the CLI."""

    worker = commands.add_parser(
        "worker", help="capture a share of the sources and publish their aggregates to NATS (docs/deploy.md)"
    )
    connect.add_options(worker)
    worker.add_argument(
        "--config", type=Path, help="settings file (TOML); default: the data dir's sources.toml"
    )
    data_dir(worker)
    worker.add_argument(
        "--name",
        help="this worker's name, unique in the deployment (default: <host name>-<process id>)",
    )
    worker.add_argument(
        "--lease",
        type=int,
        default=LEASE_S,
        choices=LEASE_CHOICES,
        metavar="SECONDS",
        help=f"how long a source stays with a worker that stopped renewing (2-60; default {LEASE_S})",
    )
    api = commands.add_parser(
        "api", help="serve the charts from the aggregates the workers publish on NATS (stateless)"
    )
    connect.add_options(api)
    api.add_argument(
        "--config",
        type=Path,
        help="settings file (TOML) for its [server], [publish] and [history] tables (one replica "
        "publishes at a time, one writes a PostgreSQL history store); the sources in it are not used",
    )
    http_options(api, traffic_controls=False)
    fleet = commands.add_parser("fleet", help="inspect the workers and sources of a NATS deployment")
    actions = fleet.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="per source: worker, lease, state, position and lag")
    connect.add_options(status, creates=False)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")


# -- worker ------------------------------------------------------------------------------------------


def cmd_worker(data_dir: Path, args: argparse.Namespace) -> int:
    """`worker`: run until SIGTERM (hands its sources over) or Ctrl+C."""

    settings = load_settings(args.config, data_dir, None, None)
    options = connect.options_from(args)
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    if not name.replace("-", "").replace("_", "").isalnum():
        raise PisaPulseError(
            f"--name {name!r} is not a usable worker name", "use letters, digits, '-' and '_'"
        )
    asyncio.run(_run_worker(settings, options, name, args.lease))
    return 0


async def _run_worker(
    settings: api_settings.Settings, options: connect.NatsOptions, name: str, lease_s: int
) -> None:
    from pisa_pulse.fleet.bus import retried  # the NATS client: only in the commands that connect
    from pisa_pulse.fleet.leases import LeaseBook
    from pisa_pulse.fleet.stores import Stores
    from pisa_pulse.fleet.worker import Worker  # the pipeline: numpy and the database driver

    client = await connect.connect(options, f"pisa-pulse worker {name}")
    try:
        js = client.jetstream(timeout=10)
        replicas = connect.replicas_for(client, options)
        # Retried like every write: a cluster just started, or electing, may not answer at first.
        stores = await retried("open the buckets", lambda: Stores.open(js, replicas, options.prefix), 30)
        book = await retried(
            "open the lease buckets", lambda: LeaseBook.open(js, name, replicas, lease_s, options.prefix), 30
        )
        worker = Worker(
            book,
            settings.sources,
            stores,
            lease_s,
            slot_prefix=settings.slot_prefix,
            poll_interval=settings.poll_interval,
            reconcile_interval=settings.reconcile_interval,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        out.print(
            f"worker {name}: sharing {len(settings.sources)} sources with the other workers on "
            f"{client.connected_url.hostname if client.connected_url else '?'} "
            f"(buckets {options.prefix}_*, {replicas} replica(s); SIGTERM hands them over)"
        )
        await worker.run(stop)
    finally:
        await client.close()


# -- api -----------------------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    """`api`: serve until Ctrl+C or SIGTERM."""
    from pisa_pulse.fleet.replica import FleetSnapshots  # the NATS client: only in the commands that connect
    from pisa_pulse.history.recorder import Recorder

    options = connect.options_from(args)
    if args.config is not None:
        settings = api_settings.load(args.config, args.host, args.port)
    else:
        defaults = api_settings.ServerSettings()
        server = dataclasses.replace(
            defaults, host=args.host or defaults.host, port=defaults.port if args.port is None else args.port
        )
        settings = api_settings.Settings(sources=(), mode="fleet", state_dir=Path("."), server=server)
    history = None
    if settings.history_store.startswith(("postgresql://", "postgres://")):
        history = Recorder(settings.history_store, settings.state_dir, settings.history_retention_days)
    elif settings.history_store != "none":
        out.print(
            "history: off on api replicas, which cannot share a DuckDB file; set history.store to a "
            "postgresql:// DSN to keep it (README, History)"
        )
    name = f"pisa-pulse api {socket.gethostname()}-{os.getpid()}"
    snapshots = FleetSnapshots(options, name, history=history)
    run_server(
        settings, snapshots=snapshots, what=f"the charts of the workers on NATS (buckets {options.prefix}_*)"
    )
    return 0


# -- fleet status --------------------------------------------------------------------------------------


def cmd_fleet_status(args: argparse.Namespace) -> int:
    """`fleet status`: one look at the published statuses."""

    options = connect.options_from(args)
    rows = asyncio.run(_statuses(options))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        out.print(f"no source published under {options.prefix}_* yet: are the workers running?")
        return 0
    table = Table("source", "worker", "lease epoch", "state", "position", "lag", "rows")
    for row in rows:
        lag = row.get("lag_s")
        table.add_row(
            row["source"],
            str(row.get("worker", "-")),
            str(row.get("epoch", "-")),
            row["state"],
            str(row.get("position") or "-"),
            "-" if lag is None else f"{lag:.1f} s",
            str(row.get("rows", "-")),
        )
    out.print(table)
    return 0


async def _statuses(options: connect.NatsOptions) -> list[dict[str, Any]]:

    from pisa_pulse.fleet.bus import PartsView  # the NATS client: only in the commands that connect
    from pisa_pulse.fleet.replica import source_statuses

    client = await connect.connect(options, "pisa-pulse fleet status")
    try:
        view = PartsView(client.jetstream(timeout=10), options.prefix)
        await view.start()
        await view.caught_up()
        return source_statuses(view, time.time())
    finally:
        await client.close()
