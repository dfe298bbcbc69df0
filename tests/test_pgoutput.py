"""The pgoutput decoder on real captured bytes, on a live server's bytes, and on malformed input.

tests/data/pgoutput/captured.json holds the messages of PostgreSQL 15 for SQL steps whose effects the
tests spell out here (its capture.py reruns them); OIDs, xids and LSNs to compare with come from SQL.
"""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from pisa_pulse.capture.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Msg,
    Origin,
    PgoutputError,
    Relation,
    Truncate,
    Type,
    Update,
    Value,
    decode,
)
from tests.conftest import SharedServer

CAPTURE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "pgoutput" / "captured.json").read_text(encoding="utf-8")
)
STEPS: dict[str, dict[str, Any]] = {step["name"]: step for step in CAPTURE["steps"]}
OIDS: dict[str, int] = CAPTURE["facts"]["relation_oids"]
TYPE_OIDS: dict[str, int] = CAPTURE["facts"]["type_oids"]
INT4, TEXT, BOOL = TYPE_OIDS["int4"], TYPE_OIDS["text"], TYPE_OIDS["bool"]

T_COLUMNS = (
    Column("id", INT4, True),
    Column("a", TEXT, False),
    Column("b", INT4, False),
    Column("c", TEXT, False),
    Column("flag", BOOL, False),
)


def _lsn(text: str) -> int:
    """A pg_lsn as PostgreSQL prints it ('0/16B3748') as an integer."""
    high, low = text.split("/")
    return int(high, 16) << 32 | int(low, 16)


def _payloads(step: str) -> list[bytes]:
    return [bytes.fromhex(m["hex"]) for m in STEPS[step]["messages"]]


def _decoded(step: str) -> list[Msg]:
    return [decode(p) for p in _payloads(step)]


def _kinds(messages: list[Msg]) -> list[str]:
    return [type(m).__name__ for m in messages]


def _changes(messages: list[Msg]) -> list[Msg]:
    """What happened, without the transaction frame and table descriptions."""
    return [m for m in messages if not isinstance(m, Begin | Commit | Relation)]


def _sql_result(step: str, sql_start: str) -> str:
    """The single value a step's statement (the first starting with `sql_start`) returned."""
    for statement in STEPS[step]["statements"]:
        if statement["sql"].startswith(sql_start):
            [[value]] = statement["rows"]
            return str(value)
    raise AssertionError(f"no statement starting with {sql_start!r} in step {step}")


# -- every captured message ---------------------------------------------------------------------


def test_the_capture_is_postgresql_15_and_covers_every_message_type() -> None:
    assert CAPTURE["server_version"].startswith("PostgreSQL 15.")
    kinds = {kind for step in STEPS for kind in _kinds(_decoded(step))}
    assert kinds == {
        "Begin", "Commit", "Relation", "Insert", "Update", "Delete", "Truncate", "Origin", "Type", "Message",
    }  # fmt: skip


@pytest.mark.parametrize("step", list(STEPS))
def test_transactions_are_framed_consistently_with_what_the_server_reported(step: str) -> None:
    """Begin/Commit pair up; xids, commit LSNs and commit times agree with the slot's own columns."""
    open_begin: Begin | None = None
    for row in STEPS[step]["messages"]:
        payload = bytes.fromhex(row["hex"])
        msg = decode(payload)
        assert decode(memoryview(payload)) == msg
        if isinstance(msg, Begin):
            assert open_begin is None
            open_begin = msg
            assert msg.xid == int(row["xid"])
        elif isinstance(msg, Commit):
            assert open_begin is not None
            assert msg.commit_lsn == open_begin.final_lsn
            assert msg.end_lsn == _lsn(row["lsn"])  # the slot reports a commit at its end LSN
            assert msg.end_lsn > msg.commit_lsn
            assert msg.commit_time_us == open_begin.commit_time_us
            if step != "origin":  # a replayed transaction keeps its origin's commit time, see below
                window = (CAPTURE["captured_from_us"], CAPTURE["captured_until_us"])
                assert window[0] <= msg.commit_time_us <= window[1]
            open_begin = None
        elif open_begin is not None:
            assert int(row["xid"]) == open_begin.xid
        else:  # only a non-transactional message may arrive outside a transaction
            assert isinstance(msg, Message) and not msg.transactional
    assert open_begin is None


