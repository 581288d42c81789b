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
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata import arrowutil, codes, quality, storage, store
from gpdata.arrowutil import isin
from gpdata.errors import GpdataError, QualityGateError
from gpdata.ingest import ledger, limits, sources
from gpdata.ingest.feeds import Feed, check_location
from gpdata.ingest.sources.convert import split_deleted
from gpdata.model import CANONICAL, EVENT_TABLES, TABLES, staged_schema
from gpdata.privacy import deid, keys, nhsnumber, type1
from gpdata.privacy.keys import load_master_key
from gpdata.settings import Settings
from gpdata.share import recall
from gpdata.store import erasure, statusindex

log = logging.getLogger("gpdata.pipeline")
DELETIONS = pa.schema([("table", pa.string()), ("key", pa.string())])
_CARRIED = ("optout_pids", "type1_events", "patient_map", "practitioner_map", "dissenter_map",
            "deletions")  # staged beside the tables


def staging_dir(settings: Settings, run_id: str, practice: str) -> Path:
    return settings.staging / store.safe_name(run_id) / practice


def _fresh_tmp(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish_tables(folder: Path, tmp: Path, tables: dict[str, pa.Table], meta: dict) -> None:
    """Complete ``tmp`` (which may hold tables written as they streamed) with these tables and the metadata, and
    rename it into place as ``folder``."""
    for name, table in tables.items():
        pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
    (tmp / "counts.json").write_bytes(storage.json_bytes(meta))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _write_tables(folder: Path, tables: dict[str, pa.Table], meta: dict) -> None:
    """Write a set of Parquet files and their metadata by renaming a finished folder into place."""
    _finish_tables(folder, _fresh_tmp(folder), tables, meta)


def _read_tables(folder: Path, names, practice: str, stage: str) -> tuple[dict[str, pa.Table], dict]:
    if not (folder / "counts.json").exists():
        raise GpdataError(f"no output of the previous stage in {folder}: run it first", practice=practice,
                          stage=stage)
    tables = {name: pq.read_table(folder / f"{name}.parquet") for name in names}
    return tables, json.loads((folder / "counts.json").read_text())


def _nhs_pids(patients: pa.Table, pseudo: deid.Pseudonymiser) -> tuple[pa.Array, pa.Array]:
    """(source ids, patient pseudonyms) of a canonical patients table; null pseudonym for an invalid number."""
    nhs = nhsnumber.normalise(patients["nhs_number"].combine_chunks())
    valid = nhsnumber.is_valid(nhs)
    pids = pseudo(pc.if_else(valid, nhs, pa.nulls(len(nhs), pa.string())), "nhs_number")
    return patients["source_id"].combine_chunks(), pids


def _refs_to_pids(refs: list[str], ids: pa.Array, pids: pa.Array, pseudo: deid.Pseudonymiser,
                  known: pa.Table) -> pa.Array:
    """Patient pseudonyms of source patient refs: from this batch's patients (``_nhs_pids``), else from the
    patient map."""
    arr = pa.array(refs, pa.string())
    found = pc.take(pids, pc.index_in(arr, value_set=ids))
    if known.num_rows:
        earlier = pc.take(known["patient_pid"].combine_chunks(),
                          pc.index_in(pseudo(arr, "record_id"), value_set=known["ref_pid"].combine_chunks()))
        found = pc.coalesce(found, earlier)
    return pc.unique(found.drop_null()).cast(pa.string())


def _evidence_pids(found: pa.Table, ids: pa.Array, pids: pa.Array, pseudo: deid.Pseudonymiser,
                   known: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Per type 1 code: the patient's pseudonym (from an NHS number given as the subject, this batch's patient,
    or the patient map of earlier deliveries), and whether it names a known patient at all (one whose NHS
    number is invalid has no pseudonym but is still excluded by its ref)."""
    refs = found["patient_ref"].combine_chunks()
    nhs = nhsnumber.normalise(found["nhs_number"].combine_chunks())
    by_nhs = pseudo(pc.if_else(nhsnumber.is_valid(nhs), nhs, pa.nulls(len(nhs), pa.string())), "nhs_number")
    index = pc.index_in(refs, value_set=ids)
    out = pc.coalesce(by_nhs, pc.take(pids, index))
    tied = pc.is_valid(index)
    if known.num_rows and len(refs):
        at = pc.index_in(pseudo(refs, "record_id"), value_set=known["ref_pid"].combine_chunks())
        out = pc.coalesce(out, pc.take(known["patient_pid"].combine_chunks(), at))
        tied = pc.or_(tied, pc.is_valid(at))
    return out.cast(pa.string()), tied


def _type1(patients: pa.Table, found: pa.Table, register: pa.Table, pseudo: deid.Pseudonymiser, known: pa.Table,
           practice: str) -> tuple[pa.Array, dict, pa.Table, pa.Array, pa.Array, pa.Table]:
    """Type 1 status of a delivery's patients against the store-wide register (``register``: its status, the
    latest event per patient, ``type1.register_status``), from every type 1 code of the
    delivery (``found``), before any of its rows is staged. Returns the source refs of the patients to exclude,
    counts, this delivery's latest events per patient (for the register), the pseudonyms to erase if the store
    holds them, every active dissenter (to drop any staged row of theirs), and the map of this delivery's
    excluded patients (ref pseudonym -> patient pseudonym, for the ledger)."""
    type1.require_dates(found, practice)
    ids, pids = _nhs_pids(patients, pseudo)
    ev_pids, tied = _evidence_pids(found, ids, pids, pseudo, known)
    type1.require_patients(found, ev_pids, tied, practice)
    events = type1.latest(ev_pids, found["event_date"], found["dissent"])
    combined = type1.with_events(register, events)
    active = combined.filter(combined["dissent"])["patient_pid"].combine_chunks()
    # Patients of this delivery whose status across practices is dissent; and, by this delivery's own codes,
    # those with no pseudonym (an invalid NHS number) that the register cannot speak for.
    dissented = isin(pids, active)
    excluded = ids.filter(dissented).cast(pa.string())
    dissenter_map = pa.table({"ref_pid": pseudo(excluded, "record_id"), "patient_pid": pids.filter(dissented)},
                             schema=ledger.DISSENTER_MAP)
    by_ref = type1.latest(found["patient_ref"], found["event_date"], found["dissent"])
    local = by_ref.filter(by_ref["dissent"])["patient_pid"].combine_chunks()
    unpseudonymised = ids.filter(pc.is_null(pids)).cast(pa.string())
    local = local.filter(pc.is_in(local, value_set=unpseudonymised))
    counts = {}
    withdrawn = events.filter(pc.invert(events["dissent"]))["patient_pid"]
    counts["patients_readmitted"] = pc.sum(pc.invert(pc.is_in(withdrawn, value_set=active))).as_py() or 0
    mine = events.filter(events["dissent"])["patient_pid"]  # excluded by a dissent another practice recorded:
    counts["excluded_by_register"] = pc.sum(pc.invert(pc.is_in(pids.filter(pc.is_in(pids, value_set=active)),
                                                               value_set=mine))).as_py() or 0
    mine = pc.unique(pa.concat_arrays([events["patient_pid"].combine_chunks(), pids.drop_null()]))
    erase = mine.filter(pc.is_in(mine, value_set=active))
    return pc.unique(pa.concat_arrays([excluded, local])), counts, events, erase, active, dissenter_map


def _evidence(batch: sources.Batch, optout: codes.OptOutCodes) -> pa.Table:
    """Every type 1 code of a delivery (``type1.evidence``), known before any of its event rows is staged: the
    event files of a streamed flat-file delivery are read once for it, only their code, patient and date columns;
    a FHIR delivery's first pass kept every event row that may hold one."""
    found = type1.evidence(batch.tables, optout)
    if batch.events is None:
        return found
    parts = [type1.evidence({name: split_deleted(table)[0]}, optout)
             for name, table in batch.events.read(type1.EVIDENCE_FIELDS)]
    return pa.concat_tables([found, *parts], promote_options="permissive")


