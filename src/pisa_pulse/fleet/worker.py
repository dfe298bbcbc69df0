"""One leased source captured by a worker: the engine's pipeline for it, published to NATS under the
lease's epoch.

`SourceWorker` runs a `Pipeline` of the one source (capture contract, ledger, checkpoint) in a thread,
and publishes its part from the event loop after each applied batch, coalesced: at once, unless the
last write went less than `COALESCE_S` ago, then that long after it with everything meanwhile (at
most 1 / COALESCE_S writes of the sums a second per source, whatever the change rate). Without
changes the sums (with their as_of) go every `BEAT_S`, so replicas see an idle source stay fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nats.js.kv import KeyValue

from pisa_pulse.capture.contract import Position
from pisa_pulse.engine.pipeline import Pipeline
from pisa_pulse.fleet import parts
from pisa_pulse.fleet.bus import PartsPublisher
from pisa_pulse.fleet.leases import LeaseBook
from pisa_pulse.sources.config import Source

COALESCE_S = 0.02  # least time between two writes of a source's changes
BEAT_S = 0.5  # between writes of an idle source's sums (its freshness)
STATUS_S = 1.0  # between writes of a source's capture status


def position_text(position: Position | None) -> str | None:
    """A position as published: the server and database it belongs to, and the LSN."""
    return None if position is None else f"{position.identity}@{position.lsn}"


class SourceWorker:
    """Capture of one source, published under `epoch` (see the module docstring)."""

    def __init__(
        self,
        source: Source,
        state_dir: Path,
        kv: KeyValue,
        epoch: int,
        worker: str = "",
        slot_prefix: str = "pisa_pulse",
        poll_interval: float = 0.25,
        reconcile_interval: float = 30.0,
    ) -> None:
        self.source = source
        self.epoch = epoch
        self.worker = worker
        self.publisher = PartsPublisher(kv, source.name)
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.pipeline = Pipeline(
            [source],
            state_dir / source.name,
            slot_prefix=slot_prefix,
            poll_interval=poll_interval,
            reconcile_interval=reconcile_interval,
            on_change=self._on_change,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.pipeline.run, args=(self._stop,), name=f"capture-{source.name}"
        )

    def _on_change(self) -> None:
        """From the capture thread: a batch changed the part."""
        self._loop.call_soon_threadsafe(self._changed.set)

    async def run(self) -> None:
        """Capture and publish until cancelled; then stop capture (it checkpoints first)."""
        self._thread.start()
        try:
            full, reported = True, 0.0
            while True:
                self._changed.clear()
                await self._publish(full)
                full, sent = False, time.monotonic()
                if sent - reported >= STATUS_S:
                    await self.publisher.publish_status(self.epoch, self.worker, self.pipeline.status()[0])
                    reported = sent
                try:
                    await asyncio.wait_for(self._changed.wait(), BEAT_S)
                    await asyncio.sleep(max(0.0, COALESCE_S - (time.monotonic() - sent)))
                except TimeoutError:
                    pass
        finally:
            self._stop.set()
            await asyncio.to_thread(self._thread.join)

    async def _publish(self, full: bool) -> None:
        name = self.source.name
        as_of = self.pipeline.as_of()  # before the part: it holds at least everything up to it
        exported = self.pipeline.take_parts(full).get(name, {})  # what changed since the last time
        with self.pipeline.lock:  # then the part as of one moment, at least as new
            part = self.pipeline.held[name].part.copy()
        hours = parts.hours_to_write(part, exported, full)
        await self.publisher.publish(
            self.epoch, as_of, position_text(self.pipeline.position(name)), part, hours
        )


class Worker:
    """A capture worker: leases (`LeaseBook`) decide which sources it captures, one `SourceWorker`
    each, started under the lease's epoch and cancelled when the lease goes.

    Every `lease_s / 3` seconds it renews what it holds, then moves one step towards the plan. A new
    owner of a source starts from its own checkpoint (none yet on another machine: a fresh copy, whose
    slot drop ends the walsender an old owner may still hold). `run(stop)` hands every lease over when
    `stop` is set (SIGTERM); cancelled instead (a crash), it lets the leases expire.
    """

    def __init__(
        self,
        book: LeaseBook,
        sources: Sequence[Source],
        state_dir: Path,
        kv: KeyValue,
        lease_s: float,
        **capture: Any,
    ) -> None:
        self.book = book
        self.sources = {s.name: s for s in sources}
        self.state_dir = state_dir
        self.kv = kv
        self.lease_s = lease_s
        self.capture = capture
        self.running: dict[str, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.book.renew_all()
                await self.book.rebalance(list(self.sources))
                await self._follow_leases()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease_s / 3)
        finally:
            await self._cancel(list(self.running))
        await self.book.leave()

    async def _follow_leases(self) -> None:
        held = self.book.held
        await self._cancel([name for name in self.running if name not in held])
        for name in sorted(set(held) - set(self.running)):
            source_worker = SourceWorker(
                self.sources[name],
                self.state_dir,
                self.kv,
                held[name].epoch,
                self.book.worker,
                **self.capture,
            )
            self.running[name] = asyncio.create_task(source_worker.run(), name=f"source-{name}")

    async def _cancel(self, names: list[str]) -> None:
        tasks = [self.running.pop(name) for name in names]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
