"""Sources captured by logical replication (`replication.py` does the I/O): state machine and select loop.

All replicated sources are read by one thread, one select() loop over their replication connections
(`ReplicationLoop`; DESIGN.md: a thread per slot costs twice the CPU per row). Per source,
`ReplicatedSource` walks the states

    connecting -> copying (only when started without a position, or the slot is unusable)
               -> streaming -> reconnecting (after an error, with back-off) -> connecting ...
    failed: an error a retry cannot fix (no `responses` table, missing columns); retried slowly

Each committed source transaction goes to the sink as one batch whose position is the LSN just past
its commit; transactions at or before the position the source was started from are skipped (the
engine already holds them). A position is confirmed to the server (`flush_lsn`) only once the
engine says its checkpoint holds it, so the slot keeps everything the checkpoint lacks.

Started without a position, or when the slot is gone or invalidated, or the database is not the one
the position belongs to, the source is copied afresh through a new slot's exported snapshot: a
`COPY_START` batch, the rows in chunks, then `COPY_END` with the slot's consistent point, so the
engine can retract the rows it held that the copy no longer has. One thread reads every stream and
copies one source at a time; between a copy's chunks it pings the other streams, so that their
servers do not end them at `wal_sender_timeout`. Idle sources are asked for a
keepalive every `PING_INTERVAL`, so they are provably fresh, and their position follows the server's
so that an idle slot does not pin WAL. A source in `mode = "auto"` whose first connection shows that
replication is not allowed (server version, `wal_level`, role, publication) becomes a polled source
(`polled.py`) and says why in its status.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2

from pisa_pulse.capture import pgoutput, replication
from pisa_pulse.capture.changes import TransactionAssembler
from pisa_pulse.capture.contract import (
    INITIAL_COPY_MINUTE,
    Batch,
    BatchKind,
    HeldRows,
    Mode,
    Position,
    RowChange,
    Sink,
    SourceStatus,
    State,
    retry_delay,
)
from pisa_pulse.capture.exceptions import CaptureError, SourceUnusable
from pisa_pulse.capture.polled import PolledSource
from pisa_pulse.capture.preflight import check_table, replication_blockers
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.config import Source, database_of, first_line
from pisa_pulse.sources.databases import Connection, connected
from pisa_pulse.sources.schema import CHART_COLUMNS

log = logging.getLogger(__name__)

US_PER_MINUTE = 60_000_000
MAX_MESSAGES_PER_TURN = 5_000  # per source and loop turn, so one busy source cannot starve the others
PING_INTERVAL = 0.1  # ask every source for a keepalive this often, so idle sources stay provably fresh
SILENCE_LIMIT = 15.0  # a stream silent this long (no answer to pings) is dropped and reopened
IDLE_AFTER = 1.0  # seconds a server's sent position stands still before it counts as idle
COPY_CHUNK = 5_000  # rows per batch of a copy


def slot_name(prefix: str, source: Source) -> str:
    """The replication slot of one source: `<prefix>_<its database>`. Slots are per server, so the
    name holds the database (for `sources up` sources the country code, or `t1_alb` with a
    `--db-prefix`), lower-cased, with anything but letters, digits and `_` as `_`, at most 63 bytes."""
    database = database_of(source.dsn) or source.name
    return f"{prefix}_{re.sub('[^a-z0-9_]', '_', database.lower())}"[:63]


class ReplicationLoop:
    """One thread reading every replicated source's stream (see the module docstring)."""

    def __init__(self) -> None:
        self._sources: list[ReplicatedSource] = []
        self._leaving: list[tuple[ReplicatedSource, threading.Event]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, source: ReplicatedSource) -> None:
        """Read this source from now on (starting the thread with the first one)."""
        with self._lock:
            self._sources.append(source)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="replication", daemon=True)
                self._thread.start()

    def remove(self, source: ReplicatedSource) -> None:
        """Stop reading this source and close it; once this returns, it hands over nothing more."""
        left = threading.Event()
        with self._lock:
            self._sources = [s for s in self._sources if s is not source]
            self._leaving.append((source, left))
            thread = self._thread
        if thread is None or thread is threading.current_thread() or not thread.is_alive():
            self._let_go()  # no turn in progress elsewhere
        else:
            left.wait()  # the loop closes it between two turns (and ends when none is left)

    def _let_go(self) -> None:
        with self._lock:
            leaving, self._leaving = self._leaving, []
        for source, left in leaving:
            source.close()
            left.set()

    def _run(self) -> None:
        while True:
            self._let_go()
            with self._lock:
                sources = list(self._sources)
                if not sources:
                    self._thread = None
                    break
            self._turn(sources, 0.1)
        self._let_go()

    def keep_alive(self, busy: ReplicatedSource) -> None:
        """While `busy` copies in the loop's thread, ping the other open streams (a status update,
        which their walsenders count as our reply), so that no server ends one at its
        `wal_sender_timeout` (60 s by default: twenty copies one after the other outlast it at a few
        million students). What they send meanwhile waits in their sockets until the copy is done."""
        now = time.monotonic()
        with self._lock:
            others = [s for s in self._sources if s is not busy and s.stream is not None]
        for other in others:
            if now - other.pinged_at >= PING_INTERVAL:
                other.ping()

    def _turn(self, sources: list[ReplicatedSource], timeout: float) -> None:
        """(Re)open due sources, ping, read what arrived, send confirmations."""
        now = time.monotonic()
        for r in sources:
            if r.stream is None and now >= r.retry_at:
                opened = time.monotonic()
                r.open()  # may copy a whole source: the others' streams are not read meanwhile,
                away = time.monotonic() - opened
                for other in sources:  # so that time is not their silence
                    if other is not r:
                        other.excused += away
        now = time.monotonic()
        streams = {r.stream.fileno(): r for r in sources if r.stream is not None}
        for fd, r in list(streams.items()):
            if time.time() - r.heard_at - r.excused > SILENCE_LIMIT:
                r.lost(TimeoutError(f"no answer from the source for {SILENCE_LIMIT:.0f} s"))
                del streams[fd]
            elif now - r.pinged_at >= PING_INTERVAL:
                r.ping()
        streams = {fd: r for fd, r in streams.items() if r.stream is not None}  # a ping may lose one
        if not streams:
            time.sleep(timeout)
            return
        ready, _, _ = select.select(list(streams), [], [], timeout)
        heard = time.time()
        for fd in ready:
            streams[fd].heard_at, streams[fd].excused = heard, 0.0
        # Read every stream, not only the ready ones: psycopg2 may hold messages it has buffered.
        for r in streams.values():
            r.drain()
            r.send_confirmation()


