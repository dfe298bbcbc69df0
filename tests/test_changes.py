"""Change batches assembled from real captured pgoutput bytes (tests/data/pgoutput/captured.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pisa_pulse.capture import pgoutput
from pisa_pulse.capture.changes import ChangeBatch, TransactionAssembler
from pisa_pulse.capture.contract import RowChange
from pisa_pulse.capture.exceptions import StreamOrderError

CAPTURE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "pgoutput" / "captured.json").read_text(encoding="utf-8")
)
STEPS = {step["name"]: step for step in CAPTURE["steps"]}


def batches(step: str, table: str, columns: tuple[str, ...]) -> list[ChangeBatch]:
    assembler = TransactionAssembler(columns, table=table)
    found = []
    for m in STEPS[step]["messages"]:
        batch = assembler.feed(pgoutput.decode(bytes.fromhex(m["hex"])))
        if batch is not None:
            found.append(batch)
    assert not assembler.in_transaction
    return found


def test_values_come_in_the_requested_order_with_absent_columns_missing() -> None:
    [batch] = batches("insert_text_and_null", "t", ("id", "c", "a", "b", "not_there"))
    assert batch.changes == [
        RowChange("upsert", 1, ("1", None, "hello", "42", None)),
        RowChange("upsert", 2, ("2", "grüße ✓", "", None, None)),
    ]
    assert batch.end_lsn > batch.final_lsn > 0
    assert CAPTURE["captured_from_us"] <= batch.commit_time_us <= CAPTURE["captured_until_us"]


def test_a_changed_key_deletes_the_old_row() -> None:
    [batch] = batches("update_key", "t", ("id", "a"))
    assert [(c.kind, c.pk) for c in batch.changes] == [("delete", 2), ("upsert", 10)]
    assert batch.changes[1].values[0] == "10"


def test_delete_by_key_and_update_without_old_tuple() -> None:
    [deleted] = batches("delete_by_key", "t", ("id", "a"))
    assert deleted.changes == [RowChange("delete", 10)]  # DELETE FROM t WHERE id = 10
    [updated] = batches("update_no_old", "t", ("id", "a", "b"))  # SET a = 'hello again', b = NULL
    assert updated.changes == [RowChange("upsert", 1, ("1", "hello again", None))]


def test_unchanged_toasted_value_is_passed_on_as_unchanged() -> None:
    [batch] = batches("toast_update_unchanged", "big", ("id", "note", "payload"))
    [change] = batch.changes
    assert change.values == ("1", "second", pgoutput.UNCHANGED)


def test_relation_sent_again_after_add_column_moves_the_values() -> None:
    found = batches("relation_resent", "t", ("id", "a", "d"))
    upserts = [c.values for b in found for c in b.changes]
    assert upserts == [("3", "before", None), ("4", "after", "new column")]


def test_truncate_of_the_table_and_other_tables_ignored() -> None:
    found = batches("truncate_plain", "counter", ("id",))
    assert [c.kind for b in found for c in b.changes] == ["upsert", "upsert", "truncate"]
    other = batches("truncate_plain", "t", ("id",))  # same transactions, seen from another table
    assert len(other) == len(found) and all(not b.changes for b in other)


def test_a_change_outside_a_transaction_or_before_its_relation_is_an_error() -> None:
    messages = [pgoutput.decode(bytes.fromhex(m["hex"])) for m in STEPS["insert_text_and_null"]["messages"]]
    begin, relation, insert = (
        next(m for m in messages if isinstance(m, kind))
        for kind in (pgoutput.Begin, pgoutput.Relation, pgoutput.Insert)
    )
    assembler = TransactionAssembler(("id",), table="t")
    with pytest.raises(StreamOrderError, match="outside a transaction"):
        assembler.feed(insert)
    assembler.feed(begin)
    with pytest.raises(StreamOrderError, match="before its Relation"):
        assembler.feed(insert)
    assembler.feed(relation)
    assert assembler.feed(insert) is None and assembler.in_transaction
