"""Source adapters: each turns a practice's new deliveries into canonical Arrow tables (gpdata.model).

``collect`` is the one entry point. It decides, from the practice's ledger (gpdata.ingest.ledger), what is new:

* **fhir** (baseline): the folder of bundles is one full snapshot. Unchanged since the last commit (every file
  hash seen before, same set) means nothing to do; a renamed copy of a bundle inside a snapshot is skipped.
* **flatfile**: files grouped into deliveries by their stamp. In *baseline* mode each delivery is a full
  snapshot and the newest new one is read; in *incremental* mode every new delivery is read in stamp order and
  the newest version of each record wins. A file whose exact content was processed before, under any name, is
  skipped. A single snapshot's event files are checked here and left to be read batch by batch
  (``Batch.events``); everything else is returned as whole tables. Incremental deliveries are applied in stamp
  order with no gap, since a record's older version must never replace a newer one: a delivery older than one
  already applied is quarantined as late (the run fails saying so), and while a quarantined delivery has not
  been delivered again, later deliveries are held (read and checked, not applied) until the corrected one
  arrives under the same stamp. ``force`` rebuilds the practice from every delivery in its inbox instead.
* **sql**: rows changed since the last committed watermark (all rows for a baseline).

A delivery that cannot be read is moved, whole, to ``$GPDATA_HOME/quarantine/<ODS>/`` with a note of why, and
the practice's task fails naming the file, row and cause. Nothing is recorded in the ledger until the commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdata.errors import ConfigError, SourceError
from gpdata.ingest.ledger import PracticeState, sha256_file
from gpdata.model import CANONICAL, EVENT_TABLES, POSITION, TABLES
from gpdata.storage import file_signature


@dataclass
class Batch:
    """What one run extracts for a practice."""

    tables: dict[str, pa.Table]                 # canonical rows (identifiable; memory only)
    deleted: dict[str, pa.Table]                # canonical rows the source marks deleted
    full: bool                                  # True: replaces the practice's data; False: merged into it
    files: list[dict] = field(default_factory=list)    # consumed: name, sha256, delivery
    skipped: list[dict] = field(default_factory=list)  # duplicates: name, duplicate_of
    deliveries: list[str] = field(default_factory=list)
    watermark: str | None = None
    snapshot: str | None = None
    unmapped: dict[str, list[str]] = field(default_factory=dict)  # table -> delivered columns no field maps
    resources: dict = field(default_factory=dict)  # FHIR: unmapped resource types and unreadable entries, counted
    # a flat-file snapshot's event files or a FHIR delivery's event tables, read batch by batch (not in ``tables``)
    events: EventFiles | FhirEvents | None = None

    def summary(self) -> dict:
        out = {"mode": "baseline" if self.full else "incremental", "deliveries": self.deliveries,
               "files": len(self.files), "duplicates_skipped": self.skipped, "watermark": self.watermark}
        if self.unmapped:
            out["unmapped_columns"] = self.unmapped
        out.update(self.resources)
        return out


@dataclass
class EventFiles:
    """A flat-file snapshot's event files, checked (``flatfile.check_file``) but not yet parsed: read batch by
    batch (``batch_rows()`` rows), so identifiable rows are held one batch at a time. A file that fails to parse
    moves the delivery to quarantine, as it would at ``collect``."""

    files: list  # (DeliveredFile, FileShape)
    dialect: object
    practice: str
    fail: Callable[[SourceError], SourceError]  # quarantines the delivery; the error names the file's token
    token: Callable[[str], str]
    stats: dict  # path -> ``storage.file_signature`` of the file when its digest was taken

    def read(self, fields: frozenset[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
        """(table, canonical rows with ``_deleted``) batch by batch, file after file; ``fields``: only these
        canonical fields (the others null). Each file must be the file whose digest ``collect`` took, before and
        after it is read: the type 1 codes of the first pass (``fields``) decide which patients the second
        excludes, so a file replaced in between could stage the rows of a patient whose dissent it added."""
        from gpdata.ingest.sources.flatfile import iter_file

        for f, shape in self.files:
            try:
                self._unchanged(f)
                for table in iter_file(f, self.dialect, self.practice, shape, fields=fields):
                    yield f.table, _tokenise_rows({f.table: table}, self.token)[f.table]
                    del table  # not held while the next batch is read
                self._unchanged(f)
            except SourceError as exc:
                raise self.fail(exc) from None

    def _unchanged(self, f) -> None:
        if file_signature(f.path.stat()) != self.stats[f.path]:
            raise SourceError(CHANGED, practice=self.practice, file=f.name)


CHANGED = ("the file changed while the delivery was being read (deliver a file by moving it into the folder once "
           "it is complete)")


@dataclass
class FhirEvents:
    """A FHIR delivery's event tables, read in ``fhir.Delivery``'s second pass batch by batch (``batch_rows()``
    rows of a table), after its patients and type 1 codes (``Delivery.people``). ``report`` (the batch's
    ``resources``) receives the counts of unmapped resources and unreadable entries once every bundle is read. A
    bundle that fails then moves the delivery to quarantine, as it would have before any row was read."""

    delivery: object  # fhir.Delivery
    report: dict
    fail: Callable[[SourceError], SourceError]
    token: Callable[[str], str]

    def read(self, fields: frozenset[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
        """(table, canonical rows) batch by batch. With ``fields`` (the type 1 evidence pass): the rows the first
        pass kept because they may hold a type 1 code (every other row cannot), with every field."""
        from gpdata.arrowutil import batch_rows

        if fields is not None:
            for name, table in self.delivery.evidence_rows.items():
                yield name, _tokenise_rows({name: table}, self.token)[name]
            return
        try:
            for name, table in self.delivery.events(batch_rows()):
                yield name, _tokenise_rows({name: table}, self.token)[name]
                del table  # not held while the next batch is read
        except SourceError as exc:
            raise self.fail(exc) from None
        self.report.update(self.delivery.report())


def _empty_deleted() -> dict[str, pa.Table]:
    return {name: CANONICAL[name].empty_table() for name in TABLES}


def quarantine_files(paths: list[Path], target: Path, error: SourceError, delivery: str | None = None) -> Path:
    """Move a failed delivery's files aside with a note of the cause (no values: the error names none) and,
    for a flat-file delivery, its stamp."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = target / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = target / f"{stamp}-{n}"
    folder.mkdir(parents=True)
    for path in paths:
        if path.exists():
            shutil.move(str(path), folder / path.name)
    (folder / "REASON.json").write_text(json.dumps({
        "practice": error.practice, "file": error.file, "row": error.row, "cause": error.cause,
        "files": [p.name for p in paths], "quarantined_at": stamp, "delivery": delivery}, indent=2))
    return folder


