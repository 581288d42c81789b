"""A practice's partition of a table written as Parquet files here and committed in one Delta transaction
(``storage.overwrite_partition``, issue 21): the table, its schema and the file statistics ``key_versions`` reads are
those ``write_deltalake`` gave; a failure commits nothing and leaves no file behind; a conflicting commit is retried
with the same files; memory does not grow with the rows written."""

import datetime as dt
import json
import os
import random
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import DeltaError

from gpdata import storage, store
from gpdata.arrowutil import BATCH_ROWS_ENV
from gpdata.errors import GpdataError
from gpdata.model import CURATED, PARTITION, QUARANTINE_SCHEMA
from gpdata.store.tables import QUARANTINE, key_versions, table_path
from tests.test_helpers import in_batches

SCHEMAS = {**CURATED, QUARANTINE: QUARANTINE_SCHEMA}
WORDS = ["a", "zz", "é" * 40, "Ω" + "x" * 70, "", "role ✓", "R0260"]


def _column(field: pa.Field, n: int, rng: random.Random, practice: str, versions: list[str]) -> pa.Array:
    """Values of every kind the curated tables hold: nulls, long and non-ASCII strings, dates and timestamps
    before 1970, timestamps below the millisecond, signed zeros."""
    t = field.type
    if field.name == PARTITION:
        return pa.array([practice] * n, t)
    if field.name == "key_version":
        return pa.array([rng.choice(versions) for _ in range(n)], t)
    if pa.types.is_string(t):
        values = [f"{rng.choice(WORDS)}{rng.randrange(10**9):064x}"[:rng.randrange(1, 120)] for _ in range(n)]
    elif pa.types.is_date32(t):
        values = [dt.date(1970, 1, 1) + dt.timedelta(days=rng.randrange(-30_000, 30_000)) for _ in range(n)]
    elif pa.types.is_timestamp(t):
        values = [rng.randrange(-2**41, 2**41) for _ in range(n)]
        return pa.array([None if field.nullable and rng.random() < 0.2 else v for v in values], pa.int64()).cast(t)
    elif pa.types.is_integer(t):
        values = [rng.randrange(-1000, 1000) for _ in range(n)]
    else:
        values = [rng.choice([-0.0, 0.0, 1.5, -2.25, 1e300, rng.uniform(-5, 5)]) for _ in range(n)]
    return pa.array([None if field.nullable and rng.random() < 0.2 else v for v in values], t)


def _data(schema: pa.Schema, n: int, practice: str = "A81001", seed: int = 1, versions=("v1",)) -> pa.Table:
    rng = random.Random(seed)
    return pa.table([_column(f, n, rng, practice, list(versions)) for f in schema], schema=schema)


def _old_write(path, table: pa.Table, practice: str, row_group_rows: int) -> None:
    """The write this replaces: ``write_deltalake`` from a reader, overwrite with a predicate on the practice."""
    write_deltalake(str(path), table.to_reader(max_chunksize=700), mode="overwrite",
                    predicate=f"{PARTITION} = '{practice}'", partition_by=[PARTITION],
                    writer_properties=WriterProperties(max_row_group_size=row_group_rows))


def _stats(path, practice: str | None = None) -> list[dict]:
    """The add actions of the table's files, without what differs between two writes of the same rows."""
    files = pa.table(storage.delta_table(path).get_add_actions(flatten=True))
    if practice:
        files = files.filter(pc.equal(files[f"partition.{PARTITION}"], practice))
    return files.drop_columns(["path", "size_bytes", "modification_time"]).to_pylist()


def _merged(rows: list[dict]) -> dict:
    """The statistics of several files as one: records and nulls summed, the lowest minimum, the highest maximum."""
    out: dict = {}
    for row in rows:
        for key, value in row.items():
            if value is None or key.startswith("partition."):
                continue
            if key == "num_records" or key.startswith("null_count."):
                out[key] = out.get(key, 0) + value
            elif key not in out:
                out[key] = value
            else:
                out[key] = min(out[key], value) if key.startswith("min.") else max(out[key], value)
    return out


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in table.column_names])


