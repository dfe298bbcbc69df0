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
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import nats.errors

from pisa_pulse.capture.contract import Position, State
from pisa_pulse.capture.replicated import slot_name
from pisa_pulse.engine.pipeline import Pipeline
from pisa_pulse.fleet import checkpoints, parts, retire
from pisa_pulse.fleet.bus import PartsPublisher
from pisa_pulse.fleet.leases import LeaseBook
from pisa_pulse.fleet.stores import Stores
from pisa_pulse.sources.config import Source

log = logging.getLogger(__name__)

COALESCE_S = 0.02  # least time between two writes of a source's changes
BEAT_S = 0.5  # between writes of an idle source's sums (its freshness)
STATUS_S = 1.0  # between writes of a source's capture status (a new state is written at once)
RESTORES_AT_ONCE = 16  # per worker: claims and restores from checkpoints (see `Worker`)
COPIES_AT_ONCE = 2  # per worker: fresh copies, until they stream or fail (see `Worker`)
COPY_STATES = {State.CONNECTING, State.COPYING}  # a copy holds its slot while in these (not if it fails)


@dataclass
class Gates:
    """How many of a worker's sources may restore, and copy afresh, at once (see `Worker`)."""

    restores: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(RESTORES_AT_ONCE))
    copies: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(COPIES_AT_ONCE))


def position_text(position: Position | None) -> str | None:
    """A position as published: the server and database it belongs to, and the LSN."""
    return None if position is None else f"{position.identity}@{position.lsn}"


