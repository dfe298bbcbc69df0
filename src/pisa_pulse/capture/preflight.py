"""`pisa-pulse check`: will logical replication work on each source? Read-only, creates nothing.

Per source it checks what the pipeline needs and, for each failure, says what to change: the server
version (15 or newer, for publication column lists), `wal_level = logical`, a role allowed to
replicate, the `responses` table with the chart columns and a primary key, a publication it may
create (or one that exists already), and a free replication slot and walsender.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg2

from pisa_pulse.capture.replication import PUBLICATION
from pisa_pulse.sources.config import Source, first_line
from pisa_pulse.sources.databases import Connection, connected, table_columns
from pisa_pulse.sources.schema import TABLE


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, whether it passed, what was seen and how to fix a failure."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_source(source: Source, slot: str, columns: Sequence[str]) -> list[Check]:
    """Every check for one source; stops after a failed connection."""
    try:
        with connected(source.dsn) as conn:
            return [
                _version(conn),
                _wal_level(conn),
                _replication_role(conn),
                _table(conn, columns),
                _publication(conn),
                _slots(conn, slot),
            ]
    except psycopg2.Error as exc:
        return [Check("connect", False, first_line(exc), "check the DSN in the sources config")]
    except Exception as exc:  # PisaPulseError from connect(): already one clean line
        return [Check("connect", False, str(exc), "")]


def _one(conn: Connection, query: str, params: tuple[object, ...] = ()) -> object:
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return None if row is None else row[0]


def _version(conn: Connection) -> Check:
    num = int(str(_one(conn, "SHOW server_version_num")))
    shown = f"PostgreSQL {num // 10000}"
    if num >= 150000:
        return Check("server version", True, shown)
    return Check(
        "server version",
        False,
        shown,
        "upgrade to PostgreSQL 15+ (publication column lists) or use polling mode",
    )


def _wal_level(conn: Connection) -> Check:
    level = str(_one(conn, "SHOW wal_level"))
    if level == "logical":
        return Check("wal_level", True, level)
    return Check(
        "wal_level", False, level, "set wal_level = logical in postgresql.conf and restart the server"
    )


def _replication_role(conn: Connection) -> Check:
    allowed = _one(conn, "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user")
    user = str(_one(conn, "SELECT current_user"))
    if allowed:
        return Check("replication role", True, f"{user} may replicate")
    return Check("replication role", False, f"{user} lacks REPLICATION", f"run ALTER ROLE {user} REPLICATION")


def _table(conn: Connection, columns: Sequence[str]) -> Check:
    present = set(table_columns(conn))
    if not present:
        return Check(
            "table", False, f"no public.{TABLE}", "run `pisa-pulse sources up` or fix the DSN's database"
        )
    missing = [c for c in columns if c not in present]
    if missing:
        return Check("table", False, f"lacks {', '.join(missing)}", "add the chart columns to the table")
    has_pk = _one(
        conn,
        "SELECT count(*) FROM pg_index WHERE indrelid = to_regclass(%s) AND indisprimary",
        (f"public.{TABLE}",),
    )
    if not has_pk:
        return Check(
            "table", False, "no primary key", f"add a primary key on {TABLE}.id (deletes are sent by key)"
        )
    return Check("table", True, f"{TABLE} with the {len(columns)} chart columns")


def _publication(conn: Connection) -> Check:
    if _one(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,)):
        return Check("publication", True, f"{PUBLICATION} exists (its column list is corrected at start)")
    may = _one(
        conn,
        "SELECT has_database_privilege(current_database(), 'CREATE') AND "
        "(pg_has_role(current_user, c.relowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles "
        "WHERE rolname = current_user)) FROM pg_class c WHERE c.oid = to_regclass(%s)",
        (f"public.{TABLE}",),
    )
    if may:
        return Check("publication", True, f"{PUBLICATION} will be created")
    return Check(
        "publication",
        False,
        f"cannot create {PUBLICATION}: not the table's owner or no CREATE on the database",
        f"have the owner run CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE} (id, ...chart columns)",
    )


def _slots(conn: Connection, slot: str) -> Check:
    if _one(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)):
        return Check("slot", True, f"{slot} exists")
    free_slots = int(
        str(
            _one(
                conn,
                "SELECT current_setting('max_replication_slots')::int - count(*) FROM pg_replication_slots",
            )
        )
    )
    free_senders = int(
        str(
            _one(
                conn,
                "SELECT current_setting('max_wal_senders')::int - count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'walsender'",
            )
        )
    )
    if free_slots > 0 and free_senders > 0:
        return Check("slot", True, f"{free_slots} slots and {free_senders} walsenders free")
    return Check(
        "slot",
        False,
        f"{free_slots} slots and {free_senders} walsenders free",
        "raise max_replication_slots / max_wal_senders and restart, or drop unused slots",
    )