def _files_on_disk(path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*.parquet")}


def _referenced(path) -> set[str]:
    return set(storage.delta_table(path).get_add_actions().column("path").to_pylist())


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_table_and_its_file_statistics_are_those_write_deltalake_gave(tmp_path, monkeypatch, name):
    monkeypatch.setenv(BATCH_ROWS_ENV, "1000")
    old, new = tmp_path / "old", tmp_path / "new"
    schema = SCHEMAS[name]
    for root in (old, new):
        store.ensure_tables(root)
        store.replace_partition(root, name, "B82002", _data(schema, 300, "B82002", seed=2, versions=["v2"]))
    rows = _data(schema, 2500, seed=3, versions=["v1", "v2"] if name == "observations" else ["v1"])
    _old_write(table_path(old, name), rows, "A81001", 1000)
    version = store.replace_partition(new, name, "A81001", in_batches(rows, 700))
    assert version == storage.delta_table(table_path(old, name)).version() == 2  # one commit, as before
    assert _sorted(store.read_table(new, name)).equals(_sorted(store.read_table(old, name)))
    old_dt, new_dt = (storage.delta_table(table_path(r, name)) for r in (old, new))
    assert new_dt.schema() == old_dt.schema() and new_dt.metadata().partition_columns == [PARTITION]
    assert _stats(table_path(new, name)) == _stats(table_path(old, name))  # one file each: equal, field by field
    if "key_version" in schema.names:
        assert key_versions(new, name) == key_versions(old, name)
        assert key_versions(new, name, exclude_practice="B82002") == key_versions(old, name, "B82002")
    # The data files: row groups of batch_rows() rows (batches of 700 regrouped), compressed as delta-rs does.
    (path,) = _files_on_disk(table_path(new, name) / f"{PARTITION}=A81001")
    meta = pq.ParquetFile(table_path(new, name) / f"{PARTITION}=A81001" / path.split("/")[-1]).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    assert meta.row_group(0).column(0).compression == "SNAPPY"
    assert PARTITION not in meta.schema.names


def test_statistics_of_edge_values_are_those_write_deltalake_gave(tmp_path):
    """NaN (ignored; a column of only NaN has no bounds), infinities (null), signed zeros, a column of nulls,
    timestamps before 1970 and below the millisecond, strings past 64 bytes and not ASCII."""
    schema = pa.schema([pa.field("p", pa.string(), nullable=False), pa.field("s", pa.string()),
                        pa.field("f", pa.float64()), pa.field("g", pa.float64()), pa.field("h", pa.float64()),
                        pa.field("z", pa.float64()), pa.field("t", pa.timestamp("us", tz="UTC")),
                        pa.field("n", pa.string()), pa.field("i", pa.int32()), pa.field("d", pa.date32())])
    utc = dt.UTC
    table = pa.table({
        "p": ["A"] * 4, "s": ["a" * 100, "z" * 70 + "é", "zzz" * 40, None], "f": [1.5, float("nan"), -0.0, None],
        "g": [float("nan")] * 4, "h": [float("inf"), -float("inf"), 0.0, 1e300], "z": [0.0, 0.0, -0.0, None],
        "t": [dt.datetime(1960, 1, 1, 0, 0, 0, 999, tzinfo=utc), dt.datetime(2020, 5, 5, 1, 2, 3, 456789, tzinfo=utc),
              dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=utc), None],
        "n": pa.nulls(4, pa.string()), "i": [-5, None, 7, 2],
        "d": [dt.date(1, 1, 1), None, dt.date(2024, 2, 29), dt.date(1900, 3, 1)]}, schema=schema)
    old, new = tmp_path / "old", tmp_path / "new"
    for root in (old, new):
        write_deltalake(str(root), schema.empty_table(), partition_by=["p"])
    write_deltalake(str(old), table, mode="overwrite", predicate="p = 'A'", partition_by=["p"],
                    writer_properties=WriterProperties(max_row_group_size=2))
    storage.overwrite_partition(new, "p", "A", table.to_batches(max_chunksize=3), schema, 2, "test")
    assert _stats(new) == _stats(old)
    assert json.loads(storage.FileStats(schema.remove(0)).json()) == {
        "numRecords": 0, "minValues": {}, "maxValues": {}, "nullCount": {f.name: 0 for f in schema.remove(0)}}


def test_files_of_a_bounded_size_hold_the_statistics_of_the_whole(tmp_path, monkeypatch):
    monkeypatch.setenv(BATCH_ROWS_ENV, "1000")
    monkeypatch.setattr(storage, "TARGET_FILE_BYTES", 1)  # a new file after every row group
    old, new = tmp_path / "old", tmp_path / "new"
    rows = _data(CURATED["observations"], 3500, seed=4, versions=["v1", "v2", "v3"])
    for root in (old, new):
        store.ensure_tables(root)
    _old_write(table_path(old, "observations"), rows, "A81001", 1000)
    store.replace_partition(new, "observations", "A81001", in_batches(rows, 700))
    files = _stats(table_path(new, "observations"))
    assert [f["num_records"] for f in files] == [1000, 1000, 1000, 500]
    assert _merged(files) == _merged(_stats(table_path(old, "observations")))
    # Minimum and maximum of each file: a file of several versions shows two of them (all key_versions needs).
    assert key_versions(new, "observations") == key_versions(old, "observations") == {"v1", "v3"}
    assert _sorted(store.read_table(new, "observations")).equals(_sorted(rows))


