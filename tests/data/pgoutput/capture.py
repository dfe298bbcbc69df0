"""Capture real pgoutput (protocol version 1) messages into `captured.json` for tests/test_pgoutput.py.

Run from the repository root: `.venv/bin/python tests/data/pgoutput/capture.py`. It starts a throwaway
embedded cluster (the project's own, see pisa_pulse.sources.cluster), runs each step's SQL, reads the
slot with `pg_logical_slot_get_binary_changes` after every step (so each step's messages are its own;
the SQL interface starts a new decoding session per call, so a step's first change of a table comes
with its Relation message), stores every message as hex with the step that produced it, and removes
the cluster. Facts the tests compare with (OIDs, xids, LSNs) come from SQL, never from the decoder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from pisa_pulse.sources.cluster import EmbeddedCluster

OUT = Path(__file__).with_name("captured.json")

PUBLISHED = ("t", "big", "full_t", "feelings", "counter", "parent", "child")

SETUP = [
    "CREATE TABLE t (id integer PRIMARY KEY, a text, b integer, c text, flag boolean)",
    # EXTERNAL: stored out of line without compression, so 8,000 bytes are surely TOASTed
    "CREATE TABLE big (id integer PRIMARY KEY, note text, payload text)",
    "ALTER TABLE big ALTER COLUMN payload SET STORAGE EXTERNAL",
    "CREATE TABLE full_t (id integer, a text, b text)",
    "ALTER TABLE full_t REPLICA IDENTITY FULL",
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE TABLE feelings (id integer PRIMARY KEY, m mood)",
    "CREATE TABLE counter (id serial PRIMARY KEY)",
    "CREATE TABLE parent (id integer PRIMARY KEY)",
    "CREATE TABLE child (id integer PRIMARY KEY, parent_id integer REFERENCES parent)",
    "CREATE TABLE unpublished (id integer PRIMARY KEY)",
    "CREATE TABLE wal_flush (n serial)",  # not published either; see _flush
    "CREATE PUBLICATION p FOR TABLE t, big, full_t, feelings, counter, parent, child",
    "CREATE PUBLICATION p2 FOR TABLE t (id, a)",
    "SELECT pg_replication_origin_create('pisa_origin')",
    "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
]

# The big value: 250 md5 digests, 8,000 characters; tests compute the same string in Python.
BIG_VALUE_SQL = "(SELECT string_agg(md5(i::text), '' ORDER BY i) FROM generate_series(1, 250) AS i)"

# (name, what it shows, slot, publication, statements)
STEPS: list[tuple[str, str, str, str, list[str]]] = [
    (
        "insert_text_and_null",
        "one transaction inserting two rows: text, integer, boolean, empty string, NULL, non-ASCII",
        "s", "p",
        [
            "BEGIN",
            "SELECT pg_current_xact_id()::text",
            "INSERT INTO t VALUES (1, 'hello', 42, NULL, true), (2, '', NULL, 'grüße ✓', false)",
            "COMMIT",
        ],
    ),
    (
        "update_no_old",
        "update of non-key columns under the default replica identity: no old tuple",
        "s", "p",
        ["UPDATE t SET a = 'hello again', b = NULL WHERE id = 1"],
    ),
    (
        "update_key",
        "update that changes the primary key: old tuple 'K' with the old key only",
        "s", "p",
        ["UPDATE t SET id = 10 WHERE id = 2"],
    ),
    (
        "delete_by_key",
        "delete under the default replica identity: old tuple 'K' with the key only",
        "s", "p",
        ["DELETE FROM t WHERE id = 10"],
    ),
    (
        "toast_insert",
        "insert of an 8,000-byte value stored out of line (EXTERNAL): sent in full",
        "s", "p",
        [f"INSERT INTO big VALUES (1, 'first', {BIG_VALUE_SQL})"],
    ),
    (
        "toast_update_unchanged",
        "update of another column: the TOASTed value is not sent, kind 'u'",
        "s", "p",
        ["UPDATE big SET note = 'second' WHERE id = 1"],
    ),
    (
        "replica_identity_full",
        "insert, update and delete under REPLICA IDENTITY FULL: old tuples 'O' with every column",
        "s", "p",
        [
            "INSERT INTO full_t VALUES (1, 'x', NULL)",
            "UPDATE full_t SET a = 'y' WHERE id = 1",
            "DELETE FROM full_t WHERE id = 1",
        ],
    ),
    (
        "relation_resent",
        "ALTER TABLE ADD COLUMN between two inserts: the Relation is sent again with the new column",
        "s", "p",
        [
            "INSERT INTO t (id, a) VALUES (3, 'before')",
            "ALTER TABLE t ADD COLUMN d text",
            "INSERT INTO t (id, a, d) VALUES (4, 'after', 'new column')",
        ],
    ),
    (
        "column_list",
        "publication p2 lists only (id, a) of t: Relation and tuples carry just those columns",
        "s2", "p2",
        [
            "SELECT pg_create_logical_replication_slot('s2', 'pgoutput')",
            "INSERT INTO t VALUES (5, 'five', 5, 'c5', true, 'd5')",
            "UPDATE t SET b = 6 WHERE id = 5",
        ],
    ),
    (
        "column_list_all_columns",
        "the same two changes as column_list, read through publication p: every column",
        "s", "p",
        [],
    ),
    (
        "enum_type",
        "a column of a user-defined enum: a Type message precedes the Relation",
        "s", "p",
        ["INSERT INTO feelings VALUES (1, 'happy')"],
    ),
    (
        "message_transactional",
        "a transactional logical decoding message inside a transaction with an insert",
        "s", "p",
        [
            "BEGIN",
            "INSERT INTO t (id, a) VALUES (6, 'with message')",
            "SELECT pg_logical_emit_message(true, 'pisa-pulse', 'checkpoint 1')::text",
            "COMMIT",
        ],
    ),
    (
        "message_non_transactional",
        "a non-transactional message with binary content: sent alone, no Begin/Commit",
        "s", "p",
        ["SELECT pg_logical_emit_message(false, 'pisa-pulse', '\\x00ff'::bytea)::text"],
    ),
    (
        "message_after_rollback",
        "in a rolled-back transaction: the non-transactional message arrives, the rest does not",
        "s", "p",
        [
            "BEGIN",
            "INSERT INTO t (id, a) VALUES (7, 'rolled back')",
            "SELECT pg_logical_emit_message(true, 'pisa-pulse', 'lost with the rollback')::text",
            "SELECT pg_logical_emit_message(false, 'pisa-pulse', 'survives the rollback')::text",
            "ROLLBACK",
        ],
    ),
    (
        "truncate_plain",
        "two inserts into a serial table, then a plain TRUNCATE",
        "s", "p",
        [
            "INSERT INTO counter DEFAULT VALUES",
            "INSERT INTO counter DEFAULT VALUES",
            "TRUNCATE counter",
        ],
    ),
    (
        "truncate_restart_cascade",
        "TRUNCATE parent RESTART IDENTITY CASCADE: the referencing table is truncated too",
        "s", "p",
        [
            "INSERT INTO parent VALUES (1)",
            "INSERT INTO child VALUES (1, 1)",
            "TRUNCATE parent RESTART IDENTITY CASCADE",
        ],
    ),
    (
        "truncate_one_option_each",
        "TRUNCATE with RESTART IDENTITY only, then with CASCADE only",
        "s", "p",
        ["TRUNCATE counter RESTART IDENTITY", "TRUNCATE parent CASCADE"],
    ),
    (
        "unpublished_table",
        "a change to a table outside the publication: nothing (PostgreSQL 15 skips empty transactions)",
        "s", "p",
        ["INSERT INTO unpublished VALUES (1)"],
    ),
    (
        "origin",
        "a transaction replayed from replication origin 'pisa_origin' with its origin LSN and commit time",
        "s", "p",
        [
            "SELECT pg_replication_origin_session_setup('pisa_origin')",
            "BEGIN",
            "SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2019-12-03 10:00:00+00')",
            "INSERT INTO t (id, a) VALUES (8, 'from origin')",
            "COMMIT",
            "SELECT pg_replication_origin_session_reset()",
        ],
    ),
]  # fmt: skip

FACTS_SQL = {
    "relation_oids": "SELECT relname, oid::bigint FROM pg_class WHERE relname = ANY(%s) ORDER BY relname",
    "type_oids": "SELECT typname, oid::bigint FROM pg_type WHERE typname = ANY(%s) ORDER BY typname",
}


def _rows(cur: psycopg2.extensions.cursor) -> list[list[str | None]] | None:
    if cur.description is None:
        return None
    return [[None if v is None else str(v) for v in row] for row in cur.fetchall()]


def _flush(cur: psycopg2.extensions.cursor) -> None:
    """Flush all WAL written so far, also a non-transactional message's or a rolled-back one's."""
    # Only a commit that wrote WAL is flushed under synchronous_commit=on (one that merely took an
    # xid is not). pgoutput sends nothing for it: PostgreSQL 15 skips transactions without
    # published changes.
    cur.execute("INSERT INTO wal_flush DEFAULT VALUES")


def _read_slot(cur: psycopg2.extensions.cursor, slot: str, publication: str) -> list[dict[str, Any]]:
    cur.execute(
        "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes("
        "%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
        (slot, publication),
    )
    return [{"lsn": lsn, "xid": xid, "hex": bytes(data).hex()} for lsn, xid, data in cur.fetchall()]


def capture(dsn: str) -> dict[str, Any]:
    """Run SETUP and STEPS on the server at `dsn` and return what they produced."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # The cluster runs with synchronous_commit=off and logical decoding reads only flushed WAL:
            # flush at each commit here, and after each step (see _flush) so the step sees its changes.
            cur.execute("SET synchronous_commit = on")
            cur.execute("SELECT version()")
            version = cur.fetchone()[0]  # type: ignore[index]
            for statement in SETUP:
                cur.execute(statement)
            started_us = time.time_ns() // 1000
            steps = []
            for name, about, slot, publication, statements in STEPS:
                executed = []
                for statement in statements:
                    cur.execute(statement)
                    executed.append({"sql": statement, "rows": _rows(cur)})
                _flush(cur)
                steps.append(
                    {
                        "name": name,
                        "about": about,
                        "slot": slot,
                        "publication": publication,
                        "statements": executed,
                        "messages": _read_slot(cur, slot, publication),
                    }
                )
            finished_us = time.time_ns() // 1000
            facts: dict[str, Any] = {}
            cur.execute(FACTS_SQL["relation_oids"], ([*PUBLISHED, "unpublished", "wal_flush"],))
            facts["relation_oids"] = {name: oid for name, oid in cur.fetchall()}
            cur.execute(FACTS_SQL["type_oids"], (["mood", "int4", "text", "bool"],))
            facts["type_oids"] = {name: oid for name, oid in cur.fetchall()}
    finally:
        conn.close()
    return {
        "about": __doc__.splitlines()[0] if __doc__ else "",
        "server_version": version,
        "captured_from_us": started_us,
        "captured_until_us": finished_us,
        "setup": SETUP,
        "facts": facts,
        "steps": steps,
    }


def main() -> None:
    """Capture into a throwaway embedded cluster and write captured.json."""
    root = Path(tempfile.mkdtemp(prefix="pgoutput-capture-"))
    root.chmod(0o711)  # the server runs as `postgres` when we are root and must reach its files
    data_dir = root / "data"
    data_dir.mkdir()
    cluster = EmbeddedCluster.plan(data_dir, port=None, run_as=None)
    try:
        cluster.init()
        cluster.start()
        result = capture(cluster.dsn("postgres"))
    finally:
        cluster.remove()
        shutil.rmtree(root, ignore_errors=True)
    OUT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({sum(len(s['messages']) for s in result['steps'])} messages)")


if __name__ == "__main__":
    main()
