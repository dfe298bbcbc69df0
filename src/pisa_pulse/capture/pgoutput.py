"""A pure decoder for the messages of PostgreSQL's logical replication output plugin `pgoutput`.

`decode()` turns the bytes of one message (the payload of one XLogData frame of a replication stream,
or one `data` value of `pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...)`) into a
typed record: Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, or Message (a
logical decoding message written by `pg_logical_emit_message`). Only protocol version 1 is decoded:
no streamed transactions (v2) and no two-phase messages (v3).

Column values are expected in text format (the default; we never ask for `binary`): a text value
becomes `str`, NULL becomes None and an unchanged TOASTed value that the server did not send becomes
`UNCHANGED`. Text (values and names) is read as UTF-8: the server converts it to the connection's
client_encoding, UTF8 on our clusters. Timestamps become microseconds since the Unix epoch; LSNs stay
64-bit integers.

Reference: PostgreSQL 15 documentation, "Logical Replication Message Formats" (section 55.9),
https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html

Pure: bytes in, records out; no I/O and no state (the caller keeps each Relation to name columns).
Malformed input raises `PgoutputError`, never IndexError or struct.error.
"""

from __future__ import annotations

import enum
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from pisa_pulse.capture.exceptions import PgoutputError

__all__ = [
    "UNCHANGED", "Begin", "Column", "Commit", "Delete", "Insert", "Message", "Msg", "Origin",
    "PgoutputError", "Relation", "Truncate", "Type", "Unchanged", "Update", "Value", "decode",
]  # fmt: skip

# pgoutput timestamps count microseconds from 2000-01-01 (PostgreSQL's epoch); ours from 1970-01-01.
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000


class Unchanged(enum.Enum):
    """The type of `UNCHANGED`: a TOASTed column value the server left out because it did not change."""

    UNCHANGED = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED
Value: TypeAlias = str | Unchanged | None


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a Relation, in table order; `is_key` when it is part of the replica identity."""

    name: str
    type_oid: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's description, sent before its first change in a session and again after it changes.

    `replica_identity` is 'd' (default: primary key), 'n' (nothing), 'f' (full) or 'i' (index).
    `namespace` is empty for pg_catalog. With a publication column list only the listed columns appear.
    """

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    """The start of a transaction; `final_lsn` is the LSN of its commit record."""

    final_lsn: int
    commit_time_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """The end of a transaction: `commit_lsn` equals Begin's `final_lsn`; `end_lsn` is where it ends."""

    commit_lsn: int
    end_lsn: int
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    """The replication origin a transaction came from, with its commit LSN on that origin."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Type:
    """A non-built-in data type (an enum, a domain...) used by a column of the next Relation."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row: one value per column of the relation."""

    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row. `old` is sent only when the key changed ('K': key columns, others None) or
    under REPLICA IDENTITY FULL ('O': the whole old row); otherwise `old` and `old_kind` are None."""

    relation_oid: int
    old: tuple[Value, ...] | None
    old_kind: str | None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    """A deleted row: its key columns ('K', others None) or, under REPLICA IDENTITY FULL, all ('O')."""

    relation_oid: int
    old: tuple[Value, ...]
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of one or more relations (the tables it cascaded to included)."""

    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A logical decoding message (`pg_logical_emit_message`); a non-transactional one arrives alone,
    outside Begin/Commit, even when the transaction that wrote it rolled back."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Msg: TypeAlias = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Origin | Type | Message

# Message type bytes.
_BEGIN: Final = ord("B")
_COMMIT: Final = ord("C")
_ORIGIN: Final = ord("O")
_RELATION: Final = ord("R")
_TYPE: Final = ord("Y")
_INSERT: Final = ord("I")
_UPDATE: Final = ord("U")
_DELETE: Final = ord("D")
_TRUNCATE: Final = ord("T")
_MESSAGE: Final = ord("M")

# Tuple markers and column value kinds.
_NEW: Final = ord("N")
_KEY: Final = ord("K")
_OLD: Final = ord("O")
_TEXT: Final = ord("t")
_NULL: Final = ord("n")
_TOAST_UNCHANGED: Final = ord("u")
_BINARY: Final = ord("b")

_IS_KEY_FLAG: Final = 1
_TRANSACTIONAL_FLAG: Final = 1
_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BEGIN_FIELDS = struct.Struct(">QqI")  # final LSN, commit time, xid
_COMMIT_FIELDS = struct.Struct(">BQQq")  # flags (unused), commit LSN, end LSN, commit time
_RELATION_TAIL = struct.Struct(">BH")  # replica identity, number of columns
_COLUMN_TAIL = struct.Struct(">Ii")  # type OID, type modifier
_TRUNCATE_HEAD = struct.Struct(">IB")  # number of relations, option bits
_MESSAGE_HEAD = struct.Struct(">BQ")  # flags, LSN
_KIND_AND_LENGTH = struct.Struct(">BI")

# Zero bytes appended to the payload so that a column's kind and length are read with one unpack even
# when the last column is a one-byte 'n' or 'u'. Every decoder returns where its fields end and
# decode() checks that against the real payload size, so padding read as data is always reported.
_PAD: Final = bytes(_KIND_AND_LENGTH.size)

