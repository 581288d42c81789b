"""Supplier flat-file exports (EMIS-like CSV, TPP-like pipe-delimited, or any dialect in configuration).

A delivery is the set of files sharing one ``{stamp}`` in the practice's folder, one file per record type,
named by the dialect's ``file_name`` template. Every file is checked before it is parsed: not empty, UTF-8
without a byte-order mark, no NUL bytes, ends with a line end (a missing one means a truncated transfer),
exactly the dialect's columns (an unexpected column could carry a name; it fails the file), the same number of
fields on every row, and values that parse as their field's type. Errors name the practice, file, row and
column, never a value.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gpdata.errors import SourceError
from gpdata.ingest.dialects import Dialect
from gpdata.ingest.sources.convert import DELETED, to_canonical
from gpdata.model import CANONICAL, POSITION, TABLES

_SAFE_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]{0,40}$")


@dataclass(frozen=True)
class DeliveredFile:
    path: Path
    table: str
    stamp: str


def list_files(location: Path, dialect: Dialect, practice: str) -> list[DeliveredFile]:
    """Every delivery file in the folder, oldest stamp first. A file the dialect does not name, or one for
    another practice, is an error (it would otherwise be silently ignored)."""
    if not location.is_dir():
        raise SourceError(f"delivery folder {location} does not exist", practice=practice)
    pattern = dialect.file_regex
    out = []
    for path in sorted(p for p in location.iterdir() if p.is_file() and not p.name.startswith(".")):
        m = pattern.match(path.name)
        if not m:
            raise SourceError(f"file name does not match the {dialect.name} pattern {dialect.file_name}",
                              practice=practice, file=path.name)
        if m["practice"] != practice:
            raise SourceError(f"file is for practice {m['practice']}", practice=practice, file=path.name)
        table = dialect.source_table(m["source"])
        if table is None:
            raise SourceError(f"unknown record type {m['source']!r} for dialect {dialect.name}", practice=practice,
                              file=path.name)
        out.append(DeliveredFile(path=path, table=table, stamp=m["stamp"]))
    return sorted(out, key=lambda f: (f.stamp, TABLES.index(f.table)))


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _header_name(name: str) -> str:
    return repr(name) if _SAFE_HEADER.match(name) else "(a column whose name is not a plain word)"


def _bad_row(text: str, dialect: Dialect, width: int) -> int | None:
    for number, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=dialect.delimiter)):
        if len(row) != width:
            return number  # data row number (the header is row 0)
    return None


def read_file(f: DeliveredFile, dialect: Dialect, practice: str) -> pa.Table:
    """One delivered file to canonical rows with a ``_deleted`` flag."""
    name = f.path.name
    data = f.path.read_bytes()
    if not data:
        raise SourceError("empty file (not even a header): truncated or failed transfer", practice=practice,
                          file=name)
    if data.startswith(codecs.BOM_UTF8) or data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise SourceError(f"starts with a byte-order mark: the {dialect.name} dialect is {dialect.encoding} "
                          "without one (re-export without BOM)", practice=practice, file=name)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise SourceError("contains NUL bytes (binary or wrongly encoded data)", practice=practice, file=name,
                          row=_line_of(data, nul) - 1)
    try:
        codecs.getincrementaldecoder(dialect.encoding)().decode(data, final=True)  # checked, not kept: a copy
    except UnicodeDecodeError as exc:
        raise SourceError(f"not valid {dialect.encoding} (wrong encoding?)", practice=practice, file=name,
                          row=_line_of(data, exc.start) - 1) from None
    if not data.endswith(b"\n"):
        raise SourceError("does not end with a line end: the file is truncated", practice=practice, file=name)
    first_line = data[:data.find(b"\n")].decode(dialect.encoding)
    header = next(csv.reader(io.StringIO(first_line), delimiter=dialect.delimiter), [])
    header = [h.strip("\r") for h in header]
    expected = dialect.columns(f.table)
    unknown = [h for h in header if h not in expected]
    missing = [h for h in expected if h not in header]
    if unknown or missing or len(header) != len(set(header)):
        parts = []
        if missing:
            parts.append("missing column(s) " + ", ".join(missing))
        if unknown:
            parts.append(f"{len(unknown)} unexpected column(s) " + ", ".join(_header_name(h) for h in unknown))
        if len(header) != len(set(header)):
            parts.append("a column appears twice")
        raise SourceError(f"columns differ from the {dialect.name} dialect: " + "; ".join(parts),
                          practice=practice, file=name)
    try:
        raw = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=dialect.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in header},
                                                 null_values=[""], strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        row = _bad_row(data.decode(dialect.encoding), dialect, len(header))
        cause = "rows with the wrong number of fields (truncated or unquoted delimiter)" \
            if "columns" in str(exc) else "not parseable as delimited text"
        raise SourceError(cause, practice=practice, file=name, row=row) from None
    return to_canonical(f.table, raw, dialect, practice, name)


def _text(field: pa.Field, column: pa.ChunkedArray, dialect: Dialect) -> pa.Array:
    if pa.types.is_date32(field.type):
        return pc.strftime(column, format=dialect.date_format)
    if pa.types.is_timestamp(field.type):
        seconds = pc.cast(column, pa.timestamp("s", tz="UTC"), safe=False)  # %S would print microseconds
        return pc.strftime(seconds, format=dialect.datetime_format)
    if field.name == "code_system":
        labels = {v: k for k, v in dialect.code_systems.items()}
        return pa.array([labels.get(v, v) if v is not None else None for v in column.to_pylist()], pa.string())
    return pc.cast(column, pa.string())


def write_delivery(tables: dict[str, pa.Table], folder: Path, practice: str, dialect: Dialect, stamp: str,
                   deleted: dict[str, pa.Table] | None = None) -> list[Path]:
    """Write canonical tables (and rows to mark deleted) as one delivery in the dialect (the generator's
    export side). Every table gets a file, with only a header when it has no rows."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        mapping = dialect.tables[name].columns
        parts = []
        for flag, table in ((False, tables.get(name)), (True, (deleted or {}).get(name))):
            if table is None or table.num_rows == 0:
                continue
            cols = {src: _text(CANONICAL[name].field(field), table[field], dialect) for field, src in mapping.items()}
            cols[dialect.deleted.column] = pa.array(
                [dialect.deleted.when_deleted if flag else dialect.deleted.otherwise] * table.num_rows, pa.string())
            parts.append(pa.table(cols))
        schema = pa.schema([(c, pa.string()) for c in dialect.columns(name)])
        out = pa.concat_tables([p.select(schema.names) for p in parts]) if parts else schema.empty_table()
        path = folder / dialect.file_name.format(practice=practice, source=dialect.tables[name].source, stamp=stamp)
        tmp = path.with_name("." + path.name)
        pacsv.write_csv(out, tmp, write_options=pacsv.WriteOptions(delimiter=dialect.delimiter,
                                                                   quoting_style="needed"))
        tmp.rename(path)
        written.append(path)
    return written


__all__ = ["DELETED", "POSITION", "DeliveredFile", "list_files", "read_file", "write_delivery"]
