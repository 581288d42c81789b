"""Type 1 opt-out: a patient whose latest type 1 code is a dissent is never collected, from any practice.

Detection fails closed:

* every code of every resource or row is examined (each coding of a concept, any table, the adapter's own
  ``type1_evidence``), matched on the code itself whatever its system label says (trimmed; Read v2 and CTV3 by
  stem, with or without dot padding or term code);
* a type 1 code that cannot be tied to a patient or to a date stops the practice's batch (``SourceError``
  naming file and entry), rather than being quarantined as an ordinary bad row.

The **store-wide register** (``<store>/_type1/<ODS>.parquet``, pseudonymous) keeps, per practice, the latest
dated dissent or withdrawal of each patient pseudonym that practice has delivered. A patient's status is the
latest code across every practice (on the same date, or undated, dissent wins), so a dissent recorded at
practice A excludes the patient's records at practice B too. Each practice writes only its own file (no lock is
needed between practices); readers take the union. Every file records the key version of its pseudonyms.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from gpdata import storage
from gpdata.arrowutil import isin
from gpdata.codes import OptOutCodes
from gpdata.errors import GpdataError, SourceError
from gpdata.model import EVENT_TABLES, POSITION, TYPE1_EVIDENCE

_FAR_FUTURE = dt.date(9999, 12, 31)
_EPOCH = dt.date(1970, 1, 1)
_MAX_DAY, _MIN_DAY = (_FAR_FUTURE - _EPOCH).days, (dt.date.min - _EPOCH).days
EVIDENCE_FIELDS = frozenset({"patient_ref", "code", "event_date"})  # the canonical fields ``evidence`` reads
EVENTS = pa.schema([("patient_pid", pa.string()), ("event_date", pa.date32()), ("dissent", pa.bool_())])


def evidence(tables: dict[str, pa.Table], codes: OptOutCodes) -> pa.Table:
    """Every type 1 code in a canonical batch: (patient_ref, nhs_number, event_date, dissent, position).
    Removes the adapter's ``type1_evidence`` table from ``tables``."""
    parts = []
    found = tables.pop(TYPE1_EVIDENCE, None)
    if found is not None and found.num_rows:
        parts.append(pa.table({"patient_ref": found["patient_ref"], "nhs_number": found["nhs_number"],
                               "event_date": found["event_date"],
                               "dissent": pc.equal(found["kind"], "dissent"),
                               **{c: found[c] for c in POSITION}}))
    for name in EVENT_TABLES:
        table = tables.get(name)
        if table is None or not table.num_rows or "code" not in table.column_names:
            continue
        dissent, withdrawn = codes.classify(table["code"])
        hit = pc.or_(dissent, withdrawn)
        if not pc.any(hit).as_py():
            continue
        rows = table.filter(hit)
        parts.append(pa.table({"patient_ref": rows["patient_ref"],
                               "nhs_number": pa.nulls(rows.num_rows, pa.string()),
                               "event_date": rows["event_date"], "dissent": dissent.filter(hit),
                               **{c: rows[c] for c in POSITION}}))
    if not parts:
        return pa.table({"patient_ref": pa.array([], pa.string()), "nhs_number": pa.array([], pa.string()),
                         "event_date": pa.array([], pa.date32()), "dissent": pa.array([], pa.bool_()),
                         "_src_file": pa.array([], pa.string()), "_src_entry": pa.array([], pa.int32())})
    return pa.concat_tables(parts, promote_options="permissive")


def _refuse(rows: pa.Table, cause: str, practice: str) -> None:
    if not rows.num_rows:
        return
    first = rows.slice(0, 1).to_pylist()[0]
    more = f" ({rows.num_rows} such rows)" if rows.num_rows > 1 else ""
    raise SourceError(f"{cause}{more}; a type 1 opt-out is never dropped as a bad row, so the batch stops",
                      practice=practice, file=first.get("_src_file"), row=first.get("_src_entry"))


def require_dates(found: pa.Table, practice: str) -> None:
    """A type 1 code without a usable date cannot be ordered against others: the batch stops."""
    _refuse(found.filter(pc.is_null(found["event_date"])), "a type 1 opt-out code has no date", practice)


