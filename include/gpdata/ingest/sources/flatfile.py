"""Supplier flat-file exports (EMIS-like CSV, TPP-like pipe-delimited, or any dialect in configuration).

A delivery is the set of files sharing one stamp, one file per record type (a table the dialect marks optional
may be missing), named by the dialect's ``file_name`` template. The stamp is part of the file name, or the name
of the delivery's folder (``folder_name``), or, for a folder holding one delivery at a time, the newest
modification time of its files; the practice is part of the name, or the feed's own folder says it. Every file
is checked before it is parsed: not empty, UTF-8 without a byte-order mark, no NUL bytes, ends with a line end (a
missing one means a truncated transfer), every column the dialect reads, no unexpected column unless the dialect
ignores unmapped columns (an unexpected column could carry a name), the same number of fields on every row, and
values that parse as their field's type. Errors name the practice, file, row and column, never a value. A file is
checked block by block and parsed by pyarrow's streaming CSV reader, ``batch_rows()`` rows at a time
(``iter_file``), so its size does not set the memory it takes.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gpdata.arrowutil import batch_rows
from gpdata.errors import ConfigError, SourceError
from gpdata.ingest.dialects import Dialect
from gpdata.ingest.sources.convert import DELETED, to_canonical
from gpdata.model import CANONICAL, POSITION, TABLES

_SAFE_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]{0,40}$")
BLOCK_BYTES = 1 << 20  # bytes read at once by the file checks and by the CSV reader: the longest row a file may hold


@dataclass(frozen=True)
class DeliveredFile:
    path: Path
    table: str
    stamp: str
    name: str = ""  # as named in errors, the ledger and quarantine: the file name, or folder/file name

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", self.path.name)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _match_file(path: Path, dialect: Dialect, practice: str, shown: str) -> tuple[str, str | None]:
    m = dialect.file_regex.match(path.name)
    if not m:
        raise SourceError(f"file name does not match the {dialect.name} pattern {dialect.file_name}",
                          practice=practice, file=shown)
    found = m.groupdict()
    if found.get("practice") and found["practice"] != practice:
        raise SourceError(f"file is for practice {found['practice']}", practice=practice, file=shown)
    table = dialect.source_table(found["source"])
    if table is None:
        # not quoted: a file name is the sender's free text, and may name a patient
        raise SourceError(f"unknown record type in the file name for dialect {dialect.name}", practice=practice,
                          file=shown)
    return table, found.get("stamp")


def list_files(location: Path, dialect: Dialect, practice: str) -> list[DeliveredFile]:
    """Every delivery file, oldest stamp first. A file or folder the dialect does not name, or one for another
    practice, is an error (it would otherwise be silently ignored)."""
    if not location.is_dir():
        raise SourceError(f"delivery folder {location} does not exist", practice=practice)
    out = []
    how = dialect.stamp_source
    if how == "folder":
        for folder in _visible(location):
            m = dialect.folder_regex.match(folder.name)
            if not folder.is_dir() or not m:
                raise SourceError(f"not a delivery folder named like {dialect.folder_name} (the {dialect.name} "
                                  "dialect delivers one folder per delivery)", practice=practice, file=folder.name)
            if m.groupdict().get("practice") and m["practice"] != practice:
                raise SourceError(f"delivery folder is for practice {m['practice']}", practice=practice,
                                  file=folder.name)
            stamp = dialect.stamp_of(m["stamp"])
            for path in _visible(folder):
                shown = f"{folder.name}/{path.name}"
                table, _ = _match_file(path, dialect, practice, shown)
                out.append(DeliveredFile(path=path, table=table, stamp=stamp, name=shown))
    else:
        files = []
        for path in _visible(location):
            if not path.is_file():
                raise SourceError(f"not a file of the {dialect.name} dialect", practice=practice, file=path.name)
            table, stamp = _match_file(path, dialect, practice, path.name)
            files.append((path, table, stamp))
        if how == "modified" and files:  # one delivery at a time: stamped by its newest file
            import datetime as dt

            newest = max(p.stat().st_mtime for p, _, _ in files)
            stamp = dt.datetime.fromtimestamp(newest, dt.UTC).strftime("%Y%m%d%H%M%S")
            files = [(p, t, stamp) for p, t, _ in files]
        else:
            files = [(p, t, dialect.stamp_of(s)) for p, t, s in files]
        out = [DeliveredFile(path=p, table=t, stamp=s) for p, t, s in files]
    return sorted(out, key=lambda f: (f.stamp, TABLES.index(f.table)))


def _header_name(name: str) -> str:
    return repr(name) if _SAFE_HEADER.match(name) else "(a column whose name is not a plain word)"


def _bad_row(path: Path, dialect: Dialect, width: int) -> int | None:
    """The data row number (the header is row 0) of the first row with other than ``width`` fields, read as a
    stream (the error path only)."""
    with open(path, encoding=dialect.encoding, newline="") as fh:
        for number, row in enumerate(csv.reader(fh, delimiter=dialect.delimiter)):
            if len(row) != width:
                return number
    return None


def _check_bytes(f: DeliveredFile, dialect: Dialect, practice: str) -> int:
    """The byte-level checks of a delivered file, block by block (``BLOCK_BYTES``): not empty, no byte-order
    mark, no NUL byte, valid in the dialect's encoding (an incremental decoder: nothing is kept), ends with a line
    end. Errors name the file and the row (the line before the fault, as the header is row 0). Returns the number
    of line ends, to size the reader's blocks."""
    name, lines, last = f.name, 0, b""
    nul_row = bad_row = None  # the first fault of each kind: a NUL byte is reported before an encoding error
    decoder = codecs.getincrementaldecoder(dialect.encoding)()
    with open(f.path, "rb") as fh:
        while block := fh.read(BLOCK_BYTES):
            if not last and (block.startswith(codecs.BOM_UTF8) or block[:2] in (codecs.BOM_UTF16_LE,
                                                                                 codecs.BOM_UTF16_BE)):
                raise SourceError(f"starts with a byte-order mark: the {dialect.name} dialect is {dialect.encoding} "
                                  "without one (re-export without BOM)", practice=practice, file=name)
            nul = block.find(b"\x00")
            if nul_row is None and nul >= 0:
                nul_row = lines + block.count(b"\n", 0, nul)
            if bad_row is None:
                pending = len(decoder.getstate()[0])  # bytes of a character begun in the previous block
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as exc:
                    bad_row = lines + block.count(b"\n", 0, max(0, exc.start - pending))
            lines += block.count(b"\n")
            last = block
    if not last:
        raise SourceError("empty file (not even a header): truncated or failed transfer", practice=practice,
                          file=name)
    if bad_row is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            bad_row = lines
    if nul_row is not None:
        raise SourceError("contains NUL bytes (binary or wrongly encoded data)", practice=practice, file=name,
                          row=nul_row)
    if bad_row is not None:
        raise SourceError(f"not valid {dialect.encoding} (wrong encoding?)", practice=practice, file=name,
                          row=bad_row)
    if not last.endswith(b"\n"):
        raise SourceError("does not end with a line end: the file is truncated", practice=practice, file=name)
    return lines


