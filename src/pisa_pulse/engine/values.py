"""From a source row's text values to the fixed-point integers the ledger keeps (pure, hot path).

The capture hands over the `CHART_COLUMNS` of one row as text (None for SQL NULL). Each numeric
column becomes an int32 at the scale of its codebook format (`F8.3` -> value x 1000, `F7.4` -> x 10^4,
`F8.5` -> x 10^5, `F8.0` and `F2.0` -> x 1), so sums stay exact integers.

The rules, here and nowhere else (`oracle.py` writes the same rules in SQL):
- **missing**: None (SQL NULL) or the literal `NA`. Stored as `MISSING`.
- **valid**: the whole text matches `-?[0-9]+(\\.[0-9]+)?` exactly (ASCII digits, no blanks, no sign
  other than a leading minus, no exponent), so '', ' 512.345', 'n/a', '-', '512,345', '+1', '1e3'
  are invalid. More decimals than the format has are rounded half away from zero to the format
  ('0.12345' in F7.4 -> 0.1235, '-0.00005' -> -0.0001), as PostgreSQL's `round(numeric, d)` does.
  The rounded value must lie outside the variable's SPSS user-missing range and its missing codes
  (ESCS and BELONG 95..99, TMINS 99999995..99999999, DURECEC 95..99), and its scaled integer must
  lie in [-2147483646, 2147483647]: int32 without its two lowest values, which are the markers.
- **categorical** columns (DURECEC) are valid only when the value equals one of the variable's
  category codes exactly (before any rounding): '3' and '3.0' are code 3; '2.5', '9', '-1' are not.
- Anything else present is **invalid** and stored as `INVALID` (PISA missing codes such as '99'
  count as invalid, not as missing: they are present text the reader rejects).
- **cnt** is valid iff it is exactly one of the 79 PISA 2018 country codes (upper case, no blanks).
  A row's country is its valid `cnt`, else the country of the source it came from.

A row in the ledger layout is `ROW_WIDTH` int32: country index, arrival minute, cnt status, then the
35 `NUMERIC_COLUMNS`.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import TYPE_CHECKING

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.pisa2018 import countries, variables
from pisa_pulse.sources.schema import CHART_COLUMNS, WEIGHT_COLUMN

if TYPE_CHECKING:  # numpy only where rows are parsed in bulk (ledgers): see `RowParser.parse_rows`
    import numpy as np
    import numpy.typing as npt

NUMERIC_COLUMNS = CHART_COLUMNS[2:]
COUNTED_COLUMNS = CHART_COLUMNS[1:]  # the columns with missing / invalid counters (not id)

MISSING = -(2**31)
INVALID = MISSING + 1
VALID_MIN = MISSING + 2
VALID_MAX = 2**31 - 1

# The ledger row layout.
COUNTRY, ARRIVAL, CNT_STATUS, FIRST_VALUE = 0, 1, 2, 3
ROW_WIDTH = FIRST_VALUE + len(NUMERIC_COLUMNS)
WEIGHT = FIRST_VALUE + NUMERIC_COLUMNS.index(WEIGHT_COLUMN)
FIRST_PV = FIRST_VALUE + NUMERIC_COLUMNS.index("pv1math")
CNT_VALID, CNT_MISSING, CNT_INVALID = 0, 1, 2

NUMBER_PATTERN = r"-?[0-9]+(\.[0-9]+)?"
_NUMBER = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_SEPARATOR = "\x1f"

COUNTRY_CODES: tuple[str, ...] = tuple(countries())
COUNTRY_INDEX: dict[str, int] = {code: i for i, code in enumerate(COUNTRY_CODES)}


@dataclass(frozen=True)
class ColumnRule:
    """How one numeric column's text becomes an integer: scale, user-missing values, valid codes."""

    name: str
    decimals: int
    missing: tuple[tuple[int, int], ...]  # scaled, inclusive intervals of user-missing values
    codes: frozenset[int] | None  # scaled category codes of a categorical column, else None

    @property
    def scale(self) -> int:
        """10 ** decimals: the factor between the value and its stored integer."""
        return int(10**self.decimals)

    def accepts(self, scaled: int) -> bool:
        """Whether a rounded, scaled number in int32 range is a valid value of this column."""
        if self.codes is not None and scaled not in self.codes:
            return False
        return not any(low <= scaled <= high for low, high in self.missing)


