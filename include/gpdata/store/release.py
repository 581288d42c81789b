"""Releases: a tagged, reproducible version of the curated store.

A release compacts small files, then pins the version of every curated table in
``_releases/<id>/release.json`` beside the data dictionary. Reading a release reads each table at its pinned
version (Delta time travel), so it returns what it returned when it was made. Vacuum keeps every pinned
version. The one exception is erasure (gpdata.store.erasure): a release that held an erased patient is re-issued
as a corrected copy under ``_releases/<id>/tables/``, and its manifest says so.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from gpdata import storage, store
from gpdata.errors import GpdataError
from gpdata.model import PARTITION, TABLES
from gpdata.store import dictionary


def releases_dir(store_root: Path) -> Path:
    return storage.root(store_root) / "_releases"


def _next_id(store_root: Path, today: dt.date) -> str:
    existing = {p.name for p in releases_dir(store_root).glob(f"{today.isoformat()}.*")}
    n = 1
    while f"{today.isoformat()}.{n}" in existing:
        n += 1
    return f"{today.isoformat()}.{n}"


def create_release(store_root: Path, today: dt.date | None = None, note: str = "") -> dict:
    """Compact every table, pin its version and write the release manifest and data dictionary."""
    store.ensure_tables(store_root)
    unfinished = store.unfinished_commits(store_root)
    if unfinished:
        raise GpdataError(f"no release while a practice's commit is unfinished (its tables would mix two runs): "
                          f"{', '.join(unfinished)}; run the practice again, then release")
    release_id = _next_id(store_root, today or dt.date.today())
    tables = {}
    for name in TABLES:
        dt_ = storage.delta_table(store.table_path(store_root, name))
        compaction = dt_.optimize.compact()
        dt_ = storage.delta_table(store.table_path(store_root, name))
        data = dt_.to_pyarrow_table(columns=[PARTITION])
        per_practice = {p["values"]: p["counts"] for p in data[PARTITION].value_counts().to_pylist()}
        tables[name] = {"version": dt_.version(), "rows": data.num_rows, "rows_by_practice": dict(sorted(
            per_practice.items())), "files_compacted": compaction.get("numFilesRemoved", 0)}
    folder = releases_dir(store_root) / release_id
    if storage.is_remote(folder):  # the dictionary is written locally, then copied beside the release
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for path in dictionary.write(Path(tmp)):
                storage.write_bytes_atomic(folder / path.name, path.read_bytes())
    else:
        dictionary.write(folder)
    manifest = {"release_id": release_id, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "note": note, "tables": tables, "status": "published", "data_dictionary": "data_dictionary.md"}
    store.write_json_atomic(folder / "release.json", manifest)
    return manifest


def list_releases(store_root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(releases_dir(store_root).glob("*/release.json"), key=str)]


def get_release(store_root: Path, release_id: str) -> dict:
    path = releases_dir(store_root) / release_id / "release.json"
    if not path.exists():
        known = ", ".join(r["release_id"] for r in list_releases(store_root)) or "none"
        raise GpdataError(f"no release {release_id!r} (releases: {known})")
    return json.loads(path.read_text())


def open_release_table(store_root: Path, release_id: str, table: str) -> DeltaTable:
    """The Delta table (at its pinned version, or the corrected copy after an erasure) of a release."""
    entry = get_release(store_root, release_id)["tables"][table]
    if entry.get("path"):  # re-issued after an erasure: a corrected copy
        return storage.delta_table(releases_dir(store_root) / release_id / entry["path"])
    return storage.delta_table(store.table_path(store_root, table), version=entry["version"])


def read_release_table(store_root: Path, release_id: str, table: str) -> pa.Table:
    """A table exactly as the release holds it."""
    return open_release_table(store_root, release_id, table).to_pyarrow_table()


def pinned_versions(store_root: Path, table: str) -> list[int]:
    """Versions of a table that releases read by time travel (vacuum must keep them)."""
    return sorted({r["tables"][table]["version"] for r in list_releases(store_root)
                   if table in r["tables"] and not r["tables"][table].get("path")})


def export_snapshot(store_root: Path, release_id: str, out: Path) -> list[Path]:
    """Plain Parquet files of a release (one per table), for tools that cannot read Delta."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in TABLES:
        path = out / f"{table}.parquet"
        pq.write_table(read_release_table(store_root, release_id, table), path, compression="zstd")
        written.append(path)
    dictionary.write(out)
    return written
