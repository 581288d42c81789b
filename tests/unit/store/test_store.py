import pytest
from deltalake import DeltaTable

from gpdata import store
from gpdata.errors import GpdataError
from gpdata.model import CURATED, QUARANTINE_SCHEMA, TABLES


def _rows(practice: str, n: int):
    import pyarrow as pa

    schema = CURATED["practitioners"]
    return pa.table({"practice_code": [practice] * n, "key_version": ["v1"] * n,
                     "practitioner_pid": [f"{practice}{i:058d}" for i in range(n)],
                     "role_code": ["R0260"] * n, "role_name": ["GP"] * n}, schema=schema)


def _commit(root, practice, n):
    tables = {t: CURATED[t].empty_table() for t in TABLES}
    tables["practitioners"] = _rows(practice, n)
    return store.commit_practice(root, practice, tables, QUARANTINE_SCHEMA.empty_table(), key_version="v1")


def test_tables_are_created_with_their_explicit_schemas(tmp_path):
    assert sorted(store.ensure_tables(tmp_path)) == sorted([*TABLES, store.QUARANTINE])
    assert store.ensure_tables(tmp_path) == []
    for name in TABLES:
        schema = DeltaTable(str(tmp_path / name)).schema().to_arrow()
        assert [f.name for f in schema] == CURATED[name].names
        assert DeltaTable(str(tmp_path / name)).metadata().partition_columns == ["practice_code"]


def test_practice_partition_is_replaced_and_others_untouched(tmp_path):
    _commit(tmp_path, "A81001", 3)
    _commit(tmp_path, "B82002", 2)
    versions = _commit(tmp_path, "A81001", 4)  # a re-run replaces, never appends
    assert store.read_table(tmp_path, "practitioners", "A81001").num_rows == 4
    assert store.read_table(tmp_path, "practitioners", "B82002").num_rows == 2
    before = store.read_table(tmp_path, "practitioners").sort_by("practitioner_pid")
    _commit(tmp_path, "A81001", 4)
    assert store.read_table(tmp_path, "practitioners").sort_by("practitioner_pid").equals(before)
    assert versions["practitioners"] == 3


def test_predicate_only_takes_ods_codes(tmp_path):
    with pytest.raises(GpdataError, match="not an ODS code"):
        _commit(tmp_path, "A81001' OR '1'='1", 1)
