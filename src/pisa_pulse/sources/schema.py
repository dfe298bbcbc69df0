"""The `responses` table: one row per student, `id bigint` plus questionnaire variables as text.

Two widths:
- `full`: every variable of the PISA 2018 student questionnaire file, in file order (1,118 + id),
  as the original course databases held them;
- `slim`: only what the six charts and the calibration need (identifiers, gender, the indices behind
  the charts with the raw items they are built from, the plausible values and the final weight).

Values are text, `NA` for missing, and there is no timestamp column: arrival time is not in the data.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal

from pisa_pulse.pisa2018 import Variable, variables

if TYPE_CHECKING:  # psycopg2 is imported where the table is created, not by every reader of the layout
    from psycopg2 import sql

SchemaName = Literal["full", "slim"]
SCHEMAS: tuple[SchemaName, ...] = ("full", "slim")

TABLE = "responses"

# The columns the charts read, a fact of this layout that capture (what to fetch) and engine (what to
# sum) both start from: the key, the country, four indices, the final weight and the 30 plausible values.
DOMAINS = ("math", "read", "scie")
INDEX_COLUMNS = ("durecec", "belong", "escs", "tmins")
WEIGHT_COLUMN = "w_fstuwt"
CHART_COLUMNS: tuple[str, ...] = (
    "id",
    "cnt",
    *INDEX_COLUMNS,
    WEIGHT_COLUMN,
    *(f"pv{i}{domain}" for domain in DOMAINS for i in range(1, 11)),
)

_HOMEPOS_ITEMS = (
    [f"st011q{i:02d}ta" for i in range(1, 13)]
    + ["st011q16na", "st011d17ta", "st011d18ta", "st011d19ta"]
    + ["st012q01ta", "st012q02ta", "st012q03ta"]
    + [f"st012q{i:02d}na" for i in range(5, 10)]
    + ["st013q01ta"]
)

# Everything the charts read and everything an index is derived from (see INDICES.md).
SLIM_NAMES = frozenset(
    ["cntryid", "cnt", "cntschid", "cntstuid", "st004d01t", "w_fstuwt"]
    # learning time: TMINS = ST060 x ST061
    + ["st059q01ta", "st059q02ta", "st059q03ta", "st060q01na", "st061q01na"]
    + ["lmins", "mmins", "smins", "tmins"]
    # early childhood education: DURECEC = (ST126 + 2) - ST125
    + ["st125q01na", "st126q01ta", "durecec"]
    # sense of belonging: six ST034 items
    + [f"st034q{i:02d}ta" for i in range(1, 7)]
    + ["belong"]
    # ESCS = f(HISEI, PAREDINT, HOMEPOS) and what those come from
    + ["st005q01ta", "st007q01ta"]
    + [f"st006q{i:02d}ta" for i in range(1, 5)]
    + [f"st008q{i:02d}ta" for i in range(1, 5)]
    + ["misced", "fisced", "hisced", "paredint", "ocod1", "ocod2", "bmmj1", "bfmj2", "hisei"]
    + _HOMEPOS_ITEMS
    + ["homepos", "escs"]
    # performance: ten plausible values per domain
    + [f"pv{i}{d}" for d in ("math", "read", "scie") for i in range(1, 11)]
)


@functools.cache
def columns(schema: SchemaName) -> tuple[Variable, ...]:
    """The text columns of `responses` for a schema, in questionnaire file order (without `id`)."""
    every = variables()
    if schema == "full":
        return every
    return tuple(v for v in every if v.name in SLIM_NAMES)


def column_names(schema: SchemaName) -> tuple[str, ...]:
    """All column names of `responses` for a schema, `id` first."""
    return ("id", *(v.name for v in columns(schema)))


def create_table(schema: SchemaName) -> sql.Composed:
    """`CREATE TABLE responses (...)`: `id bigint primary key`, every other column text."""
    from psycopg2 import sql  # here, not above: see the TYPE_CHECKING import

    cols = [sql.SQL("id bigint PRIMARY KEY")] + [
        sql.SQL("{} text").format(sql.Identifier(v.name)) for v in columns(schema)
    ]
    return sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(TABLE), sql.SQL(", ").join(cols))


def schema_of(existing: list[str]) -> SchemaName | None:
    """Which of our layouts a table with these column names (in order) is, or None if neither."""
    for name in SCHEMAS:
        if tuple(existing) == column_names(name):
            return name
    return None
