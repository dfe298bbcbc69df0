"""An API replica's numbers: every source's published part, merged into the same snapshots `serve`
makes, so the same data gives the same chart bodies and ETags on every replica and in `serve`.

`FleetSnapshots` connects to NATS when the app starts, follows the parts bucket (`bus.PartsView`)
and merges the sources' parts into a snapshot as soon as one has changed, at most every
`min_interval` seconds (a change within it is merged when it ends), on the event loop that also
serves: no lock is needed. `on_change` is told of each new version (the live route wakes on it). It
holds no state of its own beyond what it read, so replicas can come and go.

With `[publish] to` in its settings (aws/), the replicas publish too, one at a time: the one that
holds the publisher lease (`may_publish`: one key in the KV bucket `<prefix>_publisher`, whose TTL is
the lease, renewed at every publishing round) writes; the others wait, and the first to find the
lease free takes it over when that one stops (it releases it) or dies (the lease expires after
`PUBLISH_LEASE_S`). A former publisher that wakes up late cannot roll the target back: each write is
conditional on the version.

With a PostgreSQL history store in its settings (`[history] store`, history/), every replica answers
`/api/history/...` from it, and one writes it: the one that holds the historian lease (a second key of
the same bucket, renewed every `PUBLISH_LEASE_S / 3`) records each minute of the merged parts, as
`serve` does; a replica that takes the lease over records the last `CATCH_UP_MINUTES` too, so a
minute that ended while no one held it is not missing (the store's key keeps those already written).
DuckDB is one process's file, so replicas keep no history with it (the default): say so, once.

Its status lists, per source, the capture status its worker last published, with the worker, the
lease's epoch, the position the sums reflect and their lag; a source whose status is older than
`STALE_S` (its worker gone, the lease not yet taken over) says `unowned`, which makes
`/api/health` answer 503 until another worker reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.fleet.bus import PartsView, parts_bucket
from pisa_pulse.fleet.connect import NatsOptions, connect, replicas_for
from pisa_pulse.fleet.leases import LeaseBook, bucket, bucket_name
from pisa_pulse.history.recorder import Recorder
from pisa_pulse.secret import scrub

log = logging.getLogger(__name__)

RETRY_S = 2.0
STALE_S = 10.0  # a status older than this: no worker reports the source (leases last 6 s)
PUBLISHER = "publisher"  # the bucket of the publisher lease, and its one key
PUBLISH_LEASE_S = 6  # as the workers' leases: a dead publisher is replaced within this
HISTORIAN = "historian"  # the key of the lease of the replica that writes the history
CATCH_UP_MINUTES = 2  # a lease expires within PUBLISH_LEASE_S: at most one boundary passes meanwhile


class FleetSnapshots:
    """Snapshots of the parts published on NATS (see the module docstring)."""

    mode = "fleet"

    def __init__(
        self, options: NatsOptions, name: str, min_interval: float = 0.02, history: Recorder | None = None
    ) -> None:
        """`history`: the recorder of a PostgreSQL store (see the module docstring), or None."""
        self.history = history
        if history is not None:
            history.writer = False  # until this replica holds the historian lease
        self.options = options
        self.name = name
        self.min_interval = min_interval
        self.observe_build: Callable[[float], None] | None = None
        self.on_change: Callable[[], None] | None = None
        self.view: PartsView | None = None
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Task[None] | None = None
        self._current = Snapshot(-1, Aggregates(), 0.0)
        self._taken = -min_interval
        self._renewal: asyncio.TimerHandle | None = None  # a merge due when `min_interval` ends
        self._publisher: LeaseBook | None = None  # the leases of the publisher and the historian
        self._opening = asyncio.Lock()
        self._historian: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and follow the parts, in the background of the serving loop."""
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_task(self._follow())
        if self.history is not None:
            self.history.start()
            self._historian = self._loop.create_task(self._keep_historian())

    async def _follow(self) -> None:
        """Connect, make the parts bucket if no worker has yet (as a worker would), and follow it;
        retried until it works, each failure logged (the health says `connecting` meanwhile)."""
        while True:
            try:
                if self._client is None:
                    self._client = await connect(self.options, self.name)
                js = self._client.jetstream(timeout=10)
                await parts_bucket(js, replicas_for(self._client, self.options), self.options.prefix)
                view = PartsView(js, self.options.prefix, self._observe)
                await view.start()
                self.view = view
                self._renew()  # what the view read before it was ours to merge
                return
            except Exception as exc:  # any failure: said, then tried again
                log.warning("cannot follow the parts on NATS yet (%s); retrying", scrub(str(exc)))
                await asyncio.sleep(RETRY_S)

    async def may_publish(self) -> bool:
        """Whether this replica publishes this round: it holds the publisher lease, renewed now, or
        has just taken it (see the module docstring)."""
        return await self._holds(PUBLISHER)

    async def _holds(self, key: str) -> bool:
        """Renew the lease `key` of the publisher bucket if this replica holds it, else try to take
        it: whether it holds it now."""
        if self._client is None or self.view is None:
            return False
        async with self._opening:  # the publishing round and the historian's task, made once
            if self._publisher is None:
                js = self._client.jetstream(timeout=10)
                replicas = replicas_for(self._client, self.options)
                name = bucket_name(self.options.prefix, PUBLISHER)
                leases = await bucket(js, name, replicas, PUBLISH_LEASE_S)
                self._publisher = LeaseBook(leases, leases, self.name, js, self.options.prefix)
        book = self._publisher
        held = book.held.get(key)
        if held is not None and await book.renew(held) is not None:
            return True
        return await book.acquire(key) is not None

    async def _keep_historian(self) -> None:
        """Hold the historian lease whenever it is free (see the module docstring)."""
        assert self.history is not None
        while True:
            try:
                holds = await self._holds(HISTORIAN)
            except Exception as exc:  # NATS unreachable: the lease lapses, another replica writes
                log.warning("history: cannot renew the writer's lease (%s)", scrub(str(exc)))
                holds = False
            if holds and not self.history.writer:
                log.info("history: this replica writes the minutes now")
                self.history.resume(CATCH_UP_MINUTES)
            self.history.writer = holds
            await asyncio.sleep(PUBLISH_LEASE_S / 3)

    def _parts(self) -> dict[str, Aggregates]:
        assert self.view is not None
        return {name: source.aggregates() for name, source in self.view.sources.items()}

    async def _last_minute(self) -> tuple[float, dict[str, Aggregates]]:
        """On the loop: the watermark and the parts, for the history's last minute."""
        if self.history is None or not self.history.writer or self.view is None:
            return 0.0, {}
        self.history.writer = False
        return self.view.as_of(), self._parts()

    def _observe(self) -> None:
        """A part changed: merge now, or when `min_interval` ends; the history's writer looks for a
        minute boundary (once the view holds every source: a minute of some of them would say the
        others were removed)."""
        view = self.view
        if self._renewal is None and self._loop is not None:
            wait = self._taken + self.min_interval - time.monotonic()
            self._renewal = self._loop.call_later(max(0.0, wait), self._renew)
        if self.history is not None and self.history.writer and view is not None and view.is_caught_up:
            self.history.observe(view.as_of(), self._parts())

    def stop(self) -> None:
        """Record the minute in progress (the history's writer), hand the leases over and close the
        connection (called off the loop, at shutdown)."""
        if self.history is not None:
            last: tuple[float, dict[str, Aggregates]] = (0.0, {})
            if self._loop is not None:
                with contextlib.suppress(Exception):  # the loop is gone: the minute with it
                    last = asyncio.run_coroutine_threadsafe(self._last_minute(), self._loop).result(5)
            self.history.stop(*last)
        if self._loop is not None and self._client is not None:
            if self._publisher is not None:
                for key in (PUBLISHER, HISTORIAN):
                    with contextlib.suppress(Exception):  # unreachable: it expires by itself
                        asyncio.run_coroutine_threadsafe(self._publisher.release(key), self._loop).result(5)
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(10)

    def _renew(self) -> None:
        """Merge the parts into the next snapshot (on the loop), and tell `on_change`."""
        self._renewal = None
        view = self.view
        if view is None or view.version == self._current.version:
            return
        started = self._taken = time.monotonic()
        self._current = Snapshot(view.version, view.aggregates(), view.as_of())
        if self.observe_build is not None:
            self.observe_build(time.monotonic() - started)
        if self.on_change is not None:
            self.on_change()

    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot:
        """The latest merge; as fresh as the parts when no change awaits its merge."""
        view, current = self.view, self._current
        if view is None or current.version != view.version:
            return current
        return Snapshot(current.version, current.aggregates, view.as_of())

    def status(self) -> list[dict[str, Any]]:
        """Per source, sorted by name: its published capture status, worker, lease, position, lag."""
        return [] if self.view is None else source_statuses(self.view, time.time())

    def data_as_of(self) -> float | None:
        """Unix time up to which every source's changes are in (None: not yet)."""
        return (self.view.as_of() if self.view is not None else 0.0) or None

    def capture(self) -> dict[str, Any] | None:
        """The NATS connection, in place of a capture process."""
        client = self._client
        following = client is not None and client.is_connected and self.view is not None
        state = "running" if following else "connecting"
        server = client.connected_url if client is not None else None
        return {"state": state, "nats": server.netloc.rsplit("@", 1)[-1] if server else None}


def source_statuses(view: PartsView, now: float) -> list[dict[str, Any]]:
    """Per source, sorted by name: the capture status its worker last published, with the worker, the
    lease's epoch, the position its sums reflect and their lag (`unowned` past `STALE_S`)."""
    result = []
    for name, source in sorted(view.sources.items()):
        if not source.sums and not source.status:
            continue
        body: dict[str, Any] = {"source": name, "state": "unowned", **source.status}
        reported = body.pop("reported_at", None)
        if reported is None or now - reported > STALE_S:
            body["state"] = "unowned"
            body["reason"] = f"no worker has reported this source for over {STALE_S:g} s"
        body["position"] = source.position
        body["lag_s"] = round(now - source.as_of, 3) if source.as_of else None
        result.append(body)
    return result
