"""Where a worker writes on NATS: the parts bucket, and the checkpoints' log stream and snapshots."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from pisa_pulse.fleet import PREFIX, checkpoints
from pisa_pulse.fleet.bus import parts_bucket


@dataclass(frozen=True)
class Stores:
    """Where a worker writes on NATS: the parts bucket, the checkpoints' log and snapshots."""

    js: JetStreamContext
    parts: KeyValue
    objects: ObjectStore
    prefix: str = PREFIX

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int, prefix: str = PREFIX) -> Stores:
        """Every bucket and stream, created with `replicas` copies when missing."""
        kv = await parts_bucket(js, replicas, prefix)
        return cls(js, kv, await checkpoints.open_stores(js, replicas, prefix), prefix)