def _event_batches(batch: sources.Batch, practice: str) -> Iterator[tuple[str, pa.Table, pa.Table]]:
    """(table, current rows, rows the source marks deleted) of every event table: whole as collected (and
    handed over, so each is freed once staged), or batch by batch from a streamed delivery's files."""
    for name in EVENT_TABLES:
        if name in batch.tables:
            yield name, batch.tables.pop(name), batch.deleted.pop(name, CANONICAL[name].empty_table())
    if batch.events is not None:
        for name, table in batch.events.read():
            current, deleted = split_deleted(table)
            del table
            try:
                limits.check_fields({name: current, f"{name} (deleted)": deleted}, practice)
            except GpdataError as exc:
                raise _in_extract(exc) from None
            yield name, current, deleted
            del current, deleted  # not held while the next batch is read


def _drop_active(staged: dict[str, pa.Table], active: pa.Array, type1_counts: dict) -> None:
    """Records of a patient delivered earlier (an incremental delivery's events) or under another reference
    whose register status is dissent: dropped by pseudonym, whichever practice recorded the dissent."""
    for name, dropped in _drop_pids(staged, active).items():
        if name != "patients":
            type1_counts["records_excluded"][name] = type1_counts["records_excluded"].get(name, 0) + dropped


def _add(counts: dict, name: str, n: int) -> None:
    counts[name] = counts.get(name, 0) + n


@dataclass
class _Extracting:
    """A delivery's event rows on their way to the staging folder, batch by batch (``extract``), and the counts
    they add up to."""

    practice: str
    pseudo: deid.Pseudonymiser
    restricted: object
    people: deid.People
    excluded: pa.Array   # source refs of the patients type 1 excludes
    active: pa.Array     # pseudonyms of every active dissenter
    known: pa.Table      # the practice's patient map (for deletion keys)
    type1_counts: dict
    deid_counts: dict = field(default_factory=deid.new_counts)
    read: dict = field(default_factory=dict)
    deleted: dict = field(default_factory=dict)
    staged: dict = field(default_factory=dict)
    deletions: list = field(default_factory=list)

    def stage(self, name: str, table: pa.Table, deleted: pa.Table) -> pa.Table:
        """One batch of an event table (current rows and those deleted at source) to its staged rows: type 1
        exclusion, de-identification, the rows of active dissenters dropped; its counts added."""
        _add(self.read, name, table.num_rows)
        if deleted.num_rows:
            _add(self.deleted, name, deleted.num_rows)
            self.deletions.append(_deletion_keys({name: deleted}, self.pseudo, self.known))
        kept, counts = type1.exclude({name: table}, self.excluded)
        for table_name, n in counts["records_excluded"].items():
            _add(self.type1_counts["records_excluded"], table_name, n)
        staged = {name: deid.deidentify_events(name, kept[name], self.people, self.practice, self.pseudo,
                                               self.restricted, self.deid_counts)}
        _drop_active(staged, self.active, self.type1_counts)
        deid.guard_numeric(staged, self.practice)  # the in-pipeline numeric leak check
        _add(self.staged, name, staged[name].num_rows)
        return staged[name]


