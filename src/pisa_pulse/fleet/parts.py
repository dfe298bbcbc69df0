"""What a worker publishes of a source, and how a replica puts it back together.

Each source is published as values of JetStream key-value keys (bucket `<prefix>_parts`), each the state of
its piece, never a delta, so that a reader needs only the latest value of each key and a repeat
changes nothing:

- `sums.<source>`: every country's sums (`Aggregates.export`), the source position they reflect, the
  Unix time up to which its changes are in (`as_of`), the hours that hold rows (a reader uses only
  those hours' keys: after a fresh copy, hours the new owner no longer has drop out at once) and the
  part's horizon (the arrival minutes before it are forgotten, so a reader cuts the edge hour alike);
- `minutes.<source>.<hour>`: every country's rows per arrival minute within that hour (hours since the
  epoch; `-1` for the rows of the initial copy). Only the hours a batch touched are written, so the
  bytes follow the changes, not the days of history; an hour that no longer holds rows (the window of
  arrival minutes kept in memory moved past it, `Aggregates.keep_window`) is deleted.
- `status.<source>`: the source's capture status as `serve` reports it (state, lag, rows, invalid
  values), with the worker that holds it, about once a second.

Every value carries the schema version (`SCHEMA`; a reader refuses a newer one, so workers and
replicas upgrade one by one: replicas first) and the epoch of the lease it was written under
(`leases.Lease.epoch`). A reader keeps, per source, only values of the highest epoch it has seen: a
worker that paused past its lease and wrote on waking cannot take a source back from its successor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pisa_pulse.engine.aggregates import Aggregates, Exported
from pisa_pulse.errors import PisaPulseError

PARTS = "parts"
SCHEMA = 1


def sums_key(source: str) -> str:
    return f"sums.{source}"


def hour_key(source: str, hour: int) -> str:
    return f"minutes.{source}.{hour}"


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps({"schema": SCHEMA, **body}, separators=(",", ":")).encode()


def sums_value(
    epoch: int, as_of: float, position: str | None, part: Aggregates, hours: Iterable[int] | None = None
) -> bytes:
    """The value of `sums.<source>`: the countries' sums of `part` and the hours that hold rows
    (`part.hourly()`, unless the caller has them)."""
    countries = {str(c): sums for c, (sums, _) in part.export_sums().items()}
    listed = sorted(part.hourly() if hours is None else hours)
    return _encode(
        {
            "epoch": epoch,
            "as_of": as_of,
            "position": position,
            "hours": listed,
            "horizon": part.horizon,
            "countries": countries,
        }
    )


def status_key(source: str) -> str:
    return f"status.{source}"


def status_value(epoch: int, worker: str, status: dict[str, Any]) -> bytes:
    """The value of `status.<source>`: its capture status and the worker that reports it."""
    return _encode({"epoch": epoch, "worker": worker, "status": status})


def hour_value(epoch: int, minutes: dict[int, dict[int, int]]) -> bytes:
    """The value of `minutes.<source>.<hour>`: `Aggregates.minutes_of_hour` of that hour."""
    countries = {str(c): {str(m): n for m, n in counts.items()} for c, counts in minutes.items()}
    return _encode({"epoch": epoch, "countries": countries})


def hours_to_write(part: Aggregates, exported: Exported, full: bool) -> set[int]:
    """The hours whose minutes to write: every hour of `part` that holds rows when `full`, else those
    an export (not `full`) names as touched."""
    if full:
        return set(part.hourly())
    return {-1 if minute == -1 else minute // 60 for _, minutes in exported.values() for minute in minutes}


def decode(key: str, value: bytes) -> dict[str, Any]:
    """A published value, checked for its schema version."""
    body: dict[str, Any] = json.loads(value)
    if body.get("schema", 0) > SCHEMA:
        raise PisaPulseError(
            f"{key} was published with schema {body.get('schema')}, newer than this version's {SCHEMA}",
            "upgrade this process (replicas before workers)",
        )
    return body


@dataclass
class SourceView:
    """A replica's view of one source: the latest values of its keys, of its highest epoch."""

    epoch: int = -1
    as_of: float = 0.0
    position: str | None = None
    sums: dict[int, list[int]] = field(default_factory=dict)
    listed: frozenset[int] = frozenset()  # the hours that hold rows, as the sums value says
    horizon: int = 0  # the worker's `Aggregates.horizon`: its arrival minutes before it are forgotten
    hours: dict[int, dict[int, dict[int, int]]] = field(default_factory=dict)  # hour -> country -> minutes
    status: dict[str, Any] = field(default_factory=dict)  # the capture status, with its worker
    _built: Aggregates | None = field(default=None, repr=False)  # `aggregates()` until a value changes it

    def take(self, key: str, value: bytes) -> bool:
        """Apply one key's new value; False when it comes from an older epoch (and is dropped)."""
        body = decode(key, value)
        epoch = int(body["epoch"])
        if epoch < self.epoch:
            return False
        if epoch > self.epoch:  # a new owner: what an older one wrote is superseded key by key
            self.epoch = epoch
        if key.startswith("status."):
            self.status = {**body["status"], "worker": body["worker"], "epoch": epoch}
            return True
        self._built = None
        countries = body["countries"]
        if key.startswith("sums."):
            self.as_of, self.position = float(body["as_of"]), body["position"]
            self.listed = frozenset(body["hours"])
            self.horizon = int(body.get("horizon", 0))
            self.sums = {int(c): list(sums) for c, sums in countries.items()}
            for gone in self.hours.keys() - self.listed:  # hours the worker no longer holds (its
                del self.hours[gone]  # window of arrival minutes moved on, or it copied afresh)
        else:
            hour = int(key.rsplit(".", 1)[1])
            self.hours[hour] = {
                int(c): {int(m): n for m, n in counts.items()} for c, counts in countries.items()
            }
        return True

    def drop_hour(self, hour: int) -> None:
        """A deleted hour's minutes."""
        self.hours.pop(hour, None)
        self._built = None

    def aggregates(self) -> Aggregates:
        """This source's part, as the worker holds it (built once per change: read, never modify it)."""
        if self._built is None:
            self._built = self._build()
        return self._built

    def _build(self) -> Aggregates:
        minutes: dict[int, dict[int, int]] = {c: {} for c in self.sums}
        for hour in self.listed & self.hours.keys():
            for country, counts in self.hours[hour].items():
                if country in minutes:
                    minutes[country].update(counts)
        part = Aggregates()
        part.forget_before(self.horizon)  # the hour at the edge of the worker's window, cut alike
        part.absorb({c: (sums, minutes[c]) for c, sums in self.sums.items()}, full=True)
        return part