def _check_header(f: DeliveredFile, dialect: Dialect, practice: str, unmapped: dict[str, set] | None) -> int:
    """The header names every column the dialect reads and no other (unless it ignores unmapped columns, whose
    names go to ``unmapped[table]``), each once. Returns the number of fields of a row."""
    with open(f.path, "rb") as fh:
        first_line = fh.readline().rstrip(b"\n").decode(dialect.encoding)
    header = next(csv.reader(io.StringIO(first_line), delimiter=dialect.delimiter), [])
    header = [h.strip("\r") for h in header]
    expected = dialect.columns(f.table)
    unknown = [h for h in header if h not in expected]
    missing = [h for h in expected if h not in header]
    if unknown and dialect.unmapped_columns == "ignore":
        if unmapped is not None:
            unmapped.setdefault(f.table, set()).update(
                h if _SAFE_HEADER.match(h) else "(a column whose name is not a plain word)" for h in unknown)
        unknown = []
    if unknown or missing or len(header) != len(set(header)):
        parts = []
        if missing:
            parts.append("missing column(s) " + ", ".join(missing))
        if unknown:
            parts.append(f"{len(unknown)} unexpected column(s) " + ", ".join(_header_name(h) for h in unknown))
        if len(header) != len(set(header)):
            parts.append("a column appears twice")
        raise SourceError(f"columns differ from the {dialect.name} dialect: " + "; ".join(parts),
                          practice=practice, file=f.name)
    return len(header)