class _Staging:
    """A stage's output folder being written: tables appended batch by batch, then the rest whole with the
    counts, and the finished folder renamed into place (``_write_tables``); abandoned on failure."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.tmp, self.writers = folder, _fresh_tmp(folder), {}

    def append(self, name: str, table: pa.Table) -> None:
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(self.tmp / f"{name}.parquet", table.schema, compression="zstd")
        self.writers[name].write_table(table)

    def _close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def finish(self, tables: dict[str, pa.Table], meta: dict) -> None:
        self._close()
        _finish_tables(self.folder, self.tmp, tables, meta)

    def abandon(self) -> None:
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _drop_pids(tables: dict[str, pa.Table], pids: pa.Array) -> dict[str, int]:
    """Drop, in place, every row of these patient pseudonyms; returns rows dropped per table."""
    dropped = {}
    if not len(pids):
        return dropped
    for name, table in tables.items():
        if name in TABLES and "patient_pid" in table.column_names:
            hit = isin(table["patient_pid"], pids)
            n = pc.sum(hit).as_py() or 0
            if n:
                tables[name] = table.filter(pc.invert(hit))
                dropped[name] = n
    return dropped


def _deletion_keys(deleted: dict[str, pa.Table], pseudo: deid.Pseudonymiser, known: pa.Table) -> pa.Table:
    """(table, key) of every record the source marks deleted, keyed as in the store (gpdata.store.tables.KEYS)."""
    parts = []
    none = pa.array([], pa.string())  # deleted patients are not in the batch's patients: the map alone
    for name, table in deleted.items():
        if not table.num_rows:
            continue
        if name == "patients":
            keys = pc.unique(pa.concat_arrays([
                _nhs_pids(table, pseudo)[1].drop_null(),
                _refs_to_pids(table["source_id"].to_pylist(), none, none, pseudo, known)]))
        elif name == "practitioners":
            keys = pseudo(pc.coalesce(table["sds_user_id"].combine_chunks(), table["source_id"].combine_chunks()),
                          "practitioner")
        else:
            keys = pseudo(table["source_id"], "record_id")
        keys = pc.unique(pa.array(keys, pa.string()).drop_null())
        parts.append(pa.table({"table": pa.array([name] * len(keys), pa.string()), "key": keys}))
    return pa.concat_tables(parts) if parts else DELETIONS.empty_table()


def _unchanged(feed: Feed, settings: Settings, run_id: str, batch: sources.Batch | None) -> dict:
    previous = store.last_committed(settings.manifests, feed.ods_code) or {}
    counts = {"practice": feed.ods_code, "run_id": run_id, "status": "unchanged",
              "last_committed_run": previous.get("run_id"),
              "duplicates_skipped": batch.skipped if batch else []}
    write_run_manifest(settings, feed.ods_code, run_id, counts, status="unchanged")
    shutil.rmtree(staging_dir(settings, run_id, feed.ods_code), ignore_errors=True)
    log.info("practice %s: no new delivery since run %s; nothing to do%s", feed.ods_code,
             previous.get("run_id"), f" ({len(batch.skipped)} duplicate file(s) skipped)" if batch else "")
    return counts


def _in_extract(exc: GpdataError) -> GpdataError:
    """The error naming the extract stage in its one-line cause."""
    if exc.stage is None:
        exc.stage = "extract"
        exc.args = (exc._message(),)
    return exc


def _unique_deletions(parts: list[pa.Table]) -> pa.Table:
    """The (table, key) pairs of every batch, each once."""
    return pa.concat_tables(parts).group_by(["table", "key"], use_threads=False).aggregate([]) \
        .select(DELETIONS.names).cast(DELETIONS)


def extract(feed: Feed, settings: Settings, run_id: str, *, force: bool = False,
            connection_uri: str | None = None, register: pa.Table | None = None) -> dict:
    """Read what is new for one practice, apply type 1 opt-outs and de-identify. Identifiable data stays in
    memory: a flat-file snapshot's event rows one batch at a time (``arrowutil.batch_rows``), after the type 1
    codes of all its event files were gathered. Returns counts with ``status`` "unchanged" (and stages nothing)
    when nothing new was delivered.

    ``register``: the type 1 register's status as ``run_chunk`` read it once for its practices (else it is read
    here). A dissent another practice records after it was read is caught at the commit, exactly as one recorded
    while this extraction runs is."""
    practice = feed.ods_code
    started = time.monotonic()
    storage.restrict_umask()                            # nothing written by the pipeline is world-readable
    check_location(feed, settings.inbox, settings.working_folders)  # deliveries only from under the inbox root
    key = load_master_key(practice=practice)          # fail closed before touching any source
    keys.verify_store(settings.store, key, practice)  # the key the store was made with, no rotation under way
    lookup = deid.PostcodeLookup.load(settings.postcode_lookup)
    optout_codes = codes.optout_codes()
    restricted = codes.restricted_codes()
    state = ledger.PracticeState.load(settings.state, practice)
    key.verify(state.key_checks, f"the ledger of practice {practice}", practice)
    if register is None:
        register, _ = type1.register_status(settings.store, key.version)
    if state.key_version and state.key_version != key.version:
        log.info("practice %s: key rotated (%s -> %s) since the last commit: full re-extraction", practice,
                 state.key_version, key.version)
        force = True  # the ledger's maps are pseudonyms of the old key; a baseline replaces them
    try:
        batch = sources.collect(feed, state, settings.quarantined_deliveries, force=force,
                                connection_uri=connection_uri, token=partial(deid.file_token, key))
        read_at = time.monotonic()
        if batch is not None and batch.tables:
            limits.check_fields({**batch.tables, **{f"{n} (deleted)": t for n, t in batch.deleted.items()}},
                                practice)
    except GpdataError as exc:
        raise _in_extract(exc) from None
    if batch is None or not batch.tables:
        return _unchanged(feed, settings, run_id, batch)
    found = _evidence(batch, optout_codes)
    pseudo = deid.Pseudonymiser(key)
    known = ledger.PATIENT_MAP.empty_table() if batch.full else state.patient_map()
    known_prac = ledger.PRACTITIONER_MAP.empty_table() if batch.full else state.practitioner_map()
    # Type 1 codes may name a patient excluded earlier (not in the patient map): the dissenter map names them too.
    known_dissenters = ledger.DISSENTER_MAP.empty_table() if batch.full else state.dissenter_map()
    people = {name: batch.tables.pop(name) for name in ("patients", "practitioners")}
    excluded, t1_counts, events, optout_pids, active, dissenter_map = _type1(
        people["patients"], found, register, pseudo, pa.concat_tables([known.select(ledger.DISSENTER_MAP.names),
                                                                       known_dissenters]), practice)
    read = {name: t.num_rows for name, t in people.items()}
    people, type1_counts = type1.exclude(people, excluded)
    type1_counts["records_excluded"] = dict.fromkeys(EVENT_TABLES, 0) if len(excluded) else {}
    type1_counts.update(t1_counts)
    type1_at = time.monotonic()
    ids, pids = _nhs_pids(people["patients"], pseudo)
    patient_map = pa.table({"ref_pid": pseudo(ids, "record_id"), "patient_pid": pids}).filter(pc.is_valid(pids))
    prac = people["practitioners"]
    practitioner_map = pa.table({
        "ref_pid": pseudo(prac["source_id"], "record_id"),
        "practitioner_pid": pseudo(pc.coalesce(prac["sds_user_id"].combine_chunks(),
                                               prac["source_id"].combine_chunks()), "practitioner"),
        "role_code": prac["role_code"]}).filter(pc.is_valid(prac["source_id"]))
    deid_counts = deid.new_counts()
    staged, linked = deid.deidentify_people(people, practice, pseudo, lookup, deid_counts, known=known,
                                            known_practitioners=known_prac)
    del people, prac
    _drop_active(staged, active, type1_counts)
    deid.guard_numeric(staged, practice)  # the in-pipeline numeric leak check (event batches: each in turn)
    gone = {name: batch.deleted.pop(name) for name in ("patients", "practitioners")}
    work = _Extracting(practice, pseudo, restricted, linked, excluded, active, known, type1_counts, deid_counts,
                       read=read, deleted={n: t.num_rows for n, t in gone.items() if t.num_rows},
                       staged={n: t.num_rows for n, t in staged.items()},
                       deletions=[_deletion_keys(gone, pseudo, known)])
    staging = _Staging(staging_dir(settings, run_id, practice) / "extracted")
    try:
        for name, table, deleted in _event_batches(batch, practice):
            staging.append(name, work.stage(name, table, deleted))
            del table, deleted  # not held while the next batch is read
        for name in EVENT_TABLES:  # a table with no rows at all still has its (empty) staged file
            if name not in staging.writers:
                staging.append(name, staged_schema(name).empty_table())
    except BaseException:
        staging.abandon()
        raise
    staged["optout_pids"] = pa.table({"patient_pid": optout_pids})
    staged["type1_events"] = events
    staged["patient_map"] = patient_map
    staged["practitioner_map"] = practitioner_map
    staged["dissenter_map"] = dissenter_map
    staged["deletions"] = _unique_deletions(work.deletions)
    deid_at = time.monotonic()
    read_counts = {name: work.read.get(name, 0) for name in TABLES}
    log.info("practice %s: read %s (%s)", practice, read_counts, "baseline" if batch.full else "incremental")
    counts = {
        "practice": practice, "run_id": run_id, "key_version": key.version,
        "source": {"format": feed.format, **batch.summary()},
        "records_read": read_counts, "patients_read": read_counts["patients"],
        "deleted_by_source": {n: work.deleted[n] for n in TABLES if work.deleted.get(n)},
        "type1_optout": type1_counts, **deid_counts,
        "staged_rows": {name: work.staged.get(name, 0) for name in TABLES},
        "seconds": {"extract_read": round(read_at - started, 3), "extract_type1": round(type1_at - read_at, 3),
                    "extract_deidentify": round(deid_at - type1_at, 3),
                    "extract": round(time.monotonic() - started, 3)},
        "_ledger": {"files": batch.files, "watermark": batch.watermark, "snapshot": batch.snapshot,
                    "full": batch.full},
    }
    staging.finish(staged, counts)
    counts["seconds"]["extract_write"] = round(time.monotonic() - deid_at, 3)  # after the manifest's copy
    log.info("practice %s: %d patients excluded by type 1 opt-out; staged %s", practice,
             type1_counts["patients_excluded"], counts["staged_rows"])
    return counts


@dataclass
class _Checking:
    """A practice's quality gate between its row rules and its expectations (``check`` and ``run_chunk``)."""

    result: quality.GateResult
    counts: dict
    carried: dict[str, pa.Table]
    started: float
    read_seconds: float