def quarantined(target: Path) -> dict[str, dict]:
    """A practice's quarantined flat-file deliveries: stamp -> the latest REASON.json for it."""
    out: dict[str, dict] = {}
    for reason in sorted(Path(target).glob("*/REASON.json")):
        note = json.loads(reason.read_text())
        if note.get("delivery"):
            out[note["delivery"]] = note
    return out


def _fail(exc: SourceError, paths: list[Path], quarantine_dir: Path, delivery: str | None = None) -> SourceError:
    folder = quarantine_files(paths, quarantine_dir, exc, delivery)
    return SourceError(f"{exc.cause}; the delivery ({len(paths)} file(s)) was moved to {folder} "
                       "(its REASON.json names the file)",
                       practice=exc.practice, file=exc.file, row=exc.row, stage="extract")


def _has_rows(path: Path) -> bool:
    """False only for a file holding exactly one line (a header): nothing in it to apply. An empty file counts as
    having rows, so it is read and refused as truncated."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    return not (head.endswith(b"\n") and head.count(b"\n") == 1)


def _fhir(feed, state: PracticeState, quarantine_dir: Path, force: bool, token: Callable[[str], str]) -> Batch | None:
    from gpdata.ingest.sources.fhir import Delivery, bundle_files

    location = feed.location_path()
    if not location.is_dir():
        raise SourceError(f"delivery folder {location} does not exist", practice=feed.ods_code)
    files, skipped, hashes, digests = [], [], {}, {}
    for path in bundle_files(location):
        digest = sha256_file(path)
        if digest in hashes:
            skipped.append({"name": token(path.name), "duplicate_of": hashes[digest]})
            continue
        hashes[digest] = token(path.name)
        digests[path.name] = digest
        files.append({"name": token(path.name), "sha256": digest, "delivery": "snapshot"})
    if not files:
        raise SourceError(f"no FHIR bundles (*.json, *.xml) in {location}", practice=feed.ods_code)
    snapshot = hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()
    if snapshot == state.snapshot and not force:
        return None
    delivery = Delivery(location, feed.ods_code, only=list(digests), independent_files=feed.bundles == "independent",
                        digests=digests)
    paths = bundle_files(location)
    try:
        tables = delivery.people()
    except SourceError as exc:
        raise _fail(exc, paths, quarantine_dir) from None
    report: dict = {}  # completed once the events are read (FhirEvents.read)
    for exc in delivery.refused:  # independent bundles: each unreadable one is moved aside alone, with its reason
        quarantine_files([location / exc.file], quarantine_dir, exc)
    if delivery.refused:
        gone = {token(exc.file) for exc in delivery.refused}
        files = [f for f in files if f["name"] not in gone]
        report["bundles_quarantined"] = len(delivery.refused)
    paths = [p for p in paths if p.exists()]
    events = FhirEvents(delivery, report, token=token, fail=lambda exc: _tokenised(
        _fail(exc, paths, quarantine_dir), token))
    return Batch(tables=tables, deleted=_empty_deleted(), full=True, files=files, skipped=skipped,
                 deliveries=[f"snapshot {snapshot[:12]}"], snapshot=snapshot, resources=report, events=events)


def _flatfile(feed, state: PracticeState, quarantine_dir: Path, force: bool,
              token: Callable[[str], str]) -> Batch | None:
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.sources.convert import latest_versions, split_deleted
    from gpdata.ingest.sources.flatfile import check_file, list_files, read_file

    dialect = load_dialect(feed.dialect)
    practice = feed.ods_code
    if dialect.delivers == "snapshot" and feed.mode != "baseline":
        raise ConfigError(f"dialect {dialect.name} delivers full snapshots without a deletion column: the feed's "
                          "mode must be baseline", practice=practice)
    by_stamp: dict[str, list] = {}
    for f in list_files(feed.location_path(), dialect, practice):
        by_stamp.setdefault(f.stamp, []).append(f)
    incremental = feed.mode == "incremental" and state.baselined and not force
    new, skipped, seen_now, stats = {}, [], {}, {}
    for stamp, group in by_stamp.items():
        tables = [f.table for f in group]
        if len(set(tables)) != len(tables):
            raise SourceError(f"delivery {stamp} has two files for one record type", practice=practice)
        missing = [t for t, m in dialect.tables.items() if t not in tables and not m.optional]
        if missing:
            raise SourceError(f"delivery {stamp} is incomplete: no file for {', '.join(missing)} (a delivery "
                              "has one file per record type, with only a header when it has no rows)",
                              practice=practice, file=group[0].name)
        fresh = []
        for f in group:
            stats[f.path] = file_signature(f.path.stat())  # read twice later: EventFiles._unchanged
            digest = sha256_file(f.path)
            earlier = state.seen(digest)
            # a ledger written before file names were tokenised holds the name itself
            if earlier and incremental and earlier["name"] in (token(f.name), f.name):
                continue  # processed before: deliveries stay in the inbox until the supplier clears them
            duplicate_of = seen_now.get(digest) or (token(earlier["name"]) if earlier and incremental else None)
            if feed.mode == "incremental" and duplicate_of and _has_rows(f.path):
                skipped.append({"name": token(f.name), "duplicate_of": duplicate_of})
                continue
            seen_now.setdefault(digest, token(f.name))
            fresh.append((f, digest, earlier))
        if feed.mode == "baseline" and all(e for _, _, e in fresh) and not force:
            continue  # this snapshot was committed before (perhaps under other names)
        if feed.mode == "incremental" and not any(_has_rows(f.path) for f, _, _ in fresh):
            continue  # only duplicates and header-only files: nothing new in this delivery
        if fresh:
            new[stamp] = fresh
    if not new:
        return None if not skipped else Batch(tables={}, deleted={}, full=False, skipped=skipped)
    stamps = sorted(new)
    if incremental:
        _refuse_late(practice, stamps, by_stamp, state, quarantine_dir)
    if feed.mode == "baseline" or not incremental:
        # a snapshot: the newest; or the first incremental run: every delivery so far, newest version wins
        stamps = stamps[-1:] if feed.mode == "baseline" else stamps
    # One snapshot (a baseline): its event files are checked here and read batch by batch by the caller.
    stream = not incremental and len(stamps) == 1
    per_table: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
    files, unmapped, streamed = [], {}, []
    for stamp in stamps:
        for f, digest, _ in new[stamp]:
            try:
                if stream and f.table in EVENT_TABLES:
                    streamed.append((f, check_file(f, dialect, practice, unmapped)))
                else:
                    per_table[f.table].append(read_file(f, dialect, practice, unmapped))
            except SourceError as exc:
                raise _fail(exc, [g.path for g in by_stamp[stamp]], quarantine_dir, stamp) from None
            files.append({"name": token(f.name), "sha256": digest, "delivery": stamp})
    if incremental:
        _hold_after_a_gap(practice, stamps, state, quarantine_dir)
    tables, deleted = {}, {}
    for name in TABLES:
        parts = per_table[name]
        combined = latest_versions(parts) if parts else None
        if combined is None and name not in {f.table for f, _ in streamed}:
            tables[name], deleted[name] = CANONICAL[name].empty_table(), CANONICAL[name].empty_table()
        elif combined is not None:
            tables[name], deleted[name] = split_deleted(combined)
    events = None
    if streamed:
        paths = [g.path for g in by_stamp[stamps[0]]]
        events = EventFiles(streamed, dialect, practice, token=token, fail=lambda exc: _tokenised(
            _fail(exc, paths, quarantine_dir, stamps[0]), token), stats=stats)
    return Batch(tables=tables, deleted=deleted, full=not incremental, files=files, skipped=skipped,
                 deliveries=stamps, unmapped={t: sorted(c) for t, c in sorted(unmapped.items())}, events=events)


def _refuse_late(practice: str, stamps: list[str], by_stamp: dict, state: PracticeState,
                 quarantine_dir: Path) -> None:
    """An incremental delivery older than one already applied would replace newer versions of its records:
    each such delivery is moved to quarantine and the run fails saying so (the others wait for the next run)."""
    applied = state.applied_through()
    late = [s for s in stamps if applied and s < applied]
    if not late:
        return
    one = len(late) == 1
    exc = SourceError(f"deliver{'y' if one else 'ies'} {', '.join(late)} {'is' if one else 'are'} older than "
                      f"delivery {applied}, which was applied already: applied now, {'its' if one else 'their'} "
                      "records would replace newer versions. To include them, put them back in the inbox and run "
                      'with {"force": true}, which rebuilds the practice from every delivery there',
                      practice=practice, file=by_stamp[late[0]][0].name)
    folders = [quarantine_files([f.path for f in by_stamp[stamp]], quarantine_dir, exc, stamp) for stamp in late]
    raise SourceError(f"{exc.cause}; moved to {', '.join(map(str, folders))}", practice=practice,
                      file=exc.file, stage="extract")


def _hold_after_a_gap(practice: str, stamps: list[str], state: PracticeState, quarantine_dir: Path) -> None:
    """Refuse to apply deliveries that follow a quarantined one not yet delivered again (a gap): applied
    first, they would be overwritten by the older versions in the corrected delivery when it comes."""
    applied = state.applied_through() or ""
    committed = state.deliveries()
    notes = quarantined(quarantine_dir)
    gaps = sorted(stamp for stamp in notes if stamp > applied and stamp not in committed and stamp not in stamps)
    held = [s for s in stamps if gaps and s > gaps[0]]
    if held:
        one = len(held) == 1
        raise SourceError(
            f"delivery {gaps[0]} was quarantined ({notes[gaps[0]].get('cause')}) and has not been delivered "
            f"again, so {len(held)} later deliver{'y' if one else 'ies'} ({', '.join(held)}) "
            f"{'is' if one else 'are'} held in the inbox, unapplied: send the corrected delivery under the same "
            'stamp, or run with {"force": true} to rebuild the practice from every delivery in the inbox',
            practice=practice)


def _sql(feed, state: PracticeState, uri: str | None, force: bool) -> Batch | None:
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.sources.convert import split_deleted
    from gpdata.ingest.sources.sql import connection_uri, read_changes

    dialect = load_dialect(feed.dialect or "supplier_sql")
    incremental = feed.mode == "incremental" and state.baselined and not force
    since = state.watermark if incremental else None
    digests: dict[str, str] = {}
    raw, watermark = read_changes(uri or connection_uri(feed.connection_id), dialect, feed.ods_code, since, digests)
    # tables the dialect marks snapshot are read whole every run: unchanged when their rows hash the same
    snapshot = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest() if digests else None
    if incremental and not any(t.num_rows for n, t in raw.items() if n not in digests) \
            and snapshot == state.snapshot:
        return None
    tables, deleted = {}, {}
    for name in TABLES:
        tables[name], deleted[name] = split_deleted(raw[name])
    return Batch(tables=tables, deleted=deleted, full=not incremental, watermark=watermark, snapshot=snapshot,
                 deliveries=[f"changes since {since}" if since else "all rows"])


def _same(name: str) -> str:
    return name


def _tokenise_rows(tables: dict[str, pa.Table], token: Callable[[str], str]) -> dict[str, pa.Table]:
    """Each row's ``_src_file`` (the delivered file it came from) as its token."""
    out = {}
    for name, table in tables.items():
        if POSITION[0] in table.column_names and table.num_rows:
            enc = pc.dictionary_encode(table[POSITION[0]].combine_chunks())
            tokens = pa.array([None if v is None else token(v) for v in enc.dictionary.to_pylist()], pa.string())
            i = table.column_names.index(POSITION[0])
            table = table.set_column(i, table.schema.field(i), pc.take(tokens, enc.indices))
        out[name] = table
    return out