def require_patients(found: pa.Table, pids: pa.Array, tied: pa.Array, practice: str) -> None:
    """``tied``: the row names a patient of this delivery (even one with an invalid NHS number) or of an
    earlier one. A code that names nobody stops the batch."""
    _refuse(found.filter(pc.invert(pc.fill_null(pc.or_(tied, pc.is_valid(pids)), False))),
            "a type 1 opt-out code cannot be tied to a patient", practice)


def latest(pids: pa.Array, dates: pa.Array, dissent: pa.Array) -> pa.Table:
    """The latest code per patient pseudonym: a later date wins; on the same date dissent wins; an undated
    dissent beats every withdrawal and an undated withdrawal loses to every dissent (fail closed)."""
    days = pc.cast(dates, pa.int32()).cast(pa.int64())
    days = pc.if_else(pc.is_null(days), pc.if_else(dissent, _MAX_DAY, _MIN_DAY), days)
    order = pc.add(pc.multiply(days, 2), pc.cast(dissent, pa.int64()))
    grouped = pa.table({"patient_pid": pids, "order": order}).filter(pc.is_valid(pids)) \
        .group_by("patient_pid").aggregate([("order", "max")])
    best = grouped["order_max"]
    best_day = pc.floor(pc.divide(pc.cast(best, pa.float64()), 2.0)).cast(pa.int64())
    is_dissent = pc.equal(pc.subtract(best, pc.multiply(best_day, 2)), 1)
    event_date = pc.if_else(pc.or_(pc.equal(best_day, _MAX_DAY), pc.equal(best_day, _MIN_DAY)),
                            pa.nulls(len(best), pa.int32()), pc.cast(best_day, pa.int32())).cast(pa.date32())
    return pa.table({"patient_pid": grouped["patient_pid"].cast(pa.string()), "event_date": event_date,
                     "dissent": is_dissent}, schema=EVENTS)


def type1_status(observations: pa.Table, codes: OptOutCodes) -> dict[str, bool]:
    """Patient ref -> True when the latest type 1 code in these records is a dissent, False when it is a
    withdrawal. Same-day dissent and withdrawal count as dissent; an undated dissent beats any withdrawal."""
    best = _by_ref(evidence({"observations": observations}, codes))
    return dict(zip(best["patient_pid"].to_pylist(), best["dissent"].to_pylist(), strict=True))


def exclude(tables: dict[str, pa.Table], refs: pa.Array) -> tuple[dict[str, pa.Table], dict]:
    """Drop every record, in each of these tables (the patients, event tables, or a batch of one), of the
    patients with these source refs."""
    counts = {"patients_excluded": 0, "records_excluded": {}}
    if not len(refs):
        return tables, counts
    out = dict(tables)
    for name, table in tables.items():
        if name != "patients" and name not in EVENT_TABLES:
            continue
        hit = isin(table["source_id" if name == "patients" else "patient_ref"], refs)
        out[name] = table.filter(pc.invert(hit))
        if name == "patients":
            counts["patients_excluded"] = pc.count_distinct(table.filter(hit)["source_id"]).as_py()
        else:
            counts["records_excluded"][name] = table.num_rows - out[name].num_rows
    return out, counts


def _by_ref(found: pa.Table) -> pa.Table:
    found = found.filter(pc.is_valid(found["patient_ref"]))
    return latest(found["patient_ref"], found["event_date"], found["dissent"])


def apply_type1(tables: dict[str, pa.Table], codes: OptOutCodes) -> tuple[dict[str, pa.Table], dict]:
    """One delivery on its own (no register): drop every record of each patient whose latest type 1 code in
    it is a dissent."""
    best = _by_ref(evidence(dict(tables), codes))
    tables = {n: t for n, t in tables.items() if n != TYPE1_EVIDENCE}
    out, counts = exclude(tables, best.filter(best["dissent"])["patient_pid"].combine_chunks())
    counts["patients_readmitted"] = pc.sum(pc.invert(best["dissent"])).as_py() or 0
    return out, counts


# --- the store-wide register -------------------------------------------------------------------------------
def register_dir(store_root) -> object:
    return storage.root(store_root) / "_type1"


def _practice_file(store_root, practice: str):
    return register_dir(store_root) / f"{practice}.parquet"


# Decoded register files by their content: every practice's run reads every practice's file more than once (the
# register must be current at each check), and decoding Parquet costs far more than reading a small file's bytes.
# Keyed by the SHA-256 of the bytes read, so a file changed in any way is decoded afresh: never a stale answer.
_DECODED: dict[bytes, tuple[pa.Table, str | None]] = {}
_DECODED_MAX = 20_000

