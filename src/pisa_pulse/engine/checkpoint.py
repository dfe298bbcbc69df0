"""The durable checkpoint: every source's ledger rows and stream position, in one SQLite file.

A checkpoint writes, in one SQLite transaction, only the ledger rows changed since the previous one
(upserted or deleted by primary key) together with each source's position: the LSN just past the
last transaction the rows reflect. So its cost follows the changes, not the state, and the rows and
the position can never disagree: after a crash the pipeline restores both and skips every
transaction at or before the position (exactly once). A position never goes backwards (within one
database; a source copied afresh is forgotten first).

The file is `<data-dir>/pipeline/checkpoint.sqlite3` (WAL journal, synchronous=FULL, so a commit that
returned is on disk before the pipeline confirms that LSN to the source). A file in another format
(written by another version) is set aside, renamed with its format number, and the state is rebuilt
from the sources: the checkpoint is a cache of what the sources hold, never the only copy.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

from pisa_pulse.capture.contract import Position
from pisa_pulse.engine.ledger import Records, records_of
from pisa_pulse.errors import PisaPulseError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: each ledger row carries its digest (read-only polling)
_CHUNK = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    source TEXT PRIMARY KEY,
    identity TEXT NOT NULL,      -- the server and database the position belongs to
    lsn INTEGER NOT NULL,        -- just past the last transaction reflected in the rows
    last_commit_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    source TEXT NOT NULL,
    pk INTEGER NOT NULL,
    row BLOB NOT NULL,
    PRIMARY KEY (source, pk)
) WITHOUT ROWID;
"""


@dataclass
class SourceChanges:
    """What one checkpoint writes for one source."""

    position: Position
    rows: Iterable[tuple[int, bytes | None]]  # (pk, packed row) or (pk, None) for a deleted row


class Checkpoint(Protocol):
    """Where a pipeline keeps its sources' ledger rows and positions: this SQLite file
    (`CheckpointStore`), or JetStream for a fleet worker's one source (fleet/checkpoints.py)."""

    def positions(self) -> dict[str, Position]: ...
    def records(self, source: str) -> Records: ...
    def snapshot_due(self, source: str, rows: int) -> bool: ...
    def save(
        self, changes: dict[str, SourceChanges], snapshots: Mapping[str, Records] | None = None
    ) -> int: ...
    def forget(self, source: str) -> None: ...
    def close(self) -> None: ...


class CheckpointStore:
    """Reads and writes the checkpoint file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._open()
        found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found is not None and found[0] != str(SCHEMA_VERSION):
            self.db.close()
            aside = path.with_name(f"{path.stem}.format-{found[0]}{path.suffix}")
            for suffix in ("", "-wal", "-shm"):
                old = Path(f"{path}{suffix}")
                if old.exists():
                    old.rename(f"{aside}{suffix}")
            log.warning(
                "checkpoint %s has format %s, this version writes %s: set aside as %s; the state is "
                "rebuilt from the sources",
                path,
                found[0],
                SCHEMA_VERSION,
                aside.name,
            )
            self._open()
            found = None
        if found is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _open(self) -> None:
        path = self.path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise PisaPulseError(
                f"cannot open the checkpoint {path}: {exc}",
                "check the data dir's permissions and free space; if the file is damaged, remove it "
                "and the pipeline rebuilds its state from the sources",
            ) from None

    def positions(self) -> dict[str, Position]:
        """Every checkpointed source's position."""
        rows = self.db.execute("SELECT source, identity, lsn, last_commit_us FROM positions")
        return {r[0]: Position(r[1], r[2], r[3]) for r in rows}

    def rows(self, source: str) -> Iterator[tuple[int, bytes]]:
        """A source's checkpointed ledger rows."""
        cur = self.db.execute("SELECT pk, row FROM ledger WHERE source = ?", (source,))
        while batch := cur.fetchmany(10_000):
            yield from batch

    def records(self, source: str) -> Records:
        """A source's checkpointed ledger rows, as `Ledger.from_records` takes them."""
        return records_of(source.upper(), self.rows(source))

    def snapshot_due(self, source: str, rows: int) -> bool:
        """Never: this file is updated in place, row by row."""
        return False

    def save(self, changes: dict[str, SourceChanges], snapshots: Mapping[str, Records] | None = None) -> int:
        """Write every source's changed rows and position in one transaction; returns rows written.
        (`snapshots` is for checkpoints that ask for one, `snapshot_due`: never asked here.)"""
        written = 0
        known = self.positions()
        with self.db:  # BEGIN ... COMMIT, or ROLLBACK on error
            self.db.execute("BEGIN IMMEDIATE")
            for source, ch in changes.items():
                old = known.get(source)
                if old is not None and old.identity == ch.position.identity and ch.position.lsn < old.lsn:
                    raise PisaPulseError(
                        f"checkpoint of {source} would go back from LSN {old.lsn} to {ch.position.lsn}",
                        "this is a bug: report it with the pipeline log",
                    )
                rows = iter(ch.rows)
                while chunk := list(islice(rows, _CHUNK)):  # bounded memory however many rows changed
                    self.db.executemany(
                        "INSERT OR REPLACE INTO ledger VALUES (?, ?, ?)",
                        [(source, pk, row) for pk, row in chunk if row is not None],
                    )
                    self.db.executemany(
                        "DELETE FROM ledger WHERE source = ? AND pk = ?",
                        [(source, pk) for pk, row in chunk if row is None],
                    )
                    written += len(chunk)
                p = ch.position
                self.db.execute(
                    "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)",
                    (source, p.identity, p.lsn, p.last_commit_us),
                )
        return written

    def forget(self, source: str) -> None:
        """Remove a source's rows and position (it left the config)."""
        with self.db:
            self.db.execute("DELETE FROM ledger WHERE source = ?", (source,))
            self.db.execute("DELETE FROM positions WHERE source = ?", (source,))

    def close(self) -> None:
        """Close the file."""
        self.db.close()
