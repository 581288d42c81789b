"""Delta table handles kept per process (gpdata.storage.delta_table): every read still sees the newest committed
version, time travel is never served from the cache, and a table deleted, made again or restored in the same
folder is opened afresh."""

from __future__ import annotations

import shutil
import threading

import deltalake
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from gpdata import storage


@pytest.fixture
def opens(monkeypatch):
    """Counts the DeltaTable objects made (storage imports the class when it opens one)."""
    made = []

    class Counted(deltalake.DeltaTable):
        def __init__(self, *args, **kwargs):
            made.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(deltalake, "DeltaTable", Counted)
    storage.forget_delta_tables()
    yield made
    storage.forget_delta_tables()


def _rows(*values: str) -> pa.Table:
    return pa.table({"v": pa.array(values, pa.string())})


def _values(table) -> list[str]:
    return sorted(table.to_pyarrow_table()["v"].to_pylist())


def test_a_cached_handle_sees_a_commit_made_by_another_writer(tmp_path, opens):
    path = tmp_path / "t"
    write_deltalake(str(path), _rows("a"))
    first = storage.delta_table(path)
    write_deltalake(str(path), _rows("b"), mode="append")  # another writer: not through gpdata.storage
    again = storage.delta_table(path)
    assert again is first and again.version() == 1 and _values(again) == ["a", "b"]
    assert storage.delta_table(str(path)).version() == 1  # the same table named by a string
    assert len(opens) == 1


def test_a_version_is_never_served_from_the_cache(tmp_path, opens):
    path = tmp_path / "t"
    write_deltalake(str(path), _rows("a"))
    write_deltalake(str(path), _rows("b"), mode="append")
    newest = storage.delta_table(path)
    old = storage.delta_table(path, version=0)
    assert old is not newest and old.version() == 0 and _values(old) == ["a"]
    assert storage.delta_table(path) is newest and newest.version() == 1 and _values(newest) == ["a", "b"]
    assert storage.delta_table(path, version=0) is not old  # each time-travel read is its own open
    assert len(opens) == 3


def test_writes_through_the_handle_land_and_a_new_table_is_created(tmp_path, opens):
    path = tmp_path / "t"
    storage.write_delta(path, _rows("a"))  # no table yet: made from the URI
    storage.write_delta(path, _rows("b"), mode="append")
    storage.write_delta(path, _rows("a", "a"), mode="overwrite", predicate="v = 'a'")
    assert _values(deltalake.DeltaTable(str(path))) == ["a", "a", "b"]
    assert storage.delta_table(path).version() == 2 and _values(storage.delta_table(path)) == ["a", "a", "b"]
    storage.write_delta(path, _rows("z"), mode="ignore")  # an existing table: nothing written
    assert storage.delta_table(path).version() == 2


def test_a_table_made_again_or_restored_in_the_same_folder_is_opened_afresh(tmp_path, opens):
    path = tmp_path / "t"
    write_deltalake(str(path), _rows("a"))
    write_deltalake(str(path), _rows("b"), mode="append")
    assert storage.delta_table(path).version() == 1
    shutil.rmtree(path)  # deleted and made again, up to the same version
    write_deltalake(str(path), _rows("x"))
    write_deltalake(str(path), _rows("y"), mode="append")
    assert _values(storage.delta_table(path)) == ["x", "y"]

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    storage.write_delta(path, _rows("z"), mode="append")  # moves the cached handle on to version 2
    shutil.rmtree(path)
    shutil.copytree(copy, path)  # restored to version 1, history unchanged up to it
    table = storage.delta_table(path)
    assert table.version() == 1 and _values(table) == ["x", "y"]
    shutil.rmtree(path)
    with pytest.raises(deltalake.exceptions.TableNotFoundError):
        storage.delta_table(path)


def test_handles_are_not_shared_between_threads(tmp_path, opens):
    path = tmp_path / "t"
    write_deltalake(str(path), _rows("a"))
    mine = storage.delta_table(path)
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(storage.delta_table(path)))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and theirs[0].version() == mine.version() == 0
    assert storage.delta_table(path) is mine


def test_an_old_handle_is_opened_afresh(tmp_path, opens, monkeypatch):
    path = tmp_path / "t"
    write_deltalake(str(path), _rows("a"))
    first = storage.delta_table(path)
    monkeypatch.setattr(storage, "_MAX_AGE", 0.0)
    assert storage.delta_table(path) is not first and len(opens) == 2
