"""Charts as they were shown at past minutes, from the store (`GET /api/history/<chart>`).

`?at=` asks one minute: the aggregates then are, per source, the sums it had at the end of its
newest minute at or before it (as of: a batch run writes only the sources that changed), answerable
between the store's first and last minute; chart 2's arrival minutes come from the minutes written
in its window. The chart is then built by the same code as the live one, with its clock at the end
of that minute: the body `/api/charts/<chart>` answered then, for the same parameters.

`?from=&to=&step=` asks a series: the same answer at each minute from, from + step, ... <= to, one
dataset per country (or one for the count and for chart 2's arrivals), read in one statement that
sums over sources in the store (each source's newest minute per step, less the one before), summed
forward point by point here and built by the chart's own code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pisa_pulse.api import charts
from pisa_pulse.api.exceptions import BadRequest, NotFound
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.history.store import CountryMinute, Store, totals_of

# ISO 8601 to the minute or finer, with Z or an offset (none: UTC); also the OpenAPI document's pattern
AT_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$"
# A series' step: n minutes, hours or days (the OpenAPI document's pattern too)
STEP_PATTERN = r"^[1-9][0-9]*[mhd]$"
MINUTE_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}Z$"  # how a series' body writes its times
DEFAULT_STEP = "1h"
MAX_POINTS = 7 * 24 * 60  # a week of minutes per request
_STEP_MINUTES = {"m": 1, "h": 60, "d": 1440}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EITHER = "ask either ?at=TIME for one minute, or ?from=TIME&to=TIME[&step=1h] for a series"


def parse_at(text: str | None, name: str = "at") -> int:
    """The minute (since the Unix epoch) of an ISO 8601 time (UTC unless it names an offset), given as
    parameter `name`: BadRequest when it is not written so, NotFound when it is but names no real
    moment (2026-02-31, or one outside the years 1 to 9999 in UTC)."""
    example = f"?{name}=2026-12-02T12:00Z"
    if not text or not re.fullmatch(AT_PATTERN, text):
        shown = f"{name} is missing" if not text else f"{name}={text[:40]!r} is not an ISO 8601 time"
        raise BadRequest(shown, f"ask e.g. {example} (UTC unless it names an offset)")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.astimezone(UTC).timestamp() // 60)
    except (ValueError, OverflowError):
        raise NotFound(f"{name}={text!r} names no moment in the calendar", f"ask e.g. {example}") from None


def iso_minute(minute: int) -> str:
    """A minute since the epoch as the series write it: 2026-12-02T10:00Z."""
    return (_EPOCH + timedelta(minutes=minute)).isoformat(timespec="minutes").replace("+00:00", "Z")


def parse_step(text: str | None) -> int:
    """`?step=`: n minutes (`15m`), hours (`1h`, the default) or days (`1d`), in minutes; BadRequest."""
    text = DEFAULT_STEP if text is None else text
    if not re.fullmatch(STEP_PATTERN, text):
        raise BadRequest(
            f"step={text[:40]!r} is not a number of minutes, hours or days",
            "ask e.g. step=15m, step=1h or step=1d",
        )
    return int(text[:-1]) * _STEP_MINUTES[text[-1]]


@dataclass(frozen=True)
class SeriesRange:
    """What `?from=&to=&step=` asks: the minutes first, first + step, ... up to last."""

    first: int
    last: int
    step: int  # in minutes
    step_text: str  # as asked (echoed in the body)

    def points_within(self, span: tuple[int, int] | None) -> range:
        """The points that lie within the store's span (its first and last minute): the answerable ones."""
        if span is None:
            return range(0)
        low = max(self.first, span[0])
        high = min(self.last, span[1])
        first_k = -((self.first - low) // self.step)  # ceil((low - first) / step)
        return range(self.first + first_k * self.step, high + 1, self.step)


def parse_asked(params: Mapping[str, str]) -> int | SeriesRange:
    """What a history request asks: one minute (`at`), or a series (`from` and `to`, `step`); BadRequest
    when it gives both or neither, a `to` before its `from`, or more than MAX_POINTS points."""
    step = parse_step(params.get("step"))  # checked even beside `at`: a bad one is never taken silently
    if "at" in params:
        if "from" in params or "to" in params:
            raise BadRequest("at and from/to are both given", _EITHER)
        return parse_at(params.get("at"))
    if "from" not in params or "to" not in params:
        raise BadRequest("at is missing, and from and to are not both given", _EITHER)
    first, last = parse_at(params.get("from"), "from"), parse_at(params.get("to"), "to")
    if last < first:
        raise BadRequest(
            f"to={iso_minute(last)} is before from={iso_minute(first)}", "ask a to at or after from"
        )
    step_text = params.get("step") or DEFAULT_STEP
    points = (last - first) // step + 1
    if points > MAX_POINTS:
        raise BadRequest(
            f"from {iso_minute(first)} to {iso_minute(last)} every {step_text} is {points:,} points, "
            f"more than the {MAX_POINTS:,} a request may ask",
            "ask a larger step or a shorter range",
        )
    return SeriesRange(first, last, step, step_text)


def merged(sources: Sequence[Aggregates]) -> Aggregates:
    """The sum of every source's aggregates."""
    result = Aggregates()
    for part in sources:
        result.merge(part)
    return result


def part_of(countries: Mapping[str, CountryMinute]) -> Aggregates:
    """One source's stored countries as aggregates (stored totals carry no arrival minutes)."""
    return Aggregates.from_totals({code: entry.totals for code, entry in countries.items()})


def aggregates_at(store: Store, minute: int, arrivals_from: int | None = None) -> Aggregates | None:
    """The aggregates the charts showed at the end of `minute`, as of it (None: outside the store's
    span), with the arrival minutes from `arrivals_from` on when asked (chart 2)."""
    span = store.span()
    if span is None or not span[0] <= minute <= span[1]:
        return None
    agg = merged([part_of(countries) for countries in store.as_of(minute).values()])
    arrivals = store.arrivals(arrivals_from, minute) if arrivals_from is not None else {}
    if not arrivals:
        return agg
    totals = {code: agg.totals(code) for code in agg.country_codes()}
    return Aggregates.from_totals(
        {code: replace(t, minutes=arrivals.get(code, {})) for code, t in totals.items()}
    )


def end_of(minute: int) -> float:
    """The last instant of `minute`: the live chart's clock then."""
    return (minute + 1) * 60.0 - 0.001


def not_held(what: str) -> NotFound:
    """The 404 of a minute (or series) the store cannot answer."""
    return NotFound(
        f"the history holds no {what}",
        "ask for a minute since the history started and within history.retention_days",
    )


def chart_at(store: Store, chart: charts.Chart, minute: int, params: Mapping[str, str]) -> dict[str, Any]:
    """`chart`'s body as shown at the end of `minute`; NotFound when the store cannot answer it."""
    now = end_of(minute)
    query = charts.parse_query(chart, params, now)
    first = None
    if "bucket" in chart.parameters:
        width = 60 if query.bucket == "minute" else 3600
        first = int((now - query.points * width) // 60)
    agg = aggregates_at(store, minute, first)
    if agg is None:
        raise not_held(f"minute {iso_minute(minute)}")
    return chart.build(agg, query)


def series(
    store: Store, chart: charts.Chart, asked: SeriesRange, params: Mapping[str, str]
) -> dict[str, Any]:
    """`chart` at every point of `asked` the store can answer (the others left out): the body of
    `?from=&to=&step=`; NotFound when it can answer none."""
    query = charts.parse_query(chart, params, end_of(asked.first))  # the same 400s as ?at=
    span = store.span()
    points = asked.points_within(span)
    if span is None or not points:
        raise not_held(f"minute from {iso_minute(asked.first)} to {iso_minute(asked.last)}")
    if "bucket" in chart.parameters:
        counts = arrivals_per_point(store, points, span[0])
        datasets = [{"id": "Submissions", "data": [{"at": iso_minute(p), "count": n} for p, n in counts]}]
    else:
        datasets = chart_datasets(chart, query, states(store, points))
    return {
        "from": iso_minute(asked.first),
        "to": iso_minute(asked.last),
        "step": asked.step_text,
        "datasets": datasets,
    }


def states(store: Store, points: range) -> Iterator[tuple[int, Aggregates | None]]:
    """Each point and the aggregates as of its end (None: the same as the point before), from the
    store's changes per point (`Store.series_changes`), summed forward."""
    step = points.step if len(points) > 1 else 1  # one point: no step to take (nor to overflow with)
    changes = iter(store.series_changes(points[0], points[-1], step))
    totals: dict[str, list[int]] = {}
    change = next(changes, None)
    for point in points:
        changed = point == points[0]
        while change is not None and change[0] <= point:
            _, country, delta = change
            if any(delta):
                held = totals.get(country) or [0] * len(delta)
                totals[country] = [a + b for a, b in zip(held, delta, strict=True)]
                changed = True
            change = next(changes, None)
        if changed:  # countries without rows are not there, as in `as_of`
            yield (
                point,
                Aggregates.from_totals({c: totals_of(t[0], t[1:]) for c, t in totals.items() if t[0]}),
            )
        else:
            yield point, None


def chart_datasets(
    chart: charts.Chart, query: charts.Query, shown: Iterator[tuple[int, Aggregates | None]]
) -> list[dict[str, Any]]:
    """The series' datasets: per country (in the order the chart lists them) its entry at each point
    without its code, or for the count one dataset; each entry built by the chart's own code."""
    data: dict[str, list[dict[str, Any]]] = {}
    body: dict[str, Any] = {}
    for point, agg in shown:
        if agg is not None:  # else: nothing changed, the body before stands
            body = chart.build(agg, replace(query, now=end_of(point)))
        at = {"at": iso_minute(point)}
        if not chart.per_country:
            data.setdefault(chart.name, []).append(at | body)
            continue
        for entry in body["datasets"]:
            code = entry["id"] if "id" in entry else entry["country"]
            data.setdefault(code, []).append(
                at | {k: v for k, v in entry.items() if k not in ("id", "country")}
            )
    if chart.per_country:
        order = list(query.countries) if query.countries is not None else sorted(data)
        return [{"id": code, "data": data[code]} for code in order if code in data]
    return [{"id": name, "data": points} for name, points in data.items()]


def arrivals_per_point(store: Store, points: range, first_written: int) -> list[tuple[int, int]]:
    """Each point and the rows that arrived in the step ending at it (summed over sources and
    countries); `first_written` bounds the first step (a step of years reads what there is)."""
    step = points.step
    per_minute = store.arrivals_per_minute(max(points[0] - step, first_written - 1), points[-1])
    counts = dict.fromkeys(points, 0)
    for minute, rows in per_minute.items():
        k = -((points[0] - minute) // step)  # the first point at or after the minute ends its step
        counts[points[0] + k * step] += rows
    return list(counts.items())


def long_over_time(
    older: Mapping[int, int], live: Aggregates, horizon: int, query: charts.Query
) -> dict[str, Any]:
    """Chart 2 over a window longer than memory holds (`Aggregates.keep_window`): the rows that
    arrived in each minute before `horizon` as the store wrote them (`older`, minute -> rows: later
    withdrawals do not change a written minute), those since as memory counts them (still there)."""
    width = 60 if query.bucket == "hour" else 1  # minutes per point
    counts: dict[int, int] = {}
    before = [(m, n) for m, n in older.items() if 0 <= m < horizon]
    since = [(m, n) for m, n in live.by_minute().items() if m >= horizon]
    for minute, rows in before + since:
        counts[minute // width] = counts.get(minute // width, 0) + rows
    return charts.over_time(counts, query.now, query.points, query.bucket)
