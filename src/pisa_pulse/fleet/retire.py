"""Sources removed from the settings: their slot dropped and their state on NATS deleted.

A worker that captures a source records where it lives (`record`: its DSN, without password, its
capture mode and slot) in the snapshots object store, as object `<source>.source`. Every
`RETIRE_EVERY_S` each worker looks for published sources its settings do not list (`removed`); for
each that no worker holds a lease on (a worker still running with older settings keeps it: change
the settings on every worker), it takes the lease, so nobody starts it meanwhile, and `retire`s
it: the slot dropped (its walsender ended), the parts, status, checkpoint log and snapshot deleted;
then it lets the lease go. The DSN carries no password: the drop connects as the worker's own
PostgreSQL client would (a pgpass file, as `sources up` writes, or `PGPASSWORD`). A slot that cannot
be dropped is logged with the statement to run by hand, and tried again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from nats.js.errors import KeyNotFoundError, NotFoundError, ObjectNotFoundError

from pisa_pulse.capture.contract import Mode
from pisa_pulse.fleet import checkpoints
from pisa_pulse.fleet.leases import LeaseBook, bucket_keys, bucket_name
from pisa_pulse.fleet.parts import PARTS
from pisa_pulse.fleet.stores import Stores
from pisa_pulse.sources.config import Source

log = logging.getLogger(__name__)

RETIRE_EVERY_S = 30.0


def _object(source: str) -> str:
    return f"{source}.source"


async def record(stores: Stores, source: Source, slot: str) -> None:
    """Note where `source` lives, for the worker that may one day retire it."""
    body = {"dsn": source.dsn, "mode": str(source.mode), "slot": slot}
    await stores.objects.put(_object(source.name), json.dumps(body).encode())


async def removed(stores: Stores, configured: set[str]) -> set[str]:
    """Sources published on NATS that `configured` does not list."""
    found = set()
    for key in await bucket_keys(stores.js, bucket_name(stores.prefix, PARTS), "sums.*"):
        name = key.split(".", 1)[1]
        if name not in configured:
            with contextlib.suppress(KeyNotFoundError):  # purged: retired already
                await stores.parts.get(key)
                found.add(name)
    return found


async def retire(stores: Stores, book: LeaseBook, name: str) -> bool:
    """Retire `name` if nobody holds it (see the module docstring); True once done."""
    if await book.acquire(name) is None:
        return False  # a worker with older settings still captures it
    try:
        try:
            found = json.loads((await stores.objects.get(_object(name))).data or b"{}")
        except ObjectNotFoundError:
            found = {}
        replicated = found.get("slot") and found.get("mode") != str(Mode.POLL)
        if replicated and not await asyncio.to_thread(_drop_slot, found["dsn"], found["slot"]):
            return False
        bucket = bucket_name(stores.prefix, PARTS)
        keys = [
            *await bucket_keys(stores.js, bucket, f"*.{name}"),
            *await bucket_keys(stores.js, bucket, f"minutes.{name}.*"),
        ]
        for key in keys:
            await stores.parts.purge(key)
        with contextlib.suppress(NotFoundError):
            await stores.js.purge_stream(
                f"{stores.prefix}_{checkpoints.CHECKPOINTS}", subject=checkpoints.subject(stores.prefix, name)
            )
        for obj in (name, _object(name)):
            with contextlib.suppress(ObjectNotFoundError, NotFoundError):
                await stores.objects.delete(obj)
        log.info("retired source=%s (removed from the settings): slot dropped, state deleted", name)
        return True
    finally:
        await book.release(name)


def _drop_slot(dsn: str, slot: str) -> bool:
    from pisa_pulse.capture import replication  # the database driver: only when a slot is dropped
    from pisa_pulse.sources.databases import connected

    try:
        with connected(dsn) as conn:
            replication.drop_slot(conn, slot)
        return True
    except Exception as exc:  # any failure: said with the way out, and tried again next time
        log.warning(
            "cannot drop slot %s of a removed source (%s): run SELECT pg_drop_replication_slot('%s') on it",
            slot,
            exc,
            slot,
        )
        return False