class SourceWorker:
    """Capture of one source, published under `epoch` (see the module docstring).

    `run` first claims the source's checkpoint in JetStream (`checkpoints.SourceLog`), which is then
    its pipeline's checkpoint, so the pipeline resumes where the former owner stopped; where there
    is none, or it has a gap, the pipeline copies the source afresh, and the status says why. A
    worker keeps no state on disk.
    """

    def __init__(
        self,
        source: Source,
        stores: Stores,
        epoch: int,
        worker: str = "",
        claim: Callable[[str], bool] | None = None,
        gates: Gates | None = None,
        **capture: Any,
    ) -> None:
        self.source = source
        self.gates = gates or Gates()  # shared by a worker's sources (see `Worker`)
        self.epoch = epoch
        self.worker = worker
        self.claim = claim
        self.capture = capture
        self.stores = stores
        self.publisher = PartsPublisher(stores.parts, source.name)
        self._loop = asyncio.get_running_loop()
        self.log = checkpoints.SourceLog(
            stores.js, stores.objects, source.name, epoch, stores.prefix, self._loop
        )
        self.resumed: dict[str, Any] = {}  # how it started: from a checkpoint, or copied afresh and why
        self.pipeline: Pipeline | None = None
        self._changed = asyncio.Event()
        self._stop = threading.Event()
        self._failure: BaseException | None = None

    def _on_change(self) -> None:
        """From the capture thread: a batch changed the part."""
        self._loop.call_soon_threadsafe(self._changed.set)

    async def _resume(self) -> Pipeline:
        """Claim the checkpoint and open the pipeline on it."""
        started, claimed_at = time.monotonic(), time.time()
        restored = await self.log.claim()
        read = time.monotonic()
        slot = slot_name(self.capture.get("slot_prefix", "pisa_pulse"), self.source)  # Pipeline's default
        await retire.record(self.stores, self.source, slot)
        if restored.position is not None:
            rows = len(restored.records[0])
            self.resumed = {"from": "checkpoint", "rows": rows, "log_sequence": restored.last}
        else:
            self.resumed = {"from": "copy", "why": restored.why}
        self.resumed["read_bytes"] = restored.snapshot_bytes + restored.log_bytes
        self.resumed["at"] = claimed_at
        log.info("resuming source=%s epoch=%d %s", self.source.name, self.epoch, self.resumed)

        pipeline = await asyncio.to_thread(
            Pipeline, [self.source], self.log, on_change=self._on_change, claim=self.claim, **self.capture
        )
        self.resumed["read_s"] = round(read - started, 3)  # the claim: snapshot and log read
        self.resumed["seconds"] = round(time.monotonic() - started, 3)  # and the ledger rebuilt
        return pipeline

    async def run(self) -> None:
        """Resume, capture and publish until cancelled; then stop capture (it checkpoints first).
        Raises when capture stops by itself (`checkpoints.Superseded`: another worker took over)."""
        async with self.gates.restores:
            self.pipeline = pipeline = await self._resume()
        copying = self.gates.copies
        copy = self.resumed["from"] == "copy"
        if copy:  # until it streams or fails
            await copying.acquire()
        thread = threading.Thread(target=self._capture, args=(pipeline,), name=f"capture-{self.source.name}")
        thread.start()
        try:
            full, reported, reported_state = True, 0.0, None
            while True:
                if not thread.is_alive():
                    raise self._failure or RuntimeError(f"capture of {self.source.name} stopped")
                state = pipeline.statuses()[0].state
                if copy and state not in COPY_STATES:
                    copying.release()
                    copy = False
                self._changed.clear()
                await self._publish(pipeline, full)
                full, sent = False, time.monotonic()
                if sent - reported >= STATUS_S or state != reported_state:  # a new state: said at once
                    status = {
                        **pipeline.status()[0],
                        "reported_at": time.time(),
                        "resumed": self.resumed,
                        "checkpoint": self.log.describe(),
                        "parts": {
                            "bytes_written": self.publisher.bytes_written,
                            "messages_written": self.publisher.messages_written,
                        },
                    }
                    await self.publisher.publish_status(self.epoch, self.worker, status)
                    reported, reported_state = sent, state
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the
                # event is set (it returns the result instead), and a capture thread sets it many
                # times a second, so a cancelled source could run on for ever (seen: a worker's stop
                # hung in `_cancel`). asyncio.timeout lets the cancellation through.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BEAT_S):
                        await self._changed.wait()
                await asyncio.sleep(max(0.0, COALESCE_S - (time.monotonic() - sent)))
        finally:
            if copy:
                copying.release()
            self._stop.set()
            await asyncio.to_thread(thread.join)

    def _capture(self, pipeline: Pipeline) -> None:
        try:
            pipeline.run(self._stop)
        except BaseException as exc:  # handed to `run`, which raises it in the worker's loop
            self._failure = exc
            self._loop.call_soon_threadsafe(self._changed.set)

    async def _publish(self, pipeline: Pipeline, full: bool) -> None:
        # On the event loop when the pipeline's lock is free (a copy of a few small dicts); else in a
        # thread: a capture thread may hold it for a whole batch of a copy, and the loop also renews
        # the worker's leases. (Always in a thread cost 2.5 ms at p50 and 37 ms at p99 per publish
        # beside ten capturing sources: bench/fleet_bench.py's stages.)
        name = self.source.name
        taken = pipeline.take_part(name, full, blocking=False)
        if taken is None:
            taken = await asyncio.to_thread(pipeline.take_part, name, full)
        assert taken is not None
        as_of, part, exported = taken
        hours = parts.hours_to_write(part, exported, full)
        position = position_text(pipeline.position(name))
        await self.publisher.publish(self.epoch, as_of, position, part, hours)