def test_first_transaction_has_the_xid_sql_reported() -> None:
    [begin] = [m for m in _decoded("insert_text_and_null") if isinstance(m, Begin)]
    assert begin.xid == int(_sql_result("insert_text_and_null", "SELECT pg_current_xact_id"))


# -- rows ---------------------------------------------------------------------------------------


def test_insert_with_text_integer_boolean_empty_null_and_non_ascii_values() -> None:
    messages = _decoded("insert_text_and_null")
    assert _kinds(messages) == ["Begin", "Relation", "Insert", "Insert", "Commit"]
    assert messages[1] == Relation(OIDS["t"], "public", "t", "d", T_COLUMNS)
    assert messages[2] == Insert(OIDS["t"], ("1", "hello", "42", None, "t"))
    assert messages[3] == Insert(OIDS["t"], ("2", "", None, "grüße ✓", "f"))


def test_update_of_other_columns_has_no_old_tuple() -> None:
    assert _changes(_decoded("update_no_old")) == [
        Update(OIDS["t"], None, None, ("1", "hello again", None, None, "t"))
    ]


def test_update_of_the_key_sends_the_old_key() -> None:
    # under the default replica identity the old tuple holds the key; the other columns come as NULL
    assert _changes(_decoded("update_key")) == [
        Update(OIDS["t"], ("2", None, None, None, None), "K", ("10", "", None, "grüße ✓", "f"))
    ]


def test_delete_sends_the_key() -> None:
    assert _changes(_decoded("delete_by_key")) == [Delete(OIDS["t"], ("10", None, None, None, None), "K")]


def test_toasted_value_is_sent_on_insert_and_unchanged_on_update() -> None:
    big_value = "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, 251))
    assert len(big_value) == 8000
    inserted = _decoded("toast_insert")
    assert inserted[1] == Relation(
        OIDS["big"], "public", "big", "d",
        (Column("id", INT4, True), Column("note", TEXT, False), Column("payload", TEXT, False)),
    )  # fmt: skip
    assert _changes(inserted) == [Insert(OIDS["big"], ("1", "first", big_value))]
    [update] = _changes(_decoded("toast_update_unchanged"))
    assert update == Update(OIDS["big"], None, None, ("1", "second", UNCHANGED))
    assert isinstance(update, Update) and update.new[2] is UNCHANGED
    assert repr(UNCHANGED) == "UNCHANGED"


def test_replica_identity_full_sends_whole_old_rows() -> None:
    messages = _decoded("replica_identity_full")
    relation = messages[1]
    # under FULL every column is flagged as part of the key
    assert relation == Relation(
        OIDS["full_t"], "public", "full_t", "f",
        (Column("id", INT4, True), Column("a", TEXT, True), Column("b", TEXT, True)),
    )  # fmt: skip
    assert _changes(messages) == [
        Insert(OIDS["full_t"], ("1", "x", None)),
        Update(OIDS["full_t"], ("1", "x", None), "O", ("1", "y", None)),
        Delete(OIDS["full_t"], ("1", "y", None), "O"),
    ]
    assert _kinds(messages).count("Begin") == 3


def test_relation_is_sent_again_after_add_column() -> None:
    messages = _decoded("relation_resent")
    relations = [m for m in messages if isinstance(m, Relation)]
    assert [r.oid for r in relations] == [OIDS["t"], OIDS["t"]]
    assert relations[0].columns == T_COLUMNS
    assert relations[1].columns == (*T_COLUMNS, Column("d", TEXT, False))
    assert _changes(messages) == [
        Insert(OIDS["t"], ("3", "before", None, None, None)),
        Insert(OIDS["t"], ("4", "after", None, None, None, "new column")),
    ]


def test_publication_column_list_sends_only_those_columns() -> None:
    listed = _decoded("column_list")
    everything = _decoded("column_list_all_columns")
    [relation] = [m for m in listed if isinstance(m, Relation)]
    listed_columns = (Column("id", INT4, True), Column("a", TEXT, False))
    assert relation == Relation(OIDS["t"], "public", "t", "d", listed_columns)
    assert _changes(listed) == [
        Insert(OIDS["t"], ("5", "five")),
        Update(OIDS["t"], None, None, ("5", "five")),
    ]
    assert _changes(everything) == [
        Insert(OIDS["t"], ("5", "five", "5", "c5", "t", "d5")),
        Update(OIDS["t"], None, None, ("5", "five", "6", "c5", "t", "d5")),
    ]
    # the same two transactions, read through two publications
    frames = [[m for m in msgs if isinstance(m, Begin | Commit)] for msgs in (listed, everything)]
    assert frames[0] == frames[1] and len(frames[0]) == 4


