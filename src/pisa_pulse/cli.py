"""The `pisa-pulse` command line: one console script, one subcommand per job.

Errors the user can fix (PisaPulseError) print as one line, `error: ...`, and exit 2; nothing
else is caught, so a bug keeps its traceback. The commands that talk to databases import their
machinery (the database driver, numpy) when they run, so that `serve`'s HTTP process loads neither.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pisa_pulse import __version__, cli_fleet, cli_pipeline, cli_serve, cli_sync
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import scrub
from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import control
from pisa_pulse.sources.schema import SCHEMAS
from pisa_pulse.terminal import console, on_stop_signals, out, report_while, setup_logging

if TYPE_CHECKING:
    from pisa_pulse.sources.traffic import Traffic

log = logging.getLogger("pisa_pulse")

DEMO_ROWS = 2_000
DEMO_RATE = 200.0
DEMO_UPDATES, DEMO_DELETES = 0.02, 0.01  # the demo traffic's shares of corrections and withdrawals
CHILD_START_S = 60.0  # the demo's traffic process must answer on its control endpoint within this
CHILD_STOP_S = 15.0  # ... and stop within this after SIGTERM, else it is killed


# -- argument parsing -----------------------------------------------------------------------------


class BadOptionValue(PisaPulseError, argparse.ArgumentTypeError):
    """An option's value out of range: argparse prints it as a usage error and exits 2."""


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise BadOptionValue(f"{text} is not a share between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise BadOptionValue(f"{text} is negative")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise BadOptionValue(f"{text} is negative")
    return value


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the sources config and embedded cluster live (default: ${cfg.DATA_DIR_ENV} "
        f"or {cfg.default_data_dir()})",
    )


def _up_options(parser: argparse.ArgumentParser, pg_port_flag: str = "--port") -> None:
    _data_dir(parser)
    parser.add_argument(
        pg_port_flag, dest="pg_port", type=int, help="port of the embedded cluster (default: a free one)"
    )
    parser.add_argument(
        "--countries",
        help="'default' (the course's 20), 'all' (79), or codes such as alb,arg (default: the data "
        "dir's, else the 20)",
    )
    parser.add_argument(
        "--schema", choices=SCHEMAS, help="full (1,118 questionnaire columns) or slim (101) (default: full)"
    )
    parser.add_argument("--seed", type=int, help="seed of the synthetic students (default: 42)")
    parser.add_argument(
        "--messy", type=_share, default=0.01, help="share of messy values a reader must treat as missing"
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the tests that check --help is complete)."""
    parser = argparse.ArgumentParser(
        prog="pisa-pulse",
        description="Live, exact PISA 2018 dashboards from twenty PostgreSQL country databases.",
    )
    parser.add_argument("--version", action="version", version=f"pisa-pulse {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sources = commands.add_parser("sources", help="create, seed, inspect and remove the country databases")
    sub = sources.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="start or reuse the sources, create the databases, seed, write the config")
    _up_options(up)
    up.add_argument("--dsn", help="create the databases on this existing server instead (postgresql://...)")
    up.add_argument("--rows-per-country", type=_count, default=0, help="top each country up to N students")
    up.add_argument("--run-as", help="OS user that runs the embedded server when invoked as root (postgres)")
    up.add_argument("--workers", type=int, help="seeding processes (default: one per core)")
    up.add_argument(
        "--db-prefix", help="put this before each database's name (t1_ makes t1_alb), to share a server"
    )
    for name, text in (
        ("down", "stop the embedded cluster (data is kept)"),
        ("status", "per country: rows and size"),
    ):
        _data_dir(sub.add_parser(name, help=text))
    reset = sub.add_parser("reset", help="delete the sources (the embedded cluster, or the databases made)")
    _data_dir(reset)
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    empty = sub.add_parser("empty", help="delete every row of some countries' responses")
    _data_dir(empty)
    empty.add_argument("countries", nargs="*", metavar="COUNTRY", help="country codes, e.g. alb arg")
    empty.add_argument("--all", action="store_true", help="empty every country")

    traffic = commands.add_parser("traffic", help="write live submissions (or steer the running traffic)")
    _data_dir(traffic)
    _traffic_options(traffic)
    steer = traffic.add_subparsers(dest="action", metavar="ACTION")
    set_rate = steer.add_parser("set", help="change the running traffic's rate")
    _data_dir(set_rate)
    set_rate.add_argument("--rate", type=_non_negative, required=True, help="operations per second")
    for name, text in (
        ("pause", "pause the running traffic"),
        ("resume", "resume the running traffic"),
        ("status", "show the running traffic's rate and counts"),
    ):
        _data_dir(steer.add_parser(name, help=text))

    demo = commands.add_parser(
        "demo", help="sources up with seed data, live traffic and the chart API (Ctrl+C stops)"
    )
    _up_options(demo, "--pg-port")
    cli_serve.http_options(demo)
    demo.add_argument(
        "--rows-per-country", type=_count, default=DEMO_ROWS, help="students seeded per country"
    )
    demo.add_argument("--rate", type=_non_negative, default=DEMO_RATE, help="traffic, operations per second")
    cli_pipeline.add_commands(commands, _data_dir)
    cli_serve.add_command(commands, _data_dir)
    cli_fleet.add_commands(commands, _data_dir)
    cli_sync.add_command(commands, _data_dir)
    commands.add_parser(
        "bench",
        add_help=False,  # --help and every option go to bench/run.py
        help="run the benchmarks (bench/run.py in a source checkout; `pisa-pulse bench --help`)",
    )
    return parser


def _traffic_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rate", type=_non_negative, default=100.0, help="operations per second (default 100)"
    )
    parser.add_argument(
        "--updates", type=_share, default=0.0, help="share of operations that are corrections"
    )
    parser.add_argument(
        "--deletes", type=_share, default=0.0, help="share of operations that are withdrawals"
    )
    parser.add_argument("--messy", type=_share, default=0.01, help="share of messy values in new rows")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the students and choices (default: time-based; ids are always fresh)",
    )
    parser.add_argument("--batch", type=int, default=None, help="operations per transaction (default: auto)")
    parser.add_argument("--duration", type=_non_negative, default=None, help="stop after this many seconds")


# -- commands ------------------------------------------------------------------------------------


def _resolve(args: argparse.Namespace) -> Path:
    return (args.data_dir or cfg.default_data_dir()).expanduser().absolute()


def cmd_sources_up(args: argparse.Namespace) -> int:
    """`sources up`."""
    from pisa_pulse.sources import lifecycle  # when it runs: see the module docstring

    request = lifecycle.UpRequest(
        data_dir=_resolve(args),
        countries=args.countries,
        schema=args.schema,
        port=args.pg_port,
        dsn=getattr(args, "dsn", None),
        rows_per_country=args.rows_per_country,
        seed=args.seed,
        messy=args.messy,
        run_as=getattr(args, "run_as", None),
        workers=getattr(args, "workers", None),
        db_prefix=getattr(args, "db_prefix", None),
    )
    with Progress(
        TextColumn("seeding"), BarColumn(), MofNCompleteColumn(), TextColumn("students"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("seed", total=None)
        config = lifecycle.up(
            request,
            on_plan=lambda total: progress.update(task, total=total),
            on_rows=lambda code, rows: progress.advance(task, rows),
        )
    _print_sources(request.data_dir, config)
    return 0


def _print_sources(data_dir: Path, config: cfg.SourcesConfig) -> None:
    where = f"embedded cluster on 127.0.0.1:{config.cluster.port}" if config.cluster else "given server"
    out.print(f"{len(config.sources)} country databases ({config.schema} schema) on the {where}:")
    for s in config.sources:
        out.print(f"  {s.name}  {s.dsn}")
    out.print(f"config: {cfg.config_path(data_dir)}")


def cmd_sources_status(args: argparse.Namespace) -> int:
    """`sources status`."""
    from pisa_pulse.sources import lifecycle  # when it runs: see the module docstring

    status = lifecycle.status(_resolve(args))
    if status.cluster_running is not None:
        port = status.config.cluster.port if status.config.cluster else "?"
        out.print(f"embedded cluster: {'running' if status.cluster_running else 'stopped'} (port {port})")
    table = Table("country", "rows", "size", "note")
    for db in status.databases:
        size = f"{db.bytes / 2**20:.1f} MiB" if db.bytes is not None else "-"
        table.add_row(db.name, "-" if db.rows is None else f"{db.rows:,}", size, db.error or "")
    out.print(table)
    total = sum(db.rows or 0 for db in status.databases)
    out.print(f"total rows: {total:,}")
    return 0


def cmd_sources_down(args: argparse.Namespace) -> int:
    """`sources down`."""
    from pisa_pulse.sources import lifecycle  # when it runs: see the module docstring

    if lifecycle.down(_resolve(args)):
        out.print("embedded cluster stopped (data kept; `sources up` starts it again)")
    else:
        out.print("these sources are on a server pisa-pulse does not own; nothing to stop")
    return 0


def cmd_sources_reset(args: argparse.Namespace) -> int:
    """`sources reset`."""
    from pisa_pulse.sources import lifecycle  # when it runs: see the module docstring

    data_dir = _resolve(args)
    config = cfg.load(data_dir)
    if not args.yes:
        if not sys.stdin.isatty():
            raise PisaPulseError("reset deletes every country database", "pass --yes to confirm")
        answer = input(f"Delete all {len(config.sources)} country databases of {data_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.print("nothing deleted")
            return 1
    lifecycle.reset(data_dir)
    out.print(f"deleted the sources of {data_dir}")
    return 0


def cmd_sources_empty(args: argparse.Namespace) -> int:
    """`sources empty`."""
    from pisa_pulse.sources import lifecycle  # when it runs: see the module docstring

    if args.all == bool(args.countries):
        raise PisaPulseError("name the countries to empty, or pass --all", "e.g. `sources empty alb arg`")
    names = lifecycle.empty(_resolve(args), None if args.all else args.countries)
    out.print(f"emptied {', '.join(names)}")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    """`traffic` (run) and `traffic set|pause|resume|status` (steer)."""
    data_dir = _resolve(args)
    if args.action == "set":
        _print_traffic(control.send(data_dir, "rate", {"rate": args.rate}))
        return 0
    if args.action in ("pause", "resume", "status"):
        _print_traffic(control.send(data_dir, args.action))
        return 0
    from pisa_pulse.sources.traffic import Traffic  # numpy and psycopg2: only where traffic is written

    config = cfg.load(data_dir)
    seed = args.seed if args.seed is not None else time.time_ns() % 2**31
    traffic = Traffic(config, args.rate, args.updates, args.deletes, args.messy, seed, args.batch)
    return _run_traffic(traffic, data_dir, args.duration)


def _print_traffic(status: dict[str, object]) -> None:
    state = "paused" if status["paused"] else "running"
    out.print(
        f"traffic {state}: target {status['rate']}/s, achieved {status['achieved_rate']}/s, "
        f"inserted {status['inserted']}, updated {status['updated']}, deleted {status['deleted']}"
    )


def _traffic_line(s: dict[str, Any]) -> str:
    return (
        f"{'paused' if s['paused'] else 'writing'}: {s['achieved_rate']:.0f}/s of {s['rate']:.0f}/s  "
        f"inserted {s['inserted']:,}  updated {s['updated']:,}  deleted {s['deleted']:,}"
        + (f"  errors {s['errors']}" if s["errors"] else "")
    )


def _run_traffic(traffic: Traffic, data_dir: Path, duration: float | None) -> int:
    """Run the traffic with its control endpoint until Ctrl+C, SIGTERM or the duration."""
    stop = threading.Event()
    with on_stop_signals(stop.set), control.ControlEndpoint(traffic, data_dir) as endpoint:
        out.print(
            f"traffic to {traffic.status()['sources']} sources at {traffic.rate}/s; "
            f"steer with `pisa-pulse traffic set --rate R --data-dir {data_dir}` "
            f"(control on 127.0.0.1:{endpoint.port}); Ctrl+C stops"
        )
        writer = threading.Thread(target=traffic.run, args=(stop, duration), name="traffic")
        writer.start()
        report_while(writer, lambda: _traffic_line(traffic.status()))
        writer.join()
    _print_traffic(traffic.status())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`demo`: sources up with seed data, then traffic (a child process) and the API until Ctrl+C.

    The traffic runs as `pisa-pulse traffic` in its own process, so that writing full-width rows does
    not share an interpreter (and its lock) with the HTTP server, and the server's process needs none
    of the traffic's modules. The API steers it through its control endpoint, as with `serve
    --traffic-control`; the child is stopped when the server returns, however it returns.
    """
    args.dsn = None
    cli_serve.check_control_host(args.host, args.allow_remote_control)
    cmd_sources_up(args)
    data_dir = _resolve(args)
    config = cfg.load(data_dir)
    settings = cli_serve.load_settings(None, data_dir, args.host, 8000 if args.port is None else args.port)
    traffic = _start_traffic_process(data_dir, args)
    try:
        out.print(
            f"traffic to {len(config.sources)} sources at {args.rate:.0f}/s (process {traffic.pid}); steer "
            f"it with `pisa-pulse traffic set --rate R --data-dir {data_dir}`"
        )
        cli_serve.run_server(settings, traffic_control=data_dir)
        with contextlib.suppress(PisaPulseError):  # gone already when Ctrl+C reached it too
            _print_traffic(control.send(data_dir, "status"))
    finally:
        stop_process(traffic, CHILD_STOP_S)
    return 0


def _start_traffic_process(data_dir: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """`pisa-pulse traffic` with the demo's rate and shares; returns once its control endpoint answers."""
    command = [sys.executable, "-m", "pisa_pulse", "--log-level", args.log_level, "traffic"]
    command += ["--data-dir", str(data_dir), "--rate", str(args.rate), "--messy", str(args.messy)]
    command += ["--updates", str(DEMO_UPDATES), "--deletes", str(DEMO_DELETES)]
    # Its status lines would interleave with the server's; its warnings (stderr) still show.
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + CHILD_START_S
    try:
        while control.running_pid(data_dir) != child.pid:
            if child.poll() is not None:
                raise PisaPulseError(
                    f"the demo's traffic exited with code {child.returncode}", "see its error above"
                )
            if time.monotonic() > deadline:
                raise PisaPulseError(
                    f"the demo's traffic did not start within {CHILD_START_S:.0f} s",
                    "run `pisa-pulse traffic` alone to see why",
                )
            time.sleep(0.1)
    except BaseException:
        stop_process(child, CHILD_STOP_S)
        raise
    return child


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM a child, wait up to `timeout` seconds, then SIGKILL it; returns its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("child did not stop after SIGTERM, killing it pid=%d", process.pid)
            process.kill()
    return process.wait()


def cmd_bench(options: list[str]) -> int:
    """`bench`: bench/run.py of this checkout with these options (it is not installed with the package)."""
    script = Path(__file__).resolve().parents[2] / "bench" / "run.py"
    if not script.is_file():
        raise PisaPulseError(
            "the benchmarks are not installed with the package (no bench/run.py beside it)",
            "clone the repository, then run `make bench` or `pisa-pulse bench` from an editable install",
        )
    return subprocess.run([sys.executable, str(script), *options]).returncode


COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("sources", "up"): cmd_sources_up,
    ("sources", "down"): cmd_sources_down,
    ("sources", "status"): cmd_sources_status,
    ("sources", "reset"): cmd_sources_reset,
    ("sources", "empty"): cmd_sources_empty,
    ("demo", None): cmd_demo,
    ("pipeline", None): lambda args: cli_pipeline.cmd_pipeline(_resolve(args), args),
    ("check", None): lambda args: cli_pipeline.cmd_check(_resolve(args), args),
    ("serve", None): lambda args: cli_serve.cmd_serve(_resolve(args), args),
    ("worker", None): lambda args: cli_fleet.cmd_worker(_resolve(args), args),
    ("api", None): cli_fleet.cmd_api,
    ("fleet", "status"): cli_fleet.cmd_fleet_status,
    ("sync", None): lambda args: cli_sync.cmd_sync(_resolve(args), args),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run one command, and turn user errors into one line and exit code 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.log_level)
    action = getattr(args, "action", None)
    try:
        if args.command == "bench":
            return cmd_bench(extra)
        command = cmd_traffic if args.command == "traffic" else COMMANDS[(args.command, action)]
        return command(args)
    except PisaPulseError as exc:
        console.print(f"error: {scrub(str(exc))}", markup=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
