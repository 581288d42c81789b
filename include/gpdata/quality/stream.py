"""The quality gate of a practice whose staged tables do not fit in one record batch, in bounded memory.

Row rules run per record batch (``gpdata.arrowutil.batch_rows``) of the staged Parquet; the rules that span rows
use only what they need of the whole table: duplicates its key column (``duplicate_positions``), dates and
unknown patients the patients that passed (one row per patient). So each row gets exactly the verdict
``gate_rows`` gives it on the whole table. Passed and quarantined rows are written with Parquet writers as they
are found.

Great Expectations then validates each table's passed rows per record batch and merges the results into one per
table (``rules._validate``): a row-by-row expectation's counts are summed and it passes iff it passes on every
batch; a minimum or maximum bound holds on the table iff it holds on every batch with a value in the column; the
column set is every batch's. The one expectation about rows together, uniqueness of the key, is asked of the key
column alone, in groups that hold every occurrence of a value (``key_groups``), so its counts are the whole
column's too. A key column longer than a group is spilled in one pass into a temporary file per group, so
memory holds one batch or one key group (and the patients, one row each), neither the table nor its key column.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata.arrowutil import batch_rows
from gpdata.model import CURATED, QUARANTINE_SCHEMA, TABLES
from gpdata.quality import rules, suites

UNIQUE = "expect_column_values_to_be_unique"
# A key group holds this many batches' worth of one key column. One: GX's uniqueness on a group of n keys takes
# about 300 bytes a key (four batches' worth, 0.5 M keys, was the largest allocation of the check), and asking
# the one expectation of more, smaller groups costs little (about 0.02 s CPU a group; performance.md).
KEY_GROUP_BATCHES = 1
_HEX = pa.array(list("0123456789abcdef"))
_BOUNDS = frozenset({"expect_column_min_to_be_between", "expect_column_max_to_be_between"})


def parquet_file(path: Path) -> pq.ParquetFile:
    """A staged Parquet file to read in record batches. Without pre-buffering: pyarrow's default (``pre_buffer``)
    keeps every column chunk it has read in a cache until the reader goes, so reading a file batch by batch held
    the whole file's compressed bytes by its end (155 MB for the observations of 6 M records)."""
    return pq.ParquetFile(path, pre_buffer=False)


def fits_one_batch(folder: Path, names) -> bool:
    """Whether every one of these staged tables has at most ``batch_rows()`` rows (from the Parquet footers)."""
    rows = batch_rows()
    return all(pq.ParquetFile(folder / f"{name}.parquet").metadata.num_rows <= rows for name in names)


def _group_of(keys: pa.Array, width: int, groups: int) -> np.ndarray:
    """Per key, its key group (``0 <= group < groups``): the number its first ``width`` characters make as hex
    digits, scaled onto ``groups`` ranges of it. A function of the value alone, so every occurrence of a value
    has the same group; a character that is not a lower-case hex digit (a malformed key), a missing one or a
    null counts as 0."""
    value = np.zeros(len(keys), np.int64)
    for i in range(width):
        digit = pc.index_in(pc.utf8_slice_codeunits(keys, i, i + 1), value_set=_HEX)
        value = value * 16 + pc.fill_null(digit, 0).to_numpy(zero_copy_only=False)
    return value * groups // 16 ** width


@contextlib.contextmanager
def key_groups(path: Path, column: str, rows: int, work: Path) -> Iterator[Iterator[tuple[pa.Array, pa.Array]]]:
    """The key ``column`` of the Parquet file ``path`` in groups of about ``rows`` keys each, as (keys, their
    row positions, ascending), every occurrence of a value (and every null) in one group: a check across rows
    (duplicates, uniqueness) gives on each group in turn what it gives on the whole column. Values are grouped
    by their first hex digits (pseudonyms are hex digests, so the groups are even). A column of at most ``rows``
    keys is one group, read as it is; a longer one is spilled, in one pass of record batches, into a temporary
    Arrow IPC file per group under ``work`` (pseudonyms and positions only), each read back in turn and removed
    after it; the folder is removed on leaving the context, also on error. Memory holds one batch of keys or one
    group, never the column."""
    file = parquet_file(path)
    n = file.metadata.num_rows
    if n <= rows:
        keys = file.read(columns=[column])[column].combine_chunks()
        yield iter([(keys, pa.array(np.arange(n, dtype=np.int64)))])
        return
    width = max(1, math.ceil(math.log(4 * n / rows, 16)))  # at least four prefixes per group, on average
    groups = math.ceil(n / rows)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="keys-", dir=work) as folder:
        paths = [Path(folder) / f"{g}.arrow" for g in range(groups)]
        schema = pa.schema([(column, file.schema_arrow.field(column).type), ("position", pa.int64())])
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(pa.ipc.new_file(p, schema)) for p in paths]
            at = 0
            for batch in file.iter_batches(batch_size=batch_rows(), columns=[column]):
                keys = batch.column(0)
                group = _group_of(keys, width, groups)
                order = np.argsort(group, kind="stable")  # by group, ascending positions within one
                spilled = pa.record_batch([keys, pa.array(np.arange(at, at + len(keys), dtype=np.int64))],
                                          schema=schema).take(pa.array(order))
                start = 0
                for g, count in enumerate(np.bincount(group, minlength=groups)):
                    if count:
                        writers[g].write_batch(spilled.slice(start, count))
                    start += count
                at += len(keys)
        yield _read_groups(paths)