def test_user_defined_type_is_described_before_the_relation() -> None:
    messages = _decoded("enum_type")
    assert _kinds(messages) == ["Begin", "Type", "Relation", "Insert", "Commit"]
    assert messages[1] == Type(TYPE_OIDS["mood"], "public", "mood")
    columns = (Column("id", INT4, True), Column("m", TYPE_OIDS["mood"], False))
    assert messages[2] == Relation(OIDS["feelings"], "public", "feelings", "d", columns)
    assert messages[3] == Insert(OIDS["feelings"], ("1", "happy"))


# -- truncate, messages, origin ------------------------------------------------------------------


def test_plain_truncate() -> None:
    assert _changes(_decoded("truncate_plain")) == [
        Insert(OIDS["counter"], ("1",)),
        Insert(OIDS["counter"], ("2",)),
        Truncate((OIDS["counter"],), cascade=False, restart_identity=False),
    ]


def test_truncate_restart_identity_cascade_lists_the_referencing_table() -> None:
    *inserts, truncate = _changes(_decoded("truncate_restart_cascade"))
    assert inserts == [Insert(OIDS["parent"], ("1",)), Insert(OIDS["child"], ("1", "1"))]
    assert isinstance(truncate, Truncate)
    assert sorted(truncate.relation_oids) == sorted([OIDS["parent"], OIDS["child"]])
    assert truncate.cascade and truncate.restart_identity


def test_truncate_with_one_option_each() -> None:
    assert _changes(_decoded("truncate_one_option_each")) == [
        Truncate((OIDS["counter"],), cascade=False, restart_identity=True),
        Truncate((OIDS["parent"], OIDS["child"]), cascade=True, restart_identity=False),
    ]


def test_transactional_message_arrives_inside_its_transaction() -> None:
    messages = _decoded("message_transactional")
    assert _kinds(messages) == ["Begin", "Relation", "Insert", "Message", "Commit"]
    # pg_logical_emit_message returns the LSN the message is decoded with
    lsn = _lsn(_sql_result("message_transactional", "SELECT pg_logical_emit_message"))
    assert messages[3] == Message(True, lsn, "pisa-pulse", b"checkpoint 1")


def test_non_transactional_message_arrives_alone_with_binary_content() -> None:
    lsn = _lsn(_sql_result("message_non_transactional", "SELECT pg_logical_emit_message"))
    assert _decoded("message_non_transactional") == [Message(False, lsn, "pisa-pulse", b"\x00\xff")]


def test_non_transactional_message_survives_a_rollback_and_nothing_else_does() -> None:
    lsn = _lsn(_sql_result("message_after_rollback", "SELECT pg_logical_emit_message(false"))
    assert _decoded("message_after_rollback") == [Message(False, lsn, "pisa-pulse", b"survives the rollback")]


def test_changes_to_unpublished_tables_send_nothing() -> None:
    assert STEPS["unpublished_table"]["statements"]  # the insert ran...
    assert _decoded("unpublished_table") == []  # ...and PostgreSQL 15 sent no empty Begin/Commit


def test_origin_and_commit_time_of_a_replayed_transaction() -> None:
    messages = _decoded("origin")
    assert _kinds(messages) == ["Begin", "Origin", "Relation", "Insert", "Commit"]
    assert messages[1] == Origin(_lsn("0/ABCDEF"), "pisa_origin")
    # the commit time is the one given to pg_replication_origin_xact_setup, in Unix microseconds
    expected_us = int(datetime(2019, 12, 3, 10, 0, tzinfo=UTC).timestamp()) * 1_000_000
    begin, commit = messages[0], messages[-1]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.commit_time_us == commit.commit_time_us == expected_us


# -- built rows: every kind of column value, and the fast path's limits ----------------------------


def _column(value: Value | bytes) -> bytes:
    if value is None:
        return b"n"
    if value is UNCHANGED:
        return b"u"
    if isinstance(value, bytes):  # a binary-format value
        return b"b" + struct.pack(">I", len(value)) + value
    assert isinstance(value, str)
    data = value.encode()
    return b"t" + struct.pack(">I", len(data)) + data