def _check_rows(feed: Feed, settings: Settings, run_id: str, today: dt.date) -> _Checking:
    """The row rules on the staged tables: held whole when each fits in one record batch (``batch_rows``), else
    streamed batch by batch into the folder ``validating`` (gpdata.quality.stream)."""
    storage.restrict_umask()
    practice = feed.ods_code
    started = time.monotonic()
    base = staging_dir(settings, run_id, practice)
    carried, counts = _read_tables(base / "extracted", _CARRIED, practice, "quality")
    known = None
    if not counts["_ledger"]["full"]:
        pmap = ledger.PracticeState.load(settings.state, practice).patient_map()
        known = (pmap["patient_pid"].combine_chunks(), pmap["birth_month"].combine_chunks())
    limits = {"today": today, "max_quarantine_fraction": feed.max_quarantine_fraction,
              "quarantine_allowance": feed.quarantine_allowance, "known_patients": known}
    if quality.fits_one_batch(base / "extracted", TABLES):
        staged, _ = _read_tables(base / "extracted", TABLES, practice, "quality")
        read_seconds = time.monotonic() - started
        result = quality.gate_rows(staged, practice, run_id, **limits)
    else:
        read_seconds = time.monotonic() - started
        shutil.rmtree(base / "validating", ignore_errors=True)  # a crashed attempt's
        result = quality.gate_rows_streamed(base / "extracted", base / "validating", practice, run_id, **limits)
    return _Checking(result, counts, carried, started, read_seconds)


def _check_finish(feed: Feed, settings: Settings, run_id: str, checking: _Checking) -> dict:
    """Record the gate's verdict; raise QualityGateError (after recording why) if the batch must not commit."""
    practice, result, counts = feed.ods_code, checking.result, checking.counts
    previous = store.last_committed(settings.manifests, practice)
    if feed.volume_tolerance is not None and previous and counts["_ledger"]["full"]:
        result.failures += quality.volume_failures(counts["records_read"], previous.get("records_read"),
                                                   feed.volume_tolerance)
    counts["quality"] = {**result.counts, "passed": result.ok, "failures": result.failures,
                         "data_docs": str(settings.data_docs / practice / "index.html")}
    counts["seconds"].update(quality_read=round(checking.read_seconds, 3), **result.seconds)
    counts["seconds"]["quality"] = round(time.monotonic() - checking.started, 3)
    store.write_json_atomic(settings.quality / practice / f"{store.safe_name(run_id)}.json",
                            {"practice": practice, "run_id": run_id, "passed": result.ok,
                             "failures": result.failures, "expectations": result.expectations,
                             "quarantined": result.counts["quarantined"]})
    for failure in result.failures:
        log.warning("practice %s: quality: %s", practice, failure)
    if not result.ok:
        if result.folder is not None:
            shutil.rmtree(result.folder, ignore_errors=True)
        write_run_manifest(settings, practice, run_id, counts, status="failed_quality")
        raise QualityGateError("quality gate failed, nothing committed: " + "; ".join(result.failures),
                               practice=practice, stage="quality")
    written_at = time.monotonic()
    validated = staging_dir(settings, run_id, practice) / "validated"
    if result.folder is None:
        _write_tables(validated, {**result.passed, "quarantine": result.quarantine, **checking.carried}, counts)
    else:  # the passed and quarantined rows are written already
        _finish_tables(validated, result.folder, checking.carried, counts)
    counts["seconds"]["quality_write"] = round(time.monotonic() - written_at, 3)
    log.info("practice %s: quality gate passed; quarantined %s", practice,
             {t: sum(r.values()) for t, r in result.counts["quarantined"].items() if r})
    return counts


def _expect(feed: Feed, settings: Settings, checking: _Checking, today: dt.date) -> None:
    """Great Expectations on one practice's rows that passed the row rules, with its own Data Docs."""
    started = time.monotonic()
    result = checking.result
    validate, rows = (quality.run_suites, result.passed) if result.folder is None else \
        (quality.run_suites_streamed, result.folder)
    expectations = validate(rows, feed.ods_code, today, gx_root=settings.quality / feed.ods_code / "gx",
                            docs_dir=settings.data_docs / feed.ods_code)
    quality.add_expectations(result, expectations, time.monotonic() - started)


def check(feed: Feed, settings: Settings, run_id: str, today: dt.date | None = None) -> dict:
    """The quality gate. Raises QualityGateError (after recording why) if the batch must not commit."""
    today = today or dt.date.today()
    checking = _check_rows(feed, settings, run_id, today)
    _expect(feed, settings, checking, today)
    return _check_finish(feed, settings, run_id, checking)