# A local file's SHA-256 by its ``storage.file_signature``, so that an unchanged file is not read again: a read of
# England's 6,500 unchanged files cost 0.38 s of CPU when each was read and hashed, 0.08 s now
# (``python -m bench.register``). A file is remembered this way only once its change time has settled
# (``storage.SETTLED_NS``). Files on S3 are read and hashed every time.
_SIGNED: dict[str, tuple[tuple[int, ...], bytes]] = {}


def _read(path) -> tuple[pa.Table, str | None]:
    return _read_file(path)[1:]


def _bytes_and_digest(path) -> tuple[bytes | None, bytes]:
    """The file's bytes (None when its remembered digest still holds) and SHA-256."""
    import hashlib
    import os
    import time

    if isinstance(path, storage.StorePath):
        data = path.read_bytes()
        return data, hashlib.sha256(data).digest()
    name = str(path)
    known = _SIGNED.get(name)
    if known is not None and known[0] == storage.file_signature(os.stat(name)):
        return None, known[1]
    with open(name, "rb") as fh:
        before = os.fstat(fh.fileno())
        data = fh.read()
        after = os.fstat(fh.fileno())
    digest = hashlib.sha256(data).digest()
    signature = storage.file_signature(before)
    if storage.file_signature(after) == signature and before.st_ctime_ns < time.time_ns() - storage.SETTLED_NS:
        _SIGNED[name] = (signature, digest)
    else:
        _SIGNED.pop(name, None)
    return data, digest


def _read_file(path) -> tuple[bytes, pa.Table, str | None]:
    """A register file's SHA-256, events and key version."""
    import pyarrow.parquet as pq

    data, digest = _bytes_and_digest(path)
    hit = _DECODED.get(digest)
    if hit is not None:
        return (digest, *hit)
    if data is None:  # its decoded events were let go: read it again
        _SIGNED.pop(str(path), None)
        return _read_file(path)
    # A small file read directly: pq.read_table's dataset machinery cost 1.5 ms a file, this 0.3 ms (bench.register)
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    meta = table.schema.metadata or {}
    version = meta.get(b"key_version", b"").decode() or None
    decoded = (table.select(EVENTS.names).cast(EVENTS), version)
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    _DECODED[digest] = decoded
    return (digest, *decoded)


def register_files(store_root) -> list:
    from pathlib import Path

    return [Path(path) if isinstance(path, str) else path for _, path in _listing(store_root)]


def _listing(store_root) -> list[tuple[str, object]]:
    """(practice, file) of every register file, in practice order; a local file as a ``str`` (pathlib's
    overhead was a third of reading England's 6,500 files when none had changed)."""
    folder = register_dir(store_root)
    if isinstance(folder, storage.StorePath):
        found = sorted(folder.glob("*.parquet"), key=str) if folder.exists() else []
        return [(path.name.removesuffix(".parquet"), path) for path in found]
    import os

    try:
        with os.scandir(folder) as entries:
            return sorted((entry.name.removesuffix(".parquet"), entry.path) for entry in entries
                          if entry.name.endswith(".parquet"))
    except FileNotFoundError:
        return []


def load_register(store_root, key_version: str | None) -> tuple[pa.Table, str | None]:
    """Every practice's type 1 events, and their key version; refuses files of another version than
    ``key_version`` (None: whatever version, as long as all agree)."""
    files, version = _load(store_root, key_version)
    parts = [table for _, table in files.values()]
    return (pa.concat_tables(parts) if parts else EVENTS.empty_table()), version


def _load(store_root, key_version: str | None) -> tuple[dict[str, tuple[bytes, pa.Table]], str | None]:
    """Every register file's SHA-256 and events by practice, and their key version (checked as ``load_register``
    says)."""
    files, versions = {}, {}
    for practice, path in _listing(store_root):
        digest, table, version = _read_file(path)
        files[practice] = (digest, table)
        versions[practice] = version
    found = set(versions.values())
    if key_version is not None:
        wrong = sorted(p for p, v in versions.items() if v != key_version)
        if wrong:
            raise GpdataError(f"the type 1 register of {len(wrong)} practice(s) ({', '.join(wrong[:5])}) is not at key "
                              f"version {key_version}: finish the key rotation (gpdata keys rotate)")
    elif len(found) > 1:
        raise GpdataError(f"the type 1 register mixes key versions {sorted(map(str, found))}: finish the key rotation")
    version = key_version or (found.pop() if found else None)
    return files, version


