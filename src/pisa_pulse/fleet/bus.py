"""The parts on NATS: a worker's writes of a source, and a replica's view of every source.

- `PartsPublisher.publish` writes what `parts` encodes for one source: the hours a batch touched,
  then the sums (which list the hours that hold rows), then deletes the hours it listed last time
  and no longer does. A write that meets an election
  (`NoStreamResponseError`, no responders: nothing stored) or no answer is retried; the values are
  states, so a write that did land twice changes nothing.
- `PartsView` follows the bucket's stream with an ordered push consumer of its own: the last value of
  every key first, then every new one, in order. It sets the consumer's idle heartbeat itself
  (`HEARTBEAT_S`): nats-py's `kv.watch()` keeps its 5 s heartbeat and resumed only 20 s after the
  SIGKILL of the node its consumer was on (tests/test_nats_cluster.py), too slow for a failover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import NoStreamResponseError, NotFoundError
from nats.js.kv import KeyValue

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.fleet import PREFIX, parts
from pisa_pulse.fleet.leases import bucket, bucket_name

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # the replica's consumer: a lost one is recreated after two missed heartbeats
WRITE_TIMEOUT_S = 5.0
WRITE_DEADLINE_S = 60.0  # retrying a write through elections (measured: 4.4-7.5 s each)
DELETED = ("DEL", "PURGE")
T = TypeVar("T")


async def retried(what: str, attempt: Callable[[], Awaitable[T]], timeout: float = WRITE_TIMEOUT_S) -> T:
    """`attempt()`, repeated while the stream elects a leader (nothing stored) or does not answer,
    for up to `WRITE_DEADLINE_S`."""
    deadline = time.monotonic() + WRITE_DEADLINE_S
    while True:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see `SourceWorker.run`
                return await attempt()
        except (TimeoutError, NoStreamResponseError, NatsTimeout, NoRespondersError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not {what} on NATS for {WRITE_DEADLINE_S:g} s") from None
            log.debug("retrying to %s: the stream is electing a leader", what)
            await asyncio.sleep(0.25)


async def parts_bucket(js: JetStreamContext, replicas: int, prefix: str = PREFIX) -> KeyValue:
    """The parts bucket (no age limit: a source's state stays until it is replaced)."""
    return await bucket(js, bucket_name(prefix, parts.PARTS), replicas, 0)


class PartsPublisher:
    """One source's writes into the parts bucket (see the module docstring)."""

    def __init__(self, kv: KeyValue, source: str) -> None:
        self.kv = kv
        self.source = source
        self.bytes_written = 0
        self.messages_written = 0
        self._listed: set[int] = set()  # the hours the last sums written listed

    async def publish(
        self, epoch: int, as_of: float, position: str | None, part: Aggregates, hours: Iterable[int]
    ) -> None:
        """Write the source's `part`: the minutes of `hours` (those a batch touched, or all), then its
        sums."""
        writes = [
            (parts.hour_key(self.source, hour), parts.hour_value(epoch, part.minutes_of_hour(hour)))
            for hour in sorted(hours)
        ]
        listed = set(part.hourly())
        sums = parts.sums_value(epoch, as_of, position, part, listed)
        writes.append((parts.sums_key(self.source), sums))
        # Sent in this order on one connection, so stored and seen in it; their acks awaited together.
        await asyncio.gather(*(self._put(key, value) for key, value in writes))
        for hour in sorted(self._listed - listed):  # after the sums that no longer list them
            await self._delete(parts.hour_key(self.source, hour))
        self._listed = listed

    async def publish_status(self, epoch: int, worker: str, status: dict[str, Any]) -> None:
        """Write the source's capture status."""
        await self._put(parts.status_key(self.source), parts.status_value(epoch, worker, status))

    async def _delete(self, key: str) -> None:
        await retried(f"delete {key}", lambda: self.kv.delete(key))

    async def _put(self, key: str, value: bytes) -> None:
        await retried(f"write {key}", lambda: self.kv.put(key, value))
        self.bytes_written += len(value)
        self.messages_written += 1


class PartsView:
    """Every source's published part, as a replica follows them (see the module docstring)."""

    def __init__(
        self, js: JetStreamContext, prefix: str = PREFIX, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.js = js
        self.on_change = on_change
        self.sources: dict[str, parts.SourceView] = {}
        self.version = 0  # bumps with every value taken
        self._prefix = f"$KV.{bucket_name(prefix, parts.PARTS)}."
        self._bucket = bucket_name(prefix, parts.PARTS)
        self._subscription: object | None = None
        self._caught_up = asyncio.Event()  # every value stored when it started has been taken

    async def start(self) -> None:
        """Subscribe: the last value of every key, then every new one."""
        self._subscription = await self.js.subscribe(
            self._prefix + ">",
            cb=self._take,
            ordered_consumer=True,
            idle_heartbeat=HEARTBEAT_S,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )

    async def caught_up(self, timeout: float = 10.0) -> None:
        """Wait until the values stored when the view started have all been taken (an empty or
        missing bucket: at once)."""
        try:
            info = await self.js.stream_info(f"KV_{self._bucket}")
            if not info.state.messages:
                return
        except NotFoundError:
            return
        async with asyncio.timeout(timeout):
            await self._caught_up.wait()

    @property
    def is_caught_up(self) -> bool:
        """Whether every value stored when the view started has been taken (see `caught_up`)."""
        return self._caught_up.is_set()

    async def _take(self, msg: Msg) -> None:
        if msg.metadata.num_pending == 0:
            self._caught_up.set()
        key = msg.subject.removeprefix(self._prefix)
        source = key.split(".")[1]
        operation = (msg.headers or {}).get("KV-Operation")
        if operation in DELETED:
            # A retirement purges a source's keys one by one: once its sums are gone it is gone,
            # and the purges of its status and hours that follow must not bring it back empty.
            view = self.sources.get(source)
            if view is None:
                return
            if key.startswith("sums."):
                self.sources.pop(source, None)  # a source removed from the settings
            elif key.startswith("minutes."):
                view.drop_hour(int(key.rsplit(".", 1)[1]))
            else:
                view.status = {}
        elif not self.sources.setdefault(source, parts.SourceView()).take(key, msg.data):
            return  # an older owner's write
        self.version += 1
        self.on_change()

    def aggregates(self) -> Aggregates:
        """Every source's part merged."""
        total = Aggregates()
        for view in self.sources.values():
            total.merge(view.aggregates())
        return total

    def as_of(self) -> float:
        """Unix time up to which every source's changes are in (0: a source has not said yet)."""
        return min((view.as_of for view in self.sources.values()), default=0.0)
