"""One practice through the pipeline, as three stages that match the Airflow tasks.

``extract``  read the delivery, drop type 1 opt-outs, de-identify; only pseudonymised Parquet is written.
``check``    the quality gate: quarantine failing rows, validate with Great Expectations, pass or fail.
``commit``   replace the practice's partition of every curated table and write the run manifest.

Stages hand over through a staging folder per run and practice; each returns a JSON-able dict of counts
(the XCom value), never a record.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gpdata import codes, deid, erasure, optout, quality, store
from gpdata.errors import GpdataError, QualityGateError
from gpdata.feeds import Feed
from gpdata.keys import load_master_key
from gpdata.model import TABLES
from gpdata.settings import Settings
from gpdata.sources import read_delivery

log = logging.getLogger("gpdata.pipeline")


def staging_dir(settings: Settings, run_id: str, practice: str) -> Path:
    return settings.staging / store.safe_name(run_id) / practice


def _write_tables(folder: Path, tables: dict[str, pa.Table], meta: dict) -> None:
    """Write a set of Parquet files and their metadata by renaming a finished folder into place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, table in tables.items():
        pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
    (tmp / "counts.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _read_tables(folder: Path, names, practice: str, stage: str) -> tuple[dict[str, pa.Table], dict]:
    if not (folder / "counts.json").exists():
        raise GpdataError(f"no output of the previous stage in {folder}: run it first", practice=practice,
                          stage=stage)
    tables = {name: pq.read_table(folder / f"{name}.parquet") for name in names}
    return tables, json.loads((folder / "counts.json").read_text())


def extract(feed: Feed, settings: Settings, run_id: str) -> dict:
    """Read, apply type 1 opt-outs and de-identify one practice. Identifiable data stays in memory."""
    practice = feed.ods_code
    started = time.monotonic()
    key = load_master_key(practice=practice)          # fail closed before touching any source
    lookup = deid.PostcodeLookup.load(settings.postcode_lookup)
    optout_codes = codes.optout_codes()
    restricted = codes.restricted_codes()
    canonical = read_delivery(feed.format, feed.location_path(), practice)
    read_counts = {name: t.num_rows for name, t in canonical.items()}
    log.info("practice %s: read %s", practice, read_counts)
    filtered, type1 = optout.apply_type1(canonical, optout_codes)
    pseudo = deid.Pseudonymiser(key)
    # Pseudonyms of the opted-out patients (never their records): the commit erases any the store holds.
    staged_optouts = optout.optout_pseudonyms(canonical["patients"], filtered["patients"], pseudo)
    del canonical
    staged, deid_counts = deid.deidentify(filtered, practice, pseudo, lookup, restricted)
    staged["optout_pids"] = staged_optouts
    del filtered
    counts = {
        "practice": practice, "run_id": run_id, "key_version": key.version,
        "records_read": read_counts, "patients_read": read_counts["patients"],
        "type1_optout": type1, **deid_counts,
        "staged_rows": {name: staged[name].num_rows for name in TABLES},
        "seconds": {"extract": round(time.monotonic() - started, 3)},
    }
    _write_tables(staging_dir(settings, run_id, practice) / "extracted", staged, counts)
    log.info("practice %s: %d patients excluded by type 1 opt-out; staged %s", practice,
             type1["patients_excluded"], counts["staged_rows"])
    return counts


def check(feed: Feed, settings: Settings, run_id: str, today: dt.date | None = None) -> dict:
    """The quality gate. Raises QualityGateError (after recording why) if the batch must not commit."""
    practice = feed.ods_code
    started = time.monotonic()
    base = staging_dir(settings, run_id, practice)
    staged, counts = _read_tables(base / "extracted", [*TABLES, "optout_pids"], practice, "quality")
    optout_pids = staged.pop("optout_pids")
    result = quality.gate(staged, practice, run_id, today=today or dt.date.today(),
                          max_quarantine_fraction=feed.max_quarantine_fraction,
                          quarantine_allowance=feed.quarantine_allowance,
                          gx_root=settings.quality / practice / "gx", docs_dir=settings.data_docs / practice)
    previous = store.last_committed(settings.manifests, practice)
    if feed.volume_tolerance is not None and previous:
        result.failures += quality.volume_failures(counts["records_read"], previous.get("records_read"),
                                                   feed.volume_tolerance)
    counts["quality"] = {**result.counts, "passed": result.ok, "failures": result.failures,
                         "data_docs": str(settings.data_docs / practice / "index.html")}
    counts["seconds"]["quality"] = round(time.monotonic() - started, 3)
    store.write_json_atomic(settings.quality / practice / f"{store.safe_name(run_id)}.json",
                            {"practice": practice, "run_id": run_id, "passed": result.ok,
                             "failures": result.failures, "expectations": result.expectations,
                             "quarantined": result.counts["quarantined"]})
    for failure in result.failures:
        log.warning("practice %s: quality: %s", practice, failure)
    if not result.ok:
        write_run_manifest(settings, practice, run_id, counts, status="failed_quality")
        raise QualityGateError("quality gate failed, nothing committed: " + "; ".join(result.failures),
                               practice=practice, stage="quality")
    _write_tables(base / "validated", {**result.passed, "quarantine": result.quarantine,
                                       "optout_pids": optout_pids}, counts)
    log.info("practice %s: quality gate passed; quarantined %s", practice,
             {t: sum(r.values()) for t, r in result.counts["quarantined"].items() if r})
    return counts


def commit(feed: Feed, settings: Settings, run_id: str) -> dict:
    """Replace the practice's partition of every curated table; write the run manifest."""
    practice = feed.ods_code
    started = time.monotonic()
    base = staging_dir(settings, run_id, practice)
    tables, counts = _read_tables(base / "validated", [*TABLES, "quarantine", "optout_pids"], practice, "commit")
    quarantine = tables.pop("quarantine")
    optout_pids = tables.pop("optout_pids")["patient_pid"].combine_chunks()
    current = load_master_key(practice=practice).version
    store.ensure_tables(settings.store)
    to_erase = erasure.present(settings.store, optout_pids)  # a late opt-out: the store still holds them
    counts["erasure"] = erasure.erase(settings.store, to_erase) if len(to_erase) \
        or len(erasure.pending(settings.store)) else {}
    versions = store.commit_practice(settings.store, practice, tables, quarantine, key_version=current)
    counts["committed_rows"] = {name: t.num_rows for name, t in tables.items()}
    counts["table_versions"] = versions
    counts["seconds"]["commit"] = round(time.monotonic() - started, 3)
    write_run_manifest(settings, practice, run_id, counts, status="committed")
    shutil.rmtree(base, ignore_errors=True)
    return counts


def write_run_manifest(settings: Settings, practice: str, run_id: str, counts: dict, status: str) -> Path:
    doc = {**counts, "status": status, "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return store.write_manifest(settings.manifests, practice, run_id, doc)


def run_practice(feed: Feed, settings: Settings, run_id: str, today: dt.date | None = None) -> dict:
    """All three stages in one call (tests, benchmarks and the command line)."""
    extract(feed, settings, run_id)
    check(feed, settings, run_id, today=today)
    return commit(feed, settings, run_id)
