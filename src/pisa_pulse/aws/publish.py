"""`serve` publishing its aggregates to DynamoDB (`[publish] to = "dynamodb://TABLE"`), and the
publishing of every target (`publish_every`; S3's publisher is bucket.py's).

Every `interval` seconds, if the snapshot or its as-of time moved, the items whose value changed are
written (the touched hours first, then `sums`, so a reader never sees sums listing an hour not yet
written), and the hours that no longer hold rows or fell out of the longest chart window are
deleted: at most `1 + hours touched` writes per interval whatever the change rate (at 1,000
changes/s, the current hour and the sums: 2 per interval; idle, the sums alone, with its as-of).
Every write is conditional on the version (table.py); a refused one is counted, logged, and not
remembered, so the next round tries again with newer data.
Credentials, region and endpoint come from the standard AWS chain (environment, profile, instance
role; `AWS_ENDPOINT_URL` for a local endpoint), never from our settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pisa_pulse.api.bodies import Snapshot
from pisa_pulse.api.charts import MAX_HOURS
from pisa_pulse.aws import table

log = logging.getLogger(__name__)

KEEP_HOURS = MAX_HOURS + 1  # the longest window, and the hour it starts in


class Counted:
    """A publish target's publisher: `publish` writes what changed of a snapshot; its version and
    counters, and what /api/status and /metrics say of them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.version = 0  # the last version written
        self.writes = self.deletes = self.refused = 0
        self.active = False  # whether the last round published (API replicas: one at a time)

    def publish(self, snap: Snapshot) -> None:
        raise NotImplementedError

    def holds(self, snap: Snapshot) -> bool:
        """Whether the target holds `snap`'s data already, its as-of time aside (a batch run with no
        new commits then writes nothing); False where that cannot be told."""
        return False

    def status(self) -> dict[str, Any]:
        return {
            "to": self.url,
            "active": self.active,
            "version": self.version,
            "writes": self.writes,
            "deletes": self.deletes,
            "refused": self.refused,
        }


class DynamoPublisher(Counted):
    """Writes a snapshot's items to one table (see the module docstring)."""

    def __init__(self, name: str, client: Any = None, clock: Callable[[], float] = time.time) -> None:
        if client is None:
            import boto3  # here: only a publishing serve needs it

            client = boto3.client("dynamodb")
        super().__init__(f"dynamodb://{name}")
        self.name, self.client, self.clock = name, client, clock
        self.published: tuple[int, float] = (-1, 0.0)  # the snapshot version and as_of last published
        self.written: dict[str, bytes] = {}  # key -> the value last written (or found by `seed`)
        self.seeded = False
        self.held_as_of = 0.0  # the as-of time of the sums `seed` found

    def seed(self) -> None:
        """Take what the table holds as written (at the first publication: a restart, a batch run),
        so that only what differs is written. Not its versions: ours come from our data's as-of time,
        so that a publisher with older data stays refused."""
        for page in self.client.get_paginator("scan").paginate(TableName=self.name, ConsistentRead=True):
            for item in page.get("Items", []):
                self.written[item["key"]["S"]] = bytes(item["value"]["B"])
                if "as_of" in item:
                    self.held_as_of = float(item["as_of"]["N"])
        self.seeded = True

    def _items(self, snap: Snapshot, as_of: float) -> list[table.Item]:
        hour = int(self.clock() // 3600)
        return table.items_of(snap.aggregates, as_of, range(hour - KEEP_HOURS, hour + 2))

    def holds(self, snap: Snapshot) -> bool:
        if not self.seeded:
            self.seed()
        items = self._items(snap, self.held_as_of)
        return {item.key: item.value for item in items} == self.written

    def publish(self, snap: Snapshot) -> None:
        """Write what changed since the last call: nothing if the snapshot did not, the sums alone when
        only its as_of moved (an idle source stays provably fresh, for /api/health)."""
        if (snap.version, snap.as_of) == self.published:
            return
        if not self.seeded:
            self.seed()
        items = self._items(snap, snap.as_of)
        version = max(int(snap.as_of * 1_000_000), self.version + 1)
        keys = {item.key for item in items}
        refused = 0
        for item in items:
            if self.written.get(item.key) != item.value:
                refused += not self._put(item, version)
        for key in sorted(set(self.written) - keys):
            refused += not self._delete(key, version)
        self.version = version
        if not refused:
            self.published = (snap.version, snap.as_of)

    def _put(self, item: table.Item, version: int) -> bool:
        fields: dict[str, Any] = {
            "key": {"S": item.key},
            "value": {"B": item.value},
            "version": {"N": str(version)},
        }
        if item.as_of is not None:
            fields["as_of"] = {"N": repr(item.as_of)}
        if self._written(
            lambda: self.client.put_item(TableName=self.name, Item=fields, **table.put_condition(version))
        ):
            self.written[item.key] = item.value
            self.writes += 1
            return True
        return False

    def _delete(self, key: str, version: int) -> bool:
        if self._written(
            lambda: self.client.delete_item(
                TableName=self.name, Key={"key": {"S": key}}, **table.put_condition(version)
            )
        ):
            del self.written[key]
            self.deletes += 1
            return True
        return False

    def _written(self, write: Callable[[], Any]) -> bool:
        """Run one conditional write; False when DynamoDB refused it (a newer version is there)."""
        from botocore.exceptions import ClientError

        try:
            write()
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            self.refused += 1
            log.info("table %s holds a newer version: a write was refused", self.name)
            return False


def publisher_of(url: str) -> Counted:
    """The publisher of one `publish.to` target (checked by the settings already)."""
    if url.startswith("s3://"):
        from pisa_pulse.aws.bucket import BucketPublisher

        return BucketPublisher(url)
    return DynamoPublisher(table.table_of(url))


async def publish_every(
    publishers: Sequence[Counted],
    snapshot: Callable[[], Snapshot],
    interval: float,
    may_publish: Callable[[], Awaitable[bool]],
) -> None:
    """Publish to every target every `interval` seconds until cancelled, in the rounds `may_publish()`
    allows (an API replica: while it holds the publisher lease; fleet/replica.py): the snapshot
    taken on the loop, the writes in a thread; a failure (the network, the table, the bucket, the
    lease) logged and tried again at the next round, the other targets served meanwhile."""
    while True:
        await asyncio.sleep(interval)
        try:
            active = await may_publish()
        except Exception as exc:  # any failure: said, then tried again
            log.warning("cannot tell whether to publish (%s); trying again", exc)
            active = False
        for publisher in publishers:
            publisher.active = active
        if not active:
            continue
        snap = snapshot()
        for publisher in publishers:
            try:
                await asyncio.to_thread(publisher.publish, snap)
            except Exception as exc:  # any failure: said, then tried again
                log.warning("publishing to %s failed (%s); trying again", publisher.url, exc)