def _two_commits(root, name="observations"):
    store.ensure_tables(root)
    first = _data(CURATED[name], 1200, seed=5)
    store.replace_partition(root, name, "A81001", first)
    return table_path(root, name), first


@pytest.mark.parametrize("file_bytes", [1, 100 << 20])  # files complete before the reader fails / one still open
def test_a_failure_while_reading_commits_nothing_and_leaves_no_file(tmp_path, monkeypatch, file_bytes):
    monkeypatch.setenv(BATCH_ROWS_ENV, "1000")
    monkeypatch.setattr(storage, "TARGET_FILE_BYTES", file_bytes)
    path, first = _two_commits(tmp_path / "store")
    version, files = storage.delta_table(path).version(), _files_on_disk(path)
    with pytest.raises(OSError, match="staged file lost"):  # the reader's own error
        store.replace_partition(tmp_path / "store", "observations", "A81001",
                                in_batches(_data(CURATED["observations"], 3500, seed=6), 700, fail_after=3))
    assert storage.delta_table(path).version() == version
    assert _files_on_disk(path) == files and _referenced(path) <= files
    assert _sorted(store.read_table(tmp_path / "store", "observations")).equals(_sorted(first))


def test_a_failed_commit_commits_nothing_and_leaves_no_file(tmp_path, monkeypatch):
    path, first = _two_commits(tmp_path / "store")
    version, files = storage.delta_table(path).version(), _files_on_disk(path)

    def refused(*args):
        raise DeltaError("refused")

    monkeypatch.setattr(storage, "_commit_overwrite", refused)
    with pytest.raises(DeltaError, match="refused"):
        store.replace_partition(tmp_path / "store", "observations", "A81001", _data(CURATED["observations"], 50))
    assert storage.delta_table(path).version() == version and _files_on_disk(path) == files
    assert _sorted(store.read_table(tmp_path / "store", "observations")).equals(_sorted(first))


def test_a_commit_whose_answer_was_lost_keeps_the_files_it_committed(tmp_path, monkeypatch):
    path, _ = _two_commits(tmp_path / "store")
    version = storage.delta_table(path).version()
    real = storage._commit_overwrite

    def committed_then_lost(*args):
        real(*args)
        raise DeltaError("connection reset")

    monkeypatch.setattr(storage, "_commit_overwrite", committed_then_lost)
    second = _data(CURATED["observations"], 50, seed=7)
    with pytest.raises(DeltaError):
        store.replace_partition(tmp_path / "store", "observations", "A81001", second)
    assert storage.delta_table(path).version() == version + 1
    assert _referenced(path) <= _files_on_disk(path)  # nothing the log refers to was deleted
    assert _sorted(store.read_table(tmp_path / "store", "observations")).equals(_sorted(second))


def test_a_commit_another_writer_got_in_the_way_of_is_retried_with_the_same_files(tmp_path, monkeypatch):
    root = tmp_path / "store"
    path, _ = _two_commits(root)
    other = _data(CURATED["observations"], 30, "B82002", seed=8)
    store.replace_partition(root, "observations", "B82002", other)
    real, calls = storage._commit_overwrite, []

    def raced(path_, column, value, adds):
        calls.append([a.path for a in adds])
        if len(calls) == 1:  # this writer's view of the table, then another writer replaces its practice
            stale = DeltaTable(str(path_))
            write_deltalake(str(path_), other, mode="overwrite", predicate=f"{PARTITION} = 'B82002'",
                            partition_by=[PARTITION])
            stale.create_write_transaction(adds, "overwrite", stale.schema(), partition_by=[column],
                                           partition_filters=[(column, "=", value)])
        return real(path_, column, value, adds)

    monkeypatch.setattr(storage, "_commit_overwrite", raced)
    monkeypatch.setattr("time.sleep", lambda s: None)
    before = _files_on_disk(path)
    second = _data(CURATED["observations"], 40, seed=9)
    store.replace_partition(root, "observations", "A81001", second)
    assert len(calls) == 2 and calls[0] == calls[1]  # the commit was retried, the files not written again
    assert {f for f in _files_on_disk(path) - before if f.startswith(f"{PARTITION}=A81001/")} == set(calls[0])
    assert set(calls[0]) <= _referenced(path)
    assert _sorted(store.read_table(root, "observations", "A81001")).equals(_sorted(second))
    assert _sorted(store.read_table(root, "observations", "B82002")).equals(_sorted(other))