# The register's status (latest event per patient across every practice) and its active dissenters, for the
# files it was computed from: every practice's run asks several times, and with England's 6,500 practices (1.7 M
# dissenters) computing it from every file costs about 1.4 s of CPU (``python -m bench.register``). When files
# have changed since, and each changed file only added events or later ones (as ``record`` does), the status is
# brought up to date from the changed files alone (``with_events``); a file removed, or one whose events went back
# (rewritten by ``write``), or another key version: computed again from every file. Never a stale answer.
@dataclass
class Snapshot:
    files: dict[str, bytes]  # practice -> SHA-256 of its file
    version: str | None
    best: pa.Table
    active: pa.Array
    # the files seen changed since, by ``dissented_since``: practice -> (SHA-256, events)
    since: dict[str, tuple[bytes, pa.Table]] = field(default_factory=dict)


_LAST: list[Snapshot] = []


def register_status(store_root, key_version: str | None) -> tuple[pa.Table, str | None]:
    """The latest type 1 event of every patient across every practice's register file (``status`` of
    ``load_register``'s events), and the key version."""
    found = _status_of(store_root, key_version)
    return found.best, found.version


def _moved_forward(changed: list[tuple[str, bytes, pa.Table]]) -> bool:
    """Files (practice, digest of the content read before, events now) that changed: did every patient's latest
    event in each of them stay or get later (so the register's status may be brought forward from them)? One
    ``status`` for them all, each patient keyed by practice."""
    old, new = [], []
    for practice, digest, events in changed:
        before = _DECODED.get(digest)
        if before is None:  # no longer held: cannot tell
            return False
        old.append(_keyed(practice, before[0]))
        new.append(_keyed(practice, events))
    if not new:
        return True
    now = status(pa.concat_tables(new))
    return _sorted(status(pa.concat_tables(old + [now]))).equals(_sorted(now))


def _keyed(practice: str, events: pa.Table) -> pa.Table:
    return events.set_column(0, EVENTS.field(0), pc.binary_join_element_wise(practice, events["patient_pid"], "\0"))


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("patient_pid", "ascending"), ("event_date", "ascending"), ("dissent", "ascending")])


def _forward(read: Snapshot | None, files: dict[str, tuple[bytes, pa.Table]],
             version: str | None) -> dict[str, tuple[bytes, pa.Table]] | None:
    """The files (practice -> SHA-256 and events, as ``_load`` read them) changed since ``read``, when each only
    gained events or later ones since it was last seen (in ``read.since``, else in ``read.files``): the register's
    status may then be brought forward from them alone. None when it must be computed from every file: nothing
    read before, another key version, a file removed, or a file whose events went back."""
    if read is None or version != read.version or set(read.files) - set(files):
        return None
    changed = {p: entry for p, entry in files.items() if read.files.get(p) != entry[0]}
    if set(read.since) - set(changed):  # seen changed, now as it was: it went back
        return None
    moved = []
    for practice, (digest, table) in changed.items():
        before = read.since.get(practice, (read.files.get(practice),))[0]
        if before is not None and before != digest:  # a new file only adds events
            moved.append((practice, before, table))
    return changed if _moved_forward(moved) else None


def _status_of(store_root, key_version: str | None) -> Snapshot:
    files, version = _load(store_root, key_version)
    digests = {practice: digest for practice, (digest, _) in files.items()}
    last = _LAST[0] if _LAST else None
    if last is not None and last.files == digests and last.version == version:
        return last
    changed = _forward(last, files, version)
    if changed is not None:
        best = with_events(last.best, pa.concat_tables([t for _, t in changed.values()])) if changed else last.best
        if best["patient_pid"].num_chunks > 64:  # each update adds a chunk; the kernels slow down with many
            best = best.combine_chunks()
    else:
        parts = [table for _, table in files.values()]
        best = status(pa.concat_tables(parts)) if parts else EVENTS.empty_table()
    found = Snapshot(digests, version, best, best["patient_pid"].filter(best["dissent"]).combine_chunks())
    _LAST[:] = [found]  # one register at a time: the newest
    return found


