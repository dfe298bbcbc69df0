"""The DynamoDB table the charts are served from: what an item holds, written and read back.

One item per key (partition key `key`, a string), in the shapes of the fleet's parts (fleet/parts.py):

- `sums`: every country's sums and the hours that hold rows (`parts.sums_value`), with the data's
  `as_of` (Unix seconds) and the `version`;
- `minutes.<hour>`: every country's rows per arrival minute within that hour (`parts.hour_value`).

Every item carries a `version`, a number that only grows: the data's as-of time in microseconds, or
one more than the last version written when that has not moved. Every write is conditional on the
stored version being lower, so a publisher that paused and woke up with older data (or a batch run
of an older snapshot) can never roll the table back: DynamoDB refuses the write, and it is counted.
Hours that no longer hold rows, or that fell out of the longest window a chart shows, are deleted.

Publishing aggregates rather than chart bodies keeps every `?countries=` set and every `?hours=`
window exact (the handler renders them with `serve`'s own code) at the cost of a render per
container and snapshot; a body is at most a few kilobytes to render from them. Items stay small:
`sums` about 10 KB for 79 countries, an hour's minutes at most 60 per country.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.fleet import parts

SUMS = "sums"
TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
KEY_SCHEMA = [{"AttributeName": "key", "KeyType": "HASH"}]
ATTRIBUTES = [{"AttributeName": "key", "AttributeType": "S"}]


def table_of(url: str) -> str:
    """The table name of `dynamodb://TABLE`, checked."""
    scheme, _, name = url.partition("://")
    if scheme != "dynamodb" or not TABLE_NAME.fullmatch(name):
        raise PisaPulseError(
            f"publish.to {url!r} is not dynamodb://TABLE",
            "write it as dynamodb://pisa-pulse-charts (3 to 255 letters, digits, '_', '-' or '.')",
        )
    return name


def hour_key(hour: int) -> str:
    return f"minutes.{hour}"


@dataclass(frozen=True)
class Item:
    """One item to write: its key, value (JSON bytes) and the data's as-of time (sums only)."""

    key: str
    value: bytes
    as_of: float | None = None


def items_of(agg: Aggregates, as_of: float, keep_hours: Iterable[int]) -> list[Item]:
    """The items of `agg`: its sums, and the minutes of the hours in `keep_hours` that hold rows."""
    by_hour: dict[int, dict[int, dict[int, int]]] = {}
    wanted = set(keep_hours)
    for country, minutes in agg.export_minutes().items():
        for minute, count in minutes.items():
            hour = -1 if minute == -1 else minute // 60
            if hour in wanted:
                by_hour.setdefault(hour, {}).setdefault(country, {})[minute] = count
    found = [Item(hour_key(h), parts.hour_value(0, m)) for h, m in sorted(by_hour.items())]
    return [*found, Item(SUMS, parts.sums_value(0, as_of, None, agg), as_of)]


def put_condition(version: int) -> dict[str, Any]:
    """The condition of every write: the stored version is lower (or there is none)."""
    return {
        "ConditionExpression": "attribute_not_exists(#k) OR #v < :v",
        "ExpressionAttributeNames": {"#k": "key", "#v": "version"},
        "ExpressionAttributeValues": {":v": {"N": str(version)}},
    }


def aggregates_of(items: Iterable[dict[str, Any]]) -> tuple[Aggregates, float, int]:
    """The aggregates, as-of time and version that items read back hold (low-level DynamoDB items):
    the sums, and the minutes of the hours read that the sums still list."""
    view = parts.SourceView()
    version, as_of = 0, 0.0
    for item in items:
        key = item["key"]["S"]
        view.take("sums._" if key == SUMS else f"minutes._.{key.split('.', 1)[1]}", item["value"]["B"])
        if key == SUMS:
            version, as_of = int(item["version"]["N"]), view.as_of
    return view.aggregates(), as_of, version
