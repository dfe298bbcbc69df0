"""The analytical store: what the pipeline computed, minute by minute, in DuckDB or PostgreSQL.

Two tables, the same in both back ends (README, "History"):

- `minutes (minute, source, written_at)`: one row per minute boundary and source written, the key
  that makes a repeat write nothing (a batch run replaces its own minute when run twice in it);
- `country_minutes (minute, source, country, rows, arrivals, <index>_valid, <index>_sum,
  <domain>_weights, <domain>_scores)`: each country's exact totals as the charts showed them at the
  end of that minute (the sums and counts behind every chart, not the rounded answers), and the rows
  that arrived during it. Sums are DECIMAL(38, 0): Σw·pv passes 2**63 at PISA's size.

`minute` is minutes since the Unix epoch (the minute that ended at its boundary). A minute is
written once, as it was shown then, and never rewritten. Reads are as of a minute (`as_of`): each
source's newest minute at or before it, since a batch run writes only the sources that changed, so
a source's minutes may be sparse; the store answers the minutes within its `span`, from the first
minute any source wrote to the last. The store carries its schema version
(`pisa_pulse_schema`) and migrates itself forward on open; a store newer than this version is
refused with the way out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pisa_pulse.engine.aggregates import CountryTotals
from pisa_pulse.errors import PisaPulseError
from pisa_pulse.sources.schema import DOMAINS, INDEX_COLUMNS

SCHEMA_VERSION = 1
TOTAL_COLUMNS = (
    *(f"{index}_{what}" for index in INDEX_COLUMNS for what in ("valid", "sum")),
    *(f"{domain}_{what}" for domain in DOMAINS for what in ("weights", "scores")),
)
COLUMNS = ("minute", "source", "country", "rows", "arrivals", *TOTAL_COLUMNS)
# Each version's statements, in both dialects (the types both DuckDB and PostgreSQL know).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE minutes (minute BIGINT NOT NULL, source VARCHAR NOT NULL, "
        "written_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (minute, source))",
        "CREATE TABLE country_minutes (minute BIGINT NOT NULL, source VARCHAR NOT NULL, "
        "country VARCHAR NOT NULL, rows BIGINT NOT NULL, arrivals BIGINT NOT NULL, "
        + ", ".join(f"{name} DECIMAL(38, 0) NOT NULL" for name in TOTAL_COLUMNS)
        + ", PRIMARY KEY (minute, source, country))",
    ),
}


@dataclass(frozen=True)
class CountryMinute:
    """One country's totals at the end of one minute, and the rows that arrived during it."""

    totals: CountryTotals
    arrivals: int


def row_of(minute: int, source: str, country: str, entry: CountryMinute) -> tuple[Any, ...]:
    t = entry.totals
    values = [v for index in INDEX_COLUMNS for v in (t.valid[index], t.sums[index])]
    values += [v for domain in DOMAINS for v in (t.weights[domain], t.weighted_scores[domain])]
    return (minute, source, country, t.rows, entry.arrivals, *values)


def entry_of(row: Sequence[Any]) -> CountryMinute:
    """A `country_minutes` row (without its key columns) back to totals (no arrival minutes)."""
    rows, arrivals, *values = (int(v) for v in row)
    return CountryMinute(totals_of(rows, values), arrivals)


def totals_of(rows: int, values: Sequence[int]) -> CountryTotals:
    """Totals from `rows` and the `TOTAL_COLUMNS` values, in their order."""
    k = 2 * len(INDEX_COLUMNS)
    return CountryTotals(
        rows=rows,
        valid={name: values[2 * i] for i, name in enumerate(INDEX_COLUMNS)},
        sums={name: values[2 * i + 1] for i, name in enumerate(INDEX_COLUMNS)},
        weights={name: values[k + 2 * d] for d, name in enumerate(DOMAINS)},
        weighted_scores={name: values[k + 2 * d + 1] for d, name in enumerate(DOMAINS)},
    )