def _insert(values: tuple[Value | bytes, ...], oid: int = 16384) -> bytes:
    columns = b"".join(_column(v) for v in values)
    return b"I" + struct.pack(">I", oid) + b"N" + struct.pack(">H", len(values)) + columns


ROWS: dict[str, tuple[Value, ...]] = {
    "short ascii": tuple(f"{i * 7919 % 100_000}" if i % 3 else "NA" for i in range(37)),
    "no columns": (),
    "empty strings": ("", "", "x", ""),
    "letters that are column kinds": ("t", "n", "u", "b", "tnub", "N"),
    "null first and last": (None, "a", None),
    "unchanged between": ("1", UNCHANGED, "2"),
    "length 127, 128, 255, 256": ("a" * 127, "b" * 128, "c" * 255, "d" * 256),
    "long": ("x" * 70_000, "y"),
    "non-ascii": ("grüße", "日本", "✓"),
    "control characters": ("\x01\x02", "t\x01\x01\x01", "\x7f"),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_every_kind_of_row_decodes_to_its_values(name: str) -> None:
    values = ROWS[name]
    assert decode(_insert(values)) == Insert(16384, values)
    update = b"U" + struct.pack(">I", 7) + _insert(values)[5:]  # 'N' and the tuple
    assert decode(update) == Update(7, None, None, values)
    delete = b"D" + struct.pack(">I", 7) + b"K" + _insert(values)[6:]
    assert decode(delete) == Delete(7, values, "K")


@pytest.mark.parametrize(
    "claimed",
    [
        (4, 3, 1),  # the first two swap their lengths; the last is right
        (3, 3, 2),  # the middle gives a byte to the last
    ],
)
def test_a_length_that_disagrees_with_the_data_is_an_error_not_a_misread(claimed: tuple[int, ...]) -> None:
    values = ("abc", "defg", "h")
    columns = b"".join(b"t" + struct.pack(">I", n) + v.encode() for v, n in zip(values, claimed, strict=True))
    bad = b"I" + struct.pack(">I", 16384) + b"N" + struct.pack(">H", len(values)) + columns
    assert len(bad) == len(_insert(values)) and bad != _insert(values)
    with pytest.raises(PgoutputError, match="Insert"):
        decode(bad)


# -- errors ---------------------------------------------------------------------------------------


def _one_of_each_type() -> list[bytes]:
    seen: dict[str, bytes] = {}
    for step in STEPS:
        for payload in _payloads(step):
            seen.setdefault(type(decode(payload)).__name__, payload)
    seen["Update with old"] = _payloads("update_key")[2]
    seen["toasted Insert"] = _payloads("toast_insert")[2]
    return list(seen.values())


@pytest.mark.parametrize("payload", _one_of_each_type(), ids=lambda p: chr(p[0]))
def test_every_truncation_of_a_real_message_is_reported(payload: bytes) -> None:
    name = type(decode(payload)).__name__
    step = max(1, len(payload) // 500)  # every cut of the short ones, 500 of the 8 kB one
    for cut in range(1, len(payload), step):
        with pytest.raises(PgoutputError, match=f"{name} message .*truncated"):
            decode(payload[:cut])


def test_trailing_bytes_are_reported() -> None:
    payload = _payloads("insert_text_and_null")[2]
    with pytest.raises(
        PgoutputError, match=f"1 unexpected bytes after its last field, at offset {len(payload)}$"
    ):
        decode(payload + b"x")


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        (b"S\x00\x00\x00\x01\x01", r"'S' \(0x53\)"),  # Stream Start exists only from protocol version 2
        (b"P" + bytes(20), r"'P' \(0x50\)"),  # Prepare: protocol version 3
        (b"\x00", r"'\\x00' \(0x00\)"),
    ],
)
def test_unknown_message_type_is_named(payload: bytes, shown: str) -> None:
    with pytest.raises(PgoutputError, match=f"unknown pgoutput message type {shown} at offset 0"):
        decode(payload)


def test_empty_payload() -> None:
    with pytest.raises(PgoutputError, match="empty"):
        decode(b"")


def test_binary_values_are_refused() -> None:
    with pytest.raises(PgoutputError, match=r"binary column value at offset 14.*'binary' option"):
        decode(_insert(("1", b"\x00\x00\x00\x02")))


