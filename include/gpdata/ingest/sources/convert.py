"""Text columns of a flat file or a database export to typed canonical tables, by a dialect."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from gpdata.codes import optout_codes
from gpdata.errors import SourceError
from gpdata.ingest.dialects import Deleted, Dialect, FieldMap
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


def _fail(practice: str, file: str, first_row: int, row: int, cause: str) -> SourceError:
    return SourceError(cause, practice=practice, file=file, row=first_row + row)


def _text_of(raw: pa.Table, column: str) -> pa.Array:
    return raw[column].combine_chunks()


def _mapped_values(spec: FieldMap, column: pa.Array, field: str, practice: str, file: str,
                   first_row: int) -> pa.Array:
    """A column's delivered text through the field's value map; an unlisted value fails the file."""
    keys = pa.array(list(spec.values), pa.string())
    targets = pa.array(list(spec.values.values()), pa.string())
    mapped = pc.take(targets, pc.index_in(column, value_set=keys))
    bad = _first_bad(column, mapped)
    if bad is not None:
        raise _fail(practice, file, first_row, bad, f"column {spec.column}: a value not in the dialect's value map "
                                                    f"for {field} ({', '.join(spec.values)})")
    return mapped


def _derived_date(spec: FieldMap, raw: pa.Table, practice: str, file: str, first_row: int) -> pa.Array:
    """A date from a year (the first of July) or a year and a month (the first of the month)."""
    year = pc.utf8_trim_whitespace(_text_of(raw, spec.year))
    ok = pc.fill_null(pc.match_substring_regex(year, r"^[0-9]{4}$"), False)
    bad = _first_bad(year, pc.if_else(ok, year, pa.scalar(None, pa.string())))
    if bad is not None:
        raise _fail(practice, file, first_row, bad, f"column {spec.year}: not a year (four digits)")
    if spec.month is None:
        month = pa.array(["07"] * len(year), pa.string())
    else:
        raw_month = pc.utf8_trim_whitespace(_text_of(raw, spec.month))
        ok = pc.fill_null(pc.match_substring_regex(raw_month, r"^(0?[1-9]|1[0-2])$"), False)
        bad = _first_bad(raw_month, pc.if_else(ok, raw_month, pa.scalar(None, pa.string())))
        if bad is not None:
            raise _fail(practice, file, first_row, bad, f"column {spec.month}: not a month (1-12)")
        month = pc.utf8_lpad(raw_month, 2, "0")
        month = pc.if_else(pc.is_valid(month), month, pa.scalar("07"))  # no month: the first of July
    text = pc.binary_join_element_wise(year, month, pa.scalar("01"), "-")
    return pc.cast(pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True), pa.date32())


def _codes(spec: FieldMap, raw: pa.Table, dialect: Dialect, lookups, practice: str, file: str,
           first_row: int) -> tuple[pa.Array, pa.Array]:
    """(code, code system) from several code columns: the first non-empty one wins, each resolved through its
    look-up when it has one, except that a type 1 opt-out code in any column wins over every other code of the
    row (so it is never hidden behind another concept). An id its look-up does not hold fails the file."""
    n = raw.num_rows
    code = pa.nulls(n, pa.string())
    system = pa.nulls(n, pa.string())
    type1 = optout_codes()
    columns = []
    for c in spec.codes:
        values = pc.utf8_trim_whitespace(_text_of(raw, c.column))
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        if c.lookup is not None:
            keys, targets = lookups(c.lookup)
            resolved = pc.take(targets, pc.index_in(values, value_set=keys))
            bad = _first_bad(values, resolved)
            if bad is not None:
                raise _fail(practice, file, first_row, bad, f"column {c.column}: an id not in the lookup "
                                                            f"{c.lookup} ({dialect.lookups[c.lookup].file})")
            values = resolved
        take = pc.and_(pc.is_null(code), pc.is_valid(values))
        code = pc.if_else(take, values, code)
        if c.system is not None:
            system = pc.if_else(take, pa.scalar(c.system), system)
        columns.append((values, c.system))
    for values, col_system in columns:
        dissent, withdrawn = type1.classify(values)
        chosen_dissent, chosen_withdrawn = type1.classify(code)
        take = pc.or_(pc.and_(dissent, pc.invert(chosen_dissent)),
                      pc.and_(withdrawn, pc.invert(pc.or_(chosen_dissent, chosen_withdrawn))))
        code = pc.if_else(take, values, code)
        system = pc.if_else(take, pa.scalar(col_system, pa.string()), system)
    return code, system


def to_canonical(table: str, raw: pa.Table, dialect: Dialect, practice: str, file: str,
                 first_row: int = 1, lookups=None, fields: frozenset[str] | None = None) -> pa.Table:
    """Typed canonical rows (with ``_deleted``) from text columns named as in the dialect. A value that does not
    parse as its field's type fails the file, naming the column and row (never the value). ``lookups``:
    name -> (ids, codes) of the dialect's look-ups (flat files). Row by row, so a file may be converted in
    batches (``first_row``: the row number of the first). ``fields``: only these canonical fields are read
    (the others are null)."""
    tmap = dialect.tables[table]
    mapping = tmap.fields if fields is None else {k: v for k, v in tmap.fields.items() if k in fields}
    n = raw.num_rows
    code = mapping.get("code")
    code_pair = _codes(code, raw, dialect, lookups, practice, file, first_row) \
        if code is not None and code.codes is not None else None
    arrays, fields = [], []
    for field in CANONICAL[table]:
        spec = mapping.get(field.name)
        if field.name == POSITION[0]:
            arrays.append(pa.array([file] * n, pa.string()))
        elif field.name == POSITION[1]:
            arrays.append(pa.array(range(first_row, first_row + n), pa.int32()))
        elif field.name == "code_system" and spec is None and tmap.code_system is not None:
            arrays.append(pa.array([tmap.code_system] * n, pa.string()))
        elif field.name == "code_system" and spec is None and code_pair is not None:
            arrays.append(code_pair[1])
        elif spec is None:
            arrays.append(pa.nulls(n, field.type))
        elif spec.codes is not None:
            arrays.append(code_pair[0])
        elif spec.value is not None:
            arrays.append(pa.array([spec.value] * n, pa.string()))
        elif spec.year is not None:
            arrays.append(_derived_date(spec, raw, practice, file, first_row))
        elif spec.values is not None:
            arrays.append(_mapped_values(spec, _text_of(raw, spec.column), field.name, practice, file, first_row))
        else:
            column = _text_of(raw, spec.column)
            parsed = _parse(field, column, dialect)
            bad = _first_bad(column, parsed) if field.name != "code_system" else None
            if bad is not None:
                kind = "date" if pa.types.is_date32(field.type) else \
                    "date and time" if pa.types.is_timestamp(field.type) else "number"
                raise SourceError(f"column {spec.column}: not a {kind} in the dialect's format "
                                  f"({dialect.name}); was the column retyped?", practice=practice, file=file,
                                  row=first_row + bad)
            arrays.append(parsed)
        fields.append(field)
    arrays.append(_deleted_flags(dialect.deleted_of(table), raw, n, practice, file, first_row))
    fields.append(pa.field(DELETED, pa.bool_()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _deleted_flags(spec: Deleted | None, raw: pa.Table, n: int, practice: str, file: str,
                   first_row: int) -> pa.Array:
    if spec is None:  # no deletion column: nothing is deleted at source
        return pa.array([False] * n, pa.bool_())
    flag = raw[spec.column].combine_chunks()
    if pa.types.is_boolean(flag.type):
        return pc.fill_null(flag, False)
    deleted = pc.equal(flag, spec.when_deleted)
    valid = pc.or_(deleted, pc.equal(flag, spec.otherwise))
    bad = _first_bad(pa.array([""] * n, pa.string()) if n == 0 else flag, pc.if_else(
        pc.fill_null(valid, False), flag, pa.scalar(None, pa.string())))
    if pc.any(pc.invert(pc.fill_null(valid, False))).as_py():
        row = bad if bad is not None else pc.index(pc.invert(pc.fill_null(valid, False)), True).as_py()
        raise SourceError(f"column {spec.column}: expected {spec.when_deleted!r} or "
                          f"{spec.otherwise!r}", practice=practice, file=file, row=first_row + row)
    return pc.fill_null(deleted, False)


def split_deleted(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(current rows, rows the source marks deleted), both in the canonical schema. With nothing marked deleted
    (a snapshot, or a source with no deletion flag at all, as FHIR), the current rows are the rows themselves, not
    a filtered copy."""
    if DELETED not in table.column_names:
        return table, table.slice(0, 0)
    flag = table[DELETED]
    if flag.null_count == 0 and not pc.any(flag).as_py():
        rows = table.drop_columns([DELETED])
        return rows, rows.slice(0, 0)
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
