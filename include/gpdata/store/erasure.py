"""Erasure: a patient whose type 1 opt-out arrives after their data was collected is removed from every
table, from history and from releases.

The extraction task pseudonymises the NHS numbers of its opted-out patients (``optout_pids``). Before the
commit, ``present`` finds which of them the store still holds, in the current version of any table or in
any release. Then ``erase`` runs, before the commit (so a crash in between cannot hide the patient's older
files from the next run), and does three things:

* deletes their rows from every table (all practices: a patient may have moved);
* re-issues every release that held them as a corrected copy (a retired release has no files left to hold them);
* vacuums every table, keeping only versions that releases still pin, so no file on disk holds their
  records any more.

The pseudonyms are recorded in ``_erasures/pending.parquet`` until every step is done, so an erasure cut
short by a crash is finished by the next one. The erasure log and the audit log record counts, never a pseudonym.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdata import audit, storage, store
from gpdata.errors import GpdataError
from gpdata.model import PARTITION, TABLES
from gpdata.store import release

log = logging.getLogger("gpdata.store.erasure")
_PID = re.compile(r"^[0-9a-f]{64}$")


def _holds(table: pa.Table, pids: pa.Array) -> pa.Array:
    return pc.fill_null(pc.is_in(table["patient_pid"], value_set=pids), False)


def _tables_with_patients() -> list[str]:
    return [t for t in TABLES if t != "practitioners"]


def present(store_root: Path, pids: pa.Array) -> pa.Array:
    """The pseudonyms among ``pids`` that the store holds now or that a release holds."""
    if len(pids) == 0:
        return pids
    found: set[str] = set()
    releases = [r["release_id"] for r in release.list_releases(store_root, readable_only=True)]  # retired: no files
    for name in _tables_with_patients():
        tables = [storage.delta_table(store.table_path(store_root, name))]
        tables += [release.open_release_table(store_root, rid, name) for rid in releases]
        for table in tables:
            dataset = table.to_pyarrow_dataset()
            try:
                held = dataset.to_table(columns=["patient_pid"], filter=pc.field("patient_pid").isin(pids))
                found.update(held["patient_pid"].to_pylist())
            except pa.ArrowNotImplementedError:  # files written by a Delta merge hold string_view columns
                column = dataset.to_table(columns=["patient_pid"])["patient_pid"].cast(pa.string())
                found.update(column.filter(pc.is_in(column, value_set=pids.cast(pa.string()))).to_pylist())
    return pa.array(sorted(found), pa.string())


def _pending_path(store_root: Path) -> Path:
    return storage.root(store_root) / "_erasures" / "pending.parquet"


def pending(store_root: Path) -> pa.Array:
    """Pseudonyms of an erasure that started but did not finish (a crash); the next erase completes it."""
    path = _pending_path(store_root)
    return storage.read_parquet(path)["patient_pid"].combine_chunks() if path.exists() \
        else pa.array([], pa.string())


def erase(store_root: Path, pids: pa.Array) -> dict:
    """Remove every record of these pseudonyms (and of any unfinished erasure) from every table, release and
    retained file. The pseudonyms are recorded as pending first and cleared only when all is done."""
    pids = pa.array(sorted((set(pids.to_pylist()) | set(pending(store_root).to_pylist())) - {None}), pa.string())
    if len(pids) == 0:
        return {}
    if not all(_PID.match(p) for p in pids.to_pylist()):
        raise GpdataError("erasure takes patient pseudonyms only")
    marker = _pending_path(store_root)
    storage.write_parquet(marker, pa.table({"patient_pid": pids}))
    in_list = ", ".join(f"'{p}'" for p in pids.to_pylist())
    deleted = {}
    for name in _tables_with_patients():
        result = storage.delta_table(store.table_path(store_root, name)).delete(f"patient_pid IN ({in_list})")
        deleted[name] = result.get("num_deleted_rows", 0)
    reissued = []
    for r in release.list_releases(store_root, readable_only=True):
        changed = False
        for name in _tables_with_patients():
            held = release.read_release_table(store_root, r["release_id"], name)
            hit = _holds(held, pids)
            if pc.any(hit).as_py():
                path = Path("tables") / name
                storage.write_delta(release.releases_dir(store_root) / r["release_id"] / str(path),
                                    held.filter(pc.invert(hit)), mode="overwrite", partition_by=[PARTITION])
                storage.delta_table(release.releases_dir(store_root) / r["release_id"] / str(path)).vacuum(
                    retention_hours=0, enforce_retention_duration=False, dry_run=False)
                r["tables"][name].update({"path": str(path), "rows": held.num_rows - pc.sum(hit).as_py()})
                changed = True
        if changed:
            r["status"] = "reissued"
            r.setdefault("reissues", []).append({"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                                 "reason": "erasure after a type 1 opt-out"})
            store.write_json_atomic(release.releases_dir(store_root) / r["release_id"] / "release.json", r)
            reissued.append(r["release_id"])
    for name in TABLES:
        storage.delta_table(store.table_path(store_root, name)).vacuum(
            retention_hours=0, enforce_retention_duration=False, dry_run=False,
            keep_versions=release.pinned_versions(store_root, name) or None)
    entry = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "patients": len(pids),
             "rows_deleted": deleted, "releases_reissued": reissued}
    storage.append_text(storage.root(store_root) / "_erasures" / "log.jsonl", json.dumps(entry) + "\n")
    audit.append(store_root, "erasure", requested_by="type 1 opt-out", patients=len(pids), rows=deleted,
                 releases_reissued=reissued)
    marker.unlink()
    log.info("erased %d patient(s) after a late type 1 opt-out: rows deleted %s, releases re-issued %s",
             len(pids), deleted, reissued or "none")
    return entry
