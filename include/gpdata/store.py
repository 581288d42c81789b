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
import pyarrow.compute as pc
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


def key_versions(store: Path, name: str, exclude_practice: str | None = None) -> set[str]:
    """The key versions present in a table (optionally ignoring one practice's partition)."""
    dataset = DeltaTable(str(table_path(store, name))).to_pyarrow_dataset()
    expr = (pc.field(PARTITION) != exclude_practice) if exclude_practice else None
    column = dataset.to_table(columns=["key_version"], filter=expr)["key_version"]
    return set(pc.unique(column).to_pylist()) - {None}


def commit_practice(store: Path, practice: str, tables: dict[str, pa.Table], quarantine: pa.Table,
                    key_version: str) -> dict:
    """Write a practice's validated batch into every curated table and its quarantined rows.

    Refuses, before writing anything, a batch not at the key ring's current ``key_version`` or a table whose
    other practices are at another version, so no table ever mixes versions: a batch pseudonymised before a
    key rotation must be extracted again.
    """
    ensure_tables(store)
    for name in TABLES:
        found = set(pc.unique(tables[name]["key_version"]).to_pylist()) if tables[name].num_rows else set()
        found |= key_versions(store, name, exclude_practice=practice)
        if found - {key_version}:
            raise GpdataError(f"table {name} would hold pseudonyms of key version "
                              f"{', '.join(sorted(found | {key_version}))}: the key was rotated during the run; "
                              "run the practice again", practice=practice, stage="commit")
    # Delta commits are atomic per table; the journal makes the practice's set of tables one unit for
    # readers of releases: while it exists, the practice's commit is unfinished and no release is made.
    journal = journal_path(store, practice)
    write_json_atomic(journal, {"practice": practice, "tables": list(TABLES)})
    versions = {name: replace_partition(store, name, practice, tables[name]) for name in TABLES}
    versions[QUARANTINE] = replace_partition(store, QUARANTINE, practice, quarantine)
    journal.unlink()
    return versions


def journal_path(store: Path, practice: str) -> Path:
    return Path(store) / "_journal" / f"{practice}.json"


def unfinished_commits(store: Path) -> list[str]:
    """Practices whose last commit stopped between tables (rerun them to finish)."""
    return sorted(p.stem for p in (Path(store) / "_journal").glob("*.json"))


def merge_practice(store: Path, name: str, practice: str, batch: pa.Table, deleted_ids: list[str]) -> int:
    """An incremental batch in one commit: amended records (same ``record_id``) replace their earlier
    version, new ones are inserted, and records the source marks deleted disappear. Returns the version."""
    schema = _schemas()[name]
    _predicate(practice)
    loose = pa.schema([f.with_nullable(True) for f in schema])  # deletion markers carry only their key
    gone = pa.table({c: [practice] * len(deleted_ids) if c == PARTITION else list(deleted_ids)
                     if c == "record_id" else pa.nulls(len(deleted_ids), loose.field(c).type)
                     for c in schema.names}, schema=loose)
    source = pa.concat_tables([batch.select(schema.names).cast(loose), gone])
    source = source.append_column("_deleted", pa.array([False] * batch.num_rows + [True] * len(deleted_ids)))
    columns = {c: f"s.{c}" for c in schema.names}
    dt = DeltaTable(str(table_path(store, name)))
    (dt.merge(source, predicate=f"t.{PARTITION} = s.{PARTITION} AND t.record_id = s.record_id",
              source_alias="s", target_alias="t")
       .when_matched_delete(predicate="s._deleted")
       .when_matched_update(updates=columns, predicate="NOT s._deleted")
       .when_not_matched_insert(updates=columns, predicate="NOT s._deleted")
       .execute())
    return DeltaTable(str(table_path(store, name))).version()


def replace_table(store: Path, name: str, table: pa.Table) -> int:
    """Replace a whole table in one commit, then vacuum the files no version needs any more beyond it
    (used by key rotation, where old files hold superseded pseudonyms). Returns the new version."""
    schema = _schemas()[name]
    path = str(table_path(store, name))
    write_deltalake(path, table.select(schema.names).cast(schema), mode="overwrite", partition_by=[PARTITION])
    dt = DeltaTable(path)
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    return dt.version()


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


def safe_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def write_manifest(manifests: Path, practice: str, run_id: str, doc: dict) -> Path:
    """The run's manifest, plus ``latest.json`` (any outcome) and ``committed.json`` (last commit)."""
    path = manifests / practice / f"{safe_name(run_id)}.json"
    write_json_atomic(path, doc)
    write_json_atomic(manifests / practice / "latest.json", doc)
    if doc.get("status") == "committed":
        write_json_atomic(manifests / practice / "committed.json", doc)
    return path


def last_committed(manifests: Path, practice: str) -> dict | None:
    path = Path(manifests) / practice / "committed.json"
    return json.loads(path.read_text()) if path.exists() else None


def latest_manifests(manifests: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(manifests).glob("*/latest.json")):
        out[path.parent.name] = json.loads(path.read_text())
    return out
