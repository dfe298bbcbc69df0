"""Leases on sources, kept in JetStream key-value buckets: who captures what, fenced by revision.

Two buckets, replicated as the cluster allows (`replicas`):

- `<prefix>_workers` (`WORKERS`): one key per live worker, renewed every `lease_s / 3` seconds;
  the bucket's age limit (`lease_s`) removes the key of a worker that stopped renewing.
- `<prefix>_leases` (`LEASES`): one key per leased source, `{"worker": ID, "epoch": E}`, with the
  same age limit. A worker takes a free source with `create` (which fails if anyone holds it) and
  renews it with `update(last=revision)`, which fails once anyone else has written the key: a worker
  that paused past its lease finds out at its next renewal, and never writes over its successor.
  The **epoch** is the revision of the `create` that took the lease (a bucket's revisions only grow),
  kept through renewals, so everything a worker publishes can carry it and readers can drop what an
  older owner wrote.

Expiry leaves a marker in the stream (`limit_marker_ttl`), so watchers see a lease end. Every worker
computes the same plan (`assign.plan`) from the live workers and the current owners, releases what it
gives to others and takes what it gives to it (`LeaseBook.rebalance`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from pisa_pulse.fleet import LEASE_S, PREFIX
from pisa_pulse.fleet.assign import plan

log = logging.getLogger(__name__)

WORKERS = "workers"
LEASES = "leases"


@dataclass(frozen=True)
class Lease:
    """A source held by a worker: `epoch` fences what it publishes, `revision` its next renewal."""

    source: str
    worker: str
    epoch: int
    revision: int


def bucket_name(prefix: str, what: str) -> str:
    """The name of one of a deployment's buckets (`pisa_pulse_leases`)."""
    return f"{prefix}_{what}"


async def bucket(js: JetStreamContext, name: str, replicas: int, max_age_s: int) -> KeyValue:
    """The key-value bucket `name`, created with this configuration if it does not exist yet (an age
    limit of 0: none; otherwise expiry leaves a marker watchers see)."""
    try:
        return await js.key_value(name)
    except NotFoundError:
        pass
    age = max_age_s or None
    try:
        return await js.create_key_value(
            bucket=name, replicas=replicas, history=1, ttl=age, limit_marker_ttl=age
        )
    except BadRequestError:  # another worker created it meanwhile
        return await js.key_value(name)


