"""The curated store: one Delta table per curated table, partitioned by practice.

A practice's batch replaces that practice's partition of each table (``overwrite`` with a predicate on
``practice_code``), so re-running a practice gives the same table state and other practices' partitions
are never touched. Run manifests record the counts of every stage and the table versions written.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from gpdata.errors import GpdataError
from gpdata.model import CURATED, PARTITION, TABLES
from gpdata.quality import QUARANTINE_SCHEMA

ODS_RE = re.compile(r"^[A-Z][0-9A-Z]{2,5}$")
QUARANTINE = "_quarantine"


def _predicate(practice: str) -> str:
    if not ODS_RE.match(practice):  # it is interpolated into a Delta predicate: allow only ODS-shaped codes
        raise GpdataError(f"not an ODS code: {practice!r}")
    return f"{PARTITION} = '{practice}'"


def table_path(store: Path, name: str) -> Path:
    return Path(store) / name


def _schemas() -> dict[str, pa.Schema]:
    return {**CURATED, QUARANTINE: QUARANTINE_SCHEMA}


def ensure_tables(store: Path) -> list[str]:
    """Create any missing table, empty, with its explicit schema. Returns the names created."""
    created = []
    for name, schema in _schemas().items():
        path = table_path(store, name)
        try:
            DeltaTable(str(path))
        except TableNotFoundError:
            path.mkdir(parents=True, exist_ok=True)
            write_deltalake(str(path), schema.empty_table(), partition_by=[PARTITION], mode="ignore",
                            description=f"gpdata curated table {name}" if name in CURATED else "quarantined rows")
            created.append(name)
    return created


def replace_partition(store: Path, name: str, practice: str, table: pa.Table) -> int:
    """Atomically replace one practice's rows in one table. Returns the new table version."""
    schema = _schemas()[name]
    path = str(table_path(store, name))
    write_deltalake(path, table.select(schema.names).cast(schema), mode="overwrite",
                    predicate=_predicate(practice), partition_by=[PARTITION])
    return DeltaTable(path).version()


def commit_practice(store: Path, practice: str, tables: dict[str, pa.Table], quarantine: pa.Table) -> dict:
    """Write a practice's validated batch into every curated table and its quarantined rows."""
    ensure_tables(store)
    versions = {name: replace_partition(store, name, practice, tables[name]) for name in TABLES}
    versions[QUARANTINE] = replace_partition(store, QUARANTINE, practice, quarantine)
    return versions


def read_table(store: Path, name: str, practice: str | None = None) -> pa.Table:
    dt = DeltaTable(str(table_path(store, name)))
    filters = [(PARTITION, "=", practice)] if practice else None
    return dt.to_pyarrow_table(filters=filters)


def row_counts(store: Path, practice: str | None = None) -> dict[str, int]:
    return {name: read_table(store, name, practice).num_rows for name in TABLES}


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write JSON by rename, so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def write_manifest(manifests: Path, practice: str, run_id: str, doc: dict) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    path = manifests / practice / f"{safe}.json"
    write_json_atomic(path, doc)
    write_json_atomic(manifests / practice / "latest.json", doc)
    return path


def latest_manifests(manifests: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(manifests).glob("*/latest.json")):
        out[path.parent.name] = json.loads(path.read_text())
    return out
