"""The engine's aggregates computed directly by SQL on one source: the correctness oracle and "direct" mode.

`aggregates_from_sql` runs one statement that applies the rules of `values.py` in SQL: the same
number pattern (a regular expression over the whole text), `round(x::numeric, d)` (half away from
zero, as the engine rounds), the same user-missing intervals and category codes, the same int32
range, and the same country rule (a valid `cnt`, else the source's country). Sums are numeric, so
the result is the same exact integers the engine holds. The one thing SQL cannot know is when a row
arrived: all rows are put in minute -1 (the initial copy), or in none with `arrivals=False`.

A value longer than PostgreSQL's numeric limit (131,072 digits before the point) makes the oracle
fail where the engine calls it invalid; no other difference is known.
"""

from __future__ import annotations

from collections.abc import Collection

from psycopg2 import sql
from psycopg2.extensions import connection

from pisa_pulse.capture.contract import INITIAL_COPY_MINUTE
from pisa_pulse.engine.aggregates import Aggregates, CountryTotals
from pisa_pulse.engine.values import (
    COUNTED_COLUMNS,
    COUNTRY_CODES,
    NUMBER_PATTERN,
    VALID_MAX,
    VALID_MIN,
    ColumnRule,
    column_rules,
)
from pisa_pulse.sources.schema import DOMAINS, INDEX_COLUMNS, TABLE, WEIGHT_COLUMN

_PARAMS: dict[str, object] = {
    "number": f"^{NUMBER_PATTERN}$",
    "countries": list(COUNTRY_CODES),
    "valid_min": VALID_MIN,
    "valid_max": VALID_MAX,
}


def _value(rule: ColumnRule, params: dict[str, object]) -> sql.Composable:
    """The column's scaled bigint when valid, else NULL (the rules of values.py)."""
    col = sql.Identifier(rule.name)
    key = rule.name
    params[f"{key}_decimals"], params[f"{key}_scale"] = rule.decimals, rule.scale
    scaled = sql.SQL("round({col}::numeric, {d}) * {scale}").format(
        col=col, d=sql.Placeholder(f"{key}_decimals"), scale=sql.Placeholder(f"{key}_scale")
    )
    # Every condition on the number sits inside the CASE that matched the pattern, so no cast fails.
    conditions = [sql.SQL("{} BETWEEN %(valid_min)s AND %(valid_max)s").format(scaled)]
    if rule.codes is not None:  # exactly a code: compared before rounding
        params[f"{key}_codes"] = sorted(rule.codes)
        conditions.append(
            sql.SQL("{col}::numeric * {scale} = ANY({codes}::numeric[])").format(
                col=col,
                scale=sql.Placeholder(f"{key}_scale"),
                codes=sql.Placeholder(f"{key}_codes"),
            )
        )
    for n, (low, high) in enumerate(rule.missing):
        params[f"{key}_low{n}"], params[f"{key}_high{n}"] = low, high
        conditions.append(
            sql.SQL("NOT ({} BETWEEN {} AND {})").format(
                scaled, sql.Placeholder(f"{key}_low{n}"), sql.Placeholder(f"{key}_high{n}")
            )
        )
    return sql.SQL("CASE WHEN {col} ~ %(number)s THEN CASE WHEN {ok} THEN ({scaled})::bigint END END").format(
        col=col, ok=sql.SQL(" AND ").join(conditions), scaled=scaled
    )


def _checked_rows(params: dict[str, object], columns: Collection[str] | None) -> sql.Composable:
    """SELECT each row's country and the numeric columns' checked values FROM responses.

    Columns left out of `columns` (when given) are NULL: not read, and counted as never valid.
    """
    values = [
        sql.SQL("{} AS {}").format(
            _value(rule, params) if columns is None or rule.name in columns else sql.SQL("NULL::bigint"),
            sql.Identifier(rule.name),
        )
        for rule in column_rules()
    ]
    return sql.SQL(
        "SELECT CASE WHEN cnt = ANY(%(countries)s) THEN cnt ELSE %(source)s END AS country, {values} "
        "FROM {table}"
    ).format(values=sql.SQL(", ").join(values), table=sql.Identifier(TABLE))


