"""Per-country sums and counts: exact Python integers that ledger rows are added to and retracted from.

For each country: `rows`; per index (DURECEC, BELONG, ESCS, TMINS) the number of valid values and
their sum; per domain (math, read, scie) Σw and Σw·pv over the valid (W_FSTUWT, PV) pairs of the ten
plausible values, so the mean score is Σw·pv / Σw (with all ten PVs valid: PISA's mean of the ten
weighted means); and the rows per arrival minute (minutes since the Unix epoch; -1: from the
initial copy). Values are the scaled integers of `values.py`. Everything derived (means, chart
numbers) is computed on demand.

Aggregates are mergeable (sum across sources) and comparable with `==` (through `as_dict()`,
which leaves out countries without rows and minutes without rows). `export` / `absorb` carry them
across a process boundary as plain lists and dicts, with only the minutes touched since the last
export, so what crosses follows the changes, not the hours of history.

Only a recent window of arrival minutes is kept (`ARRIVAL_WINDOW_MINUTES`, a little over the longest
window chart 2 shows from memory): `forget_before` drops older ones, and from then on a row of such
a minute changes the sums but not the minutes (a withdrawal of a week-old row leaves the forgotten
minute forgotten, rather than making it -1). So memory stays flat over days; the history store
keeps what is older (history/).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pisa_pulse.engine.values import (
    ARRIVAL,
    COUNTRY,
    COUNTRY_CODES,
    COUNTRY_INDEX,
    FIRST_PV,
    FIRST_VALUE,
    NUMERIC_COLUMNS,
    VALID_MIN,
    WEIGHT,
    column_rules,
)
from pisa_pulse.sources.schema import DOMAINS, INDEX_COLUMNS

if TYPE_CHECKING:  # numpy only where ledgers are: serving aggregates (API, replicas) does without it
    import numpy as np
    import numpy.typing as npt

# Arrival minutes kept in memory: the longest window chart 2 answers from memory (a week, api/charts.py's
# MAX_HOURS) plus the hour in progress and one of slack for clocks that differ between processes.
ARRIVAL_WINDOW_MINUTES = (168 + 2) * 60
_N_SUMS = 1 + 2 * len(INDEX_COLUMNS) + 2 * len(DOMAINS)  # rows, (valid, sum) per index, (Σw, Σw·pv)
_FIRST_DOMAIN_SUM = 1 + 2 * len(INDEX_COLUMNS)
_W, _PV = WEIGHT - FIRST_VALUE, FIRST_PV - FIRST_VALUE  # positions among the numeric values
# The unrolled `_apply` relies on this layout: four indices, the weight, then 3 x 10 PVs.
assert NUMERIC_COLUMNS[:5] == (*INDEX_COLUMNS, "w_fstuwt") and _N_SUMS == 15 and _PV == 5


@dataclass(frozen=True)
class CountryTotals:
    """One country's exact totals (scaled integers, see the module docstring)."""

    rows: int
    valid: dict[str, int]  # per index: number of valid values
    sums: dict[str, int]  # per index: sum of the valid scaled values
    weights: dict[str, int]  # per domain: Σw over valid (w, pv) pairs, at the weight's scale
    weighted_scores: dict[str, int]  # per domain: Σw·pv, at the weight's scale x the PV scale
    minutes: dict[int, int] = field(default_factory=dict)  # arrival minute -> rows (-1: initial copy)


class _Tally:
    """The mutable totals of one country: `sums` in the order of `_N_SUMS`, and rows per arrival minute."""

    __slots__ = ("minutes", "sums")

    def __init__(self) -> None:
        self.sums = [0] * _N_SUMS
        self.minutes: dict[int, int] = {}


def _round_half_away(numerator: int, denominator: int) -> int:
    """numerator / denominator (denominator > 0) rounded half away from zero, exactly."""
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return -quotient if numerator < 0 else quotient


