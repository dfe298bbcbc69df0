"""The independent oracle: the six charts' expected JSON from the sources, sharing no rule with pisa_pulse.

`engine/oracle.py` (and with it direct mode) reads its rules from `engine/values.py`: the number
pattern, the country list, the bounds and the codebook reader. A mistake there would pass both
sides. This module imports nothing from `pisa_pulse`: every rule below is written out by hand from
the published facts, with where each comes from, and the charts are computed from SQL sums over
each source database (psycopg2 on its DSN) and rounded in Python in exact arithmetic.

Where the facts come from:
- **The columns** the charts read: `cnt`, DURECEC and BELONG (chart 3), ESCS (chart 4), TMINS
  (chart 5), W_FSTUWT and PV1..PV10 of MATH, READ and SCIE (chart 6): shared/reference/forage/
  CHARTS.md names the indices, the README says chart 6 is the W_FSTUWT-weighted mean score over the
  ten plausible values.
- **Formats, codes and missing values**: the PISA 2018 codebook rows in shared/data/pisa2018/
  variables.csv (the same file as src/pisa_pulse/pisa2018/data/variables.csv), read by eye:
    DURECEC  categorical, F2.0, codes 0..8, missing 95=Valid Skip 97=N/A 98=Invalid 99=No Response,
             SPSS user-missing range 95-99
    BELONG   numeric, F7.4, missing 95/97/98/99, range 95-99
    ESCS     numeric, F7.4, missing 95/97/98/99, range 95-99
    TMINS    numeric, F8.0, missing 99999995/99999997/99999998/99999999, range 99999995-99999999
    W_FSTUWT numeric, F8.5, no missing codes, no range
    PVs      numeric, F8.3, no missing codes, no range
    CNT      A3; the 79 PISA 2018 participants are the rows of shared/data/pisa2018/country_stats.csv
             (value_labels.csv lists 82 CNT labels: the three more, QMC, QMR and QRT, are Russian
             regions that are not participants of their own and have no database)
- **Reading text** (README "Pipeline", CHARTS.md "Data the original databases held"): values are
  text, `NA` (or SQL NULL) is missing; anything present that is not a plain decimal number
  (`-?digits[.digits]`, no blanks, no `+`, no exponent, no comma) is invalid; a number is taken at
  its codebook format's decimals (README: "fixed-point integers at the codebook's decimals"),
  rounded half away from zero as PostgreSQL's `round(numeric, d)` does; a number in the missing
  range or equal to a missing code is invalid; a categorical value is valid only if it equals a
  category code exactly (before rounding: '3.0' is 3, '2.5' is nothing). No other bound: the codebook
  gives none (its valid min/max columns are what a 1,269-student subset happened to hold). (The
  engine also refuses a number whose value times 10^decimals does not fit 32 bits, e.g. a PV of
  2147483.648: a storage limit, not a codebook rule; no test here writes one. And a number of more
  than 131,072 digits would make PostgreSQL's numeric cast fail here.)
- **Country of a row**: its `cnt` when that is exactly one of the 79 codes, else the country of the
  database it is in (one database per country, CHARTS.md).
- **Rounding for display**. CHARTS.md says DURECEC's mean is shown as an integer, BELONG and ESCS as
  floats, hours = round(mean TMINS / 60) as an integer; it names no decimals and no tie rule. The
  decimals are the API's documented ones (README examples, 4 for BELONG and ESCS, the codebook's
  precision; 1 for scores). Ties: half away from zero, in exact decimal arithmetic: the rule the
  engine's own docstrings give for DURECEC's integer and the hours (engine/aggregates.py, read, not
  imported) and the one PostgreSQL's round(numeric) uses; so 2.5 -> 3, 26.5 -> 27, 0.00015 -> 0.0002,
  500.25 -> 500.3, -0.12345 -> -0.1235. (Half to even would differ on 2.5, 26.5 and 500.25; binary
  floating point on 0.00015 and 500.25.)
- **Means**: over valid values; a country without one shows null. Chart 6: every valid
  (W_FSTUWT, PV) pair of a row is one observation of weight W_FSTUWT: mean = sum(w * pv) / sum(w)
  over those pairs (PISA's mean of ten weighted means when all ten PVs are valid); null when the
  weights sum to 0.
- **Per-country charts** list the requested countries that have rows, in the order asked (every
  country with rows, by code, when none are asked), README "The chart API".
- **Submissions over time**: the last 12 UTC hours ending now, "HH:00", one point each, zeros
  included, counting rows by arrival hour; rows present before capture started are left out. SQL
  cannot see arrival, so the caller says how many rows arrived in which hour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

import psycopg2
from psycopg2 import sql

# -- the rule table, by hand ---------------------------------------------------------------------------

Kind = Literal["numeric", "categorical"]

# A whole text value that is a plain decimal number (PostgreSQL ARE, used with `~`): ASCII digits,
# an optional leading minus, an optional fraction with at least one digit. No blanks, no '+', no
# exponent, no thousands separator, no bare '.5' or '5.'.
NUMBER_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"

MISSING_TEXT = "NA"  # the literal the original databases used for missing (SQL NULL is missing too)

TABLE_NAME = "responses"
COUNTRY_COLUMN = "cnt"
WEIGHT = "w_fstuwt"


@dataclass(frozen=True)
class Rule:
    """One chart column as the PISA 2018 codebook describes it."""

    column: str  # lower-case name, as the `responses` column is named
    kind: Kind
    spss_format: str  # F<width>.<decimals>
    missing_codes: tuple[str, ...] = ()  # PISA's user-missing codes (valid skip, n/a, invalid, no response)
    missing_range: tuple[str, str] | None = None  # SPSS user-missing range, inclusive
    categories: tuple[str, ...] | None = None  # valid codes of a categorical variable

    @property
    def decimals(self) -> int:
        """The format's decimals (F7.4 -> 4)."""
        return int(self.spss_format.split(".")[1])


