"""Shared fixtures: real PostgreSQL clusters that the tests start, own and remove.

Each data dir lives under a private /tmp folder that the unprivileged server user can traverse
(pytest's own tmp root is mode 0700, which `postgres` cannot enter when the tests run as root).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pisa_pulse.sources import config as cfg
from pisa_pulse.sources import lifecycle
from pisa_pulse.sources.cluster import EmbeddedCluster


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A traversable scratch folder for the whole session, removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="pisa-pulse-tests-"))
    root.chmod(0o711)
    yield root
    for config_file in root.rglob("sources.toml"):  # every data dir, however deep
        config = cfg.load(config_file.parent)
        if config.cluster is not None:
            EmbeddedCluster(config.cluster, config_file.parent).remove()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def new_dir(scratch: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh, not yet created data dir path named after the test."""
    return Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=scratch)) / "data"


BringUp = Callable[..., cfg.SourcesConfig]


def _bring_up(data_dir: Path, **options: object) -> cfg.SourcesConfig:
    return lifecycle.up(lifecycle.UpRequest(data_dir=data_dir, **options))  # type: ignore[arg-type]


@pytest.fixture
def bring_up() -> BringUp:
    """`sources up` in-process: bring_up(data_dir, **UpRequest options)."""
    return _bring_up


@pytest.fixture(scope="session")
def slim20(scratch: Path) -> cfg.SourcesConfig:
    """The 20 default countries, slim, 300 students each: shared by read-mostly tests."""
    return _bring_up(scratch / "slim20", schema="slim", rows_per_country=300, workers=2)


@dataclass
class Server:
    """A `pisa-pulse serve` (or `demo`) subprocess and its base URL."""

    url: str
    process: subprocess.Popen[str]


@contextmanager
def serving(*args: str, command: str = "serve") -> Iterator[Server]:
    """`pisa-pulse COMMAND ARGS --port 0` until the block ends, then SIGTERM and a clean exit.

    Waits for the line naming the URL (`demo` first brings its sources up and says so).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "pisa_pulse", command, *args, "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        printed = []
        while not (found := re.search(r"serving .* at (http://127\.0\.0\.1:\d+/)", "".join(printed))):
            line = proc.stdout.readline()
            assert line, f"{command} ended before serving: {''.join(printed)!r}"
            printed.append(line)
        yield Server(found.group(1), proc)
    finally:
        proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        proc.terminate()
        assert proc.wait(timeout=30) == 0