def _round_decimals(numerator: int, denominator: int, digits: int) -> float:
    """numerator / denominator rounded to `digits` decimals half away from zero, exactly."""
    unit: int = 10**digits
    return _round_half_away(numerator * unit, denominator) / unit


Exported = dict[int, tuple[list[int], dict[int, int]]]  # country index -> (sums, rows per minute)


class Aggregates:
    """Exact per-country totals; `add` / `retract` take ledger rows (see `values.py`)."""

    def __init__(self) -> None:
        self._tallies: dict[int, _Tally] = {}
        self._touched: set[tuple[int, int]] = set()  # (country index, minute) changed since `export`
        self.horizon = 0  # arrival minutes before it (but -1, the initial copy) are forgotten

    # -- updates (hot path) -----------------------------------------------------------------------

    def add(self, row: Sequence[int]) -> None:
        """Add one ledger row's contribution."""
        self._apply(row, 1)

    def retract(self, row: Sequence[int]) -> None:
        """Remove exactly what `add(row)` added."""
        self._apply(row, -1)

    def _apply(self, row: Sequence[int], sign: int) -> None:
        tally = self._tallies.get(row[COUNTRY])
        if tally is None:
            tally = self._tallies[row[COUNTRY]] = _Tally()
        sums = tally.sums
        sums[0] += sign
        values = row[FIRST_VALUE:]
        if min(values) >= VALID_MIN:  # the common case, unrolled: every value valid
            sums[1] += sign
            sums[2] += sign * values[0]
            sums[3] += sign
            sums[4] += sign * values[1]
            sums[5] += sign
            sums[6] += sign * values[2]
            sums[7] += sign
            sums[8] += sign * values[3]
            weight = sign * values[_W]
            sums[9] += 10 * weight
            sums[10] += weight * sum(values[_PV : _PV + 10])
            sums[11] += 10 * weight
            sums[12] += weight * sum(values[_PV + 10 : _PV + 20])
            sums[13] += 10 * weight
            sums[14] += weight * sum(values[_PV + 20 : _PV + 30])
        else:
            self._apply_some(sums, values, sign)
        arrival = row[ARRIVAL]
        if arrival < self.horizon and arrival >= 0:
            return  # a forgotten minute stays forgotten
        minutes = tally.minutes
        count = minutes.get(arrival, 0) + sign
        if count:
            minutes[arrival] = count
        else:
            del minutes[arrival]
        self._touched.add((row[COUNTRY], arrival))

    @staticmethod
    def _apply_some(sums: list[int], values: Sequence[int], sign: int) -> None:
        """`_apply` for numeric values of which some are MISSING or INVALID."""
        for k in range(len(INDEX_COLUMNS)):
            if values[k] >= VALID_MIN:
                sums[1 + 2 * k] += sign
                sums[2 + 2 * k] += sign * values[k]
        weight = values[_W]
        if weight < VALID_MIN:
            return
        weight *= sign
        for d in range(len(DOMAINS)):
            valid = [pv for pv in values[_PV + 10 * d : _PV + 10 * d + 10] if pv >= VALID_MIN]
            sums[_FIRST_DOMAIN_SUM + 2 * d] += len(valid) * weight
            sums[_FIRST_DOMAIN_SUM + 2 * d + 1] += weight * sum(valid)

    def add_rows(self, rows: npt.NDArray[np.int32]) -> None:
        """`add` of every row of an (n, ROW_WIDTH) block, in bulk: exactly the same totals. Σw·pv goes
        through Python integers (a product of two int32 sums overflows int64 over many rows); every
        other sum fits int64 for up to 2**28 rows."""
        import numpy as np  # here: see the import under TYPE_CHECKING

        for country in np.unique(rows[:, COUNTRY]).tolist():
            block = rows[rows[:, COUNTRY] == country]
            tally = self._tallies.get(country)
            if tally is None:
                tally = self._tallies[country] = _Tally()
            sums, values = tally.sums, block[:, FIRST_VALUE:].astype(np.int64)
            sums[0] += len(block)
            for k in range(len(INDEX_COLUMNS)):
                valid = values[:, k] >= VALID_MIN
                sums[1 + 2 * k] += int(valid.sum())
                sums[2 + 2 * k] += int(values[valid, k].sum())
            weighted = values[values[:, _W] >= VALID_MIN]
            weights = weighted[:, _W]
            for d in range(len(DOMAINS)):
                pvs = weighted[:, _PV + 10 * d : _PV + 10 * d + 10]
                valid = pvs >= VALID_MIN
                sums[_FIRST_DOMAIN_SUM + 2 * d] += int((valid.sum(axis=1) * weights).sum())
                scores = np.where(valid, pvs, 0).sum(axis=1).astype(object) * weights.astype(object)
                sums[_FIRST_DOMAIN_SUM + 2 * d + 1] += int(scores.sum())
            minutes, counts = np.unique(block[:, ARRIVAL], return_counts=True)
            for minute, count in zip(minutes.tolist(), counts.tolist(), strict=True):
                if 0 <= minute < self.horizon:
                    continue
                total = tally.minutes.get(minute, 0) + count
                if total:
                    tally.minutes[minute] = total
                else:
                    del tally.minutes[minute]
                self._touched.add((country, minute))

    def merge(self, other: Aggregates) -> Aggregates:
        """Add all of `other` into these aggregates (e.g. to sum sources); returns self."""
        for index, theirs in other._tallies.items():
            mine = self._tallies.get(index)
            if mine is None:
                mine = self._tallies[index] = _Tally()
            mine.sums = [a + b for a, b in zip(mine.sums, theirs.sums, strict=True)]
            for minute, count in theirs.minutes.items():
                if 0 <= minute < self.horizon:
                    continue
                total = mine.minutes.get(minute, 0) + count
                if total:
                    mine.minutes[minute] = total
                else:
                    mine.minutes.pop(minute, None)
        return self

    def renewed(self, parts: Iterable[Aggregates], countries: Iterable[int]) -> Aggregates:
        """A merge of `parts` made from this one (a merge of the same parts before some of them
        changed), with only `countries` (indices) summed again; the others' totals are shared with
        this one, so neither may change afterwards (snapshots never do). Costs the changed countries'
        minutes, not every country's."""
        result = Aggregates()
        result._tallies = dict(self._tallies)
        parts = list(parts)
        for country in countries:
            merged = _Tally()
            for part in parts:
                theirs = part._tallies.get(country)
                if theirs is None:
                    continue
                merged.sums = [a + b for a, b in zip(merged.sums, theirs.sums, strict=True)]
                for minute, count in theirs.minutes.items():
                    total = merged.minutes.get(minute, 0) + count
                    if total:
                        merged.minutes[minute] = total
                    else:
                        merged.minutes.pop(minute, None)
            if any(merged.sums) or merged.minutes:
                result._tallies[country] = merged
            else:
                result._tallies.pop(country, None)
        return result

    def export(self, full: bool = False) -> Exported:
        """Plain data for `absorb`: every country's sums, and its rows per minute, all of them when
        `full`, else only the minutes touched since the last export (0: no rows left there)."""
        touched, self._touched = self._touched, set()
        if full:
            return {c: (list(t.sums), dict(t.minutes)) for c, t in self._tallies.items()}
        result: Exported = {c: (list(t.sums), {}) for c, t in self._tallies.items()}
        for country, minute in touched:
            result[country][1][minute] = self._tallies[country].minutes.get(minute, 0)
        return result

    def absorb(self, exported: Exported, full: bool = False) -> None:
        """Take what `export` gave: sums replace these; minutes replace all (`full`) or those given."""
        if full:
            self._tallies = {}
        for country, (sums, minutes) in exported.items():
            tally = self._tallies.get(country)
            if tally is None:
                tally = self._tallies[country] = _Tally()
            tally.sums = list(sums)
            for minute, count in minutes.items():
                if count and not 0 <= minute < self.horizon:
                    tally.minutes[minute] = count
                else:
                    tally.minutes.pop(minute, None)

    def export_minutes(self) -> dict[int, dict[int, int]]:
        """Every country's rows per arrival minute (copies, without resetting what `export` reports)."""
        return {c: dict(t.minutes) for c, t in self._tallies.items()}

    def export_sums(self) -> Exported:
        """Every country's sums, without minutes (and without resetting what `export` reports)."""
        return {c: (list(t.sums), {}) for c, t in self._tallies.items()}

    def minutes_of_hour(self, hour: int) -> dict[int, dict[int, int]]:
        """Per country, its rows per arrival minute within `hour` (minutes since the epoch // 60; -1:
        the initial copy's minute -1)."""
        first, last = (-1, -1) if hour == -1 else (hour * 60, hour * 60 + 59)
        result: dict[int, dict[int, int]] = {}
        for country, tally in self._tallies.items():
            inside = {m: n for m, n in tally.minutes.items() if first <= m <= last}
            if inside:
                result[country] = inside
        return result

    def forget_before(self, minute: int) -> int:
        """Forget the arrival minutes before `minute` (not the initial copy's -1), now and for every
        later change (see the module docstring); the horizon only moves forward. Returns how many
        (country, minute) entries went."""
        if minute <= self.horizon:
            return 0
        self.horizon = minute
        gone = 0
        for tally in self._tallies.values():
            old = [m for m in tally.minutes if 0 <= m < minute]
            for m in old:
                del tally.minutes[m]
            gone += len(old)
        self._touched = {(c, m) for c, m in self._touched if not 0 <= m < minute}
        return gone

    def keep_window(self, now: float) -> int:
        """`forget_before` the start of the window of arrival minutes kept at Unix time `now`."""
        return self.forget_before(int(now // 60) - ARRIVAL_WINDOW_MINUTES)

    def copy(self) -> Aggregates:
        """An independent copy (with the same horizon)."""
        result = Aggregates()
        result.horizon = self.horizon
        return result.merge(self)

    def without_arrivals(self) -> Aggregates:
        """A copy without the arrival counts, to compare with aggregates that cannot know them."""
        result = self.copy()
        for tally in result._tallies.values():
            tally.minutes = {}
        return result

    # -- exact totals -----------------------------------------------------------------------------

    def _tally(self, country: str) -> _Tally | None:
        index = COUNTRY_INDEX.get(country)
        return None if index is None else self._tallies.get(index)

    def countries(self) -> set[int]:
        """The indices of the countries held (with rows or not)."""
        return set(self._tallies)

    def country_codes(self) -> list[str]:
        """The countries that have rows, in code order."""
        return sorted(COUNTRY_CODES[i] for i, t in self._tallies.items() if t.sums[0])

    def totals(self, country: str, minutes: bool = True) -> CountryTotals:
        """One country's exact totals (all zero for a country without rows); `minutes=False`: without
        its rows per arrival minute (which grow with the days of arrivals)."""
        tally = self._tally(country) or _Tally()
        s, first = tally.sums, _FIRST_DOMAIN_SUM
        return CountryTotals(
            rows=s[0],
            valid={name: s[1 + 2 * k] for k, name in enumerate(INDEX_COLUMNS)},
            sums={name: s[2 + 2 * k] for k, name in enumerate(INDEX_COLUMNS)},
            weights={name: s[first + 2 * d] for d, name in enumerate(DOMAINS)},
            weighted_scores={name: s[first + 2 * d + 1] for d, name in enumerate(DOMAINS)},
            minutes=dict(sorted(tally.minutes.items())) if minutes else {},
        )

    def arrived(self, country: str, minute: int) -> int:
        """The country's rows that arrived in `minute`."""
        tally = self._tally(country)
        return 0 if tally is None else tally.minutes.get(minute, 0)

    def as_dict(self) -> dict[str, CountryTotals]:
        """Every country with rows -> its totals, in code order."""
        return {code: self.totals(code) for code in self.country_codes()}

    @classmethod
    def from_totals(cls, totals: Mapping[str, CountryTotals]) -> Aggregates:
        """Aggregates holding exactly these totals (how the SQL oracle builds its result)."""
        result = cls()
        for code, t in totals.items():
            tally = result._tallies[COUNTRY_INDEX[code]] = _Tally()
            tally.sums[0] = t.rows
            for k, name in enumerate(INDEX_COLUMNS):
                tally.sums[1 + 2 * k] = t.valid[name]
                tally.sums[2 + 2 * k] = t.sums[name]
            for d, name in enumerate(DOMAINS):
                tally.sums[_FIRST_DOMAIN_SUM + 2 * d] = t.weights[name]
                tally.sums[_FIRST_DOMAIN_SUM + 2 * d + 1] = t.weighted_scores[name]
            tally.minutes = {m: n for m, n in t.minutes.items() if n}
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Aggregates):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Aggregates({self.as_dict()!r})"

    # -- derived values ---------------------------------------------------------------------------

    def count(self) -> int:
        """All rows of all countries."""
        return sum(t.sums[0] for t in self._tallies.values())

    def rows(self, country: str) -> int:
        """One country's rows."""
        tally = self._tally(country)
        return 0 if tally is None else tally.sums[0]

    def by_minute(self) -> dict[int, int]:
        """Rows per arrival minute (since the Unix epoch) over all countries (-1: the initial copy)."""
        result: dict[int, int] = {}
        for tally in self._tallies.values():
            for minute, count in tally.minutes.items():
                result[minute] = result.get(minute, 0) + count
        return {m: n for m, n in sorted(result.items()) if n}

    def hourly(self) -> dict[int, int]:
        """Rows per arrival hour (since the Unix epoch) over all countries (-1: the initial copy)."""
        result: dict[int, int] = {}
        for minute, count in self.by_minute().items():
            hour = minute // 60  # -1 stays -1
            result[hour] = result.get(hour, 0) + count
        return result

    def _index_sums(self, country: str, index: str) -> tuple[int, int, int]:
        k = INDEX_COLUMNS.index(index)
        tally = self._tally(country)
        scale = column_rules()[NUMERIC_COLUMNS.index(index)].scale
        if tally is None:
            return 0, 0, scale
        return tally.sums[1 + 2 * k], tally.sums[2 + 2 * k], scale

    def mean(self, country: str, index: str, digits: int) -> float | None:
        """A country's mean of one index (durecec, belong, escs, tmins) over valid values, rounded to
        `digits` decimals half away from zero, exactly (from the integer sums), or None."""
        valid, total, scale = self._index_sums(country, index)
        return _round_decimals(total, valid * scale, digits) if valid else None

    def mean_score(self, country: str, domain: str, digits: int) -> float | None:
        """A country's weighted mean score in a domain (math, read, scie), rounded as `mean` rounds, or
        None without valid pairs."""
        d = DOMAINS.index(domain)
        tally = self._tally(country)
        if tally is None or not tally.sums[_FIRST_DOMAIN_SUM + 2 * d]:
            return None
        pv_scale = column_rules()[FIRST_PV - FIRST_VALUE + 10 * d].scale
        weights, scores = tally.sums[_FIRST_DOMAIN_SUM + 2 * d], tally.sums[_FIRST_DOMAIN_SUM + 2 * d + 1]
        return _round_decimals(scores, weights * pv_scale, digits)

    def early_education_years(self, country: str) -> int | None:
        """Chart 3's x: the mean DURECEC rounded half away from zero to an integer, or None."""
        valid, total, scale = self._index_sums(country, "durecec")
        return _round_half_away(total, valid * scale) if valid else None

    def learning_hours(self, country: str) -> int | None:
        """Chart 5's hours: round(mean TMINS / 60), half away from zero, or None."""
        valid, total, scale = self._index_sums(country, "tmins")
        return _round_half_away(total, valid * scale * 60) if valid else None