@dataclass(frozen=True)
class FileShape:
    lines: int  # line ends (header included)
    width: int  # fields per row


def check_file(f: DeliveredFile, dialect: Dialect, practice: str, unmapped: dict[str, set] | None = None
               ) -> FileShape:
    """Every check of a delivered file before its rows are parsed (bytes, then header), in bounded memory."""
    lines = _check_bytes(f, dialect, practice)
    return FileShape(lines=lines, width=_check_header(f, dialect, practice, unmapped))


def _raw_batches(f: DeliveredFile, dialect: Dialect, practice: str, shape: FileShape,
                 columns: list[str]) -> Iterator[pa.Table]:
    """The file's text columns (only ``columns``) through pyarrow's streaming CSV reader, in tables of exactly
    ``batch_rows()`` rows (the last may hold fewer), gathered from the reader's blocks of ``BLOCK_BYTES``.

    The block is fixed, not sized to a batch: the reader reads up to 32 blocks ahead on a background thread
    (Arrow's CSV ``StreamingReader``, a read-ahead no option sets), so blocks of a batch's bytes held as much as
    32 batches of raw text, the whole of most files. Fixed blocks bound that read-ahead to 32 x ``BLOCK_BYTES``
    (32 MiB), whatever the file's size. A row longer than a block may straddle more than two and is refused;
    every row up to a block is read (a field holds at most ``max_field_chars``, 65,536 characters: 256 KiB)."""
    rows, block = batch_rows(), BLOCK_BYTES
    expected = dialect.columns(f.table)
    held: list[pa.RecordBatch] = []
    count = 0
    try:
        reader = pacsv.open_csv(
            f.path, read_options=pacsv.ReadOptions(use_threads=False, block_size=block),
            parse_options=pacsv.ParseOptions(delimiter=dialect.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in expected},
                                                 include_columns=columns, null_values=[""],
                                                 strings_can_be_null=True))
        for raw in reader:
            while raw.num_rows:
                part = raw.slice(0, rows - count)
                held.append(part)
                count += part.num_rows
                raw = raw.slice(part.num_rows)
                if count == rows:
                    count = 0
                    yield _gathered(held)
        if count:
            yield _gathered(held)
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        if "straddl" in str(exc):
            raise SourceError(f"a row longer than {block} bytes (a broken or hostile "
                              "export)", practice=practice, file=f.name) from None
        cause = "rows with the wrong number of fields (truncated or unquoted delimiter)" \
            if "columns" in str(exc) else "not parseable as delimited text"
        raise SourceError(cause, practice=practice, file=f.name,
                          row=_bad_row(f.path, dialect, shape.width)) from None


def _gathered(parts: list[pa.RecordBatch]) -> pa.Table:
    """The parts as one table, the list emptied: a generator that yields it holds no copy while suspended."""
    table = pa.Table.from_batches(parts)
    parts.clear()
    return table


def _columns_of(dialect: Dialect, table: str, fields: frozenset[str] | None) -> list[str]:
    """The source columns to read for these canonical fields (all when None), and the deletion flag."""
    if fields is None:
        return dialect.columns(table)
    deleted = dialect.deleted_of(table)
    mapped = [c for name, spec in dialect.tables[table].fields.items() if name in fields
              for c in spec.source_columns()]
    return [*mapped, *([deleted.column] if deleted else [])]


