"""Text columns of a flat file or a database export to typed canonical tables, by a dialect."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from gpdata.errors import SourceError
from gpdata.ingest.dialects import Dialect
from gpdata.model import CANONICAL, POSITION

DELETED = "_deleted"


def _first_bad(raw: pa.Array, parsed: pa.Array) -> int | None:
    bad = pc.and_(pc.and_(pc.is_valid(raw), pc.not_equal(raw, "")), pc.is_null(parsed))
    if not pc.any(bad).as_py():
        return None
    return pc.index(bad, True).as_py()


def _parse(field: pa.Field, raw: pa.Array, dialect: Dialect) -> pa.Array:
    if pa.types.is_date32(field.type):
        return pc.cast(pc.strptime(raw, format=dialect.date_format, unit="s", error_is_null=True), pa.date32())
    if pa.types.is_timestamp(field.type):
        ts = pc.strptime(raw, format=dialect.datetime_format, unit="us", error_is_null=True)
        return pc.assume_timezone(ts, "UTC").cast(field.type)
    if pa.types.is_floating(field.type) or pa.types.is_integer(field.type):
        ok = pc.match_substring_regex(raw, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$" if
                                      pa.types.is_floating(field.type) else r"^\s*[-+]?\d{1,9}\s*$")
        clean = pc.if_else(pc.fill_null(ok, False), raw, pa.scalar(None, pa.string()))
        return pc.cast(pc.utf8_trim_whitespace(clean), field.type)
    if field.name == "code_system":
        labels = pa.array(list(dialect.code_systems), pa.string())
        systems = pa.array(list(dialect.code_systems.values()), pa.string())
        mapped = pc.take(systems, pc.index_in(raw, value_set=labels))
        return pc.coalesce(mapped, raw)  # an unknown label stays as delivered: the quality gate quarantines it
    return raw


def to_canonical(table: str, raw: pa.Table, dialect: Dialect, practice: str, file: str,
                 first_row: int = 1) -> pa.Table:
    """Typed canonical rows (with ``_deleted``) from text columns named as in the dialect. A value that does not
    parse as its field's type fails the file, naming the column and row (never the value)."""
    mapping = dialect.tables[table].columns
    n = raw.num_rows
    arrays, fields = [], []
    for field in CANONICAL[table]:
        if field.name == POSITION[0]:
            arrays.append(pa.array([file] * n, pa.string()))
        elif field.name == POSITION[1]:
            arrays.append(pa.array(range(first_row, first_row + n), pa.int32()))
        elif field.name in mapping:
            column = raw[mapping[field.name]].combine_chunks()
            parsed = _parse(field, column, dialect)
            bad = _first_bad(column, parsed) if field.name != "code_system" else None
            if bad is not None:
                kind = "date" if pa.types.is_date32(field.type) else \
                    "date and time" if pa.types.is_timestamp(field.type) else "number"
                raise SourceError(f"column {mapping[field.name]}: not a {kind} in the dialect's format "
                                  f"({dialect.name}); was the column retyped?", practice=practice, file=file,
                                  row=first_row + bad)
            arrays.append(parsed)
        else:
            arrays.append(pa.nulls(n, field.type))
        fields.append(field)
    flag = raw[dialect.deleted.column].combine_chunks()
    if pa.types.is_boolean(flag.type):
        deleted = pc.fill_null(flag, False)
    else:
        deleted = pc.equal(flag, dialect.deleted.when_deleted)
        valid = pc.or_(deleted, pc.equal(flag, dialect.deleted.otherwise))
        bad = _first_bad(pa.array([""] * n, pa.string()) if n == 0 else flag, pc.if_else(
            pc.fill_null(valid, False), flag, pa.scalar(None, pa.string())))
        if pc.any(pc.invert(pc.fill_null(valid, False))).as_py():
            row = bad if bad is not None else pc.index(pc.invert(pc.fill_null(valid, False)), True).as_py()
            raise SourceError(f"column {dialect.deleted.column}: expected {dialect.deleted.when_deleted!r} or "
                              f"{dialect.deleted.otherwise!r}", practice=practice, file=file, row=first_row + row)
        deleted = pc.fill_null(deleted, False)
    arrays.append(deleted)
    fields.append(pa.field(DELETED, pa.bool_()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def split_deleted(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(current rows, rows the source marks deleted), both in the canonical schema."""
    flag = table[DELETED]
    kept = table.filter(pc.invert(flag)).drop_columns([DELETED])
    gone = table.filter(flag).drop_columns([DELETED])
    return kept, gone


def latest_versions(tables: list[pa.Table]) -> pa.Table:
    """Several deliveries of one table, oldest first, to one row per source_id: the newest version wins
    (an amendment replaces, a later deletion deletes, a later re-insertion restores)."""
    if len(tables) == 1:  # within one delivery repeated ids stay: the quality gate reports duplicates
        return tables[0]
    combined = pa.concat_tables(tables)
    missing = pc.is_null(combined["source_id"])
    orphans, combined = combined.filter(missing), combined.filter(pc.invert(missing))
    seq = pa.array(range(combined.num_rows), pa.int64())
    keyed = pa.table({"source_id": combined["source_id"], "_seq": seq})
    last = keyed.group_by("source_id", use_threads=False).aggregate([("_seq", "max")])
    keep = pc.sort_indices(last["_seq_max"])
    return pa.concat_tables([combined.take(pc.take(last["_seq_max"], keep)), orphans])