def aggregates_statement(
    source_country: str, columns: Collection[str] | None = None
) -> tuple[sql.Composable, dict[str, object]]:
    """The SQL of `aggregates_from_sql` and its parameters (for logging and benchmarks)."""
    params = dict(_PARAMS, source=source_country)
    selected: list[sql.Composable] = [sql.SQL("country"), sql.SQL("count(*)")]
    for name in INDEX_COLUMNS:
        selected += [sql.SQL("count({})").format(sql.Identifier(name))]
        selected += [sql.SQL("coalesce(sum({}), 0)").format(sql.Identifier(name))]
    weight = sql.Identifier(WEIGHT_COLUMN)
    for domain in DOMAINS:
        pvs = [sql.Identifier(f"pv{i}{domain}") for i in range(1, 11)]
        present = sql.SQL("num_nonnulls({})").format(sql.SQL(", ").join(pvs))
        total = sql.SQL(" + ").join(sql.SQL("coalesce({}, 0)").format(pv) for pv in pvs)
        selected += [sql.SQL("coalesce(sum({}::numeric * {}), 0)").format(weight, present)]
        selected += [sql.SQL("coalesce(sum({}::numeric * ({})), 0)").format(weight, total)]
    statement = sql.SQL("SELECT {selected} FROM ({rows}) AS checked GROUP BY country").format(
        selected=sql.SQL(", ").join(selected), rows=_checked_rows(params, columns)
    )
    return statement, params


def aggregates_from_sql(
    conn: connection, source_country: str, *, arrivals: bool = True, columns: Collection[str] | None = None
) -> Aggregates:
    """One source's aggregates by SQL; every row arrives in minute -1, or in none if not `arrivals`."""
    statement, params = aggregates_statement(source_country, columns)
    with conn.cursor() as cur:
        cur.execute(statement, params)
        result = cur.fetchall()
    totals = {}
    for country, rows, *numbers in result:
        n = [int(x) for x in numbers]
        k = len(INDEX_COLUMNS)
        totals[country] = CountryTotals(
            rows=int(rows),
            valid={name: n[2 * i] for i, name in enumerate(INDEX_COLUMNS)},
            sums={name: n[2 * i + 1] for i, name in enumerate(INDEX_COLUMNS)},
            weights={name: n[2 * k + 2 * d] for d, name in enumerate(DOMAINS)},
            weighted_scores={name: n[2 * k + 2 * d + 1] for d, name in enumerate(DOMAINS)},
            minutes={INITIAL_COPY_MINUTE: int(rows)} if arrivals else {},
        )
    return Aggregates.from_totals(totals)


def column_counts_from_sql(conn: connection) -> tuple[dict[str, int], dict[str, int]]:
    """Per column of `COUNTED_COLUMNS`: (rows whose value is missing, rows whose value is invalid)."""
    params = dict(_PARAMS)
    selected: list[sql.Composable] = [
        sql.SQL("count(*)"),
        sql.SQL("count(*) FILTER (WHERE cnt = ANY(%(countries)s))"),
    ]
    for name in COUNTED_COLUMNS:
        col = sql.Identifier(name)
        selected.append(sql.SQL("count(*) FILTER (WHERE {col} IS NULL OR {col} = 'NA')").format(col=col))
    selected += [sql.SQL("count({})").format(_value(rule, params)) for rule in column_rules()]
    statement = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(selected), sql.Identifier(TABLE))
    with conn.cursor() as cur:
        cur.execute(statement, params)
        row = cur.fetchone()
    assert row is not None
    total, cnt_valid = int(row[0]), int(row[1])
    missing = [int(x) for x in row[2 : 2 + len(COUNTED_COLUMNS)]]
    valid = [cnt_valid, *(int(x) for x in row[2 + len(COUNTED_COLUMNS) :])]
    invalid = [total - m - v for m, v in zip(missing, valid, strict=True)]
    return dict(zip(COUNTED_COLUMNS, missing, strict=True)), dict(zip(COUNTED_COLUMNS, invalid, strict=True))