class Store:
    """One connection to the store (see the module docstring). Not shared between threads."""

    def __init__(self, connection: Any, dialect: str, where: str) -> None:
        self.connection, self.dialect, self.where = connection, dialect, where
        self.mark = "?" if dialect == "duckdb" else "%s"

    @classmethod
    def open(cls, target: str, data_dir: Path) -> Store:
        """`duckdb` (the file history.duckdb in `data_dir`), `duckdb:PATH`, or a `postgresql://` DSN;
        migrated to this version's schema."""
        if target.startswith(("postgresql://", "postgres://")):
            from pisa_pulse.secret import scrub
            from pisa_pulse.sources.databases import connect

            store = cls(connect(target, autocommit=True), "postgresql", scrub(target))
            # Our reads take milliseconds; JIT compiling them took 1.2 s of a week's series' 1.8 s.
            store._run("SET jit = off")
        elif target == "duckdb" or target.startswith("duckdb:"):
            import duckdb

            path = Path(target.removeprefix("duckdb").removeprefix(":") or data_dir / "history.duckdb")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                connection = duckdb.connect(str(path))
            except duckdb.IOException as exc:  # another process has it open
                raise PisaPulseError(
                    f"the history store {path} is in use by another process ({exc})",
                    "stop the other serve, or give history.store a file of its own",
                ) from None
            store = cls(connection, "duckdb", str(path))
        else:
            raise PisaPulseError(
                f"history.store {target!r} is neither duckdb, duckdb:PATH nor a postgresql:// DSN",
                'write e.g. store = "duckdb" or store = "postgresql://analyst@warehouse/pisa"',
            )
        store.migrate()
        return store

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == "duckdb":  # its cursors are connections of their own: one transaction here
            answer = self.connection.execute(sql, tuple(params))
            return list(answer.fetchall()) if answer.description else []
        with self.connection.cursor() as cursor:
            cursor.execute(sql.replace("?", self.mark), tuple(params))
            return list(cursor.fetchall()) if cursor.description else []

    def _transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        self._run("BEGIN")
        try:
            for sql, params in statements:
                self._run(sql, params)
            self._run("COMMIT")
        except BaseException:
            self._run("ROLLBACK")
            raise

    def version(self) -> int:
        """The schema version the store holds (0: empty)."""
        found = self._run(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'pisa_pulse_schema'"
        )
        if not found[0][0]:
            return 0
        return int(self._run("SELECT max(version) FROM pisa_pulse_schema")[0][0] or 0)

    def migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`, one version per transaction."""
        held = self.version()
        if held > SCHEMA_VERSION:
            raise PisaPulseError(
                f"the history store {self.where} has schema {held}, newer than this version's "
                f"{SCHEMA_VERSION}",
                "upgrade pisa-pulse, or give history.store a store of its own",
            )
        if held == 0:
            self._transaction([("CREATE TABLE pisa_pulse_schema (version INTEGER NOT NULL)", ())])
        for version in range(held + 1, SCHEMA_VERSION + 1):
            steps = [(sql, ()) for sql in MIGRATIONS[version]]
            self._transaction([*steps, ("INSERT INTO pisa_pulse_schema VALUES (?)", (version,))])

    def write_minute(
        self, minute: int, source: str, countries: Mapping[str, CountryMinute], replace: bool = False
    ) -> bool:
        """Append one source's minute, once: False (and nothing written) when it is there already;
        with `replace` (a batch run's own minute, run twice within it) its rows are replaced."""
        there = bool(self._run("SELECT 1 FROM minutes WHERE minute = ? AND source = ?", (minute, source)))
        if there and not replace:
            return False
        marks = ", ".join("?" * len(COLUMNS))
        insert = f"INSERT INTO country_minutes ({', '.join(COLUMNS)}) VALUES ({marks})"
        key = (minute, source)
        self._transaction(
            [
                *(
                    (f"DELETE FROM {name} WHERE minute = ? AND source = ?", key)
                    for name in ("country_minutes", "minutes")
                    if there
                ),
                ("INSERT INTO minutes VALUES (?, ?, ?)", (minute, source, time.time())),
                *((insert, row_of(minute, source, code, entry)) for code, entry in sorted(countries.items())),
            ]
        )
        return True

    def last_minute(self, source: str, before: int | None = None) -> int | None:
        """The last minute written for `source` (before minute `before`, if given; None: none)."""
        bound = 2**62 if before is None else before
        found = self._run("SELECT max(minute) FROM minutes WHERE source = ? AND minute < ?", (source, bound))[
            0
        ][0]
        return None if found is None else int(found)

    def minute(self, minute: int) -> dict[str, dict[str, CountryMinute]]:
        """Every source's countries as written for `minute` (empty: not written)."""
        columns = ", ".join(COLUMNS[1:3] + COLUMNS[3:])
        result: dict[str, dict[str, CountryMinute]] = {}
        for source, country, *values in self._run(
            f"SELECT {columns} FROM country_minutes WHERE minute = ? ORDER BY source, country", (minute,)
        ):
            result.setdefault(source, {})[country] = entry_of(values)
        return result

    def span(self) -> tuple[int, int] | None:
        """The oldest and the newest minute any source wrote (None: nothing written): the minutes the
        store can answer as of."""
        first, last = self._run("SELECT min(minute), max(minute) FROM minutes")[0]
        return None if first is None else (int(first), int(last))

    def shown_sources(self) -> set[str]:
        """The sources whose newest minute holds countries: those the charts show as of the newest
        minute (a source written with none, `write_minute(m, s, {})`, has been removed by then)."""
        span = self.span()
        return set() if span is None else set(self.as_of(span[1]))

    def as_of(self, minute: int) -> dict[str, dict[str, CountryMinute]]:
        """Every source's countries as they stood at the end of `minute`: each source's newest minute at
        or before it (a batch run writes a source only when it changed, so its minutes are sparse)."""
        columns = ", ".join(f"c.{name}" for name in COLUMNS[1:])
        result: dict[str, dict[str, CountryMinute]] = {}
        for source, country, *values in self._run(
            f"SELECT {columns} FROM country_minutes c JOIN (SELECT source, max(minute) AS minute FROM "
            "minutes WHERE minute <= ? GROUP BY source) n ON c.source = n.source AND c.minute = n.minute "
            "ORDER BY c.source, c.country",
            (minute,),
        ):
            result.setdefault(source, {})[country] = entry_of(values)
        return result

    def series_changes(self, first: int, last: int, step: int) -> list[tuple[int, str, list[int]]]:
        """For the points first, first + step, ... up to `last` (step at most last - first, or 1 for one
        point): per point and country, how much the country's totals summed over sources (`rows`, then
        `TOTAL_COLUMNS`) changed since the point before; at `first`, its totals as of it. Summed up
        point by point they are each point's `as_of` totals summed over sources, read in one statement
        that sums in the store: per source, its newest minute at or before each point (the first) or
        within each step, less the one before it. Ordered by point and country; only points where a
        source wrote appear."""
        key = ("rows", *TOTAL_COLUMNS)
        now = ", ".join(f"c.{name} AS {name}" for name in key)
        before = ", ".join(f"-c.{name}" for name in key)
        sums = ", ".join(f"CAST(sum(d.{name}) AS VARCHAR)" for name in key)
        # The point ending a minute's step: `first` up to it, else the first point at or after it
        point = "CASE WHEN minute <= ? THEN ? ELSE minute + ? - mod(minute + ?, ?) END"
        found = self._run(
            f"WITH steps AS (SELECT source, {point} AS point, minute FROM minutes WHERE minute <= ?), "
            "keys AS (SELECT source, point, max(minute) AS minute FROM steps GROUP BY source, point), "
            "changes AS (SELECT source, point, minute, "
            "lag(minute) OVER (PARTITION BY source ORDER BY minute) AS before FROM keys), "
            f"deltas AS (SELECT k.point, c.country, {now} FROM changes k JOIN country_minutes c "
            "ON c.source = k.source AND c.minute = k.minute "
            f"UNION ALL SELECT k.point, c.country, {before} FROM changes k JOIN country_minutes c "
            "ON c.source = k.source AND c.minute = k.before) "
            f"SELECT d.point, d.country, {sums} FROM deltas d GROUP BY d.point, d.country "
            "ORDER BY d.point, d.country",
            (first, first, step - 1, step - 1 - first, step, last),
        )
        return [(int(at), country, [int(v) for v in values]) for at, country, *values in found]

    def arrivals_per_minute(self, after: int, last: int) -> dict[int, int]:
        """The rows that arrived in each written minute in (after, last], over all sources and countries."""
        return {
            int(minute): int(rows)
            for minute, rows in self._run(
                "SELECT minute, sum(arrivals) FROM country_minutes WHERE minute > ? AND minute <= ? "
                "AND arrivals > 0 GROUP BY minute ORDER BY minute",
                (after, last),
            )
        }

    def arrivals(self, first: int, last: int) -> dict[str, dict[int, int]]:
        """Per country, the rows that arrived in each minute from `first` to `last` (written ones)."""
        result: dict[str, dict[int, int]] = {}
        for country, minute, rows in self._run(
            "SELECT country, minute, sum(arrivals) FROM country_minutes WHERE minute BETWEEN ? AND ? "
            "AND arrivals > 0 GROUP BY country, minute ORDER BY country, minute",
            (first, last),
        ):
            result.setdefault(country, {})[int(minute)] = int(rows)
        return result

    def prune(self, before: int) -> int:
        """Delete the minutes before `before` (the retention); how many minute rows went."""
        gone = int(self._run("SELECT count(*) FROM minutes WHERE minute < ?", (before,))[0][0])
        self._transaction(
            [
                ("DELETE FROM country_minutes WHERE minute < ?", (before,)),
                ("DELETE FROM minutes WHERE minute < ?", (before,)),
            ]
        )
        return gone

    def close(self) -> None:
        self.connection.close()