class Worker:
    """A capture worker: leases (`LeaseBook`) decide which sources it captures, one `SourceWorker`
    each, started under the lease's epoch and cancelled when the lease goes.

    Every `lease_s / 3` seconds it renews what it holds, then moves one step towards the plan. Its
    sources copy afresh, until they stream or fail, `COPIES_AT_ONCE` at a time: twenty copies of
    30,000 students at once in one process starved the event loop of the GIL past the lease
    (measured: every lease lost within 10 s of a 600,000-student start), and sources moved back and
    forth. Restores from a checkpoint cost a tenth of a copy's CPU (bulk numpy, mostly waiting on
    NATS), so `RESTORES_AT_ONCE` of them run together: the sources of a lost worker move in one go,
    with at most that many snapshots in memory at once (about three times a snapshot's size each).

    A source whose capture stopped by itself (another worker took it over, or NATS refused its
    checkpoint for a minute) is released, to be taken again from its checkpoint. `run(stop)` hands
    every lease over when `stop` is set (SIGTERM); cancelled instead (a crash), it lets them expire.
    """

    def __init__(
        self,
        book: LeaseBook,
        sources: Sequence[Source],
        stores: Stores,
        lease_s: float,
        **capture: Any,
    ) -> None:
        self.book = book
        self.sources = {s.name: s for s in sources}
        self.stores = stores
        self.lease_s = lease_s
        self.capture = capture
        self.running: dict[str, asyncio.Task[None]] = {}
        self.workers: dict[str, SourceWorker] = {}
        self._loop = asyncio.get_running_loop()
        self._retire_at = 0.0
        self._gates = Gates()

    async def run(self, stop: asyncio.Event) -> None:
        renewed = time.monotonic()
        wake = asyncio.Event()  # a worker or a lease ended: move now, not at the next turn
        with contextlib.suppress(nats.errors.Error, TimeoutError, AssertionError):
            await self.book.watch_ends(wake.set)
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    await self.book.renew_all()
                    renewed = time.monotonic()
                    await self._reap()
                    await self.book.rebalance(list(self.sources))
                    await self._follow_leases()
                    await self._retire_removed()
                except (nats.errors.Error, TimeoutError) as exc:  # an election, a lost server: next turn
                    log.warning("leases not renewed this turn (%s); trying again", type(exc).__name__)
                    if time.monotonic() - renewed > self.lease_s:
                        await self._let_go_unrenewed()
                await _first(stop, wake, self.lease_s / 3)
        finally:
            await self._cancel(list(self.running))
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.book.leave()

    async def _retire_removed(self) -> None:
        """Every `retire.RETIRE_EVERY_S`: retire the published sources these settings no longer list."""
        if time.monotonic() < self._retire_at:
            return
        self._retire_at = time.monotonic() + retire.RETIRE_EVERY_S
        for name in sorted(await retire.removed(self.stores, set(self.sources))):
            await retire.retire(self.stores, self.book, name)

    async def _let_go_unrenewed(self) -> None:
        """Not renewed for a whole lease: others may hold these sources now, so stop capturing them
        (their checkpoints are fenced anyway; this also stops a polled source, which has no slot)."""
        if self.running:
            log.warning("no lease renewed for %g s: letting go of %s", self.lease_s, sorted(self.running))
        await self._cancel(list(self.running))
        self.book.held.clear()

    def claim(self, name: str) -> bool:
        """From a capture thread: whether this worker still holds `name`'s lease (asked of NATS)."""
        future = asyncio.run_coroutine_threadsafe(self.book.holds(name), self._loop)
        try:
            return future.result(self.lease_s)
        except (FutureTimeout, OSError, TimeoutError):
            future.cancel()
            return False

    async def _reap(self) -> None:
        """Release the sources whose capture ended by itself."""
        for name, task in list(self.running.items()):
            if task.done():
                del self.running[name]
                self.workers.pop(name, None)
                failure = None if task.cancelled() else task.exception()
                log.warning("capture of source=%s stopped: %s; letting it go", name, failure)
                await self.book.release(name)

    async def _follow_leases(self) -> None:
        held = self.book.held
        await self._cancel([name for name in self.running if name not in held])
        for name in sorted(set(held) & set(self.sources) - set(self.running)):
            source_worker = SourceWorker(
                self.sources[name],
                self.stores,
                held[name].epoch,
                self.book.worker,
                self.claim,
                self._gates,
                **self.capture,
            )
            self.workers[name] = source_worker
            self.running[name] = asyncio.create_task(source_worker.run(), name=f"source-{name}")

    async def _cancel(self, names: list[str]) -> None:
        tasks = [self.running.pop(name) for name in names]
        for name in names:
            self.workers.pop(name, None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # a failure was logged by `_reap`, or moot


async def _first(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    """Until `stop` or `wake` is set, or `timeout` seconds."""
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