def iter_file(f: DeliveredFile, dialect: Dialect, practice: str, shape: FileShape | None = None,
              unmapped: dict[str, set] | None = None, fields: frozenset[str] | None = None) -> Iterator[pa.Table]:
    """One delivered file as canonical rows with a ``_deleted`` flag, ``batch_rows()`` rows at a time (at least
    one batch, empty for a header-only file). The file is checked first (``check_file``) unless its ``shape``
    says it was. ``fields``: read only these canonical fields (the others are null). Columns the dialect ignores
    (unmapped) are not read; their names are added to ``unmapped[table]``."""
    shape = shape or check_file(f, dialect, practice, unmapped)
    columns = _columns_of(dialect, f.table, fields)
    first_row = 1
    for raw in _raw_batches(f, dialect, practice, shape, columns):
        table = to_canonical(f.table, raw, dialect, practice, f.name, first_row, lookups=partial(load_lookup, dialect),
                             fields=fields)
        first_row += raw.num_rows
        del raw  # the text is not held while the caller works on the batch
        yield table
        del table  # nor these rows while the next batch is read
    if first_row == 1:
        empty = pa.schema([(c, pa.string()) for c in columns]).empty_table()
        yield to_canonical(f.table, empty, dialect, practice, f.name, fields=fields)


def read_file(f: DeliveredFile, dialect: Dialect, practice: str, unmapped: dict[str, set] | None = None) -> pa.Table:
    """One delivered file to canonical rows with a ``_deleted`` flag (``iter_file``, whole)."""
    return pa.concat_tables(iter_file(f, dialect, practice, unmapped=unmapped))


def load_lookup(dialect: Dialect, name: str) -> tuple[pa.Array, pa.Array]:
    """(ids, codes) of one of the dialect's look-up files; errors name the dialect file and the look-up."""
    path = dialect.lookup_path(name)
    stat = path.stat() if path.exists() else None
    if stat is None:
        raise ConfigError(f"lookup {name}: file {path} does not exist", file=str(dialect.source_file))
    return _read_lookup(path, stat.st_mtime_ns, dialect.lookups[name], str(dialect.source_file))


@lru_cache(maxsize=16)
def _read_lookup(path: Path, mtime_ns: int, spec, dialect_file: str) -> tuple[pa.Array, pa.Array]:
    try:
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
                               convert_options=pacsv.ConvertOptions(
                                   include_columns=[spec.key, spec.value],
                                   column_types={spec.key: pa.string(), spec.value: pa.string()}))
    except (pa.ArrowInvalid, KeyError) as exc:
        raise ConfigError(f"lookup file {path.name}: needs columns {spec.key} and {spec.value} "
                          f"({str(exc).splitlines()[0]})", file=dialect_file) from None
    keys = table[spec.key].combine_chunks()
    if pc.count_distinct(keys).as_py() != len(keys) or keys.null_count:
        raise ConfigError(f"lookup file {path.name}: column {spec.key} must be unique and filled",
                          file=dialect_file)
    return keys, table[spec.value].combine_chunks()


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


def _unmap(spec, values: list, what: str) -> list:
    """Canonical text back to delivered text through a value map (the first delivered text of each)."""
    back: dict = {}
    for delivered, canonical in spec.values.items():
        back.setdefault(canonical, delivered)
    missing = sorted({v for v in values if v is not None and v not in back})
    if missing:
        raise ValueError(f"{what}: the value map has no delivered text for {', '.join(missing)}")
    return [back.get(v) if v is not None else None for v in values]


def _code_columns(name: str, spec, table: pa.Table, dialect: Dialect) -> dict[str, list]:
    """Each row's code in the first of the code columns that can carry it: of the row's system, and, for a
    look-up column, an id the look-up holds."""
    tmap = dialect.tables[name]
    inverse = {}
    for c in spec.codes:
        if c.lookup and c.lookup not in inverse:
            ids, codes = load_lookup(dialect, c.lookup)
            back: dict = {}
            for i, code in zip(ids.to_pylist(), codes.to_pylist(), strict=True):
                back.setdefault(code, i)
            inverse[c.lookup] = back
    out = {c.column: [None] * table.num_rows for c in spec.codes}
    systems = table["code_system"].to_pylist()
    for row, (code, system) in enumerate(zip(table["code"].to_pylist(), systems, strict=True)):
        if code is None:
            continue
        for c in spec.codes:
            if (c.system or tmap.code_system) not in (None, system):
                continue
            if c.lookup:
                if code in inverse[c.lookup]:
                    out[c.column][row] = inverse[c.lookup][code]
                    break
                continue
            out[c.column][row] = code
            break
        else:
            raise ValueError(f"{name}: no code column of the {dialect.name} dialect carries a {system} code")
    return out


