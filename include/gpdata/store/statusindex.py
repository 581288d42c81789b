"""The status index: every practice's latest status in one small object, kept at commit time.

The run manifests (``_manifests/<ODS>/``) are the record of truth; the GP data page would need two or three of
them per practice (about 20,000 reads for 6,500 practices). So every time a manifest is written
(``store.write_manifest``: a commit, a quality failure, an unchanged delivery, a recorded failure) the practice's
status row is derived from it and kept, beside the manifests, in ``<store>/_status/``:

- ``practices/<ODS>.json``: the practice's row and its trend (the last ``TREND_RUNS`` runs that counted), one
  small object per practice, written whole (one PUT on S3, a rename locally);
- ``index.parquet``: every practice's row in one file, each with the ``stamp`` (modification time) of the
  per-practice object it was taken from, rewritten atomically (locally under ``storage.file_lock``).

A reader (``read_index``) reads ``index.parquet`` and lists ``practices/`` (one listing, no GET per practice),
then reads only the per-practice objects newer than the index's row (or that it lacks). Locally the listing is
skipped when the folder has not changed since the index was written; on S3 a web-server process lists in the
background at most once a minute (``LIST_RECHECK_SECONDS``) and pages use its last listing. On S3 two
writers may race for ``index.parquet`` (there is no lock there) and one's row can be lost from it: that row's
object is then newer than its row there, so the reader still finds it. Nothing is lost, only more objects are read until
the next write or ``gpdata status rebuild`` (``rebuild``), which derives every row and trend from the manifests
again. (One window remains on S3, whose stamps are coarse: the same practice written twice within one stamp
tick *and* the second index update lost; the next write or a rebuild repairs it.)

Rows hold counts, states and causes only (the manifests' own content), never a record; nested values (rows by
table, quarantine by reason, trend) are JSON text in the index and decoded only for the rows a page shows.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from gpdata import storage
from gpdata.model import TABLES

log = logging.getLogger("gpdata.store.status")

TREND_RUNS = 30  # runs kept per practice for the trend charts

# How a manifest status reads at a glance. Anything else is "unknown" and shown verbatim.
STATUS_KINDS = {
    "committed": "ok",
    "unchanged": "ok",       # the delivery was already processed; the practice was skipped
    "failed": "failed",
    "failed_quality": "failed",
    "running": "running",
}

# The index's columns. Those marked JSON hold nested values as JSON text.
FIELDS = pa.schema([
    ("practice", pa.string()), ("status", pa.string()), ("kind", pa.string()), ("run_id", pa.string()),
    ("finished_at", pa.string()), ("error_stage", pa.string()), ("error_cause", pa.string()),
    ("counts_run_id", pa.string()), ("counts_from_last_run", pa.bool_()),
    ("patients_read", pa.int64()), ("type1_excluded", pa.int64()), ("rows_committed", pa.int64()),
    ("rows", pa.string()), ("rows_state", pa.string()), ("quarantined", pa.string()),
    ("quarantined_total", pa.int64()), ("quarantine_rate", pa.float64()), ("unmapped_resources", pa.string()),
    ("quality", pa.string()), ("expectations_evaluated", pa.int64()), ("expectations_failed", pa.int64()),
    ("duration_seconds", pa.float64()), ("last_committed_run_id", pa.string()), ("last_committed_at", pa.string()),
    ("trend", pa.string()), ("stamp", pa.int64()),
])
JSON_FIELDS = ("rows", "quarantined", "unmapped_resources", "trend")


def status_kind(status: str | None) -> str:
    if status is None:
        return "none"
    if status in STATUS_KINDS:
        return STATUS_KINDS[status]
    return "failed" if str(status).startswith("failed") else "unknown"


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value) -> str | None:
    return None if value is None else str(value)


def quarantined_by_reason(quality: dict) -> dict[str, int]:
    """Quarantined rows summed over tables, by reason code."""
    out: dict[str, int] = {}
    for by_reason in (quality.get("quarantined") or {}).values():
        for reason, n in (by_reason or {}).items():
            if _int(n) is not None:
                out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def unmapped(counts: dict) -> dict[str, int]:
    """FHIR resources no table maps, counted by type (the run manifest's source.unmapped_resources)."""
    found = (counts.get("source") or {}).get("unmapped_resources")
    if not isinstance(found, dict):
        return {}
    return {str(t): n for t, n in sorted(found.items()) if _int(n)}


def error_of(latest: dict) -> dict | None:
    """Why the last run failed: the recorded error (failure callback), else the quality gate's failures."""
    error = latest.get("error")
    if isinstance(error, dict) and error.get("cause"):
        return {"stage": str(error.get("stage") or "unknown"), "cause": str(error["cause"])}
    failures = (latest.get("quality") or {}).get("failures") or []
    if status_kind(latest.get("status")) == "failed" and failures:
        return {"stage": "quality", "cause": "; ".join(str(f) for f in failures)}
    return None


def duration(doc: dict) -> float | None:
    """Seconds of the run's stages (extract, quality, commit) that the manifest records."""
    seconds = doc.get("seconds") if isinstance(doc.get("seconds"), dict) else {}
    found = [_num(seconds.get(s)) for s in ("extract", "quality", "commit")]
    found = [s for s in found if s is not None]
    return round(sum(found), 3) if found else None


def _rows_in_total(quality: dict) -> int | None:
    rows_in = quality.get("rows_in")
    if not isinstance(rows_in, dict):
        return None
    values = [_int(v) for v in rows_in.values()]
    return sum(v for v in values if v is not None)


def quarantine_rate(doc: dict) -> float | None:
    """Quarantined rows over rows delivered to the quality gate, over all tables."""
    quality = doc.get("quality") or {}
    total = _rows_in_total(quality)
    if not total:
        return None
    return round(sum(quarantined_by_reason(quality).values()) / total, 6)


def trend_point(doc: dict) -> dict | None:
    """One run's point of the trend charts, or None for a run that counted nothing (unchanged, failed early)."""
    if "patients_read" not in doc:
        return None
    committed = doc.get("committed_rows")
    return {
        "run_id": _str(doc.get("run_id")),
        "finished_at": _str(doc.get("finished_at")),
        "status": _str(doc.get("status")),
        "rows_committed": sum(_int(v) or 0 for v in committed.values()) if isinstance(committed, dict) else None,
        "quarantine_rate": quarantine_rate(doc),
        "type1_excluded": _int((doc.get("type1_optout") or {}).get("patients_excluded")),
        "duration_seconds": duration(doc),
    }


def add_point(trend: list[dict], doc: dict) -> list[dict]:
    """``trend`` with the run of ``doc`` added (or replaced: a failure recorded on a run already counted)."""
    point = trend_point(doc)
    if point is None:
        return trend
    kept = [p for p in trend if p.get("run_id") != point["run_id"]]
    return [*kept, point][-TREND_RUNS:]


def row_from(practice: str, latest: dict, committed: dict | None, trend: list[dict]) -> dict:
    """A practice's status row from its latest manifest and its last committed one (as the page shows it)."""
    status = latest.get("status")
    # Counts come from one run only: the last run if it counted anything (committed, failed the quality
    # gate), else the last committed run (a run that failed before counting, or skipped an unchanged delivery).
    counts = latest if "patients_read" in latest else (committed or {})
    quality = counts.get("quality") or {}
    rows, rows_state = None, None
    if isinstance(counts.get("committed_rows"), dict):
        rows, rows_state = counts["committed_rows"], "committed"
    elif isinstance(quality.get("rows_in"), dict):
        rows, rows_state = quality["rows_in"], "delivered, not committed"
    reasons = quarantined_by_reason(quality)
    passed = quality.get("passed")
    error = error_of(latest) if latest else None
    expectations = quality.get("expectations") if isinstance(quality.get("expectations"), dict) else {}
    table_rows = {t: _int(rows.get(t)) for t in TABLES} if rows is not None else None
    return {
        "practice": practice,
        "status": _str(status),
        "kind": status_kind(status),
        "run_id": _str(latest.get("run_id")),
        "finished_at": _str(latest.get("finished_at")),
        "error_stage": error["stage"] if error else None,
        "error_cause": error["cause"] if error else None,
        "counts_run_id": _str(counts.get("run_id")),
        "counts_from_last_run": bool(counts) and counts is latest,
        "patients_read": _int(counts.get("patients_read")),
        "type1_excluded": _int((counts.get("type1_optout") or {}).get("patients_excluded")),
        "rows_committed": sum(v or 0 for v in table_rows.values()) if rows_state == "committed" else None,
        "rows": table_rows,
        "rows_state": rows_state,
        "quarantined": reasons,
        "quarantined_total": sum(reasons.values()) if quality else None,
        "quarantine_rate": quarantine_rate(counts),
        "unmapped_resources": unmapped(counts),
        "quality": None if passed is None else ("passed" if passed else "failed"),
        "expectations_evaluated": _int(expectations.get("evaluated")),
        "expectations_failed": _int(expectations.get("failed")),
        "duration_seconds": duration(counts),
        "last_committed_run_id": _str((committed or {}).get("run_id")),
        "last_committed_at": _str((committed or {}).get("finished_at")),
        "trend": trend,
    }


def decode(row: dict) -> dict:
    """An index row with its JSON fields as values (for the rows a page shows)."""
    out = dict(row)
    for name in JSON_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = json.loads(out[name])
    return out


def _encode(row: dict, stamp: int) -> dict:
    out = {name: row.get(name) for name in FIELDS.names}
    for name in JSON_FIELDS:
        if not isinstance(out[name], str) and out[name] is not None:
            out[name] = json.dumps(out[name], sort_keys=True, separators=(",", ":"))
    out["stamp"] = stamp
    return out


# --- where it lives ----------------------------------------------------------------------------------------

def status_root(manifests: Any):
    """``<store>/_status`` beside ``<store>/_manifests``."""
    return storage.root(manifests).parent / "_status"


def _index_path(manifests: Any):
    return status_root(manifests) / "index.parquet"


def _practice_path(manifests: Any, practice: str):
    return status_root(manifests) / "practices" / f"{practice}.json"


def _lock(manifests: Any):
    """The index's writers' lock: a local file lock; none on S3 (lost rows are re-read, see the module doc)."""
    folder = status_root(manifests)
    if storage.is_remote(folder):
        return contextlib.nullcontext()
    return storage.file_lock(Path(folder) / ".index.lock")


def _stamps(folder: Any) -> dict[str, int]:
    """Modification time of every ``<ODS>.json`` in ``folder`` (microseconds: every integer gpdata writes stays
    a safe double), from one listing (S3: LIST pages, no GET)."""
    if storage.is_remote(folder):
        from pyarrow.fs import FileSelector, FileType

        fs = folder.fs.fs  # pyarrow's S3 filesystem under the fsspec wrapper
        prefix = str(folder).removeprefix("s3://")
        try:
            infos = fs.get_file_info(FileSelector(prefix, allow_not_found=True))
        except OSError:
            return {}
        return {Path(i.path).stem: (i.mtime_ns or 0) // 1000 for i in infos
                if i.type == FileType.File and i.path.endswith(".json")}
    out = {}
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.endswith(".json") and not e.name.startswith("."):
                    out[e.name[:-5]] = e.stat().st_mtime_ns // 1000
    except FileNotFoundError:
        pass
    return out


def _stamp(path: Any) -> int:
    if storage.is_remote(path):
        info = path.fs.fs.get_file_info(str(path).removeprefix("s3://"))
        return (info.mtime_ns or 0) // 1000
    return os.stat(path).st_mtime_ns // 1000


def _read_index_table(manifests: Any) -> pa.Table | None:
    """The index table (None when missing or unreadable)."""
    import pyarrow.parquet as pq

    path = _index_path(manifests)
    try:
        if storage.is_remote(path):
            return pq.read_table(io.BytesIO(path.read_bytes()))
        return pq.read_table(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("status index %s cannot be read (%s): the per-practice objects are read instead",
                    path, type(exc).__name__)
        return None


def _write_index_rows(manifests: Any, rows: dict[str, dict]) -> None:
    table = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=FIELDS)
    storage.write_parquet(_index_path(manifests), table)


def _read_practice_object(manifests: Any, practice: str) -> dict | None:
    try:
        doc = storage.read_json(_practice_path(manifests, practice))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("row"), dict) else None


