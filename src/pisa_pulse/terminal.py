"""The terminal: where commands print, and the live status line of long-running commands."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from rich.console import Console
from rich.status import Status

from pisa_pulse.secret import scrub

console = Console(stderr=True, highlight=False, soft_wrap=True)  # errors and progress
out = Console(highlight=False, soft_wrap=True)  # results


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[], None]) -> Iterator[None]:
    """Call `handler` on Ctrl+C or SIGTERM inside the block; the previous handlers come back after."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class ScrubbingFormatter(logging.Formatter):
    """A formatter whose every line, tracebacks included, has its secrets scrubbed (secret.scrub)."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str | int) -> None:
    """The one logging setup (the CLI's and the capture process's): `time level logger message` on
    stderr, secrets scrubbed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(
        level=getattr(logging, level.upper()) if isinstance(level, str) else level, handlers=[handler]
    )


@contextlib.contextmanager
def _status_line() -> Iterator[Status | None]:
    if out.is_terminal:
        with out.status("", spinner="dots") as status:
            yield status
    else:
        yield None


def report_while(worker: threading.Thread, line: Callable[[], str]) -> None:
    """While `worker` runs: a live status line on a terminal, a printed line every 10 s otherwise."""
    last = 0.0
    with _status_line() as status:
        while worker.is_alive():
            worker.join(0.5)
            text = line()
            if status is not None:
                status.update(text)
            elif time.monotonic() - last >= 10:
                out.print(text)
                last = time.monotonic()