# A text column's header when its value is shorter than 256 bytes: 't' and the top three bytes of the
# length (here as characters of the row decoded as ASCII). Text values never contain NUL (PostgreSQL
# text cannot hold one), so in a row of such columns each occurrence of these four is a header.
_SHORT_TEXT_HEADER: Final = "t\x00\x00\x00"
_length_byte = operator.itemgetter(0)
_after_length_byte = operator.itemgetter(slice(1, None))


class _UnexpectedByte(Exception):
    """A marker byte that is not one the format allows here (decode() turns it into PgoutputError)."""

    def __init__(self, expected: str, found: int, offset: int) -> None:
        super().__init__(expected, found, offset)
        self.expected = expected
        self.found = found
        self.offset = offset


class _BadText(Exception):
    """Bytes at `offset` (up to `end`) that are not UTF-8: damaged, or cut short by truncation."""

    def __init__(self, offset: int, end: int) -> None:
        super().__init__(offset, end)
        self.offset = offset
        self.end = end


def decode(payload: bytes | memoryview) -> Msg:
    """Decode one pgoutput protocol-1 message; raise PgoutputError when it is malformed or unsupported.

    A malformed message's error names its type, its size and the offset where the format broke.
    """
    buf = bytes(payload)
    size = len(buf)
    if size == 0:
        raise PgoutputError("empty pgoutput message: no type byte")
    kind = buf[0]
    entry = _DECODERS.get(kind)
    if entry is None:
        raise PgoutputError(
            f"unknown pgoutput message type {_show(kind)} at offset 0 "
            "(protocol version 1 has B C O R Y I U D T M)"
        )
    name, decoder = entry
    try:
        msg, end = decoder(buf + _PAD, 1)
    except (struct.error, IndexError):
        what = f"pgoutput {name} message ({size} bytes)"
        raise PgoutputError(f"{what} is truncated: a field runs past its end at offset {size}") from None
    except _UnexpectedByte as e:
        what = f"pgoutput {name} message ({size} bytes)"
        if e.offset >= size:
            raise PgoutputError(f"{what} is truncated: {e.expected} expected at offset {e.offset}") from None
        raise PgoutputError(
            f"{what} has {_show(e.found)} at offset {e.offset} where {e.expected} was expected"
        ) from None
    except _BadText as e:
        what = f"pgoutput {name} message ({size} bytes)"
        if e.end > size:
            raise PgoutputError(f"{what} is truncated: text at offset {e.offset} runs to {e.end}") from None
        raise PgoutputError(f"{what} holds text that is not UTF-8 at offset {e.offset}") from None
    if end != size:
        what = f"pgoutput {name} message ({size} bytes)"
        if end > size:
            raise PgoutputError(f"{what} is truncated: its fields run to offset {end}")
        raise PgoutputError(f"{what} has {size - end} unexpected bytes after its last field, at offset {end}")
    return msg


