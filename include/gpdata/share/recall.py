"""Erasure reaches recipients: a patient erased after a late type 1 opt-out is taken out of every extract
already handed out.

For each extract (``extracts/<project>/<release>/``) the patient's project pseudonym is recomputed (HMAC of the
curated pseudonym under the project's key) and looked for in every table. An extract that held the patient is
re-issued without them (files rewritten, manifest and summary updated, ``status: reissued``), or withdrawn (its
data files deleted, ``status: withdrawn``) when what is left no longer meets the project's minimum k. Each
re-issue or withdrawal is written to the audit log with the recipients to notify, and kept in
``extracts/_notifications.json`` as pending until an operator records the notification
(``gpdata notifications done PROJECT RELEASE``). The GP data page lists the pending ones. Counts only, never a
pseudonym.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata import audit, store
from gpdata.arrowutil import isin
from gpdata.model import PSEUDONYM_FIELDS
from gpdata.privacy.deid import hmac_hex
from gpdata.privacy.keys import MasterKey
from gpdata.share import risk
from gpdata.share.disseminate import project_key
from gpdata.share.publish import suppress

log = logging.getLogger("gpdata.share.recall")


def notifications_path(extracts_root: Path) -> Path:
    return Path(extracts_root) / "_notifications.json"


def pending_notifications(extracts_root: Path) -> list[dict]:
    path = notifications_path(extracts_root)
    items = json.loads(path.read_text()) if path.exists() else []
    return [n for n in items if not n.get("notified_at")]


def _record(extracts_root: Path, item: dict) -> None:
    path = notifications_path(extracts_root)
    items = json.loads(path.read_text()) if path.exists() else []
    items.append(item)
    store.write_json_atomic(path, items)


def mark_notified(extracts_root: Path, store_root: Path, project: str, release_id: str, by: str) -> int:
    """Record that the recipients of (project, release) were notified; returns how many notifications closed."""
    path = notifications_path(extracts_root)
    items = json.loads(path.read_text()) if path.exists() else []
    closed = 0
    for n in items:
        if n["project"] == project and n["release"] == release_id and not n.get("notified_at"):
            n["notified_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            n["notified_by"] = by
            closed += 1
    if closed:
        store.write_json_atomic(path, items)
        audit.append(store_root, "recipients_notified", project=project, release=release_id, requested_by=by)
    return closed


def _write(path: Path, table: pa.Table) -> str:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recall(extracts_root: Path, store_root: Path, key: MasterKey, pids: pa.Array) -> list[dict]:
    """Take these (curated) patient pseudonyms out of every extract that holds them. Returns, per extract
    touched: project, release, action (reissued or withdrawn), patients, rows removed and recipients."""
    pids = pa.array(sorted(set(pids.to_pylist()) - {None}), pa.string())
    done: list[dict] = []
    root = Path(extracts_root)
    if not len(pids) or not root.is_dir():
        return done
    for path in sorted(root.glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("status") == "withdrawn" or manifest.get("key_version") not in (None, key.version):
            continue
        folder = path.parent
        project = manifest["project"]
        mine = hmac_hex(project_key(key, project, PSEUDONYM_FIELDS["patient_pid"]), pids)
        tables, removed, held = {}, {}, set()
        for name in manifest.get("tables", {}):
            file = folder / f"{name}.parquet"
            if not file.exists():
                continue
            table = pq.read_table(file)
            if "patient_pid" not in table.column_names:
                continue
            hit = isin(table["patient_pid"], mine)
            n = pc.sum(hit).as_py() or 0
            if n:
                held.update(table.filter(hit)["patient_pid"].to_pylist())
                tables[name] = table.filter(pc.invert(hit))
                removed[name] = n
        if not removed:
            continue
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        minimum_k = (manifest.get("risk") or {}).get("minimum_k") or 1
        patients = tables.get("patients")
        k = None
        if patients is not None:
            k = risk.k_anonymity(patients, risk.quasi_identifiers(patients))["k"]
        action = "withdrawn" if k is not None and k < minimum_k else "reissued"
        if action == "withdrawn":
            for name in manifest.get("files_sha256", {}):
                (folder / name).unlink(missing_ok=True)
            manifest["files_sha256"] = {}
            (folder / "summary.json").unlink(missing_ok=True)
        else:
            summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() \
                else {"tables": {}}
            for name, table in tables.items():
                manifest["files_sha256"][f"{name}.parquet"] = _write(folder / f"{name}.parquet", table)
                manifest["tables"][name]["rows"] = table.num_rows
                summary["tables"][name] = {"rows": suppress(table.num_rows),
                                           "patients": suppress(pc.count_distinct(table["patient_pid"]).as_py())}
            store.write_json_atomic(folder / "summary.json", summary)
            if manifest.get("risk") and k is not None:
                manifest["risk"]["k"] = k
        manifest["status"] = action
        recipients = [manifest.get("organisation")] if manifest.get("organisation") else []
        manifest.setdefault("reissues", []).append({"at": at, "action": action,
                                                    "reason": "erasure after a late type 1 opt-out",
                                                    "patients": len(held), "rows_removed": removed})
        store.write_json_atomic(path, manifest)
        item = {"project": project, "release": manifest["release"], "action": action, "patients": len(held),
                "rows_removed": removed, "recipients": recipients, "at": at}
        audit.append(store_root, f"extract_{action}", project=project, release=manifest["release"],
                     reason="erasure after a late type 1 opt-out", patients=len(held), rows=removed,
                     recipients_to_notify=recipients, requested_by="type 1 opt-out")
        _record(root, {**item, "notified_at": None})
        done.append(item)
        log.info("extract %s/%s %s after a late type 1 opt-out (%d patient(s)); recipients to notify: %s",
                 project, manifest["release"], action, len(held), ", ".join(recipients) or "none recorded")
    return done
