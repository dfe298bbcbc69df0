"""Chart answers without a web framework: the snapshot they come from, compact JSON, the ETag, the
data headers, the cache of serialized bodies and the Host header's name. `serve`'s handlers
(handlers.py, guard.py) and the Lambda handler (aws/handler.py) answer through these, so the same
snapshot gives the same bytes and ETags everywhere. Imports neither starlette, numpy nor psycopg2.

Every chart body says which snapshot it comes from and how old its data is:

    ETag: "<hash of the body>"    X-Snapshot-Version: 1234
    X-Data-As-Of: 2026-11-28T12:00:00.120Z    X-Data-Age-Ms: 35
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pisa_pulse.api import charts
from pisa_pulse.engine.aggregates import Aggregates

DATA_HEADERS = ("ETag", "X-Snapshot-Version", "X-Data-As-Of", "X-Data-Age-Ms")
CACHE_ENTRIES = 4096  # distinct (chart, countries, window) shapes kept per snapshot


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the aggregates."""

    version: int
    aggregates: Aggregates
    as_of: float  # Unix time up to which every source's changes are in (0: not yet known)


def json_bytes(body: Any) -> bytes:
    """`body` as compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(status: int, message: str) -> bytes:
    """The one error shape: `{"error": {"status": 400, "message": "..."}}`."""
    return json_bytes({"error": {"status": status, "message": message}})


def iso_time(unix: float) -> str:
    """Unix seconds as an ISO 8601 UTC time to the millisecond (`2026-11-28T12:00:00.120Z`)."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age_ms(snap: Snapshot, now: float) -> int | None:
    """How old the snapshot's data is at Unix time `now`, in ms (None: not known yet)."""
    return max(0, round((now - snap.as_of) * 1000)) if snap.as_of else None


def data_headers(snap: Snapshot, etag: str, now: float) -> dict[str, str]:
    """The headers of a chart answer (a 200 or a 304): its ETag, snapshot and freshness."""
    known = bool(snap.as_of)
    return {
        "ETag": etag,
        "X-Snapshot-Version": str(snap.version),
        "X-Data-As-Of": iso_time(snap.as_of) if known else "unknown",
        "X-Data-Age-Ms": str(age_ms(snap, now)) if known else "unknown",
        "Cache-Control": "no-cache",
    }


class HeaderCache:
    """A chart answer's headers as raw (name, value) pairs: all but the age built once per snapshot
    version, as-of time and ETag (the age changes with every request)."""

    def __init__(self) -> None:
        self.at: tuple[int, float] = (-1, 0.0)
        self.fixed: dict[str, list[tuple[bytes, bytes]]] = {}

    def headers(self, snap: Snapshot, etag: str, now: float) -> list[tuple[bytes, bytes]]:
        if (snap.version, snap.as_of) != self.at:
            self.at, self.fixed = (snap.version, snap.as_of), {}
        fixed = self.fixed.get(etag)
        if fixed is None:
            built = data_headers(snap, etag, now)
            del built["X-Data-Age-Ms"]
            fixed = self.fixed[etag] = [(k.lower().encode(), v.encode("latin-1")) for k, v in built.items()]
        age = age_ms(snap, now)
        return [*fixed, (b"x-data-age-ms", b"unknown" if age is None else str(age).encode())]


class QueryCache:
    """Parsed chart queries by chart and raw query string, so that a poll parses nothing; a query that
    does not parse (BadRequest) is not kept. A chart 2 query gets the `now` of each request; the
    others do not read it."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, bytes, int], charts.Query] = {}

    def parse(
        self,
        chart: charts.Chart,
        raw: bytes,
        params: Callable[[], Mapping[str, str]],
        now: float,
        longest: int,
    ) -> charts.Query:
        key = (chart.name, raw, longest)
        found = self.entries.get(key)
        if found is None:
            found = charts.parse_query(chart, params(), now, longest)
            if len(self.entries) >= CACHE_ENTRIES:
                self.entries.clear()
            self.entries[key] = found
        return dataclasses.replace(found, now=now) if "bucket" in chart.parameters else found


def not_modified(etag: str, if_none_match: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (or `*`)."""
    sent = {tag.strip() for tag in if_none_match.split(",")}
    return etag in sent or "*" in sent


class ChartCache:
    """Serialized chart bodies of the current snapshot version, with their ETags."""

    def __init__(self) -> None:
        self.version = -1
        self.entries: OrderedDict[tuple[Any, ...], tuple[bytes, str]] = OrderedDict()

    def get(
        self, snap: Snapshot, key: tuple[Any, ...], build: Callable[[], dict[str, Any]]
    ) -> tuple[bytes, str]:
        """The body and ETag of `key` in `snap`, built on first use."""
        if snap.version != self.version:
            self.entries = OrderedDict()
            self.version = snap.version
        found = self.entries.get(key)
        if found is None:
            body = json_bytes(build())
            found = (body, f'"{zlib.crc32(body):08x}{len(body):x}"')
            self.entries[key] = found
            if len(self.entries) > CACHE_ENTRIES:
                self.entries.popitem(last=False)
        return found

    def chart(self, snap: Snapshot, chart: charts.Chart, query: charts.Query) -> tuple[bytes, str]:
        """One chart's body and ETag for a parsed query. Chart 2 changes with the clock: its window's
        last hour (or minute) is part of the key."""
        width = 3600 if query.bucket == "hour" else 60
        slot = int(query.now // width) if "bucket" in chart.parameters else 0
        key = (chart.name, query.countries, query.points, query.bucket, slot)
        return self.get(snap, key, lambda: chart.build(snap.aggregates, query))


def host_name(header: str) -> str:
    """The name in a Host header, without its port or an IPv6 address's brackets, lower-case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
