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

import contextlib
import datetime as dt
import json
import logging
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdata import audit, storage, store
from gpdata.arrowutil import isin
from gpdata.errors import GpdataError
from gpdata.model import PARTITION, TABLES
from gpdata.store import release

log = logging.getLogger("gpdata.store.erasure")
_PID = re.compile(r"^[0-9a-f]{64}$")


def _holds(table: pa.Table, pids: pa.Array) -> pa.Array:
    return isin(table["patient_pid"], pids)


def _tables_with_patients() -> list[str]:
    return [t for t in TABLES if t != "practitioners"]


def present(store_root: Path, pids: pa.Array) -> pa.Array:
    """The pseudonyms among ``pids`` that the store holds now or that a release holds. Each table is read again
    from its newest version when another writer's erasure vacuumed the files being read (``retry_concurrent``)."""
    if len(pids) == 0:
        return pids
    found: set[str] = set()
    releases = [r["release_id"] for r in release.list_releases(store_root, readable_only=True)]  # retired: no files
    for name in _tables_with_patients():
        found |= storage.retry_concurrent(lambda n=name: _held(store_root, n, releases, pids),
                                          f"late opt-out check of table {name}")
    return pa.array(sorted(found), pa.string())


def _held(store_root: Path, name: str, releases: list[str], pids: pa.Array) -> set[str]:
    found: set[str] = set()
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
    return found


def _pending_path(store_root: Path) -> Path:
    """The one marker of earlier versions (still read, so an erasure it records is finished)."""
    return storage.root(store_root) / "_erasures" / "pending.parquet"


def _markers(store_root: Path) -> list:
    """A marker per erasure under way (``_erasures/pending/<uuid>.parquet``): an erasure only ever removes its own
    and those it found at its start, whose patients it erased too (a single shared marker was removed by whichever
    of two concurrent erasures finished first, losing the other's record)."""
    found = [_pending_path(store_root)] if _pending_path(store_root).exists() else []
    folder = storage.root(store_root) / "_erasures" / "pending"
    return found + (sorted(folder.glob("*.parquet"), key=str) if folder.exists() else [])


def _read_markers(markers: list) -> set[str]:
    pids: set[str] = set()
    for marker in markers:
        try:
            pids.update(storage.read_parquet(marker)["patient_pid"].to_pylist())
        except FileNotFoundError:  # that erasure finished meanwhile
            continue
    return pids - {None}


def pending(store_root: Path) -> pa.Array:
    """Pseudonyms of erasures that started but did not finish (a crash, or one under way); the next erase completes
    them."""
    return pa.array(sorted(_read_markers(_markers(store_root))), pa.string())


@contextlib.contextmanager
def _one_at_a_time(store_root: Path):
    """Erasures on a local store take turns (each rewrites every table); on an object store they may overlap, and
    conflicting commits are tried again (``storage.retry_concurrent``)."""
    if storage.is_remote(store_root):
        yield
        return
    with storage.file_lock(storage.root(store_root) / "_erasures" / "erase.lock"):
        yield


def erase(store_root: Path, pids: pa.Array) -> dict:
    """Remove every record of these pseudonyms (and of any unfinished erasure) from every table, release and
    retained file. The pseudonyms are recorded as pending first and cleared only when all is done."""
    mine = _pseudonyms(pids.to_pylist())
    if mine:  # recorded before waiting for another erasure: a crash while waiting still leaves the record
        marker = storage.root(store_root) / "_erasures" / "pending" / f"{uuid.uuid4().hex}.parquet"
        storage.write_parquet(marker, pa.table({"patient_pid": pa.array(sorted(mine), pa.string())}))
    with _one_at_a_time(store_root):
        found = _markers(store_root)  # this one's marker and every unfinished erasure's: all done below
        pids = pa.array(sorted(mine | _pseudonyms(_read_markers(found))), pa.string())
        if len(pids) == 0:
            return {}
        return _erase(store_root, pids, found)


def _pseudonyms(values) -> set[str]:
    """The values to erase, each a patient pseudonym; anything else (a raw NHS number, a quoting string) is
    refused before it is written anywhere."""
    values = set(values) - {None}
    if not all(_PID.match(p) for p in values):
        raise GpdataError("erasure takes patient pseudonyms only")
    return values


def _erase(store_root: Path, pids: pa.Array, markers: list) -> dict:
    in_list = ", ".join(f"'{p}'" for p in pids.to_pylist())
    deleted = {}
    for name in _tables_with_patients():
        path = store.table_path(store_root, name)
        where = f"patient_pid IN ({in_list})"
        result = storage.retry_concurrent(lambda p=path, w=where: storage.delta_table(p).delete(w),
                                          f"erasure in table {name}")
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
        path = store.table_path(store_root, name)
        storage.retry_concurrent(lambda p=path, n=name: storage.delta_table(p).vacuum(
            retention_hours=0, enforce_retention_duration=False, dry_run=False,
            keep_versions=release.pinned_versions(store_root, n) or None), f"erasure's vacuum of table {name}")
    entry = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "patients": len(pids),
             "rows_deleted": deleted, "releases_reissued": reissued}
    storage.append_text(storage.root(store_root) / "_erasures" / "log.jsonl", json.dumps(entry) + "\n")
    audit.append(store_root, "erasure", requested_by="type 1 opt-out", patients=len(pids), rows=deleted,
                 releases_reissued=reissued)
    for marker in markers:  # finished: this erasure's, and those it completed
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
    log.info("erased %d patient(s) after a late type 1 opt-out: rows deleted %s, releases re-issued %s",
             len(pids), deleted, reissued or "none")
    return entry
