"""The six charts' JSON, built from one snapshot of the aggregates (pure: no I/O, no clock).

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
  1 decimal); DURECEC years and learning hours are integers (hours = round(mean TMINS / 60)).
- Time labels are UTC. Submissions-over-time covers the last `hours` hours (default 12, or 1 with
  `bucket=minute`) with one point per hour (or minute) ending now, zeros included, counting the rows
  that arrived then and are still there; rows present before capture started have no arrival time
  and are left out of this chart (they are in the count).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pisa_pulse.capture.contract import INITIAL_COPY_MINUTE
from pisa_pulse.engine.aggregates import Aggregates
from pisa_pulse.engine.values import COUNTRY_INDEX
from pisa_pulse.errors import PisaPulseError

CHARTS = (
    "submissions",
    "submissions-over-time",
    "early-education-and-belonging",
    "escs",
    "learning-hours-per-week",
    "performance",
)
PER_COUNTRY = frozenset(CHARTS[2:])
# The columns each chart reads besides `cnt` (direct mode queries only these).
COLUMNS: dict[str, frozenset[str]] = {
    "submissions": frozenset(),
    "submissions-over-time": frozenset(),
    "early-education-and-belonging": frozenset({"durecec", "belong"}),
    "escs": frozenset({"escs"}),
    "learning-hours-per-week": frozenset({"tmins"}),
    "performance": frozenset(
        {"w_fstuwt"} | {f"pv{i}{d}" for d in ("math", "read", "scie") for i in range(1, 11)}
    ),
}
Bucket = Literal["hour", "minute"]
MAX_HOURS = 168  # the longest window, in hours (a week: 168 hourly or 10,080 minute points)
DEFAULT_HOURS = {"hour": 12, "minute": 1}
# Codes of 3 ASCII letters, any case, comma-separated, blanks allowed around each (the OpenAPI
# document publishes this same pattern, so the documented and the accepted inputs agree).
COUNTRIES_PATTERN = r"^ *[A-Za-z]{3} *(, *[A-Za-z]{3} *)*$"
_CODES = re.compile(COUNTRIES_PATTERN)


class BadRequest(PisaPulseError):
    """A query parameter the API cannot use (answered with a 400)."""


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


def parse_window(raw: str | None, bucket: Bucket) -> int:
    """`?hours=N`: the window in hours, 1 to MAX_HOURS; returns its number of points for the bucket."""
    if raw is None:
        hours = DEFAULT_HOURS[bucket]
    elif raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_HOURS:
        hours = int(raw)
    else:
        raise BadRequest(
            f"hours={_shown(raw)} is not a whole number from 1 to {MAX_HOURS}",
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


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def submissions(agg: Aggregates) -> dict[str, Any]:
    """Chart 1."""
    return {"count": agg.count()}


def submissions_over_time(agg: Aggregates, now: float, points: int, bucket: Bucket) -> dict[str, Any]:
    """Chart 2: the last `points` hours (or minutes) up to `now` (Unix seconds), zeros included."""
    width = 3600 if bucket == "hour" else 60
    counts = agg.hourly() if bucket == "hour" else agg.by_minute()
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
                        "y": _round(agg.mean(c, "belong"), 4),
                        "submissions": agg.rows(c),
                    }
                ],
            }
            for c in countries
        ]
    }


def escs(agg: Aggregates, countries: Sequence[str]) -> dict[str, Any]:
    """Chart 4."""
    return {"datasets": [{"id": c, "value": _round(agg.mean(c, "escs"), 4)} for c in countries]}


def learning_hours_per_week(agg: Aggregates, countries: Sequence[str]) -> dict[str, Any]:
    """Chart 5 (the key is `country` here, as the contract has it)."""
    return {"datasets": [{"country": c, "hours": agg.learning_hours(c)} for c in countries]}


def performance(agg: Aggregates, countries: Sequence[str]) -> dict[str, Any]:
    """Chart 6: each country's W_FSTUWT-weighted mean score over the ten plausible values per domain."""
    return {
        "datasets": [
            {
                "id": c,
                "reading": _round(agg.mean_score(c, "read"), 1),
                "mathematics": _round(agg.mean_score(c, "math"), 1),
                "science": _round(agg.mean_score(c, "scie"), 1),
                "submissions": agg.rows(c),
            }
            for c in countries
        ]
    }


def build(
    chart: str,
    agg: Aggregates,
    *,
    countries: Sequence[str] | None = None,
    now: float = 0.0,
    points: int = 12,
    bucket: Bucket = "hour",
) -> dict[str, Any]:
    """Any chart by its URL name."""
    if chart == "submissions":
        return submissions(agg)
    if chart == "submissions-over-time":
        return submissions_over_time(agg, now, points, bucket)
    shown = countries_of(agg, countries)
    per_country = {
        "early-education-and-belonging": early_education_and_belonging,
        "escs": escs,
        "learning-hours-per-week": learning_hours_per_week,
        "performance": performance,
    }
    return per_country[chart](agg, shown)
