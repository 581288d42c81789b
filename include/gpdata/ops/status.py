"""What the operators' page shows: per practice, per release and per project, from JSON documents only.

Sources, all written by the pipeline as counts (never a record):

- run manifests ``store/_manifests/<ODS>/latest.json`` (any outcome) and ``committed.json`` (last commit);
- quality results ``store/_quality/<ODS>/<run>.json`` and the Data Docs site ``store/_docs/quality/<ODS>/``;
- release manifests ``store/_releases/<id>/release.json``;
- project extract manifests ``extracts/<project>/<release>/manifest.json``.

No table is opened here, so no patient row can reach the page. Every function returns plain JSON-able dicts;
a status string the page does not know (a newer pipeline's) is shown as it is, with the ``unknown`` kind.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gpdata import store
from gpdata.errors import GpdataError
from gpdata.model import TABLES
from gpdata.settings import Settings
from gpdata.store import release

# How a manifest status reads at a glance. Anything else is "unknown" and shown verbatim.
STATUS_KINDS = {
    "committed": "ok",
    "unchanged": "ok",       # the delivery was already processed; the practice was skipped
    "failed": "failed",
    "failed_quality": "failed",
    "running": "running",
}


def status_kind(status: str | None) -> str:
    if status is None:
        return "none"
    if status in STATUS_KINDS:
        return STATUS_KINDS[status]
    return "failed" if str(status).startswith("failed") else "unknown"


def _read(path: Path) -> dict | None:
    """A JSON document, or None if it is missing or unreadable (the page must still render)."""
    try:
        doc = store.read_json(path)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _unmapped(counts: dict) -> dict[str, int]:
    """FHIR resources no table maps, counted by type (the run manifest's source.unmapped_resources)."""
    found = (counts.get("source") or {}).get("unmapped_resources")
    if not isinstance(found, dict):
        return {}
    return {str(t): n for t, n in sorted(found.items()) if _int(n)}


def quarantined_by_reason(quality: dict) -> dict[str, int]:
    """Quarantined rows summed over tables, by reason code."""
    out: dict[str, int] = {}
    for by_reason in (quality.get("quarantined") or {}).values():
        for reason, n in (by_reason or {}).items():
            if _int(n) is not None:
                out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def _expectations(settings: Settings, practice: str, doc: dict) -> dict | None:
    """Expectations evaluated and failed for the run of ``doc``: from its persisted quality result, else
    from the manifest's counts."""
    run_id = doc.get("run_id")
    if run_id:
        result = _read(settings.quality / practice / f"{store.safe_name(str(run_id))}.json")
        if result and isinstance(result.get("expectations"), list):
            outcomes = [e for e in result["expectations"] if isinstance(e, dict)]
            return {"evaluated": len(outcomes), "failed": sum(1 for e in outcomes if not e.get("success"))}
    counts = (doc.get("quality") or {}).get("expectations")
    if isinstance(counts, dict):
        return {"evaluated": _int(counts.get("evaluated")), "failed": _int(counts.get("failed"))}
    return None


def _error(latest: dict) -> dict | None:
    """Why the last run failed: the recorded error (failure callback), else the quality gate's failures."""
    error = latest.get("error")
    if isinstance(error, dict) and error.get("cause"):
        return {"stage": str(error.get("stage") or "unknown"), "cause": str(error["cause"])}
    failures = (latest.get("quality") or {}).get("failures") or []
    if status_kind(latest.get("status")) == "failed" and failures:
        return {"stage": "quality", "cause": "; ".join(str(f) for f in failures)}
    return None


def practice_status(settings: Settings, practice: str, name: str | None = None) -> dict:
    """One practice's row: its last run, and the counts of the last run that has them."""
    folder = settings.manifests / practice
    latest = _read(folder / "latest.json") or {}
    committed = _read(folder / "committed.json")
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
    docs = settings.data_docs / practice / "index.html"
    return {
        "practice": practice,
        "name": name,
        "status": status,
        "kind": status_kind(status),
        "run_id": latest.get("run_id"),
        "finished_at": latest.get("finished_at"),
        "error": _error(latest) if latest else None,
        "counts_run_id": counts.get("run_id"),
        "counts_from_last_run": bool(counts) and counts is latest,
        "patients_read": _int(counts.get("patients_read")),
        "type1_excluded": _int((counts.get("type1_optout") or {}).get("patients_excluded")),
        "rows": {t: _int(rows.get(t)) for t in TABLES} if rows is not None else None,
        "rows_state": rows_state,
        "quarantined": reasons,
        "quarantined_total": sum(reasons.values()) if quality else None,
        "unmapped_resources": _unmapped(counts),
        "quality": None if passed is None else ("passed" if passed else "failed"),
        "expectations": _expectations(settings, practice, counts) if counts else None,
        "data_docs": docs.exists(),
        "last_committed_run_id": (committed or {}).get("run_id"),
        "last_committed_at": (committed or {}).get("finished_at"),
    }


def practices(settings: Settings) -> tuple[list[dict], str | None]:
    """Every practice with a manifest or an active feed, sorted by ODS code; and the feed folder's error,
    if it cannot be read (the page then lists the practices it has manifests for)."""
    from gpdata.ingest.feeds import load_feeds

    names: dict[str, str | None] = {}
    feeds_error = None
    try:
        names = {f.ods_code: f.name for f in load_feeds(settings.feeds_dir, active_only=True)}
    except GpdataError as exc:
        feeds_error = str(exc)
    except OSError as exc:
        feeds_error = f"feed folder {settings.feeds_dir}: {type(exc).__name__}"
    if settings.manifests.is_dir():
        for folder in settings.manifests.iterdir():
            if folder.is_dir() and store.ODS_RE.match(folder.name):
                names.setdefault(folder.name, None)
    return [practice_status(settings, ods, names[ods]) for ods in sorted(names)], feeds_error


def releases(settings: Settings) -> list[dict]:
    """Releases, newest first, with each table's pinned version and row count."""
    out = []
    for doc in release.list_releases(settings.store):
        tables = doc.get("tables") or {}
        out.append({
            "release_id": doc.get("release_id"),
            "created_at": doc.get("created_at"),
            "status": doc.get("status"),
            "note": doc.get("note"),
            "tables": {t: {"version": _int((tables.get(t) or {}).get("version")),
                           "rows": _int((tables.get(t) or {}).get("rows"))} for t in TABLES},
        })
    return sorted(out, key=lambda r: (str(r["created_at"]), str(r["release_id"])), reverse=True)


def projects(settings: Settings) -> list[dict]:
    """Each project's last extract (by creation time), from the extract manifests."""
    out = []
    if not settings.extracts.is_dir():
        return out
    for folder in sorted(p for p in settings.extracts.iterdir() if p.is_dir()):
        extracts = [m for m in (_read(p) for p in folder.glob("*/manifest.json")) if m]
        if not extracts:
            continue
        last = max(extracts, key=lambda m: str(m.get("created_at")))
        tables = last.get("tables") or {}
        out.append({
            "project": last.get("project") or folder.name,
            "organisation": last.get("organisation"),
            "release": last.get("release"),
            "created_at": last.get("created_at"),
            "national_data_optout": last.get("national_data_optout"),
            "rows": {t: _int((e or {}).get("rows")) for t, e in tables.items()},
            "extracts": len(extracts),
        })
    return out


def overview(settings: Settings) -> dict:
    """Everything the page shows, as one JSON-able document."""
    rows, feeds_error = practices(settings)
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tables": list(TABLES),
        "practices": rows,
        "feeds_error": feeds_error,
        "releases": releases(settings),
        "projects": projects(settings),
        "notifications": notifications(settings),
    }


def notifications(settings: Settings) -> list[dict]:
    """Recipients still to be told that an extract they hold was re-issued or withdrawn after an erasure."""
    from gpdata.share.recall import pending_notifications

    return [{k: n.get(k) for k in ("project", "release", "action", "recipients", "at")}
            for n in pending_notifications(settings.extracts)]