def test_an_unexpected_tuple_marker_is_named_with_its_offset() -> None:
    with pytest.raises(PgoutputError, match=r"'X' \(0x58\) at offset 5 where 'K', 'O' or 'N'"):
        decode(b"U" + struct.pack(">I", 7) + b"X" + bytes(2))
    with pytest.raises(PgoutputError, match=r"'N' \(0x4e\) at offset 5 where 'K' or 'O'"):
        decode(b"D" + struct.pack(">I", 7) + b"N" + bytes(2))
    with pytest.raises(PgoutputError, match=r"'q' \(0x71\) at offset 8 where a column kind"):
        decode(b"I" + struct.pack(">I", 7) + b"N" + struct.pack(">H", 1) + b"q")


def test_text_that_is_not_utf8_is_reported() -> None:
    payload = _insert(("ok",)).replace(b"ok", b"\xff\xfe")
    with pytest.raises(PgoutputError, match=r"Insert message .* not UTF-8 at offset 13"):
        decode(payload)


# -- a live server --------------------------------------------------------------------------------


WIDE = [f"v{i:02d}" for i in range(37)]


def test_decodes_what_a_live_server_sends(shared: SharedServer) -> None:
    # A database of its own on the shared cluster; the slot's name too, as slots are cluster-wide.
    conn = psycopg2.connect(shared.create_database("pgoutput"))
    slot = shared.prefix + "live_slot"
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # logical decoding reads flushed WAL only, and the cluster commits asynchronously
            cur.execute("SET synchronous_commit = on")
            cur.execute("CREATE TABLE item (id bigint PRIMARY KEY, a text, b text)")
            text_columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in WIDE)
            cur.execute(sql.SQL("CREATE TABLE wide (id bigint PRIMARY KEY, {})").format(text_columns))
            cur.execute("CREATE TABLE other (n int)")
            cur.execute("CREATE PUBLICATION live FOR TABLE item, wide")
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            cur.execute("SELECT 'item'::regclass::oid, 'wide'::regclass::oid")
            item, wide = cur.fetchone()
            wide_values = [None if i % 10 == 9 else f"{i * 0.37:.4f}" for i in range(37)]
            cur.execute("INSERT INTO item VALUES (1, 'x', NULL)")
            cur.execute("UPDATE item SET b = 'y' WHERE id = 1")
            cur.execute("UPDATE item SET id = 2 WHERE id = 1")
            cur.execute("DELETE FROM item WHERE id = 2")
            placeholders = sql.SQL(", ").join([sql.Placeholder()] * len(WIDE))
            cur.execute(sql.SQL("INSERT INTO wide VALUES (7, {})").format(placeholders), wide_values)
            cur.execute("TRUNCATE item")
            cur.execute("BEGIN")
            cur.execute("INSERT INTO item VALUES (3, 'z', 'w')")
            cur.execute("SELECT pg_logical_emit_message(true, 'live', 'hello')::text")
            message_lsn = _lsn(cur.fetchone()[0])
            cur.execute("COMMIT")
            cur.execute("INSERT INTO other VALUES (1)")  # a commit that flushes; not published
            cur.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                "'proto_version', '1', 'publication_names', 'live', 'messages', 'true')",
                (slot,),
            )
            messages = [decode(data) for (data,) in cur.fetchall()]
    finally:
        conn.close()
    assert _changes(messages) == [
        Insert(item, ("1", "x", None)),
        Update(item, None, None, ("1", "x", "y")),
        Update(item, ("1", None, None), "K", ("2", "x", "y")),
        Delete(item, ("2", None, None), "K"),
        Insert(wide, ("7", *wide_values)),
        Truncate((item,), cascade=False, restart_identity=False),
        Insert(item, ("3", "z", "w")),
        Message(True, message_lsn, "live", b"hello"),
    ]
    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert [b.final_lsn for b in begins] == [c.commit_lsn for c in commits]
    assert len(begins) == 7
    relations = {m.name: m for m in messages if isinstance(m, Relation)}
    assert relations["item"].columns == (
        Column("id", 20, True), Column("a", 25, False), Column("b", 25, False)
    )  # fmt: skip
    assert [c.name for c in relations["wide"].columns] == ["id", *WIDE]