@dataclass
class ReplicatedSource:
    """One source's replication state (see the module docstring); implements `contract.CapturedSource`."""

    source: Source
    slot: str
    loop: ReplicationLoop
    poll_interval: float = 0.25  # for an auto source that turns out to need polling
    reconcile_interval: float = 30.0
    claim: Callable[[], bool] | None = None  # may we end another backend's hold on the slot? (None: never)
    position: Position | None = None  # handed over; None until copied or started from a position
    state: State = State.CONNECTING
    reason: str = ""
    stream: replication.ReplicationStream | None = None
    polled: PolledSource | None = None  # an auto source that is polled instead
    retry_at: float = 0.0
    failures: int = 0  # in a row, for the back-off
    losses: int = 0  # connections lost since the start
    copies: int = 0
    copy_reason: str = ""  # why the last full copy was made (first start, slot invalidated, ...)
    skipped: int = 0  # transactions already held when started, seen again
    transactions: int = 0
    changes: int = 0  # row changes handed over from the stream
    wal_end: int = 0
    fresh_at: float = 0.0  # Unix time up to which the source's changes are known to be handed over
    heard_at: float = 0.0  # Unix time the server's last bytes (data or keepalive) were seen arriving
    excused: float = 0.0  # seconds since then the loop spent opening other sources (not silence)
    pinged_at: float = 0.0
    _assembler: TransactionAssembler = field(default_factory=lambda: TransactionAssembler(CHART_COLUMNS))
    _behind_until: int = 0  # the server's flushed WAL when the stream opened: no freshness before it
    _still_at: int = 0  # the last sent position the server reported, and since it was heard (Unix time)
    _still_since: float = 0.0
    _to_confirm: Position | None = None  # checkpointed, to be confirmed by the loop's thread
    _confirmed: int = 0
    _held: HeldRows | None = None
    _sink: Sink | None = None

    @property
    def name(self) -> str:
        """The source's name."""
        return self.source.name

    # -- the contract -----------------------------------------------------------------------------

    def start(self, position: Position | None, held: HeldRows, sink: Sink) -> None:
        """Resume after `position` (None: copy first), in the shared loop."""
        self.position, self._held, self._sink = position, held, sink
        self.loop.add(self)

    def confirm(self, position: Position) -> None:
        """The checkpoint holds `position`: the loop's thread confirms it to the server on its next turn."""
        if self.polled is not None:
            self.polled.confirm(position)
        else:
            self._to_confirm = position

    def freshness(self) -> float:
        """Unix time up to which every change is handed over."""
        return self.polled.fresh_at if self.polled is not None else self.fresh_at

    def stop(self) -> None:
        """Stop reading this source and close its connection."""
        if self.polled is not None:
            self.polled.stop()
        else:
            self.loop.remove(self)

    def status(self) -> SourceStatus:
        """The typed status (a polled auto source's is the poll's)."""
        if self.polled is not None:
            return self.polled.status()
        pos = self.position
        lag_bytes = max(0, self.wal_end - pos.lsn) if pos else None
        last = pos.last_commit_us if pos and pos.last_commit_us else None
        lag_ms = 0 if lag_bytes == 0 else round((time.time() * 1e6 - last) / 1000) if last else None
        if self.state != State.STREAMING:  # cut off: behind by as long as it has been unheard
            lag_ms = round((time.time() - self.fresh_at) * 1000) if self.fresh_at else None
        return SourceStatus(
            source=self.name,
            mode=Mode.REPLICATION,
            state=self.state,
            reason=self.reason,
            fresh_at=self.fresh_at,
            last_commit_us=last,
            lag_ms=lag_ms,
            lag_bytes=lag_bytes,
            lsn=replication.lsn_text(pos.lsn) if pos else None,
            copies=self.copies,
            copy_reason=self.copy_reason,
            connections_lost=self.losses,
            transactions=self.transactions,
            changes=self.changes,
        )

    # -- the loop's work (in its thread) ----------------------------------------------------------

    def _hand_over(self, batch: Batch) -> None:
        assert self._sink is not None
        self._sink(self.name, batch)

    def drain(self) -> None:
        """Hand over every transaction received so far (at most MAX_MESSAGES_PER_TURN messages)."""
        stream = self.stream
        assert stream is not None
        try:
            drained = False
            for _ in range(MAX_MESSAGES_PER_TURN):
                msg = stream.read()
                if msg is None:
                    drained = True
                    break
                done = self._assembler.feed(pgoutput.decode(msg.payload))
                if done is None:
                    continue
                assert self.position is not None
                if done.end_lsn <= self.position.lsn:
                    self.skipped += 1
                    continue
                self.position = Position(self.position.identity, done.end_lsn, done.commit_time_us)
                minute, at = done.commit_time_us // US_PER_MINUTE, done.commit_time_us
                self._hand_over(Batch(done.changes, self.position, minute, commit_time_us=at))
                self.transactions += 1
                self.changes += len(done.changes)
            self.wal_end = stream.wal_end
            if drained and not self._assembler.in_transaction and self.position:
                if self.wal_end > self.position.lsn:
                    # The server has decoded up to wal_end and sent us every commit before it, so the
                    # position may move there; confirming it lets an idle slot release its WAL.
                    self.position = Position(
                        self.position.identity, self.wal_end, self.position.last_commit_us
                    )
                    self._hand_over(Batch((), self.position, 0))
                if self.position.lsn < self._behind_until and self._idle_server():
                    self._behind_until = 0  # it has sent all it can: what is left is not decodable yet
                if self.position.lsn >= self._behind_until:
                    # Caught up with everything the server sent, up to its last word (a message or
                    # the keepalive answering our ping), and past what was flushed when the stream
                    # opened (until then the backlog is still coming): fresh as of then.
                    self.fresh_at = max(self.fresh_at, self.heard_at)
        except (psycopg2.Error, OSError, CaptureError) as exc:
            self.lost(exc)

    def _idle_server(self) -> bool:
        """Whether the server has answered our pings for `IDLE_AFTER` seconds with the same sent
        position, all of which we hold: its walsender waits for WAL. (The flushed position read at open
        can lie inside a record whose end is not flushed yet, since the WAL writer flushes whole pages,
        and nothing may flush it on an idle server: then nothing more is coming.) Silence proves
        nothing: only answers that arrived count."""
        if self.wal_end != self._still_at:
            self._still_at, self._still_since = self.wal_end, self.heard_at
        return self.heard_at - self._still_since >= IDLE_AFTER

    def send_confirmation(self) -> None:
        """Confirm to the server the last position the checkpoint holds, if it is new."""
        target = self._to_confirm
        if self.stream is None or target is None or self.position is None:
            return
        if target.identity != self.position.identity or target.lsn <= self._confirmed:
            return
        try:
            self.stream.confirm(target.lsn)
            self._confirmed = target.lsn
        except (psycopg2.Error, OSError) as exc:
            self.lost(exc)

    def ping(self) -> None:
        """Ask the server for a keepalive."""
        assert self.stream is not None
        self.pinged_at = time.monotonic()
        try:
            self.stream.ping()
        except (psycopg2.Error, OSError) as exc:
            self.lost(exc)

    def open(self) -> None:
        """Connect, check, copy when needed, and start streaming (or switch an auto source to polling)."""
        self.state, self._assembler = State.CONNECTING, TransactionAssembler(CHART_COLUMNS)
        stream: replication.ReplicationStream | None = None
        try:
            with connected(self.source.dsn, password=self.source.password) as conn:
                check_table(conn, self.name)
                if self.source.mode == Mode.AUTO:
                    blockers = replication_blockers(conn)
                    if blockers:
                        self._switch_to_polling("auto: " + "; ".join(blockers))
                        return
                replication.ensure_publication(conn, CHART_COLUMNS)
                with conn.cursor() as cur:
                    cur.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
                    db_oid = (cur.fetchone() or (0,))[0]
                slot = replication.slot_info(conn, self.slot)
                if slot is not None and slot.active_pid is not None and self.claim is not None:
                    self._take_slot(conn, slot.active_pid)
                stream = replication.ReplicationStream(self.source, self.slot)
                identity = f"{stream.system_id()}:{db_oid}"
                # A slot confirmed past our position is fine: we never confirm beyond the checkpoint,
                # and psycopg2 confirms a keepalive's position only once everything received before
                # it is confirmed, so nothing of ours lies between (a slot we recreate is marked in
                # the checkpoint first, see _copy).
                pos = self.position
                usable = pos is not None and pos.identity == identity and slot is not None
                if not usable or (slot is not None and slot.wal_status == "lost"):
                    why = _copy_reason(pos, identity, slot)
                    if slot is not None:
                        stream.close()
                        replication.drop_slot(conn, self.slot)
                        stream = replication.ReplicationStream(self.source, self.slot)
                    self._copy(stream, identity, why)
                asked = time.time()
                with conn.cursor() as cur:  # what the stream must reach before the source counts as fresh
                    cur.execute("SELECT pg_current_wal_flush_lsn()::text WHERE NOT pg_is_in_recovery()")
                    flushed = cur.fetchone()
            assert self.position is not None
            self._behind_until = replication.parse_lsn(flushed[0]) if flushed else 0
            stream.start(self.position.lsn)
        except SourceUnusable as exc:
            self.lost(exc, stream, state=State.FAILED)
            return
        except (psycopg2.Error, OSError, PisaPulseError) as exc:
            self.lost(exc, stream)
            return
        self.stream, self.state, self.reason, self.failures = stream, State.STREAMING, "", 0
        self._confirmed = 0
        self.heard_at, self.excused = asked, 0.0  # fresh as of then at best (see `drain`)
        self._still_at = -1  # no answer of this stream's server yet (`_idle_server`)
        log.info("streaming source=%s lsn=%s", self.name, replication.lsn_text(self.position.lsn))

    def _take_slot(self, conn: Connection, pid: int) -> None:
        """Another backend streams from the slot: a former owner's walsender (a worker that paused past
        its lease holds it until `wal_sender_timeout`). End it if `claim` says this process owns the
        source now (a lease check in the fleet), else wait for the next try."""
        assert self.claim is not None
        if not self.claim():
            raise PisaPulseError(
                f"slot {self.slot} is held by backend {pid} and this process does not own {self.name}",
                "nothing to do: it retries, and stops when its lease is gone",
            )
        replication.end_holder(conn, self.slot, pid)

    def _copy(self, stream: replication.ReplicationStream, identity: str, why: str) -> None:
        """Create the slot and copy through its snapshot, in batches the engine reconciles at the end."""
        self.state = State.COPYING
        started = time.time()  # the copy holds everything committed before its snapshot
        log.info("copying source=%s reason=%s", self.name, why)
        # The engine forgets the old position durably before the new slot exists: a crash during the
        # copy must lead to another copy, not to streaming from a slot that starts after the checkpoint.
        self._hand_over(Batch((), None, INITIAL_COPY_MINUTE, BatchKind.COPY_START))
        self.position = None
        start = stream.create_slot()
        chunk: list[RowChange] = []

        def on_row(values: list[str | None]) -> None:
            chunk.append(RowChange("upsert", int(values[0]), tuple(values)))  # type: ignore[arg-type]
            if len(chunk) >= COPY_CHUNK:
                self._hand_over(Batch(chunk[:], None, INITIAL_COPY_MINUTE, BatchKind.COPY_ROWS))
                chunk.clear()
                self.loop.keep_alive(self)

        replication.copy_snapshot(self.source, start.snapshot, CHART_COLUMNS, on_row)
        self._hand_over(Batch(chunk, None, INITIAL_COPY_MINUTE, BatchKind.COPY_ROWS))
        self.position = Position(identity, start.consistent_lsn, 0)
        self._hand_over(Batch((), self.position, INITIAL_COPY_MINUTE, BatchKind.COPY_END))
        self.fresh_at = max(self.fresh_at, started)
        self.copies += 1
        self.copy_reason = why

    def _switch_to_polling(self, why: str) -> None:
        """An auto source where replication is not allowed: poll it from now on."""
        assert self._held is not None and self._sink is not None
        polled = PolledSource(self.source, self.poll_interval, self.reconcile_interval, why=why)
        log.info("polling source=%s reason=%s", self.name, why)
        self.polled = polled
        self.loop.remove(self)
        polled.start(self.position, self._held, self._sink)

    def lost(
        self,
        exc: BaseException,
        stream: replication.ReplicationStream | None = None,
        state: State = State.RECONNECTING,
    ) -> None:
        """Close the connection and schedule a retry with back-off; the status says why."""
        for s in (stream, self.stream):
            if s is not None:
                s.close()
        self.stream = None
        self.failures += 1
        self.losses += 1
        delay = retry_delay(self.failures, state)
        self.retry_at = time.monotonic() + delay
        self.state, self.reason = state, first_line(exc)
        log.warning("source %s source=%s reason=%s retry_in=%ss", state, self.name, self.reason, delay)

    def close(self) -> None:
        """Close the stream (the slot stays, for the next start)."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def _copy_reason(position: Position | None, identity: str, slot: replication.SlotInfo | None) -> str:
    if position is None:
        return "first start"
    if position.identity != identity:
        return "the database is not the one checkpointed"
    if slot is None:
        return "slot missing"
    return "slot invalidated"
