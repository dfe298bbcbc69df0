"""What the capture process tells the HTTP process: per-source aggregates, freshness and status.

The capture process (`engine/process.py`) runs capture and engine; the process that serves HTTP
only reads what this feed carries, never rows, and imports nothing heavier than this module and
`aggregates.py` (no numpy, no psycopg2). Every message is a `Update`, framed on a pipe as a 4-byte
big-endian length and a pickle (both ends are this program, the same version, as the same user):

- `parts`: per source, its aggregates as `Aggregates.export` gives them: every source's whole state
  in the first message after a (re)start (`full`), then the sources changed since the last message,
  with only the minutes they touched. Sent the moment an applied batch changed something, or, when
  the last message went less than `COALESCE` seconds ago, that long after it with everything that
  changed meanwhile.
- `as_of`: Unix time up to which every source's changes are in those parts (taken before them).
- `status`: every source's status (JSON-ready dicts), at most every `STATUS_INTERVAL` seconds.

Without changes, a message still goes every `BEAT` seconds, so freshness keeps up with idle sources
and the reader knows the writer is alive.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pisa_pulse.engine.aggregates import Exported
from pisa_pulse.sources.config import Source

COALESCE = 0.005  # seconds: the least time between two messages carrying changes
BEAT = 0.05  # seconds between messages when nothing changed
STATUS_INTERVAL = 0.25  # seconds between two status reports
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the capture process needs (sent to it on its standard input, never on a command line)."""

    sources: tuple[Source, ...]
    state_dir: Path
    slot_prefix: str
    poll_interval: float
    reconcile_interval: float
    log_level: int


@dataclass(frozen=True)
class Update:
    """One message of the feed (see the module docstring)."""

    as_of: float
    parts: dict[str, Exported] = field(default_factory=dict)
    full: bool = False
    status: list[dict[str, Any]] | None = None


def write(pipe: BinaryIO, update: Update) -> None:
    """Send one update (raises BrokenPipeError once the reader is gone)."""
    payload = pickle.dumps(update, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_LENGTH.pack(len(payload)) + payload)
    pipe.flush()


def read(pipe: BinaryIO) -> Iterator[Update]:
    """Every update until the writer closes the pipe (or dies)."""
    while True:
        header = pipe.read(_LENGTH.size)
        if len(header) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack(header)
        payload = pipe.read(size)
        if len(payload) < size:
            return
        update = pickle.loads(payload)
        if not isinstance(update, Update):
            raise TypeError(f"the capture feed sent a {type(update).__name__}, not an Update")
        yield update