def snapshot(store_root, key_version: str | None = None) -> Snapshot:
    """The register as read now: its status (``best``), active dissenters (``active``) and key version, for
    ``dissented_since`` to compare with later."""
    return _status_of(store_root, key_version)


def dissented_since(store_root, read: Snapshot, pids: pa.Array) -> pa.Array:
    """Those of ``pids`` whose latest code across practices is a dissent now, read from the register now, and
    was not in ``read`` (a ``snapshot``): a commit's check after its write, for the patients it wrote, who were
    not dissenting when it read the register before.

    Only the files changed since ``read`` are looked at, and of the status only the rows of the patients they
    name: England's 6,500 files and 1.7 M dissenters cost a stat of each file, not a new status (the check runs
    after every practice's commit). While each changed file only gained events or later ones (``record``), that
    is exact; a file removed, gone back, or of another key version: the whole status is read again."""
    files, version = _load(store_root, read.version)
    changed = _forward(read, files, version)
    if changed is None:
        now = _status_of(store_root, read.version).active
        return pids.filter(pc.and_(isin(pids, now), pc.invert(isin(pids, read.active))))
    read.since.clear()
    read.since.update(changed)
    if not changed:
        return pids.slice(0, 0)
    events = pa.concat_tables([table for _, table in changed.values()])
    named = pids.filter(isin(pids, events["patient_pid"]))
    if not len(named):
        return named
    before = read.best.filter(isin(read.best["patient_pid"], named))
    after = status(pa.concat_tables([before, events.filter(isin(events["patient_pid"], named))]))
    now = after.filter(after["dissent"])["patient_pid"]
    was = before.filter(before["dissent"])["patient_pid"]
    return now.filter(pc.invert(pc.is_in(now, value_set=was))).combine_chunks()


def with_events(best: pa.Table, events: pa.Table) -> pa.Table:
    """``status`` of a register's status (``register_status``) with these events added, recomputed only for the
    patients the events name: the same table as ``status`` of all the events together, up to row order."""
    named = isin(best["patient_pid"], events["patient_pid"].drop_null())
    return pa.concat_tables([best.filter(pc.invert(named)),
                             status(pa.concat_tables([best.filter(named), events.select(EVENTS.names).cast(EVENTS)]))])


def status(events: pa.Table) -> pa.Table:
    """Latest code per patient across every practice's events."""
    return latest(events["patient_pid"], events["event_date"], events["dissent"])


def active(events: pa.Table) -> pa.Array:
    """Pseudonyms of patients whose latest code, across practices, is a dissent."""
    best = status(events)
    return best.filter(best["dissent"])["patient_pid"].combine_chunks()


def active_dissenters(store_root, key_version: str | None = None) -> tuple[pa.Array, str | None]:
    """Pseudonyms of every patient whose latest code across practices is a dissent, read from the register now."""
    found = _status_of(store_root, key_version)
    return found.active, found.version


def record(store_root, practice: str, events: pa.Table, key_version: str) -> pa.Table:
    """Merge a batch's latest events into the practice's register file (atomically); returns the new file.
    Earlier events are never forgotten: a dissent stays until a later-dated withdrawal."""
    path = _practice_file(store_root, practice)
    old = EVENTS.empty_table()
    if path.exists():
        old, version = _read(path)
        if version != key_version:
            raise GpdataError(f"the type 1 register of practice {practice} is at key version {version}, not "
                              f"{key_version}: finish the key rotation (gpdata keys rotate)", practice=practice)
    merged = status(pa.concat_tables([old, events.select(EVENTS.names).cast(EVENTS)]))
    write(store_root, practice, merged, key_version)
    return merged


def write(store_root, practice: str, events: pa.Table, key_version: str) -> None:
    table = events.select(EVENTS.names).cast(EVENTS).replace_schema_metadata({"key_version": key_version})
    storage.write_parquet(_practice_file(store_root, practice), table)


def rekey(store_root, rekey_pids, to_version: str) -> int:
    """Re-key every practice's register file to ``to_version`` (``rekey_pids(pids, from_version)``); files
    already at it are left alone, so an interrupted rotation resumes. Returns the files re-keyed."""
    done = 0
    for path in register_files(store_root):
        table, version = _read(path)
        if version == to_version:
            continue
        table = table.set_column(0, EVENTS.field(0), rekey_pids(table["patient_pid"], version))
        write(store_root, path.name.removesuffix(".parquet"), table, to_version)
        done += 1
    return done