def test_rows_of_another_practice_are_refused_without_their_values(tmp_path):
    root = tmp_path / "store"
    path, first = _two_commits(root)
    files = _files_on_disk(path)
    stray = pa.concat_tables([_data(CURATED["observations"], 5), _data(CURATED["observations"], 1, "B82002")])
    with pytest.raises(GpdataError) as caught:
        store.replace_partition(root, "observations", "A81001", stray)
    assert "B82002" not in str(caught.value) and not any(v in str(caught.value) for v in stray["record_id"].to_pylist())
    assert _files_on_disk(path) == files
    assert _sorted(store.read_table(root, "observations")).equals(_sorted(first))


MEMORY = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import pyarrow as pa
    import pyarrow.compute
    sys.path.insert(0, {tests!r})
    from test_partition_files import _data
    from gpdata import storage, store
    from gpdata.model import CURATED
    root, times = Path(sys.argv[1]), int(sys.argv[2])
    store.ensure_tables(root)
    table = _data(CURATED["observations"], {rows}, seed=10)
    def open_():
        return pa.RecordBatchReader.from_batches(table.schema, (b for _ in range(times) for b in table.to_batches()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store.replace_partition(root, "observations", "A81001", store.Batches(open_, frozenset({{"v1"}})))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    files = pa.table(storage.delta_table(store.table_path(root, "observations")).get_add_actions(flatten=True))
    assert pa.compute.sum(files["num_records"]).as_py() == times * {rows}
    print(before // 1024, peak // 1024)
""")


def peak_rss_mib(tmp_path, times: int, rows: int) -> tuple[int, int]:
    """Peak RSS (MiB) of a process writing a table of ``rows`` rows ``times`` over into one partition, and its
    RSS before the write."""
    code = MEMORY.format(tests=os.path.dirname(__file__), rows=rows)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"store-{times}"), str(times)],
                         capture_output=True, text=True, env={**os.environ, BATCH_ROWS_ENV: "16384"}, check=True)
    before, peak = out.stdout.split()
    return int(before), int(peak)


def test_memory_does_not_grow_with_the_rows_written(tmp_path):
    """The same 60,000 rows written once and eight times over in one partition: write_deltalake read its input ahead
    without bound (peak 70 MiB higher at 8 times over, see the module's history); the files written here hold a row
    group at a time."""
    once, eight = peak_rss_mib(tmp_path, 1, 60_000), peak_rss_mib(tmp_path, 8, 60_000)
    assert eight[1] - once[1] < 25, (once, eight)


def test_a_merged_increment_writes_its_files_compressed_as_a_replaced_partition(tmp_path):
    """delta-rs drops its default codec when given writer properties: MERGE's files were written uncompressed."""
    root = tmp_path / "store"
    path, first = _two_commits(root)
    amended = first.slice(0, 10).set_column(first.schema.get_field_index("value"), "value", pa.array([9.0] * 10))
    store.merge_practice(root, "observations", "A81001", amended, [])
    referenced = _referenced(path)
    assert len(referenced) >= 1
    for name in referenced:
        meta = pq.ParquetFile(path / name).metadata
        assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"SNAPPY"}, name


def test_a_file_being_written_has_no_data_file_name_and_a_full_vacuum_removes_one_left(tmp_path, monkeypatch):
    """A writer killed midway (SIGKILL: no clean-up) leaves a temporary name, never a partial ``*.parquet``."""
    monkeypatch.setenv(BATCH_ROWS_ENV, "1000")
    root = tmp_path / "store"
    path, first = _two_commits(root)
    before, seen = _files_on_disk(path), []
    rows = _data(CURATED["observations"], 3000, seed=11)

    def open_():
        def batches():
            for i, batch in enumerate(rows.to_batches(max_chunksize=1000)):
                if i == 2:  # two row groups written, the file still open
                    seen.append({str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()
                                  and "_delta_log" not in p.parts} - before)
                yield batch
        return pa.RecordBatchReader.from_batches(rows.schema, batches())

    store.replace_partition(root, "observations", "A81001", store.Batches(open_))
    (during,) = seen
    assert len(during) == 1 and next(iter(during)).endswith(".parquet.tmp")
    (written,) = _files_on_disk(path) - before
    assert written + ".tmp" == next(iter(during)) and _referenced(path) == {written}
    left = path / f"{PARTITION}=A81001" / "part-left-by-a-killed-writer-c000.snappy.parquet.tmp"
    left.write_bytes(b"PAR1")
    storage.delta_table(path).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
    assert not left.exists() and _referenced(path) == {written}
