"""The country databases on a server: create, check, count, empty and drop them.

Works the same on the embedded cluster and on a server given with `--dsn`. Nothing here destroys a
database it did not create with our layout: a database that exists and holds other tables is an
error that names it, and is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from pisa_pulse.errors import PisaPulseError
from pisa_pulse.secret import Secret, scrub
from pisa_pulse.sources.config import Source, first_line, with_database
from pisa_pulse.sources.schema import TABLE, SchemaName, create_table, schema_of

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection


def connect(dsn: str, autocommit: bool = True, password: Secret | None = None) -> Connection:
    """Open a connection (the password, if any, given to the driver apart from the DSN), turning
    connection failures into a one-line error without secrets."""
    secret = None if password is None else password.reveal()  # None: the driver leaves it out
    try:
        conn = psycopg2.connect(dsn, application_name="pisa-pulse", connect_timeout=10, password=secret)
    except psycopg2.OperationalError as exc:
        raise PisaPulseError(
            f"cannot connect to {scrub(dsn)}: {first_line(exc)}",
            "check that the server is running and the DSN's host, port, user and password are right",
        ) from None
    conn.autocommit = autocommit
    return conn


@contextlib.contextmanager
def connected(dsn: str, autocommit: bool = True, password: Secret | None = None) -> Iterator[Connection]:
    """`connect()` as a context manager that always closes."""
    conn = connect(dsn, autocommit, password)
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class DatabaseState:
    """What `sources status` reports for one country database."""

    name: str
    rows: int | None  # None when the database cannot be reached
    bytes: int | None
    error: str | None = None


def ensure(admin_dsn: str, name: str, schema: SchemaName, password: Secret | None = None) -> bool:
    """Make sure database `name` exists with an empty-or-ours `responses` table.

    Returns True when it was created now. A database that holds anything else raises an error
    naming the tables, and nothing is changed.
    """
    with connected(admin_dsn, password=password) as admin, admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        created = cur.fetchone() is None
        if created:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("database created source=%s", name)
    with connected(with_database(admin_dsn, name), password=password) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1"
        )
        tables = [r[0] for r in cur.fetchall()]
        if not tables:
            cur.execute(create_table(schema))
            set_storage_parameters(conn)
            return created
        found = schema_of(table_columns(conn)) if tables == [TABLE] else None
        if found == schema:
            set_storage_parameters(conn)
            return created
        what = f"the {found} layout" if found else f"tables {', '.join(tables)} of another layout"
        raise PisaPulseError(
            f"database {name} already holds {what}, not the {schema} responses layout",
            "pass the --schema it has, point --dsn at another server, or drop that database yourself"
            if found
            else "point --dsn at another server, or drop that database yourself",
        )


# Autovacuum storage parameters of `responses`, an insert-mostly table that is only ever filtered,
# ordered and joined on `id` (the traffic's random-key probes, poll mode's id ranges and the copy's
# snapshot read). ANALYZE of all 1,119 columns of 30,000 full-width rows took 205 s on the 2-core
# machine, and 0.07 s for `id` alone, for statistics no query uses; at 200 submissions/s every country
# crossed the default analyze threshold (50 rows + 10 %) every half minute, and three autovacuum
# workers analysing one country after another held the traffic at 76-96/s. So autovacuum never
# analyses this table (the threshold is the largest there is) and `sources up` analyses `id` itself
# after it seeds (`analyze_key`): ids are uniform random, so their histogram does not age, and the row
# count the planner scales it by is kept by VACUUM. (Statistics target 0 on the 1,118 other columns
# would do the same for a column-less ANALYZE, but that ALTER TABLE costs about a second per
# full-width table: each subcommand rebuilds the relation's 1,119-column descriptor.) VACUUM stays
# frequent: it keeps the visibility map current, which poll mode's index-only scans of `id` need to
# skip the heap, so it runs after 5 % new rows (and 1,000) instead of 20 %; it reads only pages not yet
# all-visible, so each run is short.
STORAGE_PARAMETERS = {
    "autovacuum_analyze_threshold": "2147483647",
    "autovacuum_vacuum_insert_scale_factor": "0.05",
    "autovacuum_vacuum_insert_threshold": "1000",
}


def set_storage_parameters(conn: Connection) -> None:
    """Set our table's autovacuum parameters (STORAGE_PARAMETERS), if not set yet.

    Table-level only (ALTER TABLE of `responses`), never server settings, so it is the same on the
    embedded cluster and on a server given with `--dsn`. Idempotent: a table that has them already is
    not altered (an ALTER takes a SHARE UPDATE EXCLUSIVE lock, which waits for a running autovacuum).
    """
    with conn.cursor() as cur:
        cur.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", (f"public.{TABLE}",))
        options = set((cur.fetchone() or (None,))[0] or ())
        if {f"{k}={v}" for k, v in STORAGE_PARAMETERS.items()} <= options:
            return
        pairs = STORAGE_PARAMETERS.items()
        settings = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in pairs
        )
        cur.execute(sql.SQL("ALTER TABLE {} SET ({})").format(sql.Identifier(TABLE), settings))
        log.info("autovacuum parameters set table=%s", TABLE)


def analyze_key(source: Source) -> None:
    """Refresh the statistics on `id`, the one column queries filter on (autovacuum never analyses)."""
    with connected(source.dsn, password=source.password) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ANALYZE {} (id)").format(sql.Identifier(TABLE)))


def table_columns(conn: Connection) -> list[str]:
    """Column names of `responses` in order (empty when there is no such table)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (f"public.{TABLE}",),
        )
        return [r[0] for r in cur.fetchall()]


def state(source: Source) -> DatabaseState:
    """Rows and on-disk size of one country's `responses` table."""
    name = source.name
    try:
        with connected(source.dsn, password=source.password) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT count(*), pg_total_relation_size({}) FROM {}").format(
                    sql.Literal(TABLE), sql.Identifier(TABLE)
                )
            )
            rows, size = cur.fetchone() or (0, 0)
            return DatabaseState(name, int(rows), int(size))
    except (PisaPulseError, psycopg2.Error) as exc:
        return DatabaseState(name, None, None, first_line(exc))


def empty(source: Source) -> None:
    """Remove every row of `responses` (TRUNCATE, so change capture sees one Truncate)."""
    with connected(source.dsn, password=source.password) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(TABLE)))


def drop(admin_dsn: str, name: str, password: Secret | None = None) -> None:
    """Drop a country database and any replication slot that pins it."""
    with connected(admin_dsn, password=password) as admin, admin.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE database = %s AND active_pid IS NOT NULL",
            (name,),
        )
        cur.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
            (name,),
        )
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
