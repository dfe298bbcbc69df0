"""The command line: every command has help, and `python -m pisa_pulse` is the same program."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pisa_pulse.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(build_parser())
    assert ("sources", "up") in commands and ("traffic", "set") in commands and ("demo",) in commands
    for command in [c for c in commands if c != ("bench",)]:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith("usage: pisa-pulse")


def test_bench_help_is_the_runners(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0  # bench/run.py, in a child process
    out = capfd.readouterr().out
    assert out.startswith("usage: pisa-pulse bench") and "--profile" in out and "--tables-from" in out


def test_every_option_is_documented() -> None:
    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            else:
                assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"

    walk(build_parser())


def test_module_entry_point_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pisa_pulse", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("pisa-pulse ")


def test_the_command_line_leaves_the_nats_client_to_the_commands_that_connect() -> None:
    """`serve` (and every command) starts without the NATS client, numpy or DuckDB: each is megabytes
    of every process that imports it (docs/benchmarks.md, `serve` at size)."""
    code = "import sys, pisa_pulse.cli; print(sorted({'nats', 'numpy', 'duckdb'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