# --- writing -----------------------------------------------------------------------------------------------

def record(manifests: Any, practice: str, doc: dict) -> dict:
    """Keep the index in step with the manifest ``doc`` just written for ``practice`` (``store.write_manifest``).
    Returns the practice's row."""
    root = storage.root(manifests)
    committed = doc if doc.get("status") == "committed" else storage.read_json(root / practice / "committed.json")
    previous = _read_practice_object(manifests, practice)
    trend = add_point(list((previous or {}).get("row", {}).get("trend") or []), doc)
    row = row_from(practice, doc, committed, trend)
    _put(manifests, {practice: row})
    return row


@dataclass
class _Held:
    """Index rows held back by ``held``: by practice, since the index was last written (``written``)."""

    seconds: float
    rows: dict[str, dict] = field(default_factory=dict)
    written: float = field(default_factory=time.monotonic)


_HELD: dict[str, _Held] = {}  # by index path


@contextlib.contextmanager
def held(manifests: Any, seconds: float = 10.0):
    """Within the block, ``record`` writes each practice's object at once but rewrites the index (every practice's
    row in one file, read and written whole) only every ``seconds`` and at the end: a chunk of 200 practices
    rewrote it three times a practice, 12 ms each with 200 rows and more with England's 6,500. Meanwhile a reader
    reads the objects newer than the index, as after a lost index write."""
    key = str(_index_path(manifests))
    if key in _HELD:  # already held by an enclosing block
        yield
        return
    _HELD[key] = _Held(seconds)
    try:
        yield
    finally:
        rows = _HELD.pop(key).rows
        if rows:
            _write_index(manifests, rows)


