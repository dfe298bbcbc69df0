"""`pisa-pulse sync --once` (history/sync.py) and `sync --drop-slots`: the batch form for a scheduler."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pisa_pulse.api import settings as api_settings
from pisa_pulse.cli_serve import load_settings
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.history.sync import CAUGHT_UP_TIMEOUT_S, exclusive, run_once
from pisa_pulse.terminal import out


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], data_dir: Callable[..., None]
) -> None:
    """Add `sync` to the CLI."""
    sync = commands.add_parser(
        "sync",
        help="one exact pass: bring the history store and publish targets up to date, then exit "
        "(for cron or Airflow)",
    )
    what = sync.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--once", action="store_true", help="catch up with every source once, record, publish, exit"
    )
    what.add_argument(
        "--drop-slots",
        action="store_true",
        help="drop the replication slots sync keeps between runs (they pin WAL on their servers), then exit",
    )
    sync.add_argument(
        "--config", type=Path, help="settings file (TOML); default: the data dir's sources.toml"
    )
    data_dir(sync)
    sync.add_argument(
        "--timeout",
        type=float,
        default=CAUGHT_UP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up (exit 2) when the sources are not caught up by then (default {CAUGHT_UP_TIMEOUT_S:g})",
    )


def cmd_sync(data_dir: Path, args: argparse.Namespace) -> int:
    """`sync --once` or `sync --drop-slots`; exit 0 with one summary line, or 2 with one error line."""
    settings = load_settings(args.config, data_dir, None, None)
    if args.drop_slots:
        return _drop_slots(settings)
    if args.timeout <= 0:
        raise PisaPulseError(
            f"--timeout {args.timeout:g} is not a positive number of seconds", "use e.g. 600"
        )
    out.print(run_once(settings, args.timeout).summary())
    return 0


def _drop_slots(settings: api_settings.Settings) -> int:
    from pisa_pulse.capture import replication  # the database driver: only here
    from pisa_pulse.capture.replicated import slot_name
    from pisa_pulse.sources.databases import connected

    dropped = []
    with exclusive(settings.state_dir, "pisa-pulse sync --drop-slots"):
        for source in settings.sources:
            slot = slot_name(settings.slot_prefix, source)
            with connected(source.dsn, password=source.password) as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                    held = cur.fetchone() is not None
                if held:
                    replication.drop_slot(conn, slot)
                    dropped.append(slot)
    out.print(f"sync: {len(dropped)} slots dropped ({', '.join(dropped) or 'none held'})")
    return 0
