"""The curated store: one Delta table per curated table, partitioned by practice.

A practice's batch replaces that practice's partition of each table (``overwrite`` with a predicate on
``practice_code``), so re-running a practice gives the same table state and other practices' partitions
are never touched. Run manifests record the counts of every stage and the table versions written.

A table to write is a ``pa.Table`` or, when it is too large to hold whole, ``Batches``, written in one commit per
table holding a row group at a time: a partition's Parquet files are written here and committed in one transaction
(``storage.overwrite_partition``); an increment is merged by delta-rs from a ``pa.RecordBatchReader``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import DeltaError, TableNotFoundError

from gpdata import arrowutil, storage
from gpdata.errors import GpdataError
from gpdata.model import CURATED, PARTITION, QUARANTINE_SCHEMA, TABLES
from gpdata.storage import read_json, write_json_atomic  # noqa: F401 - part of the store's API

log = logging.getLogger("gpdata.store")
ODS_RE = re.compile(r"^[A-Z][0-9A-Z]{2,5}$")
QUARANTINE = "_quarantine"
# The key of a record within a practice's partition: what an amendment or a deletion refers to.
KEYS = {name: "patient_pid" if name == "patients" else "practitioner_pid" if name == "practitioners"
        else "record_id" for name in TABLES}


@dataclass(frozen=True)
class Batches:
    """A table to write as record batches, for one too large to hold whole. ``open()`` returns a new reader on
    every call (a reader is read once: a retried write, or a merge's pass over the keys, opens it again);
    ``key_versions`` are the key versions its rows hold, known before anything is written."""

    open: Callable[[], pa.RecordBatchReader]
    key_versions: frozenset[str] = frozenset()


Rows = pa.Table | Batches


def _stream(data: Rows, schema: pa.Schema, errors: list[BaseException] | None = None) -> pa.RecordBatchReader:
    """The rows of a table or ``Batches`` in ``schema``, a batch at a time; an error raised while reading them is
    also put in ``errors`` (delta-rs reports it as a DeltaError carrying only its text)."""
    reader = data.open() if isinstance(data, Batches) else data.to_reader()

    def batches():
        try:
            for batch in reader:
                yield batch.select(schema.names).cast(schema)
        except Exception as exc:
            if errors is not None:
                errors.append(exc)
            raise

    return pa.RecordBatchReader.from_batches(schema, batches())


def _writer():
    """Parquet row groups of ``batch_rows()`` rows: delta-rs's encoder holds a row group at a time (its default,
    1 M rows, held about 100 MB more per table written at 1 M records; measured in docs/performance.md). Compressed
    as the partitions ``replace_partition`` writes (delta-rs's default codec, which explicit properties drop)."""
    from deltalake import WriterProperties

    return WriterProperties(max_row_group_size=arrowutil.batch_rows(),
                            compression=storage.PARQUET_COMPRESSION.upper())


def _has_rows(data: Rows) -> bool:
    if isinstance(data, Batches):
        return any(batch.num_rows for batch in data.open())
    return data.num_rows > 0


def _versions_in(data: Rows) -> set[str]:
    if isinstance(data, Batches):
        return set(data.key_versions)
    return set(pc.unique(data["key_version"]).to_pylist()) if data.num_rows else set()


def _predicate(practice: str) -> str:
    if not ODS_RE.match(practice):  # it is interpolated into a Delta predicate: allow only ODS-shaped codes
        raise GpdataError(f"not an ODS code: {practice!r}")
    return f"{PARTITION} = '{practice}'"


def table_path(store: Path, name: str) -> Path:
    """A table's location: a folder, or a ``storage.StorePath`` under an ``s3://`` store root."""
    return storage.root(store) / name


def _schemas() -> dict[str, pa.Schema]:
    return {**CURATED, QUARANTINE: QUARANTINE_SCHEMA}


def ensure_tables(store: Path) -> list[str]:
    """Create any missing table, empty, with its explicit schema. Returns the names created."""
    created = []
    for name, schema in _schemas().items():
        path = table_path(store, name)
        try:
            storage.delta_table(path)
        except TableNotFoundError:
            if not storage.is_remote(path):
                path.mkdir(parents=True, exist_ok=True)
            storage.write_delta(path, schema.empty_table(), partition_by=[PARTITION], mode="ignore",
                            description=f"gpdata curated table {name}" if name in CURATED else "quarantined rows")
            created.append(name)
    return created


def replace_partition(store: Path, name: str, practice: str, table: Rows) -> int:
    """Atomically replace one practice's rows in one table (one commit, from a table or ``Batches``). Returns the
    new table version.

    The Parquet files are written here, a row group of ``batch_rows()`` rows at a time, and committed in one
    transaction (``storage.overwrite_partition``): ``write_deltalake`` reads its input ahead of its encoder with no
    bound, so its memory grew with the table's rows. The rows are read once; a commit retried after a conflicting
    one commits the same files."""
    path = table_path(store, name)
    _predicate(practice)  # refuses a code not shaped like an ODS code: it names the partition folder
    schema = _schemas()[name]
    reader = table.open() if isinstance(table, Batches) else table.to_reader()
    batches = (batch.select(schema.names).cast(schema) for batch in reader)
    storage.overwrite_partition(path, PARTITION, practice, batches, schema, arrowutil.batch_rows(),
                                f"practice {practice}: replace its rows of table {name}")
    return storage.delta_table(path).version()


def key_versions(store: Path, name: str, exclude_practice: str | None = None) -> set[str]:
    """The key versions present in a table (optionally ignoring one practice's partition).

    Read from the statistics the Delta log keeps for each data file (the minimum and maximum of ``key_version``),
    not from the data: every commit asks, so reading the column would cost as much as the whole store. A file
    holding one version has minimum = maximum = that version; a file holding several shows at least two of them,
    so "only version V" is answered exactly. Files without statistics are read."""
    table = storage.delta_table(table_path(store, name))
    files = pa.table(table.get_add_actions(flatten=True))
    if exclude_practice and files.num_rows:
        files = files.filter(pc.not_equal(files[f"partition.{PARTITION}"], exclude_practice))
    if not files.num_rows:
        return set()
    stats = ("min.key_version", "max.key_version", "null_count.key_version")
    if set(stats) <= set(files.column_names):
        all_null = pc.equal(files["null_count.key_version"], files["num_records"])
        known = pc.or_(pc.and_(pc.is_valid(files["min.key_version"]), pc.is_valid(files["max.key_version"])),
                       pc.fill_null(all_null, False))
        if pc.all(known).as_py():
            return (set(pc.unique(files["min.key_version"]).to_pylist())
                    | set(pc.unique(files["max.key_version"]).to_pylist())) - {None}
    dataset = table.to_pyarrow_dataset()
    expr = (pc.field(PARTITION) != exclude_practice) if exclude_practice else None
    column = dataset.to_table(columns=["key_version"], filter=expr)["key_version"]
    return set(pc.unique(column).to_pylist()) - {None}


def commit_practice(store: Path, practice: str, tables: dict[str, Rows], quarantine: Rows,
                    key_version: str, deleted: dict[str, pa.Array] | None = None) -> dict:
    """Write a practice's validated batch into every curated table and its quarantined rows.

    A baseline batch (``deleted`` is None) replaces the practice's partition of each table. An incremental
    batch is merged: records with a known key replace their earlier version, new ones are inserted, the keys in
    ``deleted`` are removed, and its quarantined rows are added to the earlier ones.

    Refuses, before writing anything, a batch not at the key ring's current ``key_version`` or a table whose
    other practices are at another version, so no table ever mixes versions: a batch pseudonymised before a
    key rotation must be extracted again. Each table may be ``Batches`` (written a batch at a time).
    """
    if deleted is not None:
        return commit_increments(store, {practice: Increment(tables, quarantine, deleted)}, key_version)
    _refuse_versions(store, [tables], key_version, practice, exclude_practice=practice)
    # Delta commits are atomic per table; the journal makes the practice's set of tables one unit for
    # readers of releases: while it exists, the practice's commit is unfinished and no release is made.
    with practice_lock(store, practice):
        journal = _journal(store, [practice])
        versions = {name: replace_partition(store, name, practice, tables[name]) for name in TABLES}
        versions[QUARANTINE] = replace_partition(store, QUARANTINE, practice, quarantine)
        for path in journal:
            path.unlink()
    return versions


@dataclass(frozen=True)
class Increment:
    """A practice's incremental batch: its rows of every curated table, its quarantined rows and the keys the
    source marks deleted, per table."""

    tables: dict[str, Rows]
    quarantine: Rows
    deleted: dict[str, pa.Array]


def commit_increments(store: Path, increments: dict[str, Increment], key_version: str) -> dict:
    """Several practices' incremental batches (practice -> ``Increment``), each merged as ``commit_practice``
    merges one, in one Delta commit per table for them all (a chunk of daily increments: one MERGE and one log
    entry per table, not one per practice). Refuses, before writing anything, as ``commit_practice`` does; every
    practice's journal stands until every table is written. Returns each table's new version."""
    practices = sorted(increments)
    _refuse_versions(store, [i.tables for i in increments.values()], key_version, ", ".join(practices[:5]))
    none = pa.array([], pa.string())
    with contextlib.ExitStack() as locks:
        for practice in practices:  # in one order, so two chunks never wait on each other
            locks.enter_context(practice_lock(store, practice))
        journal = _journal(store, practices)
        versions = {name: merge_practices(store, name, {p: (increments[p].tables[name],
                                                             increments[p].deleted.get(name, none))
                                                         for p in practices}) for name in TABLES}
        path = table_path(store, QUARANTINE)
        quarantined = [increments[p].quarantine for p in practices if _has_rows(increments[p].quarantine)]
        if quarantined:
            schema = QUARANTINE_SCHEMA
            storage.write_delta(path, pa.RecordBatchReader.from_batches(schema, itertools.chain.from_iterable(
                _stream(q, schema) for q in quarantined)), mode="append", partition_by=[PARTITION])
        versions[QUARANTINE] = storage.delta_table(path).version()
        for done in journal:
            done.unlink()
    return versions


def _refuse_versions(store: Path, batches: list[dict[str, Rows]], key_version: str, practice: str, *,
                     exclude_practice: str | None = None) -> None:
    ensure_tables(store)
    for name in TABLES:
        found = set().union(*(_versions_in(tables[name]) for tables in batches))
        found |= key_versions(store, name, exclude_practice=exclude_practice)
        if found - {key_version}:
            raise GpdataError(f"table {name} would hold pseudonyms of key version "
                              f"{', '.join(sorted(found | {key_version}))}: the key was rotated during the run; "
                              "run the practice again", practice=practice, stage="commit")


def _journal(store: Path, practices: list[str]) -> list[Path]:
    """Each practice's journal (``unfinished_commits``), written before its tables are."""
    paths = [journal_path(store, practice) for practice in practices]
    for practice, path in zip(practices, paths, strict=True):
        write_json_atomic(path, {"practice": practice, "tables": list(TABLES)})
    return paths


@contextlib.contextmanager
def practice_lock(store: Path, practice: str):
    """One commit of a practice at a time on this store: a second waits, then replaces the first whole
    (an exclusive lock on ``_journal/<ODS>.lock``; on an object store one scheduler runs a practice at a time)."""
    if storage.is_remote(store):  # no file locks on an object store: Airflow runs one extraction at a time
        yield
        return
    with storage.file_lock(journal_path(store, practice).with_suffix(".lock")):
        yield


def journal_path(store: Path, practice: str) -> Path:
    return storage.root(store) / "_journal" / f"{practice}.json"


def unfinished_commits(store: Path) -> list[str]:
    """Practices whose last commit stopped between tables (rerun them to finish)."""
    return sorted(p.stem for p in (storage.root(store) / "_journal").glob("*.json"))


def merge_practice(store: Path, name: str, practice: str, batch: Rows, deleted_keys) -> int:
    """An incremental batch (a table or ``Batches``) in one commit: records whose key (``KEYS[name]``) is known
    replace their earlier version, new ones are inserted, and the keys the source marks deleted disappear.
    Returns the version. MERGE reads its source as a stream (delta-rs ``streamed_exec``), a batch at a time."""
    return merge_practices(store, name, {practice: (batch, deleted_keys)})


def merge_practices(store: Path, name: str, batches: dict[str, tuple[Rows, object]]) -> int:
    """Several practices' incremental batches (practice -> rows and deleted keys) merged as ``merge_practice``
    merges one, in one commit: a chunk's practices cost one MERGE and one log entry per table, not one each."""
    schema = _schemas()[name]
    key = KEYS[name]
    loose = pa.schema([f.with_nullable(True) for f in schema])  # deletion markers carry only their key
    marked = loose.append(pa.field("_deleted", pa.bool_()))
    rows, gone = {}, []
    for practice, (batch, deleted_keys) in batches.items():
        _predicate(practice)
        gone_keys = pc.unique(pa.array(deleted_keys, pa.string()).drop_null())
        rows[practice] = 0  # a record amended and deleted in one batch: the batch's version (newest) stays
        for part in _stream(batch, pa.schema([schema.field(key)])):
            rows[practice] += part.num_rows
            if len(gone_keys):
                gone_keys = gone_keys.filter(pc.invert(pc.is_in(gone_keys, value_set=part[key])))
        n = len(gone_keys)
        gone.append(pa.table({c: arrowutil.const(practice, n) if c == PARTITION else gone_keys if c == key
                              else pa.nulls(n, loose.field(c).type) for c in schema.names}, schema=loose))
    writing = [p for p in batches if rows[p]]
    gone_rows = pa.concat_tables(gone) if gone else loose.empty_table()
    if not writing and not gone_rows.num_rows:
        return storage.delta_table(table_path(store, name)).version()

    def source(errors: list[BaseException]) -> pa.RecordBatchReader:
        def parts():  # each practice's rows opened in turn, then the deletion markers
            for practice in writing:
                for part in _stream(batches[practice][0], schema, errors):
                    yield _marked(part.cast(loose), False)
            for part in gone_rows.to_batches():
                yield _marked(part, True)

        return pa.RecordBatchReader.from_batches(marked, parts())

    practices = ", ".join(f"'{p}'" for p in batches)
    columns = {c: f"s.{c}" for c in schema.names}
    on = f"t.{PARTITION} IN ({practices}) AND t.{PARTITION} = s.{PARTITION} AND t.{key} = s.{key}"
    what = f"practice {next(iter(batches))}" if len(batches) == 1 else f"{len(batches)} practices"

    def attempt():
        errors: list[BaseException] = []
        try:
            (storage.delta_table(table_path(store, name)).merge(source(errors), predicate=on, source_alias="s",
                                                               target_alias="t", streamed_exec=True,
                                                               writer_properties=_writer())
             .when_matched_delete(predicate="s._deleted")
             .when_matched_update(updates=columns, predicate="NOT s._deleted")
             .when_not_matched_insert(updates=columns, predicate="NOT s._deleted")
             .execute())
        except DeltaError:
            if errors:
                raise errors[0] from None
            raise

    storage.retry_concurrent(attempt, f"{what}: merge into table {name}")
    return storage.delta_table(table_path(store, name)).version()


def _marked(batch: pa.RecordBatch, deleted: bool) -> pa.RecordBatch:
    return batch.append_column("_deleted", pa.array([deleted] * batch.num_rows, pa.bool_()))


def replace_table(store: Path, name: str, table: pa.Table) -> int:
    """Replace a whole table in one commit, then vacuum the files no version needs any more beyond it
    (used by key rotation, where old files hold superseded pseudonyms). Returns the new version."""
    schema = _schemas()[name]
    path = table_path(store, name)
    storage.write_delta(path, table.select(schema.names).cast(schema), mode="overwrite", partition_by=[PARTITION])
    dt = storage.delta_table(path)
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    return dt.version()


def read_table(store: Path, name: str, practice: str | None = None) -> pa.Table:
    dt = storage.delta_table(table_path(store, name))
    filters = [(PARTITION, "=", practice)] if practice else None
    return dt.to_pyarrow_table(filters=filters)


def row_counts(store: Path, practice: str | None = None) -> dict[str, int]:
    return {name: read_table(store, name, practice).num_rows for name in TABLES}


_PLAIN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def safe_name(run_id: str) -> str:
    """A file or folder name for a run id: the id itself when it is a plain word (letters, digits, ``_``, ``-``,
    at most 64), else a readable stem of it and a hash of the whole id (``manual__2024-01-01T00_00_00_00_00-
    <16 hex>``). Never ``.`` or ``..``, never a separator, so a run folder always lies inside its parent."""
    run_id = str(run_id)
    if _PLAIN_WORD.fullmatch(run_id):
        return run_id
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", run_id).strip("_-")[:40] or "run"
    return f"{stem}-{hashlib.sha256(run_id.encode()).hexdigest()[:16]}"


def write_manifest(manifests: Path, practice: str, run_id: str, doc: dict) -> Path:
    """The run's manifest, plus ``latest.json`` (any outcome) and ``committed.json`` (last commit), and the
    practice's row of the status index (``gpdata.store.statusindex``)."""
    manifests = storage.root(manifests)
    path = manifests / practice / f"{safe_name(run_id)}.json"
    data = storage.json_bytes(doc)
    for name in (path.name, "latest.json") + (("committed.json",) if doc.get("status") == "committed" else ()):
        storage.write_bytes_atomic(manifests / practice / name, data)
    from gpdata.store import statusindex

    try:  # the GP data page's index, in the same step; the manifests stay the record of truth
        statusindex.record(manifests, practice, doc)
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("practice %s: the status index was not updated (%s): run `gpdata status rebuild`", practice,
                    type(exc).__name__)
    return path


def last_committed(manifests: Path, practice: str) -> dict | None:
    return read_json(storage.root(manifests) / practice / "committed.json")


def latest_manifests(manifests: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(storage.root(manifests).glob("*/latest.json"), key=str):
        out[path.parent.name] = json.loads(path.read_text())
    return out