def _scaled(text: str, decimals: int) -> int:
    exact = Decimal(text).scaleb(decimals)
    if exact != exact.to_integral_value():
        raise PisaPulseError(f"codebook value {text} has more than {decimals} decimals")
    return int(exact)


@functools.cache
def _user_missing_ranges() -> dict[str, str]:
    """SPSS user-missing range per lower-case variable name ('95-99'), from the codebook CSV."""
    path = resources.files("pisa_pulse.pisa2018").joinpath("data", "variables.csv")
    with path.open(encoding="utf-8") as f:
        return {row["name"].lower(): row["spss_user_missing_range"] for row in csv.DictReader(f)}


def _range(text: str, decimals: int) -> tuple[int, int] | None:
    if not text.strip():
        return None
    match = re.fullmatch(r"\s*(-?[0-9.]+)\s*-\s*(-?[0-9.]+)\s*", text)
    if match is None:
        raise PisaPulseError(f"unreadable SPSS user-missing range {text!r} in the codebook")
    return _scaled(match[1], decimals), _scaled(match[2], decimals)


def _merged(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Overlapping or adjacent integer intervals joined (95, 97..99 and 95..99 -> 95..99)."""
    result: list[tuple[int, int]] = []
    for low, high in sorted(intervals):
        if result and low <= result[-1][1] + 1:
            result[-1] = (result[-1][0], max(result[-1][1], high))
        else:
            result.append((low, high))
    return tuple(result)


@functools.cache
def column_rules() -> tuple[ColumnRule, ...]:
    """The rule of each of `NUMERIC_COLUMNS`, in that order, read from the codebook."""
    by_name = {v.name: v for v in variables()}
    ranges = _user_missing_ranges()
    rules = []
    for name in NUMERIC_COLUMNS:
        v = by_name[name]
        missing = [(_scaled(c, v.decimals), _scaled(c, v.decimals)) for c in v.missing_codes]
        spss_range = _range(ranges.get(name, ""), v.decimals)
        if spss_range is not None:
            missing.append(spss_range)
        codes = frozenset(_scaled(c, v.decimals) for c in v.codes) if v.type == "categorical" else None
        rules.append(ColumnRule(name, v.decimals, _merged(missing), codes))
    return tuple(rules)


def parse_value(rule: ColumnRule, text: str | None) -> int:
    """One value as its scaled integer, or `MISSING` / `INVALID` (the rules of the module docstring)."""
    if text is None or text == "NA":
        return MISSING
    match = _NUMBER.fullmatch(text)
    if match is None:
        return INVALID
    sign, whole, fraction = match[1], match[2].lstrip("0"), match[3] or ""
    if len(whole) > 10:  # > 10 integer digits cannot fit int32 (and would be slow to convert)
        return INVALID
    d = rule.decimals
    kept, dropped = fraction[:d].ljust(d, "0"), fraction[d:]
    scaled = int(whole + kept) if whole or kept else 0
    if rule.codes is not None:
        if dropped.strip("0"):  # not exactly a code
            return INVALID
    elif dropped and dropped[0] >= "5":
        scaled += 1  # half away from zero: the magnitude goes up, the sign is applied after
    if sign:
        scaled = -scaled
    if not VALID_MIN <= scaled <= VALID_MAX or not rule.accepts(scaled):
        return INVALID
    return scaled


def parse_cnt(text: str | None) -> tuple[int, int | None]:
    """`cnt` as (status, country index or None): CNT_VALID, CNT_MISSING (None, 'NA') or CNT_INVALID."""
    if text is None or text == "NA":
        return CNT_MISSING, None
    index = COUNTRY_INDEX.get(text)
    return (CNT_INVALID, None) if index is None else (CNT_VALID, index)


def _fast_field(rule: ColumnRule) -> str:
    # Canonical text at the format's decimals with at most 9 digits: always fits int32, and
    # removing the point gives the scaled integer. Anything else takes the careful path.
    # Atomic groups and a possessive quantifier: a third faster than plain groups on a whole row.
    if rule.decimals == 0:
        return r"(?>-?[0-9]{1,9}+|NA)"
    return rf"(?>-?[0-9]{{1,{max(1, 9 - rule.decimals)}}}+\.[0-9]{{{rule.decimals}}}|NA)"


class RowParser:
    """Parses rows of one source into the ledger layout; rows with an invalid `cnt` go to its country."""

    def __init__(self, source_country: str) -> None:
        if source_country not in COUNTRY_INDEX:
            raise PisaPulseError(
                f"unknown source country {source_country!r}", "use an upper-case PISA 2018 CNT code"
            )
        self.source_country = source_country
        self.source_index = COUNTRY_INDEX[source_country]
        self._rules = column_rules()
        self._fast = re.compile(_SEPARATOR.join(_fast_field(r) for r in self._rules))
        # The same, with a group that takes whatever a field holds when it is not canonical: one match
        # says which fields need `parse_value`, instead of a match per field.
        self._sorting = re.compile(
            _SEPARATOR.join(f"(?:{_fast_field(r)}|([^{_SEPARATOR}]*))" for r in self._rules)
        )
        self._canonical = tuple(re.compile(_fast_field(r)).fullmatch for r in self._rules)
        # Columns whose canonical text can still be invalid (codes, user-missing ranges).
        self._checked = tuple(
            (i, r.codes, r.missing) for i, r in enumerate(self._rules) if r.codes is not None or r.missing
        )
        self._missing_text = str(MISSING)

    def parse_row(
        self, values: Sequence[object], minute: int, previous: Sequence[int] | None = None
    ) -> list[int]:
        """`CHART_COLUMNS` text values (None for NULL) as a ledger row arriving in `minute`.

        A value that is neither str nor None marks an unchanged (TOASTed) column: it keeps the
        value of `previous` (the row's former ledger row), or is missing if there is none.
        """
        if len(values) != len(CHART_COLUMNS):
            raise ValueError(f"expected {len(CHART_COLUMNS)} values (CHART_COLUMNS), got {len(values)}")
        try:
            joined = _SEPARATOR.join(values[2:])  # type: ignore[arg-type]  # TypeError: take the slow path
        except TypeError:
            return self._parse_slow(values, minute, previous)
        if self._fast.fullmatch(joined) is None:
            return self._parse_messy(joined, values, minute, previous)
        numbers = self._integers(joined)
        self._check(numbers)
        cnt = values[1]
        index = COUNTRY_INDEX.get(cnt) if type(cnt) is str else None
        if index is not None:
            return [index, minute, CNT_VALID, *numbers]
        return self._with_country(numbers, cnt, minute, previous)

    def parse_rows(self, rows: Sequence[Sequence[object]], minute: int) -> npt.NDArray[np.int32]:
        """`parse_row` of every row, as an (n, ROW_WIDTH) int32 block, the same integers: rows whose
        values are all canonical text (and whose cnt is a valid code) are converted together, in one
        numpy call over their joined text; the others one by one."""
        import numpy as np  # here: serving imports this module without numpy (see aggregates.py)

        block = np.empty((len(rows), ROW_WIDTH), dtype=np.int64)
        texts: list[str] = []
        at: list[int] = []
        countries: list[int] = []
        fast, country_of = self._fast.fullmatch, COUNTRY_INDEX.get
        for i, values in enumerate(rows):
            cnt = values[1] if len(values) == len(CHART_COLUMNS) else None  # else parse_row says why
            index = country_of(cnt) if type(cnt) is str else None
            try:
                joined = _SEPARATOR.join(values[2:])  # type: ignore[arg-type]  # TypeError: one by one
            except TypeError:
                index = None
            if index is not None and fast(joined) is not None:
                texts.append(joined)
                at.append(i)
                countries.append(index)
            else:
                block[i] = self.parse_row(values, minute)
        if texts:
            text = self._scaled(_SEPARATOR.join(texts))
            numbers = np.fromstring(text, dtype=np.int64, sep=_SEPARATOR).reshape(len(texts), -1)
            for i, codes, missing in self._checked:
                column = numbers[:, i]
                wrong = np.zeros(len(column), dtype=bool)
                if codes is not None:
                    wrong |= ~np.isin(column, sorted(codes))
                for low, high in missing:
                    wrong |= (column >= low) & (column <= high)
                column[wrong & (column != MISSING)] = INVALID
            block[at, COUNTRY] = countries
            block[at, ARRIVAL] = minute
            block[at, CNT_STATUS] = CNT_VALID
            block[at, FIRST_VALUE:] = numbers
        return block.astype(np.int32)

    def _scaled(self, joined: str) -> str:
        """Joined canonical text as its scaled integers' text: the points dropped, NA as `MISSING`."""
        return joined.replace(".", "").replace("NA", self._missing_text)

    def _integers(self, joined: str) -> list[int]:
        """Joined canonical text as its scaled integers."""
        return list(map(int, self._scaled(joined).split(_SEPARATOR)))

    def _check(self, numbers: list[int]) -> None:
        """Mark canonical numbers that are not category codes or are user-missing as INVALID."""
        for i, codes, missing in self._checked:
            value = numbers[i]
            if value == MISSING:
                continue
            if codes is not None and value not in codes:
                numbers[i] = INVALID
            for low, high in missing:
                if low <= value <= high:
                    numbers[i] = INVALID

    def _with_country(
        self, numbers: list[int], cnt: object, minute: int, previous: Sequence[int] | None
    ) -> list[int]:
        if cnt is None or isinstance(cnt, str):
            status, index = parse_cnt(cnt)
            return [self.source_index if index is None else index, minute, status, *numbers]
        if previous is not None:  # unchanged cnt
            return [previous[COUNTRY], minute, previous[CNT_STATUS], *numbers]
        return [self.source_index, minute, CNT_MISSING, *numbers]

    def _parse_messy(
        self, joined: str, values: Sequence[object], minute: int, previous: Sequence[int] | None
    ) -> list[int]:
        """Text values of which some are not canonical: those through `parse_value`, the rest as fast."""
        sorted_ = self._sorting.fullmatch(joined)
        if sorted_ is None or any(type(v) is not str for v in values[2:]):  # str subclasses: no shortcuts
            return self._parse_slow(values, minute, previous)
        messy = [(i, text) for i, text in enumerate(sorted_.groups()) if text is not None]
        fields = joined.split(_SEPARATOR)
        for i, _ in messy:
            fields[i] = "0"
        numbers = self._integers(_SEPARATOR.join(fields))
        for i, text in messy:
            numbers[i] = parse_value(self._rules[i], text)
        self._check(numbers)
        return self._with_country(numbers, values[1], minute, previous)

    def _parse_slow(self, values: Sequence[object], minute: int, previous: Sequence[int] | None) -> list[int]:
        # Value by value: canonical text still takes the quick conversion, the rest `parse_value`.
        numbers = []
        for i, (rule, canonical) in enumerate(zip(self._rules, self._canonical, strict=True), start=2):
            text = values[i]
            if type(text) is str:
                if text == "NA":
                    numbers.append(MISSING)
                elif canonical(text) is not None:
                    numbers.append(int(text.replace(".", "")))
                else:
                    numbers.append(parse_value(rule, text))
            elif text is None:
                numbers.append(MISSING)
            elif isinstance(text, str):  # a str subclass: no shortcuts
                numbers.append(parse_value(rule, text))
            else:  # unchanged: keep what the ledger had
                numbers.append(MISSING if previous is None else previous[FIRST_VALUE + i - 2])
        self._check(numbers)
        return self._with_country(numbers, values[1], minute, previous)