@dataclass
class _Validated:
    """A validated table as the commit streams it into the store: ``batch_rows()`` rows at a time, each batch
    without the rows of the patients in ``drop`` (``_drop_pids``' rule), counting the rows it passes and drops.
    Every ``open()`` reads the file again and counts afresh (a retried write reads it again)."""

    name: str
    path: Path
    drop: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    rows: int = 0
    dropped: int = 0

    def open(self) -> pa.RecordBatchReader:
        self.rows = self.dropped = 0
        file = pq.ParquetFile(self.path)
        return pa.RecordBatchReader.from_batches(file.schema_arrow, self._kept(file))

    def _kept(self, file: pq.ParquetFile):
        for batch in _batches_by_row_group(file):
            part = {self.name: pa.Table.from_batches([batch])}
            self.dropped += _drop_pids(part, self.drop).get(self.name, 0)
            self.rows += part[self.name].num_rows
            yield from part[self.name].to_batches()

    def scan(self, practice: str) -> tuple[frozenset, pa.Array]:
        """One pass over the columns the commit checks, before anything is written: the numeric leak check
        (``deid.guard_numeric``, a batch at a time); returns the key versions the table holds and its distinct
        patient pseudonyms."""
        file = pq.ParquetFile(self.path)
        columns = [f.name for f in file.schema_arrow if f.name in ("key_version", "patient_pid")
                   or pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        found, pids = set(), pa.array([], pa.string())
        for batch in _batches_by_row_group(file, columns):
            deid.guard_numeric({self.name: batch}, practice, "commit")
            found.update(pc.unique(batch["key_version"]).to_pylist())
            if "patient_pid" in batch.schema.names:
                pids = pc.unique(pa.concat_arrays([pids, pc.unique(batch["patient_pid"]).cast(pa.string())]))
        return frozenset(found), pids


def _batches_by_row_group(file: pq.ParquetFile, columns: list[str] | None = None):
    """The file's rows in batches of at most ``batch_rows()`` rows, read by a reader of their own for each row group:
    one ``iter_batches`` over the whole file held more of what it had read the further it went (pyarrow 26:
    Arrow's allocations peaked at 62 MiB over 0.6 M rows of the validated observations and 221 MiB over 4.7 M;
    by row group, 44 MiB at both)."""
    for group in range(file.num_row_groups):
        yield from file.iter_batches(arrowutil.batch_rows(), row_groups=[group], columns=columns)


@dataclass
class Settled:
    """The late opt-out step that several practices' commits share (``settle_optouts``): every pseudonym it looked
    for, and per practice what it found of that practice's patients (the erasure and the extracts recalled)."""

    pids: pa.Array
    read: type1.Snapshot  # the register, read after the practices' dissents were recorded
    recorded: frozenset[str] = frozenset()  # the practices whose dissents it recorded
    counts: dict[str, dict] = field(default_factory=dict)
    # practice -> the patients its commit wrote, not yet checked after the write (``check_commits`` does it)
    unchecked: dict[str, pa.Array] = field(default_factory=dict)


def _erase_held(settings: Settings, key, pids: pa.Array) -> tuple[pa.Array, list[dict], dict]:
    """The late opt-out step for these dissenting patients: those the store or a release still holds (returned
    first), taken out of the extracts handed out first (idempotent; the store erasure re-runs while the store still
    holds them), then erased from the store, with any erasure left unfinished."""
    found = erasure.present(settings.store, pids)
    recalled = recall.recall(settings.extracts, settings.store, key,
                             pa.concat_arrays([found.cast(pa.string()), erasure.pending(settings.store)]))
    erased = erasure.erase(settings.store, found) if len(found) or len(erasure.pending(settings.store)) else {}
    return found, recalled, erased


def settle_optouts(settings: Settings, run_id: str, practices: list[str]) -> Settled:
    """The late type 1 opt-out step of several practices' commits (a chunk), done once for them all: the type 1
    events of each validated batch are recorded in the register, then the store, its releases and the extracts
    handed out are searched once for every patient any of the batches names as dissenting, and those found are
    recalled and erased in one pass. Each ``commit`` then leaves out the pseudonyms returned: searching the store
    costs a read of every table and release, and an erasure a rewrite and vacuum of every table, whatever the
    number of patients.

    The order is the commit's own, so the guarantee is the same: the dissents are in the register before the
    store is searched, so from then on every extraction and commit leaves those patients out (and a commit that
    read the register before is caught by its own check after it wrote). A batch not at the key's current version
    is left alone; its commit refuses it."""
    key = load_master_key()
    keys.verify_store(settings.store, key)
    optouts: dict[str, pa.Array] = {}
    for practice in practices:
        folder = staging_dir(settings, run_id, practice) / "validated"
        carried, counts = _read_tables(folder, ("optout_pids", "type1_events"), practice, "commit")
        if counts.get("key_version") != key.version:
            continue
        type1.record(settings.store, practice, carried["type1_events"], key.version)
        optouts[practice] = carried["optout_pids"]["patient_pid"].combine_chunks()
    read = type1.snapshot(settings.store, key.version)
    if not optouts:
        return Settled(pa.array([], pa.string()), read)
    pids = pc.unique(pa.concat_arrays(list(optouts.values())))
    found, recalled, erased = _erase_held(settings, key, pids)
    whose = sorted(p for p, mine in optouts.items() if pc.any(pc.is_in(mine, value_set=found)).as_py())
    settled = Settled(pids, read, frozenset(optouts))
    for practice in whose:  # each practice whose patients were found: the shared erasure, and which practices shared it
        settled.counts[practice] = {"erasure": {**erased, "practices": whose}}
        if recalled:
            settled.counts[practice]["extracts_recalled"] = recalled
    log.info("chunk: late type 1 opt-outs of %d practice(s) checked together: %d patient(s) found in the store",
             len(optouts), len(found))
    return settled


def commit(feed: Feed, settings: Settings, run_id: str, *, settled: Settled | None = None) -> dict:
    """Replace (baseline) or merge into (incremental) the practice's partition of every curated table; then
    record the delivered files and the watermark in the ledger and write the run manifest. The validated tables
    stream into the store a batch at a time (memory is O(batch + patients)), one Delta commit per table.
    ``settled``: the late opt-out step already done for some of its dissenting patients (``settle_optouts``)."""
    ready = _commit_ready(feed, settings, run_id, settled)
    if isinstance(ready, dict):
        return ready
    return _commit_done(settings, run_id, ready, _write(settings, ready), settled)


@dataclass
class _Commit:
    """A practice's validated batch ready to be written (``_commit_ready``), and what its commit needs after."""

    practice: str
    base: Path
    started: float
    key: object
    carried: dict[str, pa.Table]
    counts: dict
    info: dict
    tables: dict[str, _Validated]
    quarantine: _Validated
    scanned: dict[str, tuple[frozenset, pa.Array]]
    deleted: dict[str, pa.Array] | None  # None: a baseline
    read: type1.Snapshot
    drop: pa.Array
    held: pa.Array

    def rows(self) -> dict[str, store.Batches]:
        return {name: store.Batches(t.open, self.scanned[name][0]) for name, t in self.tables.items()}


def _commit_ready(feed: Feed, settings: Settings, run_id: str, settled: Settled | None) -> _Commit | dict:
    """Everything a commit does before it writes: the key and the batch's checks, the register and the late
    opt-out step, the rows of dissenters to drop. The manifest of the run already committed (a retried task)."""
    storage.restrict_umask()
    practice = feed.ods_code
    started = time.monotonic()
    base = staging_dir(settings, run_id, practice)
    done = store.last_committed(settings.manifests, practice)
    if done and done.get("run_id") == run_id and not (base / "validated").exists():
        log.info("practice %s: run %s is already committed (a retried task): nothing to do", practice, run_id)
        return done
    carried, counts = _read_tables(base / "validated", _CARRIED, practice, "commit")
    tables = {name: _Validated(name, base / "validated" / f"{name}.parquet") for name in TABLES}
    quarantine = _Validated("quarantine", base / "validated" / "quarantine.parquet")
    optout_pids = carried["optout_pids"]["patient_pid"].combine_chunks()
    info = counts.pop("_ledger")
    counts["run_id"] = run_id
    key = load_master_key(practice=practice)
    keys.verify_store(settings.store, key, practice)
    current = key.version
    if counts.get("key_version") != current:  # before the register: its pseudonyms must be of one version
        raise GpdataError(f"the batch was pseudonymised with key version {counts.get('key_version')}, the key is at "
                          f"{current}: the key was rotated during the run; run the practice again",
                          practice=practice, stage="commit")
    store.ensure_tables(settings.store)
    keys.record_store(settings.store, key)
    # The store-wide register first: from here on every practice's extraction and commit excludes them.
    if settled is None or practice not in settled.recorded:
        type1.record(settings.store, practice, carried["type1_events"], current)
        read = type1.snapshot(settings.store, current)
    else:  # recorded, read, looked for (and erased) by settle_optouts, in this process: a dissent recorded since
        read = settled.read  # is caught by the check after the write below, as for any concurrent commit
        counts.update(settled.counts.get(practice, {}))
        optout_pids = optout_pids.filter(pc.invert(pc.is_in(optout_pids, value_set=settled.pids)))
    _, recalled, erased = _erase_held(settings, key, optout_pids)
    if recalled:
        counts["extracts_recalled"] = counts.get("extracts_recalled", []) + recalled
    counts["erasure"] = erased or counts.get("erasure", {})
    deletions = carried["deletions"]
    deleted = None if info["full"] else {
        name: deletions.filter(pc.equal(deletions["table"], name))["key"].combine_chunks() for name in TABLES}
    scanned = {name: table.scan(practice) for name, table in tables.items()}  # refuses before anything is written
    pids = pc.unique(pa.concat_arrays([p for _, p in scanned.values()]))
    # Another practice may have recorded a dissent since this batch was extracted: their rows are dropped.
    dissented = isin(pids, read.active)
    drop, held = pids.filter(dissented), pids.filter(pc.invert(dissented)).drop_null()
    for table in tables.values():
        table.drop = drop
    return _Commit(practice, base, started, key, carried, counts, info, tables, quarantine, scanned, deleted, read,
                   drop, held)


def _write(settings: Settings, c: _Commit) -> dict:
    """One practice's batch written (``store.commit_practice``); each table's new version."""
    return store.commit_practice(settings.store, c.practice, c.rows(), store.Batches(c.quarantine.open),
                                 key_version=c.key.version, deleted=c.deleted)


def _commit_done(settings: Settings, run_id: str, c: _Commit, versions: dict, settled: Settled | None) -> dict:
    """What a commit does after its write: the check for dissents recorded meanwhile (or, in a chunk, handed to
    ``check_commits``), the ledger, the run manifest."""
    practice, counts, carried, deleted = c.practice, c.counts, c.carried, c.deleted
    at_commit = {name: t.dropped for name, t in c.tables.items() if t.dropped}
    if at_commit:
        counts["type1_optout"]["excluded_at_commit"] = at_commit
    # ... or while this one was writing: its erasure may have run before these rows landed.
    if settled is not None:  # the chunk checks several practices' commits at once (check_commits)
        settled.unchecked[practice] = c.held
    else:
        counts.update(_after_commit(settings, c.key, type1.dissented_since(settings.store, c.read, c.held)))
    state = ledger.PracticeState.load(settings.state, practice)
    patients = {"patients": pq.read_table(c.tables["patients"].path, columns=["patient_pid", "birth_month"])}
    _drop_pids(patients, c.drop)
    new_map = carried["patient_map"].join(patients["patients"], "patient_pid", join_type="inner")
    full = deleted is None
    patient_map = new_map if full else ledger.merge_patient_map(state.patient_map(), new_map, deleted["patients"])
    practitioner_map = carried["practitioner_map"] if full else \
        ledger.merge_by_ref(state.practitioner_map(), carried["practitioner_map"])
    dissenter_map = carried["dissenter_map"] if full else \
        ledger.merge_by_ref(state.dissenter_map(), carried["dissenter_map"])
    info = c.info
    state.save(run_id=run_id, files=info["files"], watermark=info["watermark"], snapshot=info["snapshot"],
               patient_map=patient_map, practitioner_map=practitioner_map, dissenter_map=dissenter_map,
               key_version=c.key.version, key_checks=c.key.checks(), token=partial(deid.file_token, c.key))
    counts["committed_rows"] = {name: t.rows for name, t in c.tables.items()}
    if deleted is not None:
        counts["deleted_keys"] = {name: len(keys) for name, keys in deleted.items() if len(keys)}
    counts["table_versions"] = versions
    counts["seconds"]["commit"] = round(time.monotonic() - c.started, 3)
    write_run_manifest(settings, practice, run_id, counts, status="committed")
    shutil.rmtree(c.base, ignore_errors=True)
    return {**counts, "status": "committed"}


def _after_commit(settings: Settings, key, late: pa.Array) -> dict:
    """The commit's check after its write found these patients dissenting since it read the register: their
    rows are recalled from the extracts handed out and erased from the store."""
    if not len(late):
        return {}
    return {"extracts_recalled_after_commit": recall.recall(settings.extracts, settings.store, key, late),
            "erasure_after_commit": erasure.erase(settings.store, late)}


def check_commits(settings: Settings, run_id: str, settled: Settled, out: dict[str, dict]) -> None:
    """The check after the write of the chunk's commits not yet checked (``settled.unchecked``), once for them
    all: of the patients they wrote, those whose dissent was recorded since the chunk read the register are
    recalled and erased in one pass, and the manifest (and ``out``) of each practice that held one says so. The
    check reads every practice's register file (a stat of each of England's 6,500, about 0.2 s), so ``run_chunk``
    asks it every CHECK_SECONDS of commits, not after each. If it fails, every practice it covered fails at its
    commit stage, as a practice alone would."""
    held, settled.unchecked = settled.unchecked, {}
    if not held:
        return
    committed = [p for p in held if out.get(p, {}).get("status") == "committed"]  # else: failed after its write
    try:
        late = type1.dissented_since(settings.store, settled.read, pc.unique(pa.concat_arrays(list(held.values()))))
        found = _after_commit(settings, load_master_key(), late)
        for practice in committed:
            out[practice]["commit_checked_with"] = len(held)
            if found and pc.any(isin(held[practice], late)).as_py():
                out[practice].update(found)  # one erasure for them all, as settle_optouts does
                write_run_manifest(settings, practice, run_id, out[practice], status="committed")
        log.info("chunk: the commits of %d practice(s) checked against the register's dissents since it was read: "
                 "%d patient(s) found", len(held), len(late))
    except Exception as exc:  # noqa: BLE001 - each practice's commit is unfinished until it was checked
        for practice in committed:
            out[practice] = practice_failed(settings, practice, run_id, "commit", exc)


def write_run_manifest(settings: Settings, practice: str, run_id: str, counts: dict, status: str) -> Path:
    doc = {**counts, "status": status, "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return store.write_manifest(settings.manifests, practice, run_id, doc)


def run_practice(feed: Feed, settings: Settings, run_id: str, today: dt.date | None = None, *,
                 force: bool = False, connection_uri: str | None = None) -> dict:
    """All three stages in one call (tests, benchmarks and the command line)."""
    if extract(feed, settings, run_id, force=force, connection_uri=connection_uri).get("status") == "unchanged":
        return store.read_json(settings.manifests / feed.ods_code / "latest.json")
    check(feed, settings, run_id, today=today)
    return commit(feed, settings, run_id)


# ------------------------------------------------------------------------------------------ several practices
CHUNK_BYTES_ENV = "GPDATA_CHUNK_BYTES"
CHUNK_PRACTICES_ENV = "GPDATA_CHUNK_PRACTICES"
DEFAULT_CHUNK_BYTES = 64 << 20  # delivered bytes a chunk of practices may hold; a practice above it runs alone
DEFAULT_CHUNK_PRACTICES = 200  # a chunk process's fixed cost is about 12 s (docs/performance.md)
# A chunk checks its commits against the register's new dissents (``check_commits``) after this many seconds of
# commits: a dissent recorded meanwhile is erased from what they wrote within about that long of the write.
CHECK_SECONDS = 10.0


def _commits_ready(settings: Settings, run_id: str, passed: list[Feed], settled: Settled | None,
                   out: dict[str, dict]) -> dict[str, _Commit]:
    """Each practice's commit up to its write (``_commit_ready``); a practice that fails there, or whose run was
    already committed, has its result in ``out``."""
    ready = {}
    for feed in passed:
        try:
            c = _commit_ready(feed, settings, run_id, settled)
        except Exception as exc:  # noqa: BLE001 - one practice's failure is its own
            out[feed.ods_code] = practice_failed(settings, feed.ods_code, run_id, "commit", exc)
            continue
        if isinstance(c, dict):
            out[feed.ods_code] = {**c, "status": "committed"}
        else:
            ready[feed.ods_code] = c
    return ready


def _write_increments(settings: Settings, ready: dict[str, _Commit]) -> dict[str, dict]:
    """The incremental batches of a chunk's practices written together, one Delta commit per table
    (``store.commit_increments``): practice -> table versions. If that fails, nothing is returned and each is
    written alone, so a practice whose batch cannot be written fails alone."""
    increments = {ods: c for ods, c in ready.items() if c.deleted is not None}
    if len(increments) < 2:
        return {}
    try:
        versions = store.commit_increments(
            settings.store, {ods: store.Increment(c.rows(), store.Batches(c.quarantine.open), c.deleted)
                             for ods, c in increments.items()}, next(iter(increments.values())).key.version)
    except Exception as exc:  # noqa: BLE001 - each is written alone instead
        log.warning("chunk: writing %d practices' increments together failed (%s): each is written alone",
                    len(increments), type(exc).__name__)
        return {}
    return dict.fromkeys(increments, versions)


def failure_cause(exc: BaseException) -> str:
    """One line naming why a practice failed: a GpdataError's cause with its file and row; any other error by its
    type only, since its message may quote data."""
    if isinstance(exc, GpdataError):
        where = f" (file {exc.file}{'' if exc.row is None else f', row {exc.row}'})" if exc.file else ""
        return " ".join(f"{exc.cause}{where}".split())
    return f"{type(exc).__name__} (unexpected error; the task log has the traceback)"


def record_failure(settings: Settings, practice: str, run_id: str, *, stage: str, cause: str,
                   task_id: str | None = None) -> dict:
    """Put a failure in the practice's run manifest (the GP data page and the status index show it). A manifest
    of the same run (a richer ``failed_quality`` one, with its counts) keeps its status and counts and gains the
    error; otherwise a ``failed`` manifest is written for the run. Returns the manifest written."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    error = {"stage": stage, "cause": cause, "task_id": task_id, "at": now}
    latest = store.read_json(settings.manifests / practice / "latest.json")
    if latest and latest.get("run_id") == run_id:
        doc = {**latest, "error": error}
    else:
        doc = {"practice": practice, "run_id": run_id, "status": "failed", "error": error, "finished_at": now}
    store.write_manifest(settings.manifests, practice, run_id, doc)
    return doc


def delivered_bytes(feed: Feed, settings: Settings, *, force: bool = False) -> int | None:
    """Bytes delivered for a practice since its last commit (files in its delivery folder changed since then), to
    plan chunks by; None when the practice has never committed (a baseline) or cannot be looked at, so it runs
    alone. A database feed after its baseline delivers rows changed since the watermark: counted as 0.
    With ``force`` (everything is read again) every file of the delivery folder counts, and a database feed,
    whose size is not known, is None."""
    path = ledger.PracticeState.load(settings.state, feed.ods_code).folder / "ledger.json"
    if not path.exists():
        return None
    if feed.format == "sql":
        return None if force else 0
    since = 0 if force else path.stat().st_mtime
    try:
        return sum(st.st_size for st in (f.stat() for f in feed.location_path().rglob("*") if f.is_file())
                   if st.st_mtime >= since)
    except OSError:
        return None


def plan_chunks(feeds: list[Feed], settings: Settings, *, max_bytes: int | None = None,
                max_practices: int | None = None, force: bool = False) -> tuple[list[str], list[list[str]]]:
    """(practices that run alone, chunks of practices that run together). A practice delivering more than
    ``max_bytes`` since its last commit, or never committed, runs alone (its three stages as three tasks);
    the others are packed in delivery order into chunks of at most ``max_bytes`` and ``max_practices``.
    With ``force`` a practice's whole delivery is measured (see ``delivered_bytes``)."""
    max_bytes = max_bytes or int(os.environ.get(CHUNK_BYTES_ENV) or DEFAULT_CHUNK_BYTES)
    max_practices = max_practices or int(os.environ.get(CHUNK_PRACTICES_ENV) or DEFAULT_CHUNK_PRACTICES)
    alone, chunks, current, size = [], [], [], 0
    for feed in feeds:
        n = delivered_bytes(feed, settings, force=force)
        if n is None or n > max_bytes:
            alone.append(feed.ods_code)
            continue
        if current and (size + n > max_bytes or len(current) >= max_practices):
            chunks.append(current)
            current, size = [], 0
        current.append(feed.ods_code)
        size += n
    if current:
        chunks.append(current)
    return alone, chunks


def practice_failed(settings: Settings, practice: str, run_id: str, stage: str, exc: BaseException) -> dict:
    """One practice of a chunk failed: its manifest names the stage and cause, the log has one ``gpdata failure``
    line (and, for an unexpected error, the traceback's frames). Returns the chunk's result for the practice."""
    stage = getattr(exc, "stage", None) or stage
    cause = failure_cause(exc)
    record_failure(settings, practice, run_id, stage=stage, cause=cause)
    if not isinstance(exc, GpdataError):  # the frames, never the message (it may quote data)
        log.error("practice %s: traceback (message withheld):\n%s", practice,
                  "".join(traceback.format_tb(exc.__traceback__)))
    log.error("gpdata failure: practice=%s stage=%s cause=%s", practice, stage, cause)
    return {"practice": practice, "status": "failed", "stage": stage, "cause": cause}


def run_chunk(feeds: list[Feed], settings: Settings, run_id: str, today: dt.date | None = None, *,
              force: bool = False, connection_uris: dict[str, str] | None = None) -> dict[str, dict]:
    """Several practices with small deliveries (a daily increment) in this process, which pays imports, Great
    Expectations' set-up and caches once for all of them. Each practice is extracted, checked and committed on
    its own, exactly as ``run_practice`` would; the expectations of the practices that pass their row rules are
    validated together (``quality.run_suites_together``: same verdicts; a group with a failure is halved until the
    practice that fails is validated alone). A practice that fails stops there, alone: its manifest names the
    stage and cause, the log has one ``gpdata failure`` line for it, and the other practices go on and commit.
    The check after each commit's write (for dissents recorded meanwhile) is made for every CHECK_SECONDS of
    commits together (``check_commits``).

    Returns, per ODS code, ``{"status": "committed" | "unchanged" | "failed", ...}`` with counts, the run last
    committed, or the failed stage and cause."""
    with statusindex.held(settings.manifests, CHECK_SECONDS):  # the GP data page's index: every 10 s, not 600 times
        return _run_chunk(feeds, settings, run_id, today or dt.date.today(), force, connection_uris or {})


def _run_chunk(feeds: list[Feed], settings: Settings, run_id: str, today: dt.date, force: bool,
               connection_uris: dict[str, str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    checking: dict[str, tuple[Feed, _Checking]] = {}
    register = None
    try:  # the type 1 register, read once for every extraction (each reads it itself if this fails)
        register, _ = type1.register_status(settings.store, load_master_key().version)
    except Exception as exc:  # noqa: BLE001 - each practice's extraction then reports the cause itself
        log.warning("chunk: reading the type 1 register failed (%s): each extraction reads it", type(exc).__name__)
    for number, feed in enumerate(feeds, start=1):
        ods, stage = feed.ods_code, "extract"
        try:
            counts = extract(feed, settings, run_id, force=force, connection_uri=connection_uris.get(ods),
                             register=register)
            if counts.get("status") == "unchanged":
                out[ods] = {"practice": ods, "status": "unchanged",
                            "last_committed_run": counts.get("last_committed_run")}
                continue
            stage = "quality"
            checking[ods] = (feed, _check_rows(feed, settings, run_id, today))
        except Exception as exc:  # noqa: BLE001 - one practice's failure is its own; the others go on
            out[ods] = practice_failed(settings, ods, run_id, stage, exc)
        log.info("chunk: %d/%d practices read (%s)", number, len(feeds), ods)
    together: dict[str, list[dict] | None] = {}
    started = time.monotonic()
    passing = {ods: c.result.passed for ods, (_, c) in checking.items()
               if c.result.ok and c.result.folder is None}  # a streamed practice is validated alone
    if len(passing) > 1:
        try:  # each practice's Data Docs: a copy of the pages of the validation its rows passed in
            together = quality.run_suites_together(
                passing, today, work=settings.quality / "_chunks" / store.safe_name(run_id) / min(passing),
                docs_of=lambda ods: settings.data_docs / ods)
        except Exception as exc:  # noqa: BLE001 - validated one by one instead, as a practice alone would be
            log.warning("chunk: validating %d practices together failed (%s): each is validated alone",
                        len(passing), type(exc).__name__)
            together = {}
    shared = (time.monotonic() - started) / max(len(passing), 1)
    passed: list[Feed] = []
    for ods, (feed, c) in checking.items():
        try:
            if together.get(ods) is not None:
                quality.add_expectations(c.result, together[ods], shared)
            else:
                _expect(feed, settings, c, today)
            _check_finish(feed, settings, run_id, c)
            passed.append(feed)
        except Exception as exc:  # noqa: BLE001 - as above
            out[ods] = practice_failed(settings, ods, run_id, "quality", exc)
    settled = None
    if len(passed) > 1:
        try:
            settled = settle_optouts(settings, run_id, [feed.ods_code for feed in passed])
        except Exception as exc:  # noqa: BLE001 - each commit then does its own, as a practice alone does
            log.warning("chunk: the late type 1 opt-out step of %d practices together failed (%s): each commit "
                        "does its own", len(passed), type(exc).__name__)
    checked = time.monotonic()
    ready = _commits_ready(settings, run_id, passed, settled, out)
    versions = _write_increments(settings, ready) if settled is not None else {}
    for number, (ods, c) in enumerate(ready.items(), start=1):
        try:
            written = versions.get(ods) or _write(settings, c)
            out[ods] = {**_commit_done(settings, run_id, c, written, settled), "status": "committed"}
        except Exception as exc:  # noqa: BLE001 - as above
            out[ods] = practice_failed(settings, ods, run_id, "commit", exc)
            if settled is not None:  # some of its rows may be written: they are checked all the same
                settled.unchecked.setdefault(ods, c.held)
        if settled is not None and (number == len(ready) or time.monotonic() - checked >= CHECK_SECONDS):
            check_commits(settings, run_id, settled, out)
            checked = time.monotonic()
    return {feed.ods_code: out[feed.ods_code] for feed in feeds}
