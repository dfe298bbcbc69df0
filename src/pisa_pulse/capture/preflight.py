"""`pisa-pulse check`: how can each source be captured? Read-only, creates nothing.

Per source it checks what each capture mode needs and, for each failure, says what to change.
Both modes need the `responses` table with the chart columns and a primary key. Logical replication
(`mode = "replication"`) needs the server version 15 or newer (publication column lists),
`wal_level = logical`, a role allowed to replicate, a publication it may create (or one that exists
already), and a free replication slot and walsender. Read-only polling (`mode = "poll"`) needs
PostgreSQL 11 or newer and SELECT on the table. The last check recommends a mode: replication where
it is allowed, polling otherwise (what `mode = "auto"` picks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg2

from pisa_pulse.capture.contract import Mode
from pisa_pulse.capture.exceptions import SourceUnusable
from pisa_pulse.capture.replication import PUBLICATION
from pisa_pulse.sources.config import Source, first_line
from pisa_pulse.sources.databases import Connection, connected, table_columns
from pisa_pulse.sources.schema import CHART_COLUMNS, TABLE

MODES = (Mode.REPLICATION, Mode.POLL)  # the modes a source may be captured in


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, whether it passed, what was seen and how to fix a failure."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed_by: str = "both"  # "both" modes, "replication" or "poll"
    mode: Mode | None = None  # the recommendation's mode (None: no mode works, or not a recommendation)


def check_source(source: Source, slot: str, columns: Sequence[str]) -> list[Check]:
    """Every check for one source; stops after a failed connection."""
    try:
        with connected(source.dsn, password=source.password) as conn:
            checks = [
                _table(conn, columns),
                _version(conn),
                _wal_level(conn),
                _replication_role(conn),
                _publication(conn),
                _slots(conn, slot),
                _poll_version(conn),
                _select(conn),
                _least_privilege(conn),
            ]
            return [*checks, recommend(checks)]
    except psycopg2.Error as exc:
        return [Check("connect", False, first_line(exc), "check the DSN in the sources config")]
    except Exception as exc:  # PisaPulseError from connect(): already one clean line
        return [Check("connect", False, str(exc), "")]


def check_table(conn: Connection, source: str) -> None:
    """Raise SourceUnusable unless `responses` exists with every chart column (both capture modes)."""
    present = set(table_columns(conn))
    if not present:
        raise SourceUnusable(
            f"source {source} has no responses table", "run `pisa-pulse sources up` or point the config at it"
        )
    missing = [c for c in CHART_COLUMNS if c not in present]
    if missing:
        raise SourceUnusable(
            f"source {source}'s responses table lacks {', '.join(missing)}",
            "give the table the PISA 2018 columns the charts need",
        )


def replication_blockers(conn: Connection) -> list[str]:
    """What stops logical replication on this connection's source (empty: nothing)."""
    checks = (_version(conn), _wal_level(conn), _replication_role(conn), _publication(conn))
    return [f"{c.name}: {c.detail}" for c in checks if not c.ok]


def recommend(checks: Sequence[Check]) -> Check:
    """The mode to use given the other checks: replication where allowed, else polling, else none."""
    failed = {mode: [c for c in checks if not c.ok and c.needed_by in (mode, "both")] for mode in MODES}
    if not failed[Mode.REPLICATION]:
        return Check("recommended mode", True, "replication", mode=Mode.REPLICATION)
    if not failed[Mode.POLL]:
        why = ", ".join(c.name for c in failed[Mode.REPLICATION])
        return Check("recommended mode", True, f"poll (replication needs: {why})", mode=Mode.POLL)
    return Check("recommended mode", False, "none", "fix the failed checks of either mode")


def _one(conn: Connection, query: str, params: tuple[object, ...] = ()) -> object:
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return None if row is None else row[0]


def _version(conn: Connection) -> Check:
    num = int(str(_one(conn, "SHOW server_version_num")))
    shown = f"PostgreSQL {num // 10000}"
    if num >= 150000:
        return Check("server version", True, shown, needed_by="replication")
    return Check(
        "server version",
        False,
        shown,
        "upgrade to PostgreSQL 15+ (publication column lists) or use polling mode",
        "replication",
    )


def _least_privilege(conn: Connection) -> Check:
    """Never a failure: says when the role may do more than capture needs, and what would be enough."""
    user = str(_one(conn, "SELECT current_user"))
    if _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return Check(
            "least privilege",
            True,
            f"{user} is a superuser: more than capture needs",
            "enough: REPLICATION + SELECT on responses (replication) or SELECT only (poll); see README",
        )
    return Check("least privilege", True, f"{user} is not a superuser")


def _poll_version(conn: Connection) -> Check:
    num = int(str(_one(conn, "SHOW server_version_num")))
    shown = f"PostgreSQL {num // 10000}"
    if num >= 110000:
        return Check("poll: server version", True, shown, needed_by="poll")
    return Check("poll: server version", False, shown, "upgrade to PostgreSQL 11+", "poll")


def _select(conn: Connection) -> Check:
    user = str(_one(conn, "SELECT current_user"))
    allowed = _one(conn, "SELECT has_table_privilege(to_regclass(%s), 'SELECT')", (f"public.{TABLE}",))
    if allowed:
        return Check("poll: select", True, f"{user} may read {TABLE}", needed_by="poll")
    return Check(
        "poll: select", False, f"{user} may not read {TABLE}", f"GRANT SELECT ON {TABLE} TO {user}", "poll"
    )


def _wal_level(conn: Connection) -> Check:
    level = str(_one(conn, "SHOW wal_level"))
    if level == "logical":
        return Check("wal_level", True, level, needed_by="replication")
    return Check(
        "wal_level",
        False,
        level,
        "set wal_level = logical in postgresql.conf and restart the server",
        "replication",
    )


def _replication_role(conn: Connection) -> Check:
    allowed = _one(conn, "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user")
    user = str(_one(conn, "SELECT current_user"))
    if allowed:
        return Check("replication role", True, f"{user} may replicate", needed_by="replication")
    return Check(
        "replication role",
        False,
        f"{user} lacks REPLICATION",
        f"run ALTER ROLE {user} REPLICATION",
        "replication",
    )


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
        return Check(
            "publication",
            True,
            f"{PUBLICATION} exists (its column list is corrected at start)",
            needed_by="replication",
        )
    may = _one(
        conn,
        "SELECT has_database_privilege(current_database(), 'CREATE') AND "
        "(pg_has_role(current_user, c.relowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles "
        "WHERE rolname = current_user)) FROM pg_class c WHERE c.oid = to_regclass(%s)",
        (f"public.{TABLE}",),
    )
    if may:
        return Check("publication", True, f"{PUBLICATION} will be created", needed_by="replication")
    return Check(
        "publication",
        False,
        f"cannot create {PUBLICATION}: not the table's owner or no CREATE on the database",
        f"have the owner run CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE} (id, ...chart columns)",
        "replication",
    )


def _slots(conn: Connection, slot: str) -> Check:
    if _one(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)):
        return Check("slot", True, f"{slot} exists", needed_by="replication")
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
        return Check(
            "slot", True, f"{free_slots} slots and {free_senders} walsenders free", needed_by="replication"
        )
    return Check(
        "slot",
        False,
        f"{free_slots} slots and {free_senders} walsenders free",
        "raise max_replication_slots / max_wal_senders and restart, or drop unused slots",
        "replication",
    )
