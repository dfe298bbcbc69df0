"""Logical replication from one source database: publication, slot, consistent copy, change stream.

Per source: one publication `pisa_pulse` on `responses` with a column list (PostgreSQL 15), so only
the chart columns travel, and one logical slot using pgoutput. Starting from nothing, the slot is
created with an exported snapshot and the table is copied through that snapshot before streaming
from the slot's consistent point: every transaction is either in the copy or in the stream, never
both, never neither. This module does the I/O only; `pipeline.py` decides when to do what.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2 import sql

from pisa_pulse.sources.config import Source
from pisa_pulse.sources.databases import Connection, connected
from pisa_pulse.sources.schema import TABLE

log = logging.getLogger(__name__)

PUBLICATION = "pisa_pulse"
PROTOCOL_OPTIONS = {"proto_version": "1", "publication_names": PUBLICATION}


def lsn_text(lsn: int) -> str:
    """PostgreSQL's text form of an LSN: 0/16B3748."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The integer of an LSN in text form."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def ensure_publication(conn: Connection, columns: Sequence[str]) -> None:
    """Create (or correct) the publication of `responses` with exactly these columns."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,))
        exists = cur.fetchone() is not None
        cur.execute(
            "SELECT attnames FROM pg_publication_tables "
            "WHERE pubname = %s AND schemaname = 'public' AND tablename = %s",
            (PUBLICATION, TABLE),
        )
        row = cur.fetchone()
        if row is not None and sorted(row[0]) == sorted(columns):
            return
        target = sql.SQL("{} ({})").format(
            sql.Identifier(TABLE), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        )
        verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
        cur.execute(sql.SQL(verb).format(sql.Identifier(PUBLICATION), target))
        log.info("publication %s publication=%s", "corrected" if exists else "created", PUBLICATION)


@dataclass(frozen=True)
class SlotInfo:
    """What the server says of a slot: its WAL status ('lost' once invalidated), confirmed position and
    the backend streaming from it (None: nobody)."""

    wal_status: str
    confirmed_flush: int
    active_pid: int | None = None


def slot_info(conn: Connection, slot: str) -> SlotInfo | None:
    """The slot in this database, or None when it does not exist."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(wal_status, 'reserved'), coalesce(confirmed_flush_lsn, '0/0')::text, "
            "active_pid FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()",
            (slot,),
        )
        row = cur.fetchone()
    return None if row is None else SlotInfo(str(row[0]), parse_lsn(row[1]), row[2])


def end_holder(conn: Connection, slot: str, pid: int) -> None:
    """End backend `pid`, which streams from `slot` (a former owner's walsender), and wait until the
    slot is free."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    log.info("ended the slot's former holder slot=%s pid=%d", slot, pid)


def drop_slot(conn: Connection, slot: str, timeout: float = 10.0) -> None:
    """Drop the slot if it exists, ending the walsender that holds it (which may hold it again)."""
    deadline = time.monotonic() + timeout
    with conn.cursor() as cur:
        while True:
            cur.execute(
                "SELECT active_pid FROM pg_replication_slots "
                "WHERE slot_name = %s AND database = current_database()",
                (slot,),
            )
            row = cur.fetchone()
            if row is None:
                return
            try:
                if row[0] is not None:
                    cur.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],))
                cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                log.info("slot dropped slot=%s", slot)
                return
            except psycopg2.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@dataclass(frozen=True)
class SlotStart:
    """Where a new slot's stream starts and the snapshot that holds everything before it."""

    consistent_lsn: int
    snapshot: str


class ReplicationStream:
    """The replication connection of one source, read without blocking from a select loop."""

    def __init__(self, source: Source, slot: str) -> None:
        self.slot = slot
        self.conn = psycopg2.connect(
            source.dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            application_name=f"pisa-pulse {slot}",
            connect_timeout=10,
            password=None if source.password is None else source.password.reveal(),  # None: left out
        )
        self.cur: Any = self.conn.cursor()

    def system_id(self) -> str:
        """The server's system identifier (IDENTIFY_SYSTEM): a new cluster gets a new one."""
        self.cur.execute("IDENTIFY_SYSTEM")
        return str(self.cur.fetchone()[0])

    def create_slot(self) -> SlotStart:
        """Create the slot and export its snapshot (valid until this connection's next command)."""
        self.cur.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT").format(
                sql.Identifier(self.slot)
            )
        )
        _, consistent, snapshot, _ = self.cur.fetchone()
        log.info("slot created slot=%s lsn=%s", self.slot, consistent)
        return SlotStart(parse_lsn(consistent), snapshot)

    def start(self, lsn: int, status_interval: float = 1.0) -> None:
        """Stream the slot's changes after `lsn` (the server resumes from its confirmed position if later)."""
        self.cur.start_replication(
            slot_name=self.slot,
            decode=False,
            start_lsn=lsn,
            options=PROTOCOL_OPTIONS,
            status_interval=status_interval,
        )

    def fileno(self) -> int:
        """The socket, for select()."""
        return int(self.conn.fileno())

    def read(self) -> Any:
        """The next ReplicationMessage already received, or None; never blocks."""
        return self.cur.read_message()

    @property
    def wal_end(self) -> int:
        """The server's position as of the last message or keepalive received."""
        return int(self.cur.wal_end)

    def confirm(self, lsn: int, force: bool = False) -> None:
        """Tell the server everything up to `lsn` is durably held, so the slot may release that WAL."""
        self.cur.send_feedback(write_lsn=lsn, flush_lsn=lsn, apply_lsn=lsn, force=force)

    def ping(self) -> None:
        """Ask the server for an immediate keepalive (its answer tells how far it has sent)."""
        self.cur.send_feedback(reply=True)

    def close(self) -> None:
        """Close the connection; the slot stays, for the next start."""
        with contextlib.suppress(psycopg2.Error):
            self.conn.close()


class _CopySink:
    """A file-like target for COPY TO that parses text-format lines as they arrive."""

    def __init__(self, on_row: Callable[[list[str | None]], None]) -> None:
        self.on_row = on_row
        self.rows = 0
        self._tail = ""

    def write(self, data: str | bytes) -> int:
        text = data.decode() if isinstance(data, bytes) else data
        lines = (self._tail + text).split("\n")
        self._tail = lines.pop()
        for line in lines:
            if "\\" in line:  # an escape or \N somewhere: field by field
                self.on_row([_copy_field(f) for f in line.split("\t")])
            else:
                self.on_row(line.split("\t"))  # type: ignore[arg-type]  # list[str] is a list[str | None]
        self.rows += len(lines)
        return len(data)


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _copy_field(field: str) -> str | None:
    """One field of COPY text format: \\N is NULL; backslash escapes are undone."""
    if field == "\\N":
        return None
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            out.append(_ESCAPES.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def copy_snapshot(
    source: Source, snapshot: str, columns: Sequence[str], on_row: Callable[[list[str | None]], None]
) -> int:
    """COPY the chart columns of `responses` as of an exported snapshot; returns the rows copied."""
    select = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(TABLE)
    )
    with connected(source.dsn, autocommit=False, password=source.password) as conn:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            rows = copy_select(cur, select, on_row)
        conn.rollback()
    return rows


def copy_select(
    cur: psycopg2.extensions.cursor, select: sql.Composable, on_row: Callable[[list[str | None]], None]
) -> int:
    """Stream a SELECT's rows through COPY TO (text values, None for NULL); returns how many."""
    sink = _CopySink(on_row)
    cur.copy_expert(sql.SQL("COPY ({}) TO STDOUT").format(select), sink)
    return sink.rows