async def bucket_keys(js: JetStreamContext, bucket: str, pattern: str = ">") -> list[str]:
    """The keys of bucket `bucket` matching `pattern` that have a message: a value, or a marker of a
    delete, purge or expiry (read them to tell). One request, from the stream's subject counts:
    nats-py's `kv.keys()` watches the bucket instead and, measured, now and then reports no keys at
    all (NoKeysError), which would make a worker think its leases gone."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + pattern)
    return sorted(subject.removeprefix(prefix) for subject in (info.state.subjects or {}))


def _decode(source: str, value: bytes | None, revision: int) -> Lease | None:
    if not value:
        return None
    body = json.loads(value)
    return Lease(source, body["worker"], int(body.get("epoch", revision)), revision)


class LeaseBook:
    """One worker's view of the leases, and its moves (see the module docstring)."""

    def __init__(
        self,
        workers: KeyValue,
        leases: KeyValue,
        worker: str,
        js: JetStreamContext,
        prefix: str = PREFIX,
    ) -> None:
        self.workers = workers
        self.leases = leases
        self.worker = worker
        self.js = js
        self.prefix = prefix
        self.held: dict[str, Lease] = {}
        self._alive_revision: int | None = None

    @classmethod
    async def open(
        cls, js: JetStreamContext, worker: str, replicas: int, lease_s: int = LEASE_S, prefix: str = PREFIX
    ) -> LeaseBook:
        """The buckets (created when missing) and an empty book for `worker`."""
        workers = await bucket(js, bucket_name(prefix, WORKERS), replicas, lease_s)
        leases = await bucket(js, bucket_name(prefix, LEASES), replicas, lease_s)
        return cls(workers, leases, worker, js, prefix)

    async def watch_ends(self, on_end: Callable[[], None]) -> None:
        """Call `on_end()` whenever a worker's key or a lease ends: deleted (a hand-over) or expired (a
        marker, operation PURGE), so the worker moves at once instead of at its next turn. Renewals,
        every worker's every few seconds, do not call it."""

        async def seen(msg: Msg) -> None:
            headers = msg.headers or {}
            if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers:
                on_end()

        for what in (WORKERS, LEASES):
            await self.js.subscribe(
                f"$KV.{bucket_name(self.prefix, what)}.>",
                cb=seen,
                ordered_consumer=True,
                idle_heartbeat=1.0,
                deliver_policy=api.DeliverPolicy.NEW,
            )

    async def heartbeat(self) -> None:
        """Say this worker is alive (its key in WORKERS, renewed)."""
        self._alive_revision = await self.workers.put(self.worker, b"{}")

    async def live_workers(self) -> set[str]:
        """The workers whose key has not expired."""
        live = set()
        for key in await bucket_keys(self.js, bucket_name(self.prefix, WORKERS)):
            with contextlib.suppress(KeyNotFoundError):
                if (await self.workers.get(key)).value:  # not an expiry marker
                    live.add(key)
        return live

    async def owners(self) -> dict[str, Lease]:
        """Every current lease, by source."""
        keys = await bucket_keys(self.js, bucket_name(self.prefix, LEASES))
        found = {}
        for key in keys:
            try:
                entry = await self.leases.get(key)
            except KeyNotFoundError:
                continue  # released or expired meanwhile
            lease = _decode(key, entry.value, entry.revision or 0)
            if lease is not None:
                found[key] = lease
        return found

    async def acquire(self, source: str) -> Lease | None:
        """Take `source` if nobody holds it (None: someone does)."""
        value = json.dumps({"worker": self.worker}).encode()
        try:
            revision = await self.leases.create(source, value)
        except KeyWrongLastSequenceError:
            # nats-py's create takes over a deleted key, not an expired one: the server leaves a
            # marker (no KV-Operation, an empty value) that it reads as a live value.
            try:
                entry = await self.leases.get(source)
            except KeyNotFoundError:
                return None  # deleted meanwhile: the next turn creates it
            if entry.value:
                return None
            try:
                revision = await self.leases.update(source, value, last=entry.revision)
            except KeyWrongLastSequenceError:
                return None
        lease = Lease(source, self.worker, revision, revision)
        self.held[source] = lease
        log.info("leased source=%s epoch=%d", source, lease.epoch)
        return lease

    async def renew(self, lease: Lease) -> Lease | None:
        """Extend `lease` (None, and no longer held, when another worker has written it since)."""
        value = json.dumps({"worker": self.worker, "epoch": lease.epoch}).encode()
        try:
            revision = await self.leases.update(lease.source, value, last=lease.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            self.held.pop(lease.source, None)
            log.warning("lost source=%s epoch=%d: it was taken over", lease.source, lease.epoch)
            return None
        renewed = Lease(lease.source, self.worker, lease.epoch, revision)
        self.held[lease.source] = renewed
        return renewed

    async def holds(self, source: str) -> bool:
        """Whether this worker holds `source`'s lease now, as NATS says (not as the book remembers)."""
        lease = self.held.get(source)
        if lease is None:
            return False
        try:
            entry = await self.leases.get(source)
        except KeyNotFoundError:
            return False
        current = _decode(source, entry.value, entry.revision or 0)
        return current is not None and current.worker == self.worker and current.epoch == lease.epoch

    async def renew_all(self) -> None:
        """Heartbeat and renew every lease held."""
        await self.heartbeat()
        for lease in list(self.held.values()):
            await self.renew(lease)

    async def release(self, source: str) -> None:
        """Give `source` up at once (a graceful hand-over): others may take it right away."""
        lease = self.held.pop(source, None)
        if lease is None:
            return
        try:
            await self.leases.delete(source, last=lease.revision)
            log.info("released source=%s epoch=%d", source, lease.epoch)
        except (BadRequestError, KeyWrongLastSequenceError):
            pass  # taken over already: nothing of ours to release

    async def leave(self) -> None:
        """Release every lease and the worker key (SIGTERM: hand everything over now)."""
        for source in list(self.held):
            await self.release(source)
        with contextlib.suppress(BadRequestError):
            await self.workers.delete(self.worker)

    async def rebalance(self, sources: Collection[str]) -> dict[str, str]:
        """One step towards the plan: release what it gives to others, take what it gives to this worker
        and nobody holds. Returns the plan (source -> worker)."""
        live = await self.live_workers() | {self.worker}
        owners = await self.owners()
        for source in set(self.held) - set(owners):  # expired under us: a pause past the lease
            self.held.pop(source)
        target = plan(sources, live, {s: lease.worker for s, lease in owners.items()})
        for source in sorted(self.held):
            if target.get(source) != self.worker:
                await self.release(source)
        for source, worker in sorted(target.items()):
            free = source not in owners or owners[source].worker not in live
            if worker == self.worker and source not in self.held and free:
                await self.acquire(source)
        return target