def _show(byte: int) -> str:
    return f"{chr(byte)!r} (0x{byte:02x})"


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated string at `pos`, and the offset after its NUL."""
    end = buf.find(0, pos)
    if end < 0:
        raise IndexError(pos)
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError:
        raise _BadText(pos, end) from None


def _tuple_data(buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """TupleData at `pos`: the column values, and the offset after them."""
    (count,) = _U16.unpack_from(buf, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    kind_and_length = _KIND_AND_LENGTH.unpack_from
    for _ in range(count):
        kind, length = kind_and_length(buf, pos)
        if kind == _TEXT:
            pos += 5
            end = pos + length
            try:  # free in the loop unless it raises (zero-cost exceptions)
                append(buf[pos:end].decode())
            except UnicodeDecodeError:
                raise _BadText(pos, end) from None
            pos = end
        elif kind == _NULL:
            append(None)
            pos += 1
        elif kind == _TOAST_UNCHANGED:
            append(UNCHANGED)
            pos += 1
        elif kind == _BINARY:
            raise PgoutputError(
                f"binary column value at offset {pos}: only text values are decoded; "
                "start replication without the 'binary' option"
            )
        else:
            raise _UnexpectedByte("a column kind ('t', 'n', 'u')", kind, pos)
    return tuple(values), pos


def _final_tuple_data(buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """TupleData that runs to the end of the payload: what `_tuple_data` returns, faster.

    A row of short ASCII text values (the common case) is split at its column headers with C-speed
    str methods instead of a Python loop over columns. The split is used only when it is exactly the
    sequential parse: one header per column, nothing before the first, and each piece its length
    byte followed by that many characters. Anything else (NULL, unchanged, long or non-ASCII values,
    truncation) goes through the sequential loop, which also reports errors.
    """
    (count,) = _U16.unpack_from(buf, pos)
    end = len(buf) - len(_PAD)
    row = buf[pos + 2 : end]
    if pos + 2 <= end and row.isascii():  # (a count read from the padding lies beyond the end)
        pieces = row.decode("ascii").split(_SHORT_TEXT_HEADER)
        if len(pieces) == count + 1 and not pieces[0]:
            del pieces[0]
            values = tuple(map(_after_length_byte, pieces))
            try:
                exact = list(map(len, values)) == list(map(ord, map(_length_byte, pieces)))
            except IndexError:  # an empty piece: not a well-formed row; the loop says why
                exact = False
            if exact:
                return values, end
    return _tuple_data(buf, pos)


def _begin(buf: bytes, pos: int) -> tuple[Begin, int]:
    final_lsn, commit_time, xid = _BEGIN_FIELDS.unpack_from(buf, pos)
    return Begin(final_lsn, commit_time + PG_EPOCH_OFFSET_US, xid), pos + _BEGIN_FIELDS.size


def _commit(buf: bytes, pos: int) -> tuple[Commit, int]:
    _flags, commit_lsn, end_lsn, commit_time = _COMMIT_FIELDS.unpack_from(buf, pos)
    return Commit(commit_lsn, end_lsn, commit_time + PG_EPOCH_OFFSET_US), pos + _COMMIT_FIELDS.size


def _origin(buf: bytes, pos: int) -> tuple[Origin, int]:
    (commit_lsn,) = _U64.unpack_from(buf, pos)
    name, pos = _cstring(buf, pos + 8)
    return Origin(commit_lsn, name), pos


def _relation(buf: bytes, pos: int) -> tuple[Relation, int]:
    (oid,) = _U32.unpack_from(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    identity, count = _RELATION_TAIL.unpack_from(buf, pos)
    pos += _RELATION_TAIL.size
    columns = []
    for _ in range(count):
        flags = buf[pos]
        column_name, pos = _cstring(buf, pos + 1)
        type_oid, _type_modifier = _COLUMN_TAIL.unpack_from(buf, pos)
        pos += _COLUMN_TAIL.size
        columns.append(Column(column_name, type_oid, bool(flags & _IS_KEY_FLAG)))
    return Relation(oid, namespace, name, chr(identity), tuple(columns)), pos


def _type(buf: bytes, pos: int) -> tuple[Type, int]:
    (oid,) = _U32.unpack_from(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    return Type(oid, namespace, name), pos


def _insert(buf: bytes, pos: int) -> tuple[Insert, int]:
    (oid,) = _U32.unpack_from(buf, pos)
    pos += 4
    if buf[pos] != _NEW:
        raise _UnexpectedByte("'N' (new tuple)", buf[pos], pos)
    new, pos = _final_tuple_data(buf, pos + 1)
    return Insert(oid, new), pos


def _update(buf: bytes, pos: int) -> tuple[Update, int]:
    (oid,) = _U32.unpack_from(buf, pos)
    pos += 4
    marker = buf[pos]
    old: tuple[Value, ...] | None = None
    old_kind: str | None = None
    if marker in (_KEY, _OLD):
        old, pos = _tuple_data(buf, pos + 1)
        old_kind = chr(marker)
        marker = buf[pos]
    if marker != _NEW:
        expected = "'N' (new tuple)" if old_kind else "'K', 'O' or 'N' (tuple)"
        raise _UnexpectedByte(expected, marker, pos)
    new, pos = _final_tuple_data(buf, pos + 1)
    return Update(oid, old, old_kind, new), pos


def _delete(buf: bytes, pos: int) -> tuple[Delete, int]:
    (oid,) = _U32.unpack_from(buf, pos)
    pos += 4
    marker = buf[pos]
    if marker not in (_KEY, _OLD):
        raise _UnexpectedByte("'K' or 'O' (old tuple)", marker, pos)
    old, pos = _final_tuple_data(buf, pos + 1)
    return Delete(oid, old, chr(marker)), pos


def _truncate(buf: bytes, pos: int) -> tuple[Truncate, int]:
    count, options = _TRUNCATE_HEAD.unpack_from(buf, pos)
    pos += _TRUNCATE_HEAD.size
    end = pos + 4 * count
    if end > len(buf):  # checked first so that a corrupt count cannot ask for a huge unpack
        raise IndexError(end)
    oids = struct.unpack_from(f">{count}I", buf, pos)
    truncate = Truncate(oids, bool(options & _TRUNCATE_CASCADE), bool(options & _TRUNCATE_RESTART_IDENTITY))
    return truncate, end


def _message(buf: bytes, pos: int) -> tuple[Message, int]:
    flags, lsn = _MESSAGE_HEAD.unpack_from(buf, pos)
    prefix, pos = _cstring(buf, pos + _MESSAGE_HEAD.size)
    (length,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = pos + length
    return Message(bool(flags & _TRANSACTIONAL_FLAG), lsn, prefix, buf[pos:end]), end


_DECODERS: Final[dict[int, tuple[str, Callable[[bytes, int], tuple[Msg, int]]]]] = {
    _BEGIN: ("Begin", _begin),
    _COMMIT: ("Commit", _commit),
    _ORIGIN: ("Origin", _origin),
    _RELATION: ("Relation", _relation),
    _TYPE: ("Type", _type),
    _INSERT: ("Insert", _insert),
    _UPDATE: ("Update", _update),
    _DELETE: ("Delete", _delete),
    _TRUNCATE: ("Truncate", _truncate),
    _MESSAGE: ("Message", _message),
}
