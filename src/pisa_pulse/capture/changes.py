"""From pgoutput messages to change batches: one batch per source transaction, applied whole.

`TransactionAssembler` is pure: it follows one source's stream (Relation messages say which column is
where; they are re-sent after an ALTER TABLE), collects the row changes of a transaction between
Begin and Commit, and hands back a `ChangeBatch` at Commit. Row values come out in the order of
the source schema's `CHART_COLUMNS`, whatever order the publication sends them in; a column the
relation lacks is None (missing). Changes to other tables are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pisa_pulse.capture import pgoutput
from pisa_pulse.capture.contract import RowChange
from pisa_pulse.capture.exceptions import StreamOrderError
from pisa_pulse.sources.schema import TABLE


@dataclass(slots=True)
class ChangeBatch:
    """One committed source transaction: its changes, commit LSN range and commit time."""

    changes: list[RowChange] = field(default_factory=list)
    final_lsn: int = 0  # the commit record's LSN (from Begin)
    end_lsn: int = 0  # the LSN just past the commit record: the stream position after this batch
    commit_time_us: int = 0  # microseconds since the Unix epoch


class TransactionAssembler:
    """Turns one source's pgoutput messages into `ChangeBatch`es (see the module docstring)."""

    def __init__(self, columns: Sequence[str], table: str = TABLE) -> None:
        self.columns = tuple(columns)
        self.table = table
        self._layouts: dict[int, tuple[int, tuple[int | None, ...]] | None] = {}  # oid -> (id idx, map)
        self._open: ChangeBatch | None = None

    @property
    def in_transaction(self) -> bool:
        """True between a Begin and its Commit."""
        return self._open is not None

    def feed(self, msg: pgoutput.Msg) -> ChangeBatch | None:
        """Take one message; return the finished batch at Commit, else None."""
        if isinstance(msg, pgoutput.Begin):
            self._open = ChangeBatch(final_lsn=msg.final_lsn, commit_time_us=msg.commit_time_us)
        elif isinstance(msg, pgoutput.Commit):
            batch = self._require_open("Commit")
            batch.end_lsn, batch.commit_time_us = msg.end_lsn, msg.commit_time_us
            self._open = None
            return batch
        elif isinstance(msg, pgoutput.Relation):
            self._layouts[msg.oid] = (
                self._layout(msg) if (msg.namespace, msg.name) == ("public", self.table) else None
            )
        elif isinstance(msg, pgoutput.Insert | pgoutput.Update | pgoutput.Delete | pgoutput.Truncate):
            self._row_message(msg)
        return None  # Origin, Type and logical decoding messages carry nothing for the charts

    def _row_message(
        self, msg: pgoutput.Insert | pgoutput.Update | pgoutput.Delete | pgoutput.Truncate
    ) -> None:
        batch = self._require_open(type(msg).__name__)
        if isinstance(msg, pgoutput.Truncate):
            if any(self._layouts.get(oid) for oid in msg.relation_oids):
                batch.changes.append(RowChange("truncate"))
            return
        layout = self._layout_of(msg.relation_oid)
        if layout is None:
            return
        id_at, positions = layout
        if isinstance(msg, pgoutput.Delete):
            batch.changes.append(RowChange("delete", _pk(msg.old[id_at])))
            return
        pk = _pk(msg.new[id_at])
        if isinstance(msg, pgoutput.Update) and msg.old is not None and msg.old_kind == "K":
            old_pk = _pk(msg.old[id_at])  # the key itself changed: the old row goes
            if old_pk != pk:
                batch.changes.append(RowChange("delete", old_pk))
        new = msg.new
        values = tuple(None if p is None else new[p] for p in positions)
        batch.changes.append(RowChange("upsert", pk, values))

    def _layout(self, rel: pgoutput.Relation) -> tuple[int, tuple[int | None, ...]]:
        at = {c.name: i for i, c in enumerate(rel.columns)}
        if "id" not in at:
            raise StreamOrderError(f"relation {rel.namespace}.{rel.name} arrives without its id column")
        return at["id"], tuple(at.get(name) for name in self.columns)

    def _layout_of(self, oid: int) -> tuple[int, tuple[int | None, ...]] | None:
        if oid not in self._layouts:
            raise StreamOrderError(f"a change to relation {oid} arrived before its Relation message")
        return self._layouts[oid]

    def _require_open(self, what: str) -> ChangeBatch:
        if self._open is None:
            raise StreamOrderError(f"{what} message outside a transaction")
        return self._open


def _pk(value: object) -> int:
    if not isinstance(value, str):
        raise StreamOrderError(f"a row arrived with id {value!r}; ids are bigint and never NULL")
    return int(value)