def _tokenised(exc: SourceError, token: Callable[[str], str]) -> SourceError:
    """The error naming its file by the file's token."""
    return SourceError(exc.cause, practice=exc.practice, file=token(exc.file) if exc.file else None, row=exc.row,
                       stage=exc.stage)


def collect(feed, state: PracticeState, quarantine_dir: Path, *, force: bool = False,
            connection_uri: str | None = None, token: Callable[[str], str] | None = None) -> Batch | None:
    """The practice's new data, or None when nothing changed since the last commit.

    ``token`` maps a delivered file's name to the stand-in used beyond the inbox (the pipeline passes
    ``gpdata.privacy.deid.file_token``): rows, the batch's file lists and errors carry only tokens. The files
    themselves, and a refused delivery's ``REASON.json``, keep their names (both are identifiable places)."""
    token = token or _same
    try:
        batch = _collect(feed, state, quarantine_dir, force, connection_uri, token)
    except SourceError as exc:
        if not exc.file or feed.format == "sql":
            raise
        raise _tokenised(exc, token) from None
    if batch is not None and feed.format != "sql":
        batch.tables = _tokenise_rows(batch.tables, token)
        batch.deleted = _tokenise_rows(batch.deleted, token)
    return batch


def _collect(feed, state: PracticeState, quarantine_dir: Path, force: bool, connection_uri: str | None,
             token: Callable[[str], str]) -> Batch | None:
    if feed.format in ("fhir", "flatfile"):
        from gpdata.ingest import limits

        location = feed.location_path()
        if location.is_dir():  # every file within the size limit before any is read
            paths = limits.delivered_files(location)
            if feed.format == "flatfile":  # and those of delivery folders (dialects with stamp_from: folder)
                paths += [p for d in sorted(location.iterdir()) if d.is_dir() and not d.name.startswith(".")
                          for p in limits.delivered_files(d)]
            limits.check_files(paths, feed.ods_code)
    if feed.format == "fhir":
        return _fhir(feed, state, quarantine_dir / feed.ods_code, force, token)
    if feed.format == "flatfile":
        return _flatfile(feed, state, quarantine_dir / feed.ods_code, force, token)
    if feed.format == "sql":
        return _sql(feed, state, connection_uri, force)
    raise ConfigError(f"unknown source format {feed.format!r}", practice=feed.ods_code)