_PV = "F8.3"  # every plausible value: numeric, F8.3, no missing codes or range
RULES: tuple[Rule, ...] = (
    Rule(
        "durecec",
        "categorical",
        "F2.0",
        missing_codes=("95", "97", "98", "99"),
        missing_range=("95", "99"),
        categories=("0", "1", "2", "3", "4", "5", "6", "7", "8"),
    ),
    Rule("belong", "numeric", "F7.4", missing_codes=("95", "97", "98", "99"), missing_range=("95", "99")),
    Rule("escs", "numeric", "F7.4", missing_codes=("95", "97", "98", "99"), missing_range=("95", "99")),
    Rule(
        "tmins",
        "numeric",
        "F8.0",
        missing_codes=("99999995", "99999997", "99999998", "99999999"),
        missing_range=("99999995", "99999999"),
    ),
    Rule("w_fstuwt", "numeric", "F8.5"),
    Rule("pv1math", "numeric", _PV),
    Rule("pv2math", "numeric", _PV),
    Rule("pv3math", "numeric", _PV),
    Rule("pv4math", "numeric", _PV),
    Rule("pv5math", "numeric", _PV),
    Rule("pv6math", "numeric", _PV),
    Rule("pv7math", "numeric", _PV),
    Rule("pv8math", "numeric", _PV),
    Rule("pv9math", "numeric", _PV),
    Rule("pv10math", "numeric", _PV),
    Rule("pv1read", "numeric", _PV),
    Rule("pv2read", "numeric", _PV),
    Rule("pv3read", "numeric", _PV),
    Rule("pv4read", "numeric", _PV),
    Rule("pv5read", "numeric", _PV),
    Rule("pv6read", "numeric", _PV),
    Rule("pv7read", "numeric", _PV),
    Rule("pv8read", "numeric", _PV),
    Rule("pv9read", "numeric", _PV),
    Rule("pv10read", "numeric", _PV),
    Rule("pv1scie", "numeric", _PV),
    Rule("pv2scie", "numeric", _PV),
    Rule("pv3scie", "numeric", _PV),
    Rule("pv4scie", "numeric", _PV),
    Rule("pv5scie", "numeric", _PV),
    Rule("pv6scie", "numeric", _PV),
    Rule("pv7scie", "numeric", _PV),
    Rule("pv8scie", "numeric", _PV),
    Rule("pv9scie", "numeric", _PV),
    Rule("pv10scie", "numeric", _PV),
)
BY_COLUMN: dict[str, Rule] = {r.column: r for r in RULES}

INDICES = ("durecec", "belong", "escs", "tmins")  # the means of charts 3, 4 and 5
# Chart 6's domains: its JSON key and the PV columns' suffix.
DOMAINS: dict[str, str] = {"reading": "read", "mathematics": "math", "science": "scie"}