def _put(manifests: Any, rows: dict[str, dict], *, replace_all: bool = False) -> None:
    """Write each row's per-practice object, then the index with their stamps (under the lock)."""
    encoded = {}
    for practice, row in rows.items():
        path = _practice_path(manifests, practice)
        storage.write_json_atomic(path, {"practice": practice, "row": row})
        encoded[practice] = _encode(row, _stamp(path))
    holding = None if replace_all else _HELD.get(str(_index_path(manifests)))
    if holding is not None:
        holding.rows.update(encoded)
        if time.monotonic() - holding.written < holding.seconds:
            return
        encoded, holding.rows, holding.written = holding.rows, {}, time.monotonic()
    _write_index(manifests, encoded, replace_all=replace_all)


def _write_index(manifests: Any, encoded: dict[str, dict], *, replace_all: bool = False) -> None:
    with _lock(manifests):
        current: dict[str, dict] = {}
        if not replace_all:
            table = _read_index_table(manifests)
            if table is not None:
                current = {r["practice"]: r for r in table.to_pylist()}
        current.update(encoded)
        _write_index_rows(manifests, current)


def rebuild(manifests: Any) -> int:
    """Derive every practice's row and trend from its run manifests again and rewrite the index whole.
    Returns the number of practices."""
    from gpdata.store.tables import ODS_RE

    root = storage.root(manifests)
    rows: dict[str, dict] = {}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and ODS_RE.match(p.name)) if root.exists() else []
    for folder in folders:
        runs = []
        for path in folder.glob("*.json"):
            if path.name in ("latest.json", "committed.json"):
                continue
            try:
                doc = storage.read_json(path)
            except (OSError, ValueError):
                log.warning("practice %s: run manifest %s cannot be read; left out of the trend", folder.name,
                            path.name)
                continue
            if isinstance(doc, dict):
                runs.append(doc)
        runs.sort(key=lambda d: (str(d.get("finished_at") or ""), str(d.get("run_id") or "")))
        trend: list[dict] = []
        for doc in runs:
            trend = add_point(trend, doc)
        rows[folder.name] = folder_row(folder, trend)
    # Objects of practices whose manifests are gone are dropped with the index they belonged to.
    objects = status_root(manifests) / "practices"
    for name in set(_stamps(objects)) - set(rows):
        with contextlib.suppress(FileNotFoundError):
            (objects / f"{name}.json").unlink()
    _put(manifests, rows, replace_all=True)
    return len(rows)


