"""`pisa-pulse pipeline` (capture -> engine, until Ctrl+C) and `pisa-pulse check` (preflight)."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from rich.table import Table

from pisa_pulse.capture.preflight import check_source
from pisa_pulse.engine.pipeline import Pipeline, slot_name
from pisa_pulse.engine.values import CHART_COLUMNS
from pisa_pulse.sources import config as cfg
from pisa_pulse.terminal import on_stop_signals, out, report_while

DEFAULT_SLOT_PREFIX = "pisa_pulse"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], data_dir: object) -> None:
    """Add `pipeline` and `check` to the CLI; `data_dir` adds the shared --data-dir option."""
    pipeline = commands.add_parser(
        "pipeline", help="capture every source's changes into live per-country aggregates (Ctrl+C stops)"
    )
    check = commands.add_parser("check", help="tell per source whether logical replication will work")
    for parser in (pipeline, check):
        data_dir(parser)  # type: ignore[operator]
        parser.add_argument(
            "--slot-prefix",
            default=DEFAULT_SLOT_PREFIX,
            help=f"replication slots are named PREFIX_<source> (default: {DEFAULT_SLOT_PREFIX})",
        )
    pipeline.add_argument("--duration", type=float, default=None, help="stop after this many seconds")


def cmd_check(data_dir: Path, args: argparse.Namespace) -> int:
    """Run the preflight checks on every source; exit 1 when any fails."""
    config = cfg.load(data_dir)
    table = Table("source", "check", "", "seen", "fix", box=None)
    failed = 0
    for source in config.sources:
        for c in check_source(source, slot_name(args.slot_prefix, source.name), CHART_COLUMNS):
            failed += not c.ok
            table.add_row(source.name, c.name, "ok" if c.ok else "FAIL", c.detail, c.fix)
    out.print(table)
    out.print(f"{failed} check(s) failed" if failed else "every source is ready for logical replication")
    return 1 if failed else 0


def cmd_pipeline(data_dir: Path, args: argparse.Namespace) -> int:
    """Run the pipeline with a live status line until Ctrl+C, SIGTERM or --duration."""
    config = cfg.load(data_dir)
    pipeline = Pipeline(config.sources, data_dir, slot_prefix=args.slot_prefix)
    stop = threading.Event()
    if args.duration is not None:
        threading.Timer(args.duration, stop.set).start()
    with on_stop_signals(stop.set):
        worker = threading.Thread(target=pipeline.run, args=(stop,), name="pipeline")
        worker.start()
        out.print(
            f"pipeline on {len(config.sources)} sources; checkpoint in {data_dir / 'pipeline'}; Ctrl+C stops"
        )
        report_while(worker, lambda: _line(pipeline))
        worker.join()
    out.print(_line(pipeline))
    return 0


def _line(pipeline: Pipeline) -> str:
    status = pipeline.status()
    states: dict[str, int] = {}
    for s in status:
        states[s["state"]] = states.get(s["state"], 0) + 1
    lags = [s["lag_ms"] for s in status if s["lag_ms"] is not None]
    return (
        f"submissions {pipeline.submissions():,}  "
        + "  ".join(f"{k} {v}" for k, v in sorted(states.items()))
        + (f"  max lag {max(lags):,} ms" if lags else "")
    )