def check_sample(feed, sample: Path) -> dict[str, int]:
    """Read a sample delivery as the feed would (its format and dialect) without recording, moving or keeping
    anything: rows per table, or the error a real delivery would fail with. Flat files: the newest delivery in
    the folder."""
    sample = Path(sample)
    if feed.format == "sql":
        raise ConfigError("a sql feed has no sample delivery: its database is read through the connection",
                          practice=feed.ods_code)
    if not sample.is_dir():
        raise SourceError(f"sample folder {sample} does not exist", practice=feed.ods_code)
    if feed.format == "fhir":
        from gpdata.ingest.sources.fhir import read_bundles

        # strict: an entry the pipeline would quarantine is named here (file, entry, FHIR path)
        return {name: t.num_rows for name, t in read_bundles(sample, feed.ods_code, strict=True).items()}
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.sources.flatfile import list_files, read_file

    dialect = load_dialect(feed.dialect)
    files = list_files(sample, dialect, feed.ods_code)
    if not files:
        raise SourceError(f"no file of the {dialect.name} dialect in the sample", practice=feed.ods_code)
    newest = [f for f in files if f.stamp == files[-1].stamp]
    missing = [t for t, m in dialect.tables.items() if not m.optional and t not in {f.table for f in newest}]
    if missing:
        raise SourceError(f"sample delivery {files[-1].stamp} is incomplete: no file for {', '.join(missing)}",
                          practice=feed.ods_code)
    counts = {}
    for f in newest:
        counts[f.table] = counts.get(f.table, 0) + read_file(f, dialect, feed.ods_code).num_rows
    return counts
