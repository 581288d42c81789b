"""The quality gate of a practice whose staged tables do not fit in one record batch, in bounded memory.

Row rules run per record batch (``gpdata.arrowutil.batch_rows``) of the staged Parquet; the rules that span rows
use only what they need of the whole table: duplicates its key column (``duplicate_flags``), dates and unknown
patients the patients that passed (one row per patient). So each row gets exactly the verdict ``gate_rows`` gives
it on the whole table. Passed and quarantined rows are written with Parquet writers as they are found.

Great Expectations then validates each table's passed rows per record batch and merges the results into one per
table (``rules._validate``): a row-by-row expectation's counts are summed and it passes iff it passes on every
batch; a minimum or maximum bound holds on the table iff it holds on every batch with a value in the column; the
column set is every batch's. The one expectation about rows together, uniqueness of the key, is asked of the key
column alone, in groups that hold every occurrence of a value (``key_groups``), so its counts are the whole
column's too. Memory holds one batch (or one key group) and the key column, never the table.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
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
# A key group holds this many batches' worth of one key column: a fraction of the memory of one batch of whole
# rows, and fewer validations of the uniqueness expectation (each has a fixed cost in GX).
KEY_GROUP_BATCHES = 4
_BOUNDS = frozenset({"expect_column_min_to_be_between", "expect_column_max_to_be_between"})


def fits_one_batch(folder: Path, names) -> bool:
    """Whether every one of these staged tables has at most ``batch_rows()`` rows (from the Parquet footers)."""
    rows = batch_rows()
    return all(pq.ParquetFile(folder / f"{name}.parquet").metadata.num_rows <= rows for name in names)


def key_groups(keys: pa.Array, rows: int) -> Iterator[pa.Array]:
    """Ascending positions of ``keys`` in groups of about ``rows`` each, every occurrence of a value (and every
    null) in one group: a check across rows (duplicates, uniqueness) gives on each group in turn what it gives on
    the whole column. Values are grouped by their first characters (pseudonyms are hex digests, so the groups
    are even); one group when the column fits in ``rows``."""
    n = len(keys)
    if n <= rows:
        yield pa.array(np.arange(n))
        return
    width = max(1, math.ceil(math.log(4 * n / rows, 16)))  # at least four prefixes per group, on average
    prefix = pc.dictionary_encode(pc.utf8_slice_codeunits(keys, 0, width))
    codes = pc.fill_null(prefix.indices, len(prefix.dictionary)).to_numpy()  # nulls: a code of their own
    group_of, group, size = np.zeros(len(prefix.dictionary) + 1, np.int64), 0, 0
    for code, count in enumerate(np.bincount(codes, minlength=len(group_of))):
        if size and size + count > rows:
            group, size = group + 1, 0
        group_of[code], size = group, size + count
    groups = group_of[codes]
    for g in range(group + 1):
        yield pa.array(np.flatnonzero(groups == g))


def duplicate_flags(keys: pa.Array, rows: int) -> pa.Array:
    """``rules._duplicates`` of a whole key column (the second and later occurrences of each value), found one
    key group at a time."""
    flags = np.zeros(len(keys), bool)
    for positions in key_groups(keys, rows):
        found = rules._duplicates(keys.take(positions))
        flags[positions.filter(found).to_numpy()] = True
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
            keys = pq.read_table(path, columns=[_key(name)])[_key(name)].combine_chunks()
            flags = duplicate_flags(keys, KEY_GROUP_BATCHES * rows)
            del keys
            patients, at = [], 0
            with pq.ParquetWriter(target / f"{name}.parquet", CURATED[name], compression="zstd") as out:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                    step = rules.table_step(name, pa.Table.from_batches([batch]), today, events, practice, run_id,
                                            duplicates=flags.slice(at, batch.num_rows))
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


def _parts(file: pq.ParquetFile, name: str, expectations: list) -> Iterator[tuple[pa.Table, list]]:
    """(rows, expectations) to validate a large table by: each record batch with every expectation but the key's
    uniqueness (and the bounds of a column with no value in that batch: GX has no minimum of nothing), then
    each key group of the key column with the uniqueness expectation alone."""
    rows = batch_rows()
    unique = [e for e in expectations if e.expectation_type == UNIQUE]
    rest = [e for e in expectations if e.expectation_type != UNIQUE]
    for batch in file.iter_batches(batch_size=rows):
        table = pa.Table.from_batches([batch])
        empty = _empty(table)
        yield table, [e for e in rest if not (e.expectation_type in _BOUNDS and e.column in empty)]
    key = _key(name)
    keys = file.read(columns=[key])[key].combine_chunks()
    for positions in key_groups(keys, KEY_GROUP_BATCHES * rows):
        yield pa.table({key: keys.take(positions)}), unique


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


def _batches_streamed(folder: Path, practice: str, today: dt.date):
    """``rules._batches`` for the passed rows of a practice written by ``gate_rows_streamed``: a table that fits
    in one batch is validated whole, a larger one in parts (``_parts``)."""
    for name in TABLES:
        file = pq.ParquetFile(folder / f"{name}.parquet")
        if file.metadata.num_rows <= batch_rows():
            yield from rules._batches({name: file.read()}, practice, today)
            continue
        apart = name == "observations"
        expectations = suites.suite(name, practice, today, _empty(file), with_measurements=not apart)
        yield name, name, _parts(file, name, expectations), expectations
        if apart and suites.measurements():
            measurements = suites.measurement_suite()
            yield f"{name}_measurements", name, _measurement_parts(file, measurements), measurements


def run_suites_streamed(folder: Path, practice: str, today: dt.date, *, gx_root: Path | None = None,
                        docs_dir: Path | None = None) -> list[dict]:
    """``rules.run_suites`` on the passed rows written by ``gate_rows_streamed``, one record batch at a time:
    the same expectations, verdicts and counts, one validation result per table in the Data Docs."""
    return [rules._public(r) for r in rules._validate(_batches_streamed(folder, practice, today), gx_root,
                                                      docs_dir)]


def part_suite(name: str, expectations: list):
    """A suite of copies of some of a stored suite's expectations (GX binds an expectation to one suite)."""
    import great_expectations as gx

    return gx.ExpectationSuite(name=name, expectations=[copy.copy(e) for e in expectations])
