"""Releases: a tagged, reproducible version of the curated store.

A release compacts small files, then pins the version of every curated table in
``_releases/<id>/release.json`` beside the data dictionary. Reading a release reads each table at its pinned
version (Delta time travel), so it returns what it returned when it was made. Vacuum keeps every pinned
version. The one exception is erasure (gpdata.store.erasure): a release that held an erased patient is re-issued
as a corrected copy under ``_releases/<id>/tables/``, and its manifest says so.

Release ids are ``<date>.<n>``, ordered by (date, n) everywhere (``2026-11-30.10`` comes after ``.9``). A release
is refused while a key rotation is unfinished or when any table holds a patient whose latest type 1 code, in
the store-wide register, is a dissent. It records the key version and check value of the store's pseudonyms.
A key rotation *retires* every earlier release (its pinned files held the old pseudonyms and are vacuumed):
a retired release says why and which release replaced it, and reading it is refused with that message.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from gpdata import audit, storage, store
from gpdata.errors import GpdataError
from gpdata.model import PARTITION, TABLES
from gpdata.privacy import keys, type1
from gpdata.store import dictionary

RETIRED = "retired"


def release_order(release_id: str) -> tuple:
    """Sort key of a release id ``<date>.<n>``: by date, then by sequence number as a number."""
    date, _, seq = release_id.rpartition(".")
    return (date, int(seq)) if seq.isdigit() else (release_id, 0)


def releases_dir(store_root: Path) -> Path:
    return storage.root(store_root) / "_releases"


def _next_id(store_root: Path, today: dt.date) -> str:
    existing = {p.name for p in releases_dir(store_root).glob(f"{today.isoformat()}.*")}
    n = 1
    while f"{today.isoformat()}.{n}" in existing:
        n += 1
    return f"{today.isoformat()}.{n}"


def _refuse_dissenters(store_root: Path, held: dict[str, pa.Array]) -> None:
    """The last line of defence: no release holds a patient the type 1 register says dissented."""
    version = keys.store_version(store_root)
    active, _ = type1.active_dissenters(store_root, version)
    if not len(active):
        return
    # ``held``: each table's distinct patient pseudonyms, so each is matched once
    found = {name: pids.filter(pc.is_in(pids, value_set=active)) for name, pids in held.items()}
    found = {name: pids for name, pids in found.items() if len(pids)}
    if found:
        patients = len(pc.unique(pa.concat_arrays(list(found.values()))))
        audit.append(store_root, "refusal", action="release", reason="active type 1 dissent in the store",
                     patients=patients, patients_by_table={name: len(pids) for name, pids in found.items()})
        raise GpdataError(f"release refused: {patients} patient(s) with an active type 1 dissent are still in the "
                          f"store (in {', '.join(sorted(found))}); run their practices again, whose commit erases "
                          "them, then release")


def create_release(store_root: Path, today: dt.date | None = None, note: str = "",
                   key: keys.MasterKey | None = None, allow_empty: bool = False) -> dict:
    """Compact every table, pin its version and write the release manifest and data dictionary. A store
    holding no rows is refused unless ``allow_empty``."""
    if key is not None:
        keys.verify_store(store_root, key)
    elif storage.read_json(keys.rotation_journal(store_root)):
        raise GpdataError("no release while a key rotation is unfinished: run `gpdata keys rotate` to finish it")
    store.ensure_tables(store_root)
    unfinished = store.unfinished_commits(store_root)
    if unfinished:
        raise GpdataError(f"no release while a practice's commit is unfinished (its tables would mix two runs): "
                          f"{', '.join(unfinished)}; run the practice again, then release")
    release_id = _next_id(store_root, today or dt.date.today())
    tables, held = {}, {}
    for name in TABLES:
        dt_ = storage.delta_table(store.table_path(store_root, name))
        compaction = dt_.optimize.compact()
        dt_ = storage.delta_table(store.table_path(store_root, name))
        columns = [PARTITION, "patient_pid"] if name != "practitioners" else [PARTITION]
        data = dt_.to_pyarrow_table(columns=columns)
        if "patient_pid" in columns:
            held[name] = pc.unique(data["patient_pid"].combine_chunks().cast(pa.string()))
        per_practice = {p["values"]: p["counts"] for p in data[PARTITION].value_counts().to_pylist()}
        tables[name] = {"version": dt_.version(), "rows": data.num_rows, "rows_by_practice": dict(sorted(
            per_practice.items())), "files_compacted": compaction.get("numFilesRemoved", 0)}
    _refuse_dissenters(store_root, held)
    if not allow_empty and not any(t["rows"] for t in tables.values()):
        raise GpdataError("release refused: the store holds no rows (commit a practice first, or "
                          "`gpdata release create --allow-empty` for an empty release)")
    folder = releases_dir(store_root) / release_id
    if storage.is_remote(folder):  # the dictionary is written locally, then copied beside the release
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for path in dictionary.write(Path(tmp)):
                storage.write_bytes_atomic(folder / path.name, path.read_bytes())
    else:
        dictionary.write(folder)
    entry = audit.append(store_root, "release", release=release_id,
                         rows={name: t["rows"] for name, t in tables.items()})
    manifest = {"release_id": release_id, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "note": note, "tables": tables, "status": "published", "data_dictionary": "data_dictionary.md",
                "key_version": keys.store_version(store_root), "key_checks": keys.store_checks(store_root),
                "audit_head": {"seq": entry["seq"], "hash": entry["hash"]}}
    store.write_json_atomic(folder / "release.json", manifest)
    return manifest


def unchanged_since(store_root: Path) -> dict | None:
    """The latest readable release if no table has been written since it (every table's current version is
    the one it pinned), else None: a release of the same data would only repeat it."""
    readable = list_releases(store_root, readable_only=True)
    if not readable:
        return None
    from deltalake.exceptions import TableNotFoundError

    pinned = readable[-1]["tables"]
    for name in TABLES:
        try:
            version = storage.delta_table(store.table_path(store_root, name)).version()
        except TableNotFoundError:
            return None
        if name not in pinned or version != pinned[name]["version"]:
            return None
    return readable[-1]


def verify_audit(store_root: Path) -> int:
    """The audit chain checked against the head published in the register and the head each release
    manifest recorded when it was made (gpdata.audit.verify)."""
    anchors = [(f"release {r['release_id']}'s manifest", r["audit_head"]) for r in list_releases(store_root)
               if r.get("audit_head")]
    return audit.verify(store_root, anchors)


def list_releases(store_root: Path, *, readable_only: bool = False) -> list[dict]:
    """Every release, oldest first (by date, then sequence number); ``readable_only`` leaves out retired ones."""
    found = [json.loads(p.read_text()) for p in releases_dir(store_root).glob("*/release.json")]
    found.sort(key=lambda r: release_order(r["release_id"]))
    return [r for r in found if r.get("status") != RETIRED] if readable_only else found


def latest_release(store_root: Path) -> dict:
    """The newest release that can be read (not retired)."""
    readable = list_releases(store_root, readable_only=True)
    if not readable:
        raise GpdataError("no readable release: make one first (gpdata release create, or the release DAG)")
    return readable[-1]


def get_release(store_root: Path, release_id: str) -> dict:
    path = releases_dir(store_root) / release_id / "release.json"
    if not path.exists():
        known = ", ".join(r["release_id"] for r in list_releases(store_root)) or "none"
        raise GpdataError(f"no release {release_id!r} (releases: {known})")
    return json.loads(path.read_text())


def readable(manifest: dict) -> dict:
    """The manifest of a release that can be read; a retired one is refused with why and what replaced it."""
    if manifest.get("status") == RETIRED:
        info = manifest.get("retired") or {}
        raise GpdataError(f"release {manifest['release_id']} was retired on {info.get('at', '?')} "
                          f"({info.get('reason', 'no reason recorded')}); its files are gone"
                          + (f": use release {info['replaced_by']}" if info.get("replaced_by") else ""))
    return manifest


def retire(store_root: Path, release_id: str, reason: str, replaced_by: str | None = None) -> dict:
    """Mark a release retired (it can no longer be read), with an audit entry."""
    manifest = get_release(store_root, release_id)
    if manifest.get("status") == RETIRED:
        return manifest
    manifest["status"] = RETIRED
    manifest["retired"] = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "reason": reason,
                           "replaced_by": replaced_by}
    store.write_json_atomic(releases_dir(store_root) / release_id / "release.json", manifest)
    audit.append(store_root, "release_retired", release=release_id, reason=reason, replaced_by=replaced_by)
    return manifest


def open_release_table(store_root: Path, release_id: str, table: str) -> DeltaTable:
    """The Delta table (at its pinned version, or the corrected copy after an erasure) of a release."""
    entry = readable(get_release(store_root, release_id))["tables"][table]
    if entry.get("path"):  # re-issued after an erasure: a corrected copy
        return storage.delta_table(releases_dir(store_root) / release_id / entry["path"])
    return storage.delta_table(store.table_path(store_root, table), version=entry["version"])


def read_release_table(store_root: Path, release_id: str, table: str) -> pa.Table:
    """A table exactly as the release holds it."""
    return open_release_table(store_root, release_id, table).to_pyarrow_table()


def pinned_versions(store_root: Path, table: str) -> list[int]:
    """Versions of a table that releases read by time travel (vacuum must keep them)."""
    return sorted({r["tables"][table]["version"] for r in list_releases(store_root, readable_only=True)
                   if table in r["tables"] and not r["tables"][table].get("path")})


def export_snapshot(store_root: Path, release_id: str, out: Path) -> list[Path]:
    """Plain Parquet files of a release (one per table), for tools that cannot read Delta."""
    readable(get_release(store_root, release_id))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in TABLES:
        path = out / f"{table}.parquet"
        pq.write_table(read_release_table(store_root, release_id, table), path, compression="zstd")
        written.append(path)
    dictionary.write(out)
    return written