def folder_row(folder: Any, trend: list[dict] | None = None) -> dict:
    """A practice's row from its manifest folder (its latest and last committed manifests)."""
    return row_from(folder.name, read_doc(folder / "latest.json") or {}, read_doc(folder / "committed.json"),
                    trend or [])


def read_doc(path: Any) -> dict | None:
    """A JSON document, or None if it is missing or unreadable (a page or a rebuild must still go on)."""
    try:
        doc = storage.read_json(path)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# --- reading -----------------------------------------------------------------------------------------------

_LISTINGS: dict[str, tuple[float, dict[str, int]]] = {}
_REFRESHING: set[str] = set()
_LISTING_LOCK = threading.Lock()
LIST_RECHECK_SECONDS = 60.0  # S3: how often a process lists the per-practice objects again


def _refresh(objects: Any, key: str) -> dict[str, int]:
    try:
        stamps = _stamps(objects)
        with _LISTING_LOCK:
            _LISTINGS[key] = (time.monotonic(), stamps)
        return stamps
    finally:
        with _LISTING_LOCK:
            _REFRESHING.discard(key)


def _listing(objects: Any, fresh: bool = False) -> dict[str, int]:
    """The objects' stamps. Locally (and with ``fresh``) listed now. On S3 the listing (LIST pages: seconds
    for 6,500 objects on a slow endpoint) is redone in the background at most every ``LIST_RECHECK_SECONDS``
    per process, and a request uses the last one it has (none at first): writers update the index themselves,
    so the listing only finds rows an index race lost, that much later."""
    if not storage.is_remote(objects):
        return _stamps(objects)
    key = str(objects)
    if fresh:
        with _LISTING_LOCK:
            _REFRESHING.add(key)
        return _refresh(objects, key)
    with _LISTING_LOCK:
        cached = _LISTINGS.get(key)
        if (cached is None or time.monotonic() - cached[0] >= LIST_RECHECK_SECONDS) and key not in _REFRESHING:
            _REFRESHING.add(key)
            threading.Thread(target=_refresh, args=(objects, key), name="gpdata-status-listing",
                             daemon=True).start()
    return cached[1] if cached else {}


def _unchanged_since_index(manifests: Any, objects: Any) -> bool:
    """Locally: no object was added or replaced (each is renamed into its folder, which changes the folder's
    modification time) since the index was written, so the listing can be skipped. Always False on S3."""
    if storage.is_remote(objects):
        return False
    try:
        return os.stat(objects).st_mtime_ns < os.stat(_index_path(manifests)).st_mtime_ns
    except FileNotFoundError:
        return False


def read_index(manifests: Any, fresh: bool = False) -> dict[str, dict]:
    """Every practice's row (JSON fields still encoded; see ``decode``), from the index plus the per-practice
    objects written since (``fresh``: list them now, also on S3; for one-shot commands and alerts)."""
    table = _read_index_table(manifests)
    rows = {r["practice"]: r for r in table.to_pylist()} if table is not None else {}
    objects = status_root(manifests) / "practices"
    if table is not None and _unchanged_since_index(manifests, objects):
        return rows
    stamps = _listing(objects, fresh)
    for practice, stamp in stamps.items():
        known = rows.get(practice)
        if known is not None and known["stamp"] >= stamp:
            continue
        doc = _read_practice_object(manifests, practice)
        if doc is not None:
            rows[practice] = _encode(doc["row"], stamp)
    return rows