def _read_groups(paths: list[Path]) -> Iterator[tuple[pa.Array, pa.Array]]:
    for path in paths:
        with pa.ipc.open_file(path) as reader:
            table = reader.read_all()
        path.unlink()
        yield table.column(0).combine_chunks(), table.column(1).combine_chunks()


def duplicate_positions(path: Path, column: str, rows: int, work: Path) -> np.ndarray:
    """The row positions (ascending) that ``rules._duplicates`` flags in the whole key ``column`` of the Parquet
    file ``path`` (the second and later occurrences of each value), found one key group at a time."""
    found = [np.empty(0, np.int64)]
    with key_groups(path, column, rows, work) as groups:
        for keys, positions in groups:
            found.append(positions.filter(rules._duplicates(keys)).to_numpy())
    return np.sort(np.concatenate(found))


def _flags(duplicates: np.ndarray, at: int, n: int) -> pa.Array:
    """The duplicate flags of the ``n`` rows from position ``at``."""
    flags = np.zeros(n, bool)
    lo, hi = np.searchsorted(duplicates, (at, at + n))
    flags[duplicates[lo:hi] - at] = True
    return pa.array(flags)


def _key(name: str) -> str:
    return suites.UNIQUE_KEY.get(name, "record_id")


def gate_rows_streamed(source: Path, target: Path, practice: str, run_id: str, *, today: dt.date,
                       max_quarantine_fraction: float = 0.05, quarantine_allowance: int = 10,
                       known_patients: tuple[pa.Array, pa.Array] | None = None) -> rules.GateResult:
    """``rules.gate_rows`` on the staged Parquet in ``source``, one record batch at a time: the rows that passed
    are written to ``target`` (``<table>.parquet``, the curated schema) and the quarantined ones to
    ``target/quarantine.parquet``; the result has the same counts and failures, and ``folder`` = ``target``."""
    rows = batch_rows()
    tally = rules.Tally(max_quarantine_fraction, quarantine_allowance)
    events = None
    started = time.monotonic()
    target.mkdir(parents=True)
    with pq.ParquetWriter(target / "quarantine.parquet", QUARANTINE_SCHEMA, compression="zstd") as quarantine:
        for name in TABLES:  # patients first: events are checked against the patients that passed
            path = source / f"{name}.parquet"
            duplicates = duplicate_positions(path, _key(name), KEY_GROUP_BATCHES * rows, target)
            patients, at = [], 0
            with pq.ParquetWriter(target / f"{name}.parquet", CURATED[name], compression="zstd") as out:
                for batch in parquet_file(path).iter_batches(batch_size=rows):
                    step = rules.table_step(name, pa.Table.from_batches([batch]), today, events, practice, run_id,
                                            duplicates=_flags(duplicates, at, batch.num_rows))
                    at += batch.num_rows
                    out.write_table(step.clean)
                    quarantine.write_table(step.quarantine)
                    tally.add(name, step)
                    if name == "patients":
                        patients.append(step.clean.select(["patient_pid", "birth_month", "death_month"]))
            tally.close(name)
            if name == "patients":
                events = rules.patient_context(pa.concat_tables(patients) if patients else
                                               CURATED[name].empty_table(), known_patients)
    return rules.GateResult(passed={}, quarantine=QUARANTINE_SCHEMA.empty_table(), counts=tally.counts,
                            failures=tally.failures, seconds={"quality_rules": round(time.monotonic() - started, 3)},
                            folder=target)


