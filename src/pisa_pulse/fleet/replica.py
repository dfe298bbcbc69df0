"""An API replica's numbers: every source's published part, merged into the same snapshots `serve`
makes, so the same data gives the same chart bodies and ETags on every replica and in `serve`.

`FleetSnapshots` connects to NATS when the app starts, follows the parts bucket (`bus.PartsView`)
and merges the sources' parts into a snapshot when they have changed, at most every `min_interval`
seconds (as `LiveSnapshots` does), on the event loop that also serves: no lock is needed. It holds
no state of its own beyond what it read, so replicas can come and go.

With `[publish] to` in its settings (aws/), the replicas publish too, one at a time: the one that
holds the publisher lease (`may_publish`: one key in the KV bucket `<prefix>_publisher`, whose TTL is
the lease, renewed at every publishing round) writes; the others wait, and the first to find the
lease free takes it over when that one stops (it releases it) or dies (the lease expires after
`PUBLISH_LEASE_S`). A former publisher that wakes up late cannot roll the target back: each write is
conditional on the version.

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


class FleetSnapshots:
    """Snapshots of the parts published on NATS (see the module docstring)."""

    mode = "fleet"
    history: Recorder | None = None  # no history store here (yet)

    def __init__(self, options: NatsOptions, name: str, min_interval: float = 0.02) -> None:
        self.options = options
        self.name = name
        self.min_interval = min_interval
        self.observe_build: Callable[[float], None] | None = None
        self.view: PartsView | None = None
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Task[None] | None = None
        self._current = Snapshot(-1, Aggregates(), 0.0)
        self._taken = 0.0
        self._publisher: LeaseBook | None = None

    def start(self) -> None:
        """Connect and follow the parts, in the background of the serving loop."""
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_task(self._follow())

    async def _follow(self) -> None:
        """Connect, make the parts bucket if no worker has yet (as a worker would), and follow it;
        retried until it works, each failure logged (the health says `connecting` meanwhile)."""
        while True:
            try:
                if self._client is None:
                    self._client = await connect(self.options, self.name)
                js = self._client.jetstream(timeout=10)
                await parts_bucket(js, replicas_for(self._client, self.options), self.options.prefix)
                view = PartsView(js, self.options.prefix)
                await view.start()
                self.view = view
                return
            except Exception as exc:  # any failure: said, then tried again
                log.warning("cannot follow the parts on NATS yet (%s); retrying", scrub(str(exc)))
                await asyncio.sleep(RETRY_S)

    async def may_publish(self) -> bool:
        """Whether this replica publishes this round: it holds the publisher lease, renewed now, or
        has just taken it (see the module docstring)."""
        if self._client is None or self.view is None:
            return False
        if self._publisher is None:
            js = self._client.jetstream(timeout=10)
            replicas = replicas_for(self._client, self.options)
            leases = await bucket(js, bucket_name(self.options.prefix, PUBLISHER), replicas, PUBLISH_LEASE_S)
            self._publisher = LeaseBook(leases, leases, self.name, js, self.options.prefix)
        held = self._publisher.held.get(PUBLISHER)
        if held is not None and await self._publisher.renew(held) is not None:
            return True
        return await self._publisher.acquire(PUBLISHER) is not None

    def stop(self) -> None:
        """Hand the publisher lease over and close the connection (called off the loop, at shutdown)."""
        if self._loop is not None and self._client is not None:
            if self._publisher is not None:
                with contextlib.suppress(Exception):  # unreachable: it expires by itself
                    asyncio.run_coroutine_threadsafe(self._publisher.release(PUBLISHER), self._loop).result(5)
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(10)

    def snapshot(self, columns: frozenset[str] | None = None) -> Snapshot:
        """The latest merge, renewed when a part has changed and `min_interval` has passed."""
        view, current = self.view, self._current
        if view is None:
            return current
        now = time.monotonic()
        if current.version != view.version and now - self._taken >= self.min_interval:
            self._current = current = Snapshot(view.version, view.aggregates(), view.as_of())
            self._taken = now
            if self.observe_build is not None:
                self.observe_build(time.monotonic() - now)
        if current.version != view.version:
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