# The 79 PISA 2018 participants (shared/data/pisa2018/country_stats.csv, column iso3), by hand.
COUNTRIES: tuple[str, ...] = (
    "ALB", "ARE", "ARG", "AUS", "AUT", "BEL", "BGR", "BIH", "BLR", "BRA",
    "BRN", "CAN", "CHE", "CHL", "COL", "CRI", "CZE", "DEU", "DNK", "DOM",
    "ESP", "EST", "FIN", "FRA", "GBR", "GEO", "GRC", "HKG", "HRV", "HUN",
    "IDN", "IRL", "ISL", "ISR", "ITA", "JOR", "JPN", "KAZ", "KOR", "KSV",
    "LBN", "LTU", "LUX", "LVA", "MAC", "MAR", "MDA", "MEX", "MKD", "MLT",
    "MNE", "MYS", "NLD", "NOR", "NZL", "PAN", "PER", "PHL", "POL", "PRT",
    "QAT", "QAZ", "QCI", "QCY", "ROU", "RUS", "SAU", "SGP", "SRB", "SVK",
    "SVN", "SWE", "TAP", "THA", "TUR", "UKR", "URY", "USA", "VNM",
)  # fmt: skip

# Display rounding (CHARTS.md and README, see the module docstring): decimals per shown number.
DISPLAY_DECIMALS = {"durecec": 0, "belong": 4, "escs": 4, "hours": 0, "score": 1}
MINUTES_PER_HOUR = 60
WINDOW_HOURS = 12  # submissions-over-time without ?hours=


# -- exact sums per country, from SQL --------------------------------------------------------------------


@dataclass
class CountryTotals:
    """One country's exact sums over its rows (values as the codebook format reads them)."""

    rows: int = 0
    valid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INDICES, 0))
    sums: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(INDICES, Decimal(0)))
    weights: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(DOMAINS, Decimal(0)))
    weighted: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(DOMAINS, Decimal(0)))

    def add(self, other: CountryTotals) -> None:
        """Add another source's sums for the same country."""
        self.rows += other.rows
        for name in INDICES:
            self.valid[name] += other.valid[name]
            self.sums[name] += other.sums[name]
        for domain in DOMAINS:
            self.weights[domain] += other.weights[domain]
            self.weighted[domain] += other.weighted[domain]


def _checked_value(rule: Rule, params: dict[str, object]) -> sql.Composable:
    """The column's number at its format's decimals when the table says it is valid, else NULL."""
    col = sql.Identifier(rule.column)
    key = rule.column
    params[f"{key}_decimals"] = rule.decimals
    number = sql.SQL("round({col}::numeric, {d})").format(col=col, d=sql.Placeholder(f"{key}_decimals"))
    conditions: list[sql.Composable] = [sql.SQL("true")]
    if rule.categories is not None:
        params[f"{key}_categories"] = [Decimal(c) for c in rule.categories]
        conditions.append(
            sql.SQL("{col}::numeric = ANY({codes})").format(
                col=col, codes=sql.Placeholder(f"{key}_categories")
            )
        )
    if rule.missing_codes:
        params[f"{key}_missing"] = [Decimal(c) for c in rule.missing_codes]
        conditions.append(
            sql.SQL("NOT {n} = ANY({codes})").format(n=number, codes=sql.Placeholder(f"{key}_missing"))
        )
    if rule.missing_range is not None:
        params[f"{key}_low"], params[f"{key}_high"] = (Decimal(v) for v in rule.missing_range)
        conditions.append(
            sql.SQL("NOT {n} BETWEEN {low} AND {high}").format(
                n=number, low=sql.Placeholder(f"{key}_low"), high=sql.Placeholder(f"{key}_high")
            )
        )
    # Nested CASEs: the casts run only on text that matched the pattern (a CASE's branches are lazy).
    return sql.SQL("CASE WHEN {col} ~ %(number)s THEN CASE WHEN {ok} THEN {n} END END").format(
        col=col, ok=sql.SQL(" AND ").join(conditions), n=number
    )