def _empty(columns: pa.Table | pq.ParquetFile) -> frozenset[str]:
    """The columns without a value (all null), of a table or of a whole Parquet file (from its footer)."""
    if isinstance(columns, pa.Table):
        return frozenset(c for c in columns.column_names if columns[c].null_count == columns.num_rows)
    meta, names = columns.metadata, columns.schema_arrow.names

    def nulls(i: int) -> int:
        stats = [meta.row_group(g).column(i).statistics for g in range(meta.num_row_groups)]
        if all(s is not None and s.has_null_count for s in stats):
            return sum(s.null_count for s in stats)
        return columns.read(columns=[names[i]])[0].null_count  # a writer without statistics: read the column

    return frozenset(name for i, name in enumerate(names) if nulls(i) == meta.num_rows)


def _parts(path: Path, name: str, expectations: list, work: Path) -> Iterator[tuple[pa.Table, list]]:
    """(rows, expectations) to validate a large table by: each record batch with every expectation but the key's
    uniqueness (and the bounds of a column with no value in that batch: GX has no minimum of nothing), then
    each key group of the key column with the uniqueness expectation alone (spilled under ``work``)."""
    rows = batch_rows()
    unique = [e for e in expectations if e.expectation_type == UNIQUE]
    rest = [e for e in expectations if e.expectation_type != UNIQUE]
    for batch in parquet_file(path).iter_batches(batch_size=rows):
        table = pa.Table.from_batches([batch])
        empty = _empty(table)
        yield table, [e for e in rest if not (e.expectation_type in _BOUNDS and e.column in empty)]
    key = _key(name)
    with key_groups(path, key, KEY_GROUP_BATCHES * rows, work) as groups:
        for keys, _ in groups:
            yield pa.table({key: keys}), unique


def _measurement_parts(file: pq.ParquetFile, expectations: list) -> Iterator[tuple[pa.Table, list]]:
    """The measurement rows of observations (a few of its rows), gathered into parts of about ``batch_rows()``
    rows: per record batch, their row conditions would cost more than their rows (one part if there are none)."""
    rows, held, yielded = batch_rows(), [], False
    for batch in file.iter_batches(batch_size=rows, columns=list(suites.MEASURED_COLUMNS)):
        held.append(rules.measurement_rows(pa.Table.from_batches([batch])))
        if sum(t.num_rows for t in held) >= rows:
            yield pa.concat_tables(held), expectations
            held, yielded = [], True
    if held and (not yielded or sum(t.num_rows for t in held)):
        yield pa.concat_tables(held), expectations


def _batches_streamed(folder: Path, practice: str, today: dt.date, work: Path):
    """``rules._batches`` for the passed rows of a practice written by ``gate_rows_streamed``: a table that fits
    in one batch is validated whole, a larger one in parts (``_parts``, its key groups spilled under ``work``)."""
    for name in TABLES:
        file = parquet_file(folder / f"{name}.parquet")
        if file.metadata.num_rows <= batch_rows():
            yield from rules._batches({name: file.read()}, practice, today)
            continue
        apart = name == "observations"
        expectations = suites.suite(name, practice, today, _empty(file), with_measurements=not apart)
        yield name, name, _parts(folder / f"{name}.parquet", name, expectations, work), expectations
        if apart and suites.measurements():
            measurements = suites.measurement_suite()
            yield f"{name}_measurements", name, _measurement_parts(file, measurements), measurements


def run_suites_streamed(folder: Path, practice: str, today: dt.date, *, gx_root: Path | None = None,
                        docs_dir: Path | None = None) -> list[dict]:
    """``rules.run_suites`` on the passed rows written by ``gate_rows_streamed``, one record batch at a time:
    the same expectations, verdicts and counts, one validation result per table in the Data Docs. Key groups
    are spilled into a temporary folder in ``folder``, removed on return (also on error)."""
    with tempfile.TemporaryDirectory(prefix="keys-", dir=folder) as work:
        return [rules._public(r) for r in rules._validate(_batches_streamed(folder, practice, today, Path(work)),
                                                          gx_root, docs_dir)]


def part_suite(name: str, expectations: list):
    """A suite of copies of some of a stored suite's expectations (GX binds an expectation to one suite)."""
    import great_expectations as gx

    return gx.ExpectationSuite(name=name, expectations=[copy.copy(e) for e in expectations])
