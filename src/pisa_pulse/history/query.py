"""Charts as they were shown at a past minute, from the store (`GET /api/history/<chart>?at=`).

A minute's aggregates are the sums every source had at its end (store.py); chart 2's arrival
minutes come from the minutes written in its window. The chart is then built by the same code as
the live one, with its clock at the end of that minute: the body `/api/charts/<chart>` answered
then, for the same parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pisa_pulse.api import charts
from pisa_pulse.api.exceptions import BadRequest, NotFound
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.history.store import Store

# ISO 8601 to the minute or finer, with Z or an offset (none: UTC); also the OpenAPI document's pattern
AT_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$"


def parse_at(text: str | None) -> int:
    """The minute (since the Unix epoch) of an ISO 8601 time (UTC unless it names an offset):
    BadRequest when it is not written so, NotFound when it is but names no real moment (2026-02-31)."""
    if not text or not re.fullmatch(AT_PATTERN, text):
        shown = "at is missing" if not text else f"at={text[:40]!r} is not an ISO 8601 time"
        raise BadRequest(shown, "ask e.g. ?at=2026-12-02T12:00Z (UTC unless it names an offset)")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() // 60)
    except (ValueError, OverflowError):
        raise NotFound(
            f"at={text!r} names no moment in the calendar", "ask e.g. ?at=2026-12-02T12:00Z"
        ) from None


def aggregates_at(store: Store, minute: int, arrivals_from: int | None = None) -> Aggregates | None:
    """The aggregates the charts showed at the end of `minute` (None: not written), with the arrival
    minutes from `arrivals_from` on when asked (chart 2)."""
    sources = store.minute(minute)
    if not sources:
        return None
    arrivals = store.arrivals(arrivals_from, minute) if arrivals_from is not None else {}
    merged = Aggregates()
    for countries in sources.values():  # stored totals carry no arrival minutes
        merged.merge(Aggregates.from_totals({code: entry.totals for code, entry in countries.items()}))
    if not arrivals:
        return merged
    totals = {code: merged.totals(code) for code in merged.country_codes()}
    return Aggregates.from_totals(
        {code: replace(t, minutes=arrivals.get(code, {})) for code, t in totals.items()}
    )


def chart_at(store: Store, chart: charts.Chart, minute: int, params: Mapping[str, str]) -> dict[str, Any]:
    """`chart`'s body as shown at the end of `minute`; NotFound when the store has no such minute."""
    now = (minute + 1) * 60.0 - 0.001  # the last instant of that minute: the live chart's clock then
    query = charts.parse_query(chart, params, now)
    first = None
    if "bucket" in chart.parameters:
        width = 60 if query.bucket == "minute" else 3600
        first = int((now - query.points * width) // 60)
    agg = aggregates_at(store, minute, first)
    if agg is None:
        when = datetime.fromtimestamp(minute * 60, UTC).isoformat(timespec="minutes")
        raise NotFound(
            f"the history holds no minute {when}",
            "ask for a minute since the history started and within history.retention_days",
        )
    return chart.build(agg, query)