def totals_statement(source_country: str) -> tuple[sql.Composed, dict[str, object]]:
    """One source's per-country sums as one SQL statement, and its parameters."""
    params: dict[str, object] = {
        "number": NUMBER_PATTERN,
        "countries": list(COUNTRIES),
        "source": source_country,
    }
    cnt = sql.Identifier(COUNTRY_COLUMN)
    read = [
        sql.SQL("CASE WHEN {cnt} = ANY(%(countries)s) THEN {cnt} ELSE %(source)s END AS country").format(
            cnt=cnt
        )
    ] + [sql.SQL("{} AS {}").format(_checked_value(r, params), sql.Identifier(r.column)) for r in RULES]
    sums: list[sql.Composable] = [sql.SQL("country"), sql.SQL("count(*)")]
    for name in INDICES:
        sums.append(sql.SQL("count({c}), coalesce(sum({c}), 0)").format(c=sql.Identifier(name)))
    w = sql.Identifier(WEIGHT)
    for suffix in DOMAINS.values():
        pvs = [sql.Identifier(f"pv{i}{suffix}") for i in range(1, 11)]
        valid_pvs = sql.SQL(" + ").join(sql.SQL("({} IS NOT NULL)::int").format(pv) for pv in pvs)
        pv_sum = sql.SQL(" + ").join(sql.SQL("coalesce({}, 0)").format(pv) for pv in pvs)
        # A row with no valid weight adds NULL, which sum() skips: its PVs count for nothing.
        sums.append(sql.SQL("coalesce(sum({w} * ({n})), 0)").format(w=w, n=valid_pvs))
        sums.append(sql.SQL("coalesce(sum({w} * ({s})), 0)").format(w=w, s=pv_sum))
    statement = sql.SQL("SELECT {sums} FROM (SELECT {read} FROM {table}) AS checked GROUP BY country").format(
        sums=sql.SQL(", ").join(sums),
        read=sql.SQL(", ").join(read),
        table=sql.Identifier(TABLE_NAME),
    )
    return statement, params


