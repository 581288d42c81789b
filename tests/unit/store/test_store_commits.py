"""Commits under stress: concurrent practices, incremental MERGE with deletions (a writer killed midway:
tests/reliability/test_crashes.py)."""

import os
import subprocess
import sys

import pyarrow as pa

from gpdata import store
from gpdata.model import CURATED
from tests.test_helpers import in_batches

SCHEMA = CURATED["observations"]


def _batch(practice: str, n: int, value: float = 1.0, start: int = 0) -> pa.Table:
    return pa.table({
        "practice_code": [practice] * n, "key_version": ["v1"] * n,
        "record_id": [f"{i:064x}" for i in range(start, start + n)],
        "patient_pid": [f"{i % 997:064x}" for i in range(start, start + n)], "practitioner_pid": [None] * n,
        "event_date": pa.array([19000 + i % 3000 for i in range(n)], pa.int32()).cast(pa.date32()),
        "category": ["observation"] * n, "code_system": ["snomed"] * n, "code": ["60621009"] * n,
        "value": [value] * n, "unit": ["kg/m2"] * n, "panel_id": pa.nulls(n, pa.string())}).cast(SCHEMA)


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store_commits import _batch
from gpdata import store
store.replace_partition(Path({root!r}), "observations", {practice!r}, _batch({practice!r}, {n}, {value}))
print("done")
"""


def _writer(root, practice, n, value):
    code = WRITER.format(tests=os.path.dirname(__file__), root=str(root), practice=practice, n=n, value=value)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("practice_code", "ascending"), ("record_id", "ascending")])


def test_concurrent_writers_for_different_practices_all_land_and_repeat_identically(tmp_path):
    root = tmp_path / "store"
    store.ensure_tables(root)
    practices = ["A81001", "B82002", "C83003", "D84004"]
    for attempt in range(2):
        procs = [_writer(root, p, 20_000 + i, 1.0) for i, p in enumerate(practices)]
        assert [p.wait() for p in procs] == [0] * len(practices), [p.stderr.read() for p in procs]
        counts = {p: store.read_table(root, "observations", p).num_rows for p in practices}
        assert counts == {p: 20_000 + i for i, p in enumerate(practices)}
        if attempt == 0:
            first = _sorted(store.read_table(root, "observations"))
    assert _sorted(store.read_table(root, "observations")).equals(first)


def test_incremental_merge_replaces_amended_and_removes_deleted_records(tmp_path):
    root = tmp_path / "store"
    store.ensure_tables(root)
    store.replace_partition(root, "observations", "A81001", _batch("A81001", 10, 1.0))
    store.replace_partition(root, "observations", "B82002", _batch("B82002", 10, 1.0))
    amended = _batch("A81001", 2, 9.0, start=3)          # records 3 and 4 amended
    new = _batch("A81001", 2, 5.0, start=100)             # records 100 and 101 new
    deleted = [f"{7:064x}", f"{8:064x}"]                 # records 7 and 8 deleted at source
    store.merge_practice(root, "observations", "A81001", pa.concat_tables([amended, new]), deleted)
    rows = {r["record_id"]: r["value"] for r in store.read_table(root, "observations", "A81001").to_pylist()}
    assert len(rows) == 10 and rows[f"{3:064x}"] == 9.0 and rows[f"{100:064x}"] == 5.0
    assert f"{7:064x}" not in rows and rows[f"{0:064x}"] == 1.0
    assert store.read_table(root, "observations", "B82002").num_rows == 10  # other practices untouched


def test_a_crash_between_tables_blocks_releases_until_the_rerun(tmp_path, monkeypatch):
    import pytest

    from gpdata.errors import GpdataError
    from gpdata.model import QUARANTINE_SCHEMA, TABLES
    from gpdata.store import release
    from gpdata.store import tables as tables_module

    root = tmp_path / "store"
    tables = {t: CURATED[t].empty_table() for t in TABLES}
    tables["observations"] = _batch("A81001", 50)
    store.commit_practice(root, "A81001", tables, QUARANTINE_SCHEMA.empty_table(), key_version="v1")
    assert store.unfinished_commits(root) == []

    real = store.replace_partition

    def crash_at_medications(store_root, name, practice, table):
        if name == "medications":
            raise OSError("worker lost")
        return real(store_root, name, practice, table)

    monkeypatch.setattr(tables_module, "replace_partition", crash_at_medications)  # where commit_practice looks
    tables["observations"] = _batch("A81001", 60, 2.0)
    with pytest.raises(OSError):
        store.commit_practice(root, "A81001", tables, QUARANTINE_SCHEMA.empty_table(), key_version="v1")
    assert store.unfinished_commits(root) == ["A81001"]
    with pytest.raises(GpdataError, match="commit is unfinished.*A81001"):
        release.create_release(root)

    monkeypatch.setattr(tables_module, "replace_partition", real)
    store.commit_practice(root, "A81001", tables, QUARANTINE_SCHEMA.empty_table(), key_version="v1")
    assert store.unfinished_commits(root) == [] and release.create_release(root)["tables"]["observations"]["rows"] == 60


def test_a_failure_midway_through_a_streamed_table_keeps_the_practice_earlier_rows(tmp_path):
    import pytest

    from gpdata import storage
    from gpdata.model import QUARANTINE_SCHEMA, TABLES

    root = tmp_path / "store"
    tables = {t: CURATED[t].empty_table() for t in TABLES}
    tables["observations"] = _batch("A81001", 50)
    store.commit_practice(root, "A81001", tables, QUARANTINE_SCHEMA.empty_table(), key_version="v1")
    before = storage.delta_table(store.table_path(root, "observations")).version()
    tables["observations"] = in_batches(_batch("A81001", 60, 2.0), 20, fail_after=2)  # fails in its third batch
    with pytest.raises(OSError, match="staged file lost"):  # the reader's own error, not delta-rs's wrapping
        store.commit_practice(root, "A81001", tables, QUARANTINE_SCHEMA.empty_table(), key_version="v1")
    assert storage.delta_table(store.table_path(root, "observations")).version() == before  # nothing committed
    assert _sorted(store.read_table(root, "observations", "A81001")).equals(_sorted(_batch("A81001", 50)))
    assert store.unfinished_commits(root) == ["A81001"]  # releases wait for the rerun
    tables["observations"] = in_batches(_batch("A81001", 60, 2.0), 20)
    store.commit_practice(root, "A81001", tables, QUARANTINE_SCHEMA.empty_table(), key_version="v1")
    assert _sorted(store.read_table(root, "observations", "A81001")).equals(_sorted(_batch("A81001", 60, 2.0)))
    assert store.unfinished_commits(root) == []


def test_a_merge_in_batches_equals_the_merge_of_the_whole_table(tmp_path):
    amended, new = _batch("A81001", 2, 9.0, start=3), _batch("A81001", 2, 5.0, start=100)
    batch = pa.concat_tables([new, amended])  # record 3 is amended and deleted: in the last batch, it stays
    deleted = [f"{3:064x}", f"{7:064x}", f"{8:064x}"]
    results = []
    for source in (batch, in_batches(batch, 1)):
        root = tmp_path / f"store-{len(results)}"
        store.ensure_tables(root)
        store.replace_partition(root, "observations", "A81001", _batch("A81001", 10, 1.0))
        version = store.merge_practice(root, "observations", "A81001", source, deleted)
        results.append((version, _sorted(store.read_table(root, "observations"))))
    assert results[0][0] == results[1][0] and results[0][1].equals(results[1][1])
    rows = {r["record_id"]: r["value"] for r in results[1][1].to_pylist()}
    assert len(rows) == 10 and rows[f"{3:064x}"] == 9.0 and f"{7:064x}" not in rows and rows[f"{100:064x}"] == 5.0
