"""`pisa-pulse pipeline` (capture -> engine, until Ctrl+C) and `pisa-pulse check` (preflight).

Capture and engine load the database driver and numpy: each command imports them when it runs, so
that building the CLI (and so `serve`'s HTTP process) loads neither.
"""

from __future__ import annotations

import argparse
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from pisa_pulse.capture.contract import SOURCE_MODES
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources.schema import CHART_COLUMNS
from pisa_pulse.terminal import on_stop_signals, out, report_while

if TYPE_CHECKING:
    from pisa_pulse.engine.pipeline import Pipeline

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
            help=f"replication slots are named PREFIX_<database> (default: {DEFAULT_SLOT_PREFIX})",
        )
    pipeline.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    pipeline.add_argument(
        "--mode",
        choices=SOURCE_MODES,
        help="capture mode of every source, over the config's: replication, poll (SELECT only) or auto",
    )


def cmd_check(data_dir: Path, args: argparse.Namespace) -> int:
    """Run the preflight checks on every source; exit 1 when some source can be captured in no mode.

    A check that only one mode needs and fails shows as `no` (that mode is out, the other may do);
    a check both modes need shows as `FAIL`.
    """
    from pisa_pulse.capture.preflight import check_source  # see the module docstring
    from pisa_pulse.capture.replicated import slot_name

    config = cfg.load(data_dir)
    table = Table("source", "check", "", "seen", "fix", box=None)
    modes: dict[str, list[str]] = {"replication": [], "poll": [], "none": []}
    for source in config.sources:
        for c in check_source(source, slot_name(args.slot_prefix, source), CHART_COLUMNS):
            mark = "ok" if c.ok else ("no" if c.needed_by != "both" else "FAIL")
            table.add_row(source.name, c.name, mark, c.detail, c.fix)
            if c.name == "recommended mode" or (c.name == "connect" and not c.ok):
                modes[str(c.mode) if c.mode is not None else "none"].append(source.name)
    out.print(table)
    if modes["none"]:
        out.print(f"{len(modes['none'])} source(s) cannot be captured: {', '.join(modes['none'])}")
        return 1
    out.print(
        f"every source is ready: {len(modes['replication'])} by logical replication, "
        f'{len(modes["poll"])} by polling (SELECT only; `mode = "auto"` picks this per source)'
    )
    return 0


def cmd_pipeline(data_dir: Path, args: argparse.Namespace) -> int:
    """Run the pipeline with a live status line until Ctrl+C, SIGTERM or --duration."""
    from pisa_pulse.engine.pipeline import Pipeline  # see the module docstring

    config = cfg.load(data_dir)
    sources = [replace(s, mode=args.mode or s.mode) for s in config.sources]
    pipeline = Pipeline(sources, data_dir, slot_prefix=args.slot_prefix)
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