def _fetch(dsn: str, statement: sql.Composable, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
    """All rows of one statement on one source (a connection of its own, closed after)."""
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def source_totals(dsn: str, source_country: str) -> dict[str, CountryTotals]:
    """Per-country sums of the rows of one source database (`source_country`: its upper-case code)."""
    statement, params = totals_statement(source_country)
    result = _fetch(dsn, statement, params)
    totals: dict[str, CountryTotals] = {}
    for country, rows, *numbers in result:
        t = CountryTotals(rows=int(rows))
        for k, name in enumerate(INDICES):
            t.valid[name] = int(numbers[2 * k])
            t.sums[name] = Decimal(numbers[2 * k + 1])
        first = 2 * len(INDICES)
        for d, domain in enumerate(DOMAINS):
            t.weights[domain] = Decimal(numbers[first + 2 * d])
            t.weighted[domain] = Decimal(numbers[first + 2 * d + 1])
        totals[str(country)] = t
    return totals


def all_totals(sources: Mapping[str, str]) -> dict[str, CountryTotals]:
    """Per-country sums over every source: `sources` maps a source's country code to its DSN."""
    merged: dict[str, CountryTotals] = {}
    for code, dsn in sources.items():
        for country, t in source_totals(dsn, code.upper()).items():
            merged.setdefault(country, CountryTotals()).add(t)
    return {c: merged[c] for c in sorted(merged) if merged[c].rows}


def ids_of(dsn: str) -> list[int]:
    """Every id in a source's table (to tell later which rows arrived after a moment)."""
    rows = _fetch(dsn, sql.SQL("SELECT id FROM {}").format(sql.Identifier(TABLE_NAME)), {})
    return [int(row[0]) for row in rows]


def rows_not_in(dsn: str, ids: Sequence[int]) -> int:
    """How many rows of a source have an id that is not one of `ids`."""
    statement = sql.SQL("SELECT count(*) FROM {} WHERE NOT (id = ANY(%(ids)s::bigint[]))").format(
        sql.Identifier(TABLE_NAME)
    )
    return int(_fetch(dsn, statement, {"ids": list(ids)})[0][0])


# -- display rounding, exact ------------------------------------------------------------------------------


def round_half_away(value: Fraction, decimals: int) -> Decimal:
    """`value` rounded to `decimals` places, ties away from zero, with no binary floating point."""
    scaled = abs(value) * 10**decimals
    whole = int(scaled)  # floor: scaled >= 0
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    return Decimal(-whole if value < 0 else whole).scaleb(-decimals)


def _mean(total: Decimal, n: int | Decimal) -> Fraction | None:
    return Fraction(total) / Fraction(n) if n else None


def _shown_float(value: Fraction | None, decimals: int) -> float | None:
    return None if value is None else float(round_half_away(value, decimals))


def _shown_int(value: Fraction | None) -> int | None:
    return None if value is None else int(round_half_away(value, 0))


# -- the six charts' bodies ---------------------------------------------------------------------------------


def shown_countries(totals: Mapping[str, CountryTotals], asked: Sequence[str] | None) -> list[str]:
    """The countries a per-country chart lists: those asked (upper-cased, first time each) with rows,
    in the order asked; every country with rows, by code, when none are asked."""
    if asked is None:
        return sorted(totals)
    wanted = dict.fromkeys(code.strip().upper() for code in asked)
    return [c for c in wanted if c in totals]


def submissions(totals: Mapping[str, CountryTotals]) -> dict[str, Any]:
    """Chart 1."""
    return {"count": sum(t.rows for t in totals.values())}


def submissions_over_time(now: float, arrivals: Mapping[int, int]) -> dict[str, Any]:
    """Chart 2 over the default window: `arrivals` maps an hour (Unix time // 3600) to its rows."""
    last = int(now // 3600)
    data = [
        {
            "x": datetime.fromtimestamp(hour * 3600, UTC).strftime("%H:%M"),
            "y": arrivals.get(hour, 0),
        }
        for hour in range(last - WINDOW_HOURS + 1, last + 1)
    ]
    return {"datasets": [{"id": "Submissions", "data": data}]}


def early_education_and_belonging(
    totals: Mapping[str, CountryTotals], asked: Sequence[str] | None
) -> dict[str, Any]:
    """Chart 3."""
    datasets = []
    for c in shown_countries(totals, asked):
        t = totals[c]
        x = _shown_int(_mean(t.sums["durecec"], t.valid["durecec"]))
        y = _shown_float(_mean(t.sums["belong"], t.valid["belong"]), DISPLAY_DECIMALS["belong"])
        datasets.append({"id": c, "data": [{"x": x, "y": y, "submissions": t.rows}]})
    return {"datasets": datasets}


def escs(totals: Mapping[str, CountryTotals], asked: Sequence[str] | None) -> dict[str, Any]:
    """Chart 4."""
    return {
        "datasets": [
            {
                "id": c,
                "value": _shown_float(
                    _mean(totals[c].sums["escs"], totals[c].valid["escs"]), DISPLAY_DECIMALS["escs"]
                ),
            }
            for c in shown_countries(totals, asked)
        ]
    }


def learning_hours_per_week(
    totals: Mapping[str, CountryTotals], asked: Sequence[str] | None
) -> dict[str, Any]:
    """Chart 5: hours = round(mean TMINS / 60)."""
    datasets = []
    for c in shown_countries(totals, asked):
        minutes = _mean(totals[c].sums["tmins"], totals[c].valid["tmins"])
        hours = None if minutes is None else minutes / MINUTES_PER_HOUR
        datasets.append({"country": c, "hours": _shown_int(hours)})
    return {"datasets": datasets}


def performance(totals: Mapping[str, CountryTotals], asked: Sequence[str] | None) -> dict[str, Any]:
    """Chart 6: the W_FSTUWT-weighted mean over valid (weight, PV) pairs per domain."""
    datasets = []
    for c in shown_countries(totals, asked):
        t = totals[c]
        entry: dict[str, Any] = {"id": c}
        for domain in DOMAINS:
            entry[domain] = _shown_float(
                _mean(t.weighted[domain], t.weights[domain]), DISPLAY_DECIMALS["score"]
            )
        entry["submissions"] = t.rows
        datasets.append(entry)
    return {"datasets": datasets}


def exact_means(totals: Mapping[str, CountryTotals], digits: int = 12) -> dict[str, dict[str, str]]:
    """Every country's means before display rounding, to `digits` decimals (to explain a difference:
    a value that ends in 5 just past the shown decimals is a tie)."""
    result = {}
    for c, t in totals.items():
        means = {name: _mean(t.sums[name], t.valid[name]) for name in INDICES}
        means |= {domain: _mean(t.weighted[domain], t.weights[domain]) for domain in DOMAINS}
        result[c] = {k: "null" if v is None else str(round_half_away(v, digits)) for k, v in means.items()}
    return result


PER_COUNTRY = ("early-education-and-belonging", "escs", "learning-hours-per-week", "performance")
CHART_NAMES = ("submissions", "submissions-over-time", *PER_COUNTRY)


def chart_bodies(
    totals: Mapping[str, CountryTotals],
    now: float,
    arrivals: Mapping[int, int],
    asked: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every chart's expected body by name; `asked`: the per-country charts' ?countries=, if any."""
    return {
        "submissions": submissions(totals),
        "submissions-over-time": submissions_over_time(now, arrivals),
        "early-education-and-belonging": early_education_and_belonging(totals, asked),
        "escs": escs(totals, asked),
        "learning-hours-per-week": learning_hours_per_week(totals, asked),
        "performance": performance(totals, asked),
    }