def _delivered_columns(name: str, table: pa.Table, dialect: Dialect) -> dict[str, pa.Array]:
    """Canonical rows as the dialect's text columns (the inverse of reading them)."""
    tmap = dialect.tables[name]
    cols: dict[str, pa.Array] = {}
    for field, spec in tmap.fields.items():
        ftype = CANONICAL[name].field(field)
        if spec.value is not None:
            continue  # the same for every row: nothing delivered
        if spec.codes is not None:
            for column, values in _code_columns(name, spec, table, dialect).items():
                cols[column] = pa.array(values, pa.string())
        elif spec.year is not None:
            dates = table[field]
            cols[spec.year] = pc.strftime(dates, format="%Y")
            if spec.month is not None:
                cols[spec.month] = pc.cast(pc.month(dates), pa.string())
        elif spec.values is not None:
            cols[spec.column] = pa.array(_unmap(spec, table[field].to_pylist(), f"{name}.{field}"), pa.string())
        else:
            cols[spec.column] = _text(ftype, table[field], dialect)
    if tmap.code_system is not None:
        wrong = pc.sum(pc.not_equal(table["code_system"], tmap.code_system)).as_py() if table.num_rows else 0
        if wrong:
            raise ValueError(f"{name}: the {dialect.name} dialect carries {tmap.code_system} codes only")
    return cols


def write_delivery(tables: dict[str, pa.Table], folder: Path, practice: str, dialect: Dialect, stamp: str,
                   deleted: dict[str, pa.Table] | None = None, extra_columns: dict[str, str] | None = None
                   ) -> list[Path]:
    """Write canonical tables (and rows to mark deleted) as one delivery in the dialect (the generator's
    export side). Every table of the dialect gets a file, with only a header when it has no rows; tables the
    dialect does not carry are left out. ``extra_columns`` (column -> text) are added to every file, for a
    dialect that ignores unmapped columns. The stamp (YYYYMMDDhhmmss) goes where the dialect reads it from."""
    folder.mkdir(parents=True, exist_ok=True)
    if extra_columns and dialect.unmapped_columns != "ignore":
        raise ValueError(f"the {dialect.name} dialect fails files with unmapped columns")
    target = folder
    if dialect.stamp_source == "folder":
        target = folder / dialect.folder_name.format(practice=practice, stamp=dialect.write_stamp(stamp))
        target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        if name not in dialect.tables:
            continue
        flag = dialect.deleted_of(name)
        parts = []
        for is_deleted, table in ((False, tables.get(name)), (True, (deleted or {}).get(name))):
            if table is None or table.num_rows == 0:
                continue
            if is_deleted and flag is None:
                raise ValueError(f"the {dialect.name} dialect has no deletion column for {name}")
            cols = _delivered_columns(name, table, dialect)
            if flag is not None:
                cols[flag.column] = pa.array([flag.when_deleted if is_deleted else flag.otherwise] * table.num_rows,
                                             pa.string())
            for column, text in (extra_columns or {}).items():
                cols[column] = pa.array([text] * table.num_rows, pa.string())
            parts.append(pa.table(cols))
        names = dialect.columns(name) + list(extra_columns or {})
        schema = pa.schema([(c, pa.string()) for c in names])
        out = pa.concat_tables([p.select(schema.names) for p in parts]) if parts else schema.empty_table()
        fields = {"practice": practice, "source": dialect.tables[name].source}
        if dialect.stamp_source == "name":
            fields["stamp"] = dialect.write_stamp(stamp)
        path = target / dialect.file_name.format(**fields)
        tmp = path.with_name("." + path.name)
        pacsv.write_csv(out, tmp, write_options=pacsv.WriteOptions(delimiter=dialect.delimiter,
                                                                   quoting_style="needed"))
        tmp.rename(path)
        written.append(path)
    if dialect.stamp_source == "modified":
        import datetime as dt
        import os

        when = dt.datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC).timestamp()
        for path in written:
            os.utime(path, (when, when))
    return written


__all__ = ["DELETED", "POSITION", "DeliveredFile", "FileShape", "check_file", "iter_file", "list_files", "read_file",
           "write_delivery"]
