"""Key versions in a curated table, read from the Delta log's file statistics (every commit asks)."""

import pyarrow as pa

from gpdata import storage
from gpdata.store.tables import key_versions, table_path


def _append(store, practice: str, versions: list) -> None:
    data = pa.table({"practice_code": [practice] * len(versions), "key_version": pa.array(versions, pa.string()),
                     "value": list(range(len(versions)))})
    storage.write_delta(table_path(store, "observations"), data, mode="append", partition_by=["practice_code"])


def test_versions_by_file_statistics_answer_as_the_data_does(tmp_path):
    store = tmp_path / "store"
    _append(store, "A81001", ["v1", "v1"])
    _append(store, "B82002", ["v2"])
    _append(store, "C83003", [None, None])  # no version at all: statistics say all null
    assert key_versions(store, "observations") == {"v1", "v2"}
    assert key_versions(store, "observations", exclude_practice="A81001") == {"v2"}
    assert key_versions(store, "observations", exclude_practice="B82002") == {"v1"}


def test_a_file_holding_several_versions_is_never_read_as_one(tmp_path):
    store = tmp_path / "store"
    _append(store, "A81001", ["v2", "v1", "v3"])  # one file: its statistics show v1 and v3
    found = key_versions(store, "observations")
    assert {"v1", "v3"} <= found and found - {"v2"}


def test_an_empty_table_or_partition_has_no_versions(tmp_path):
    store = tmp_path / "store"
    _append(store, "A81001", ["v1"])
    assert key_versions(store, "observations", exclude_practice="A81001") == set()
