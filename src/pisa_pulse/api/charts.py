"""The chart registry, and the six charts' JSON built from one snapshot (pure: no I/O, no clock).

`REGISTRY` is the one list of charts: each `Chart` row names its URL, title, query parameters,
contract (the response shape, as a name and as JSON Schema) and the columns it reads. The routes,
the OpenAPI document, the metrics' route labels, direct mode's queries, the `/api/charts` index and
through it the dashboard's cards are all built from it.

The shapes are the dashboard contracts of shared/reference/forage/CHARTS.md, with JSON numbers:
1. submissions                      {"count": int}
2. submissions-over-time            {"datasets": [{"id": "Submissions", "data": [{"x": "13:00", "y": int}]}]}
3. early-education-and-belonging    {"datasets": [{"id": "ALB", "data": [{"x": int, "y": float,
                                                                          "submissions": int}]}]}
4. escs                             {"datasets": [{"id": "ALB", "value": float}]}
5. learning-hours-per-week          {"datasets": [{"country": "ALB", "hours": int}]}
6. performance (ours)               {"datasets": [{"id": "ALB", "reading": float, "mathematics": float,
                                                   "science": float, "submissions": int}]}

Decisions where the contract is silent, one place:
- A per-country chart lists the requested countries that have rows, in the order asked (all countries
  with rows, by code, when none are asked). A country whose rows hold no valid value for a chart's
  index shows `null` there: a number would be invented.
- Means are rounded for display (BELONG and ESCS to 4 decimals, the codebook's precision; scores to
  1 decimal), half away from zero from the exact integer sums, as PostgreSQL's round(numeric) does
  (a float's round() would settle ties by the binary value: 0.00015 to 0.0001); DURECEC years and
  learning hours are integers (hours = round(mean TMINS / 60)), rounded the same way.
- Time labels are UTC. Submissions-over-time covers the last `hours` hours (default 12, or 1 with
  `bucket=minute`) with one point per hour (or minute) ending now, zeros included, counting the rows
  that arrived then and are still there; rows present before capture started have no arrival time
  and are left out of this chart (they are in the count).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pisa_pulse.api.exceptions import BadRequest
from pisa_pulse.capture.contract import INITIAL_COPY_MINUTE
from pisa_pulse.engine.aggregates import ARRIVAL_WINDOW_MINUTES, Aggregates
from pisa_pulse.engine.values import COUNTRY_INDEX

Bucket = Literal["hour", "minute"]
MAX_HOURS = 168  # the longest window, in hours (a week: 168 hourly or 10,080 minute points)
assert MAX_HOURS * 60 < ARRIVAL_WINDOW_MINUTES - 60  # the arrival minutes kept in memory cover it
DEFAULT_HOURS = {"hour": 12, "minute": 1}
# Codes of 3 ASCII letters, any case, comma-separated, blanks allowed around each (the OpenAPI
# document publishes this same pattern, so the documented and the accepted inputs agree).
COUNTRIES_PATTERN = r"^ *[A-Za-z]{3} *(, *[A-Za-z]{3} *)*$"
_CODES = re.compile(COUNTRIES_PATTERN)


def _shown(raw: str, limit: int = 60) -> str:
    """A query value as an error message quotes it: repr, cut short (a huge input is not echoed)."""
    return repr(raw) if len(raw) <= limit else f"{raw[:limit]!r}... ({len(raw):,} characters)"


def parse_countries(raw: str | None) -> tuple[str, ...] | None:
    """`?countries=alb, ARG` -> ("ALB", "ARG"); None when absent. Unknown codes are dropped later."""
    if raw is None:
        return None
    if not _CODES.fullmatch(raw):
        raise BadRequest(
            f"countries={_shown(raw)} is not a list of 3-letter country codes",
            "pass comma-separated codes such as countries=ALB,ARG, or leave the parameter out",
        )
    return tuple(dict.fromkeys(code.strip().upper() for code in raw.split(",")))


def parse_window(raw: str | None, bucket: Bucket, longest: int = MAX_HOURS) -> int:
    """`?hours=N`: the window in hours, 1 to `longest` (MAX_HOURS, or more on a server whose history
    store answers the hours memory no longer holds); returns its number of points for the bucket."""
    if raw is None:
        hours = DEFAULT_HOURS[bucket]
    elif raw.isascii() and raw.isdigit() and 1 <= int(raw) <= longest:
        hours = int(raw)
    else:
        raise BadRequest(
            f"hours={_shown(raw)} is not a whole number from 1 to {longest}",
            f"pass e.g. hours={DEFAULT_HOURS['hour']}",
        )
    return hours if bucket == "hour" else hours * 60


def parse_bucket(raw: str | None) -> Bucket:
    """`?bucket=hour|minute` (default hour)."""
    if raw is None or raw == "hour":
        return "hour"
    if raw == "minute":
        return "minute"
    raise BadRequest(f"bucket={_shown(raw)} is not hour or minute", "pass bucket=hour or bucket=minute")


def countries_of(agg: Aggregates, wanted: Sequence[str] | None) -> list[str]:
    """The countries a per-country chart shows: those asked for (or all) that have rows."""
    present = agg.country_codes()
    if wanted is None:
        return present
    have = set(present)
    return [c for c in wanted if c in COUNTRY_INDEX and c in have]


def submissions(agg: Aggregates) -> dict[str, Any]:
    """Chart 1."""
    return {"count": agg.count()}


def submissions_over_time(agg: Aggregates, now: float, points: int, bucket: Bucket) -> dict[str, Any]:
    """Chart 2: the last `points` hours (or minutes) up to `now` (Unix seconds), zeros included."""
    return over_time(agg.hourly() if bucket == "hour" else agg.by_minute(), now, points, bucket)


def over_time(counts: Mapping[int, int], now: float, points: int, bucket: Bucket) -> dict[str, Any]:
    """Chart 2's body from rows per hour (or minute) since the epoch (windows longer than memory add
    the history's older hours: history/query.py)."""
    width = 3600 if bucket == "hour" else 60
    last = int(now // width)
    data = []
    for slot in range(last - points + 1, last + 1):
        label = datetime.fromtimestamp(slot * width, UTC).strftime("%H:%M")
        data.append({"x": label, "y": counts.get(slot, 0) if slot != INITIAL_COPY_MINUTE else 0})
    return {"datasets": [{"id": "Submissions", "data": data}]}


def early_education_and_belonging(agg: Aggregates, countries: Sequence[str]) -> dict[str, Any]:
    """Chart 3."""
    return {
        "datasets": [
            {
                "id": c,
                "data": [
                    {
                        "x": agg.early_education_years(c),
                        "y": agg.mean(c, "belong", 4),
                        "submissions": agg.rows(c),
                    }
                ],
            }
            for c in countries
        ]
    }


def escs(agg: Aggregates, countries: Sequence[str]) -> dict[str, Any]:
    """Chart 4."""
    return {"datasets": [{"id": c, "value": agg.mean(c, "escs", 4)} for c in countries]}


def learning_hours_per_week(agg: Aggregates, countries: Sequence[str]) -> dict[str, Any]:
    """Chart 5 (the key is `country` here, as the contract has it)."""
    return {"datasets": [{"country": c, "hours": agg.learning_hours(c)} for c in countries]}


def performance(agg: Aggregates, countries: Sequence[str]) -> dict[str, Any]:
    """Chart 6: each country's W_FSTUWT-weighted mean score over the ten plausible values per domain."""
    return {
        "datasets": [
            {
                "id": c,
                "reading": agg.mean_score(c, "read", 1),
                "mathematics": agg.mean_score(c, "math", 1),
                "science": agg.mean_score(c, "scie", 1),
                "submissions": agg.rows(c),
            }
            for c in countries
        ]
    }


@dataclass(frozen=True)
class Query:
    """What a request asks of a chart, parsed (`/api/charts/x?countries=...&hours=...&bucket=...`)."""

    countries: tuple[str, ...] | None = None  # None: every country with rows
    points: int = DEFAULT_HOURS["hour"]  # hours (or minutes) of the window
    bucket: Bucket = "hour"
    now: float = 0.0  # Unix seconds: the end of the window


# -- the response shapes, as JSON Schema (OpenAPI 3.0): the contracts the OpenAPI document publishes --

NUMBER_OR_NULL: dict[str, Any] = {"type": "number", "nullable": True}
INTEGER: dict[str, Any] = {"type": "integer"}
CODE: dict[str, Any] = {"type": "string", "pattern": "^[A-Z]{3}$"}


def object_schema(properties: dict[str, Any]) -> dict[str, Any]:
    """An object with exactly these properties, all required."""
    return {
        "type": "object",
        "required": list(properties),
        "additionalProperties": False,
        "properties": properties,
    }


def _datasets(item: dict[str, Any]) -> dict[str, Any]:
    return object_schema({"datasets": {"type": "array", "items": item}})


@dataclass(frozen=True)
class Chart:
    """One chart: what its route, the OpenAPI document, the metrics and the dashboard know of it."""

    name: str  # in its URL: /api/charts/<name>
    title: str  # the dashboard card's heading
    description: str  # what it shows (the card's subtitle; the OpenAPI summary)
    contract: str  # the name of its response shape (a dashboard view renders one contract)
    schema: dict[str, Any]  # that shape as JSON Schema
    columns: frozenset[str]  # the columns it reads besides `cnt` (direct mode queries only these)
    build: Callable[[Aggregates, Query], dict[str, Any]]
    parameters: tuple[str, ...] = ()  # its query parameters: "countries", or "hours" and "bucket"

    @property
    def path(self) -> str:
        """Its URL path."""
        return f"/api/charts/{self.name}"

    @property
    def per_country(self) -> bool:
        """Whether it has one dataset per country (and takes `?countries=`)."""
        return "countries" in self.parameters

    def describe(self) -> dict[str, Any]:
        """Its entry in the `/api/charts` index (what the dashboard builds its cards from)."""
        return {
            "name": self.name,
            "path": self.path,
            "title": self.title,
            "description": self.description,
            "contract": self.contract,
            "parameters": list(self.parameters),
            "per_country": self.per_country,
            "columns": sorted(self.columns),
        }


def _per_country(
    builder: Callable[[Aggregates, Sequence[str]], dict[str, Any]],
) -> Callable[[Aggregates, Query], dict[str, Any]]:
    return lambda agg, query: builder(agg, countries_of(agg, query.countries))


_SCORES = frozenset({"w_fstuwt"} | {f"pv{i}{d}" for d in ("math", "read", "scie") for i in range(1, 11)})

REGISTRY: tuple[Chart, ...] = (
    Chart(
        "submissions",
        "Submissions",
        "All rows in all country databases",
        "count",
        object_schema({"count": INTEGER}),
        frozenset(),
        lambda agg, query: submissions(agg),
    ),
    Chart(
        "submissions-over-time",
        "Submissions over time",
        "Rows per hour (or minute) of arrival, UTC",
        "time-series",
        _datasets(
            object_schema(
                {
                    "id": {"type": "string", "enum": ["Submissions"]},
                    "data": {
                        "type": "array",
                        "items": object_schema({"x": {"type": "string"}, "y": INTEGER}),
                    },
                }
            )
        ),
        frozenset(),
        lambda agg, query: submissions_over_time(agg, query.now, query.points, query.bucket),
        ("hours", "bucket"),
    ),
    Chart(
        "early-education-and-belonging",
        "Early education and sense of belonging",
        "Mean DURECEC (years, integer) and BELONG per country; bubble size: submissions",
        "country-points",
        _datasets(
            object_schema(
                {
                    "id": CODE,
                    "data": {
                        "type": "array",
                        "items": object_schema(
                            {
                                "x": {"type": "integer", "nullable": True},
                                "y": NUMBER_OR_NULL,
                                "submissions": INTEGER,
                            }
                        ),
                    },
                }
            )
        ),
        frozenset({"durecec", "belong"}),
        _per_country(early_education_and_belonging),
        ("countries",),
    ),
    Chart(
        "escs",
        "Economic, social and cultural status",
        "Mean ESCS index per country, built from PARED, HISEI and HOMEPOS",
        "country-value",
        _datasets(object_schema({"id": CODE, "value": NUMBER_OR_NULL})),
        frozenset({"escs"}),
        _per_country(escs),
        ("countries",),
    ),
    Chart(
        "learning-hours-per-week",
        "Learning hours per week",
        "Mean total learning time (TMINS) in hours: round(mean TMINS / 60) per country",
        "country-hours",
        _datasets(object_schema({"country": CODE, "hours": {"type": "integer", "nullable": True}})),
        frozenset({"tmins"}),
        _per_country(learning_hours_per_week),
        ("countries",),
    ),
    Chart(
        "performance",
        "Performance",
        "W_FSTUWT-weighted mean reading, mathematics and science score over the ten plausible values",
        "country-scores",
        _datasets(
            object_schema(
                {
                    "id": CODE,
                    "reading": NUMBER_OR_NULL,
                    "mathematics": NUMBER_OR_NULL,
                    "science": NUMBER_OR_NULL,
                    "submissions": INTEGER,
                }
            )
        ),
        _SCORES,
        _per_country(performance),
        ("countries",),
    ),
)
BY_NAME: dict[str, Chart] = {chart.name: chart for chart in REGISTRY}
CHARTS = tuple(BY_NAME)  # the names, in the registry's order
PER_COUNTRY = frozenset(chart.name for chart in REGISTRY if chart.per_country)
COLUMNS: dict[str, frozenset[str]] = {chart.name: chart.columns for chart in REGISTRY}


def parse_query(chart: Chart, params: Mapping[str, str], now: float, longest: int = MAX_HOURS) -> Query:
    """The parameters `chart` takes, parsed from a query string (others are ignored); BadRequest.
    `longest`: the longest window in hours (`parse_window`)."""
    countries = parse_countries(params.get("countries")) if chart.per_country else None
    if "bucket" not in chart.parameters:
        return Query(countries=countries, now=now)
    bucket = parse_bucket(params.get("bucket"))
    return Query(countries, parse_window(params.get("hours"), bucket, longest), bucket, now)


def build(chart: str, agg: Aggregates, query: Query = Query()) -> dict[str, Any]:
    """Any chart by its URL name."""
    return BY_NAME[chart].build(agg, query)
