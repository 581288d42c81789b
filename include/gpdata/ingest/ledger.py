"""Per-practice extraction state, kept outside the store under ``$GPDATA_HOME/state/<ODS>/``.

``ledger.json``      every delivered file committed, by SHA-256 (name, delivery, run), the SQL watermark, and
                     whether the practice has a baseline;
``patients.parquet`` pseudonym of each patient's source record id -> patient pseudonym and birth month, so an
                     incremental delivery's events can be linked to patients delivered earlier;
``practitioners.parquet`` the same for clinicians (-> practitioner pseudonym and role);
``dissenters.parquet`` the same for patients excluded by a type 1 dissent (-> patient pseudonym), who are not in
                     ``patients.parquet``: so a later delivery's type 1 code for one of them (a withdrawal, or the
                     dissent recorded again) names a known patient instead of stopping the batch;

Everything here is pseudonymous. It is written only by a successful commit (after the Delta tables), so a
failed run never moves the watermark or marks a file as processed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata.storage import read_json, write_json_atomic

PATIENT_MAP = pa.schema([("ref_pid", pa.string()), ("patient_pid", pa.string()), ("birth_month", pa.date32())])
PRACTITIONER_MAP = pa.schema([("ref_pid", pa.string()), ("practitioner_pid", pa.string()),
                              ("role_code", pa.string())])
DISSENTER_MAP = pa.schema([("ref_pid", pa.string()), ("patient_pid", pa.string())])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class PracticeState:
    practice: str
    folder: Path
    files: dict[str, dict] = field(default_factory=dict)
    watermark: str | None = None
    baselined: bool = False
    snapshot: str | None = None  # combined hash of the last committed full snapshot
    key_version: str | None = None  # the key the maps here are pseudonymised with
    key_checks: dict[str, str] = field(default_factory=dict)  # check values of the key ring it was made with

    @classmethod
    def load(cls, state_dir: Path, practice: str) -> PracticeState:
        folder = Path(state_dir) / practice
        doc = read_json(folder / "ledger.json") or {}
        return cls(practice=practice, folder=folder, files=doc.get("files", {}), watermark=doc.get("watermark"),
                   baselined=doc.get("baselined", False), snapshot=doc.get("snapshot"),
                   key_version=doc.get("key_version"), key_checks=doc.get("key_checks") or {})

    def seen(self, sha256: str) -> dict | None:
        return self.files.get(sha256)

    def deliveries(self) -> set[str]:
        """Every delivery (flat-file stamp) of which a file was committed."""
        return {f["delivery"] for f in self.files.values()}

    def applied_through(self) -> str | None:
        """A flat-file practice's newest committed delivery stamp (stamps sort in time order)."""
        return max(self.deliveries(), default=None)

    def patient_map(self) -> pa.Table:
        path = self.folder / "patients.parquet"
        return pq.read_table(path).cast(PATIENT_MAP) if path.exists() else PATIENT_MAP.empty_table()

    def practitioner_map(self) -> pa.Table:
        path = self.folder / "practitioners.parquet"
        return pq.read_table(path).cast(PRACTITIONER_MAP) if path.exists() else PRACTITIONER_MAP.empty_table()

    def dissenter_map(self) -> pa.Table:
        path = self.folder / "dissenters.parquet"
        return pq.read_table(path).cast(DISSENTER_MAP) if path.exists() else DISSENTER_MAP.empty_table()

    def save(self, *, run_id: str, files: list[dict], watermark: str | None, snapshot: str | None,
             patient_map: pa.Table | None, practitioner_map: pa.Table | None = None,
             key_version: str | None = None, key_checks: dict[str, str] | None = None,
             token=None, dissenter_map: pa.Table | None = None) -> None:
        """Record a committed run. Parquet state first, the ledger (which names the run) last. ``token``, when
        given, replaces file names recorded before names were tokenised (``files`` already carry tokens)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if patient_map is not None:
            _write_parquet(self.folder / "patients.parquet", patient_map.cast(PATIENT_MAP))
        if practitioner_map is not None:
            _write_parquet(self.folder / "practitioners.parquet", practitioner_map.cast(PRACTITIONER_MAP))
        if dissenter_map is not None:
            _write_parquet(self.folder / "dissenters.parquet", dissenter_map.cast(DISSENTER_MAP))
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if token is not None:
            self.files = {sha: {**entry, "name": token(entry["name"])} for sha, entry in self.files.items()}
        for f in files:
            self.files[f["sha256"]] = {"name": f["name"], "delivery": f["delivery"], "run_id": run_id,
                                       "committed_at": now}
        if watermark is not None:
            self.watermark = watermark
        self.snapshot = snapshot if snapshot is not None else self.snapshot
        self.baselined = True
        self.key_version = key_version or self.key_version
        self.key_checks = key_checks or self.key_checks
        self.write(last_run=run_id)

    def write(self, **extra) -> None:
        write_json_atomic(self.folder / "ledger.json", {
            "practice": self.practice, "files": self.files, "watermark": self.watermark,
            "baselined": self.baselined, "snapshot": self.snapshot, "key_version": self.key_version,
            "key_checks": self.key_checks, **extra})


def _write_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def merge_patient_map(old: pa.Table, new: pa.Table, deleted_pids: pa.Array | None = None) -> pa.Table:
    """The map after a delivery: new entries replace old ones of the same ref; deleted patients leave it."""
    keep = pc.invert(pc.is_in(old["ref_pid"], value_set=new["ref_pid"].combine_chunks()))
    if deleted_pids is not None and len(deleted_pids):
        keep = pc.and_(keep, pc.invert(pc.is_in(old["patient_pid"], value_set=deleted_pids)))
    return pa.concat_tables([old.filter(keep).cast(PATIENT_MAP), new.select(PATIENT_MAP.names).cast(PATIENT_MAP)])


def merge_by_ref(old: pa.Table, new: pa.Table) -> pa.Table:
    """A ref -> pseudonym map after a delivery: new entries replace old ones of the same ref."""
    keep = pc.invert(pc.is_in(old["ref_pid"], value_set=new["ref_pid"].combine_chunks()))
    return pa.concat_tables([old.filter(keep), new.select(old.column_names).cast(old.schema)])
