"""What the operators' page shows: per practice, per release and per project, from JSON documents only.

Sources, all written by the pipeline as counts (never a record):

- the status index ``store/_status/`` (``gpdata.store.statusindex``): every practice's latest status row and its
  trend, kept in step with the run manifests at commit time, so the page reads one object, not one per practice;
- run manifests ``store/_manifests/<ODS>/latest.json`` (any outcome) and ``committed.json`` (last commit): the
  record of truth the index is derived from (``gpdata status rebuild``), read directly only when the index is
  empty (a store written before it existed);
- the feed folder (names, suppliers, formats, schedules; broken feed files with their cause), surveyed again
  only when a file in it changes;
- quality Data Docs ``store/_docs/quality/<ODS>/`` (only whether they exist, for the rows shown);
- release manifests ``store/_releases/<id>/release.json``;
- project extract manifests ``extracts/<project>/<release>/manifest.json``.

No table is opened here, so no patient row can reach the page. Every function returns plain JSON-able dicts;
a status string the page does not know (a newer pipeline's) is shown as it is, with the ``unknown`` kind.

A practice is **late** when its feed is active, has a schedule (not ``@once``) and its last delivery (last
committed run) is older than the schedule's interval plus a grace period (``GPDATA_LATE_GRACE_MINUTES``,
default 60).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import threading
import time
from pathlib import Path

from gpdata import store
from gpdata.errors import GpdataError
from gpdata.model import TABLES
from gpdata.settings import Settings
from gpdata.store import release, statusindex
from gpdata.store.statusindex import _int, quarantined_by_reason, status_kind  # noqa: F401 - the page's vocabulary

GRACE_ENV = "GPDATA_LATE_GRACE_MINUTES"
DEFAULT_GRACE = dt.timedelta(minutes=60)
PRESET_INTERVALS = {"@hourly": dt.timedelta(hours=1), "@daily": dt.timedelta(days=1),
                    "@weekly": dt.timedelta(days=7), "@monthly": dt.timedelta(days=31)}
STATES = ("failed", "late", "committed", "unchanged", "running", "never run", "other")
SORTS = ("practice", "name", "state", "finished_at", "patients_read", "type1_excluded", "quarantined_total",
         "rows_committed", "duration_seconds", "supplier", "format", "schedule")
PER_PAGE, MAX_PER_PAGE = 50, 500
ATTENTION_SHOWN = 200  # failures and late practices listed at the top (the rest: filter the table by state)


# --- the feed folder, surveyed again only when it changes ---------------------------------------------------

_FEEDS_CACHE: dict[str, tuple] = {}
_FEEDS_LOCK = threading.Lock()
FEEDS_RECHECK_SECONDS = 10.0  # a feed file edited in place is seen within this; one added or removed at once


def _signature(folder: Path) -> tuple:
    with os.scandir(folder) as entries:
        found = []
        for e in entries:
            if e.name.endswith((".yaml", ".yml")):
                st = e.stat()
                found.append((e.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(found))


def feed_catalogue(settings: Settings) -> tuple[dict, list[dict], str | None]:
    """(feeds by ODS code, broken feed files as ``{"file", "cause"}``, the folder's own error). The survey is
    cached per process: redone when a file of the folder is added, removed or changed (the folder's files are
    stat'ed again when the folder itself changed, or after ``FEEDS_RECHECK_SECONDS``)."""
    from gpdata.ingest.feeds import survey_feeds

    folder = Path(settings.feeds_dir)
    key = str(folder)
    try:
        folder_mtime = os.stat(folder).st_mtime_ns
        with _FEEDS_LOCK:
            cached = _FEEDS_CACHE.get(key)
        if cached and cached[0] == folder_mtime and time.monotonic() - cached[1] < FEEDS_RECHECK_SECONDS:
            return cached[3]
        signature = _signature(folder)
    except FileNotFoundError:
        return {}, [], None
    except OSError as exc:
        return {}, [], f"feed folder {folder}: {type(exc).__name__}"
    if cached and cached[2] == signature:
        result = cached[3]
    else:
        try:
            feeds, problems = survey_feeds(folder)
        except GpdataError as exc:
            return {}, [], str(exc)
        except OSError as exc:
            return {}, [], f"feed folder {folder}: {type(exc).__name__}"
        broken = [{"file": Path(p.file).name if p.file else str(folder), "cause": p.cause} for p in problems]
        result = ({f.ods_code: f for f in feeds}, sorted(broken, key=lambda b: b["file"]), None)
    with _FEEDS_LOCK:
        _FEEDS_CACHE[key] = (folder_mtime, time.monotonic(), signature, result)
    return result


# --- late deliveries -----------------------------------------------------------------------------------------

def grace(env=None) -> dt.timedelta:
    raw = ((os.environ if env is None else env).get(GRACE_ENV) or "").strip()
    if not raw:
        return DEFAULT_GRACE
    try:
        minutes = int(raw)
    except ValueError:
        minutes = -1
    if minutes < 0:
        raise GpdataError(f"{GRACE_ENV} must be a whole number of minutes, not {raw!r}")
    return dt.timedelta(minutes=minutes)


def schedule_interval(schedule: str | None, now: dt.datetime) -> dt.timedelta | None:
    """How often a feed expects a delivery: the preset's period, or a cron expression's last interval before
    ``now``; None for ``@once`` or no schedule."""
    if not schedule or schedule == "@once":
        return None
    if schedule in PRESET_INTERVALS:
        return PRESET_INTERVALS[schedule]
    from croniter import croniter

    it = croniter(schedule, now)
    last = it.get_prev(dt.datetime)
    return last - it.get_prev(dt.datetime)


def _when(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def lateness(row: dict, feed, now: dt.datetime, allowance: dt.timedelta, _cutoffs: dict | None = None) -> dict | None:
    """``{"schedule", "expected_every_hours", "last_delivery", "overdue_hours"}`` when the practice is late."""
    if feed is None or not feed.active:
        return None
    last_text = row.get("last_committed_at")
    if not last_text:
        return None
    cutoffs = {} if _cutoffs is None else _cutoffs
    if feed.schedule not in cutoffs:
        interval = schedule_interval(feed.schedule, now)
        cutoff = None if interval is None else now.astimezone(dt.UTC) - interval - allowance
        cutoffs[feed.schedule] = (interval, cutoff, None if cutoff is None else cutoff.isoformat(timespec="seconds"))
    interval, cutoff, cutoff_text = cutoffs[feed.schedule]
    if interval is None:
        return None
    # gpdata writes UTC times to the second (…+00:00): compared as text, in order; anything else is parsed.
    if len(last_text) == len(cutoff_text) and last_text.endswith("+00:00"):
        if last_text >= cutoff_text:
            return None
    last = _when(last_text)
    if last is None or last >= cutoff:
        return None
    overdue = cutoff - last
    return {"schedule": feed.schedule, "expected_every_hours": round(interval.total_seconds() / 3600, 2),
            "last_delivery": last_text, "overdue_hours": round(overdue.total_seconds() / 3600, 1)}


def _state(row: dict) -> str:
    kind = row.get("kind")
    if kind == "failed":
        return "failed"
    if row.get("late"):
        return "late"
    if kind == "none":
        return "never run"
    if kind == "running":
        return "running"
    if row.get("status") in ("committed", "unchanged"):
        return row["status"]
    return "other"


# --- rows ----------------------------------------------------------------------------------------------------

def _blank(practice: str) -> dict:
    return statusindex.row_from(practice, {}, None, [])


def present(settings: Settings, row: dict, *, data_docs: bool = True) -> dict:
    """An index row as the page shows it: JSON fields decoded, the error and the expectations as objects, and
    whether the practice has Data Docs."""
    out = statusindex.decode(row)
    out["error"] = {"stage": out["error_stage"], "cause": out["error_cause"]} if out.get("error_cause") else None
    evaluated, failed = out.get("expectations_evaluated"), out.get("expectations_failed")
    out["expectations"] = None if evaluated is None and failed is None else {"evaluated": evaluated,
                                                                             "failed": failed}
    if data_docs:
        out["data_docs"] = (settings.data_docs / out["practice"] / "index.html").exists()
    return out


def practice_status(settings: Settings, practice: str, name: str | None = None) -> dict:
    """One practice's row straight from its manifests (the record of truth; the index holds the same)."""
    return {**present(settings, statusindex.folder_row(settings.manifests / practice)), "name": name}


def _index_rows(settings: Settings, fresh: bool = False) -> tuple[dict[str, dict], str | None]:
    """Every practice's row from the index; from the manifests themselves when the index is empty."""
    rows = statusindex.read_index(settings.manifests, fresh)
    if rows:
        return rows, None
    folders = [p.name for p in settings.manifests.iterdir() if p.is_dir() and store.ODS_RE.match(p.name)] \
        if settings.manifests.exists() else []
    if not folders:
        return {}, None
    found = {ods: statusindex.folder_row(settings.manifests / ods) for ods in folders}
    return found, "the status index is empty: shown from the manifests (slow); run `gpdata status rebuild`"


def _all_rows(settings: Settings, now: dt.datetime, fresh: bool = False) \
        -> tuple[list[dict], list[dict], str | None, str | None]:
    """Every practice with a status row or a feed, each with its feed's fields, lateness and state."""
    indexed, notice = _index_rows(settings, fresh)
    feeds, broken, feeds_error = feed_catalogue(settings)
    allowance = grace()
    cutoffs: dict = {}
    rows = []
    for ods in sorted(set(indexed) | {o for o, f in feeds.items() if f.active}):
        row = dict(indexed.get(ods) or _blank(ods))
        feed = feeds.get(ods)
        row["name"] = feed.name if feed else None
        row["supplier"] = feed.supplier if feed else None
        row["format"] = feed.format if feed else None
        row["schedule"] = feed.schedule if feed else None
        row["active"] = feed.active if feed else None
        row["late"] = lateness(row, feed, now, allowance, cutoffs)
        row["state"] = _state(row)
        rows.append(row)
    return rows, broken, feeds_error, notice


def practices(settings: Settings) -> tuple[list[dict], str | None]:
    """Every practice (with a status row or an active feed), sorted by ODS code, as the page shows it; and the
    feed folder's error, if it cannot be read (the page then lists the practices it has rows for)."""
    rows, broken, feeds_error, _ = _all_rows(settings, dt.datetime.now(dt.UTC))
    if broken and feeds_error is None:
        feeds_error = "; ".join(f"{b['file']}: {b['cause']}" for b in broken)
    return [present(settings, r) for r in rows], feeds_error


# --- the page's query ------------------------------------------------------------------------------------------

def query_from(params) -> dict:
    """The page's and the JSON endpoint's filters from query parameters (unknown values are ignored)."""
    def one(name: str) -> str:
        value = params.get(name) if params is not None else None
        return str(value).strip()[:100] if value else ""

    def number(name: str, default: int, top: int) -> int:
        try:
            return min(max(int(one(name) or default), 1), top)
        except ValueError:
            return default

    sort = one("sort")
    return {"q": one("q"), "state": one("state") if one("state") in STATES else "",
            "supplier": one("supplier"), "format": one("format"), "schedule": one("schedule"),
            "sort": sort if sort in SORTS else "practice", "order": "desc" if one("order") == "desc" else "asc",
            "page": number("page", 1, 10**6), "per_page": number("per_page", PER_PAGE, MAX_PER_PAGE)}


def _matches(row: dict, q: dict) -> bool:
    if q["state"] and row["state"] != q["state"]:
        return False
    for name in ("supplier", "format", "schedule"):
        if q[name] and (row.get(name) or "") != q[name]:
            return False
    if q["q"]:
        needle = q["q"].casefold()
        return needle in row["practice"].casefold() or needle in (row.get("name") or "").casefold()
    return True


def _sorted(rows: list[dict], sort: str, order: str) -> list[dict]:
    present_, missing = [r for r in rows if r.get(sort) is not None], [r for r in rows if r.get(sort) is None]
    present_.sort(key=lambda r: (r[sort], r["practice"]), reverse=order == "desc")
    return present_ + sorted(missing, key=lambda r: r["practice"])


def summary(rows: list[dict]) -> dict:
    """Counts by state, and the failures by stage."""
    by_state = {s: 0 for s in STATES}
    by_stage: dict[str, int] = {}
    for r in rows:
        by_state[r["state"]] += 1
        if r["state"] == "failed":
            stage = r.get("error_stage") or "unknown"
            by_stage[stage] = by_stage.get(stage, 0) + 1
    return {"practices": len(rows), "by_state": by_state, "failed_by_stage": dict(sorted(by_stage.items()))}


def overview(settings: Settings, query: dict | None = None, now: dt.datetime | None = None) -> dict:
    """Everything the page shows, as one JSON-able document: the summary, the practices needing attention
    (failed, late) with their causes and trends, one page of the filtered and sorted table, broken feed files,
    releases, projects and notifications."""
    q = query_from(None) if query is None else {**query_from(None), **query}
    now = now or dt.datetime.now(dt.UTC)
    rows, broken, feeds_error, notice = _all_rows(settings, now)
    attention = [r for r in rows if r["state"] in ("failed", "late") or r.get("late")]
    attention.sort(key=lambda r: (r["state"] != "failed", str(r.get("finished_at") or "")), reverse=False)
    matching = _sorted([r for r in rows if _matches(r, q)], q["sort"], q["order"])
    pages = max(1, math.ceil(len(matching) / q["per_page"]))
    q["page"] = min(q["page"], pages)
    start = (q["page"] - 1) * q["per_page"]
    shown = [present(settings, r) for r in matching[start:start + q["per_page"]]]
    for r in shown:
        r.pop("trend", None)  # the trend is drawn for the practices needing attention and on the detail view
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "tables": list(TABLES),
        "summary": summary(rows),
        "attention": [present(settings, r, data_docs=False) for r in attention[:ATTENTION_SHOWN]],
        "attention_total": len(attention),
        "broken_feeds": broken,
        "feeds_error": feeds_error,
        "index_notice": notice,
        "query": q,
        "matching": len(matching),
        "pages": pages,
        "practices": shown,
        "choices": {"state": list(STATES),
                    **{k: sorted({r[k] for r in rows if r.get(k)}) for k in ("supplier", "format", "schedule")}},
        "releases": releases(settings),
        "projects": projects(settings),
        "notifications": notifications(settings),
    }


def practice_detail(settings: Settings, practice: str, now: dt.datetime | None = None) -> dict | None:
    """One practice's row with its trend (the detail view), or None when it has neither a row nor a feed."""
    now = now or dt.datetime.now(dt.UTC)
    rows, _, _, _ = _all_rows(settings, now)
    found = next((r for r in rows if r["practice"] == practice), None)
    if found is None:
        return None
    return {"generated_at": now.isoformat(timespec="seconds"), "tables": list(TABLES),
            "practice": present(settings, found)}


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
    return out[::-1]  # list_releases is oldest first by (date, sequence number): .10 after .9


def projects(settings: Settings) -> list[dict]:
    """Each project's extract of its latest release (by date and sequence number; then creation time), from the
    extract manifests."""
    out = []
    if not settings.extracts.is_dir():
        return out
    for folder in sorted(p for p in settings.extracts.iterdir() if p.is_dir()):
        extracts = [m for m in (statusindex.read_doc(p) for p in folder.glob("*/manifest.json")) if m]
        if not extracts:
            continue
        last = max(extracts, key=lambda m: (release.release_order(str(m.get("release") or "")),
                                            str(m.get("created_at"))))
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


def notifications(settings: Settings) -> list[dict]:
    """Recipients still to be told that an extract they hold was re-issued or withdrawn after an erasure."""
    from gpdata.share.recall import pending_notifications

    return [{k: n.get(k) for k in ("project", "release", "action", "recipients", "at")}
            for n in pending_notifications(settings.extracts)]


def late_practices(settings: Settings, now: dt.datetime | None = None) -> list[dict]:
    """The practices whose delivery is late: ``{"practice", "name", "state", **lateness}``."""
    rows, _, _, _ = _all_rows(settings, now or dt.datetime.now(dt.UTC), fresh=True)
    return [{"practice": r["practice"], "name": r["name"], "state": r["state"], **r["late"]} for r in rows
            if r.get("late")]


def late_line(late: dict) -> str:
    """One line an operator can act on (the alerts' format): no record, only the practice and times."""
    return (f"gpdata late: practice={late['practice']} schedule={late['schedule']} "
            f"last_delivery={late['last_delivery']} overdue_hours={late['overdue_hours']}")


def command(args) -> int:
    """`gpdata status rebuild|late`."""
    from gpdata import settings as settings_module

    cfg = settings_module.load()
    if args.action == "rebuild":
        n = statusindex.rebuild(cfg.manifests)
        print(f"status index rebuilt from the run manifests: {n} practice(s) under {cfg.manifests}")
        return 0
    late = late_practices(cfg)
    for item in late:
        print(late_line(item))
    if not late:
        print("no practice is late")
    return 1 if late else 0
