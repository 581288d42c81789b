"""The National Data Opt-out list: pseudonymised on arrival, applied at dissemination.

The list arrives with NHS numbers and its publication date. ``ingest`` checks it before it replaces anything:
it refuses a list with no valid NHS number, one where more than ``max_invalid_fraction`` of the rows are not
valid NHS numbers (an Excel-mangled column, ``9.991020861E+09``), one that shrank by more than
``max_drop_fraction`` against the list in force, one published in the future or already older than
``max_age_days`` (``include/config/ndop.yaml``). A refused list changes nothing: the list in force stays, the
identifiable file is kept for the operator, and the refusal is audited. An accepted list is pseudonymised with
the curated key (its key version and check value recorded beside it), replaces the previous one, and only then
is the identifiable file deleted. ``load`` measures staleness from the publication date and refuses a list
made with another key.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from gpdata import audit, storage
from gpdata.config import load_model
from gpdata.errors import ConfigError, GpdataError
from gpdata.privacy import keys, nhsnumber
from gpdata.privacy.deid import Pseudonymiser
from gpdata.privacy.keys import MasterKey
from gpdata.settings import CONFIG_DIR

POLICY_FILE = CONFIG_DIR / "ndop.yaml"


class Policy(BaseModel):
    """The checks a list must pass (include/config/ndop.yaml)."""

    model_config = ConfigDict(extra="forbid")
    source_file: Path | None = None
    max_age_days: int = Field(35, ge=1, description="a list older than this (from its publication) is stale")
    max_invalid_fraction: float = Field(0.001, ge=0, le=1, description="share of rows that may be invalid")
    max_drop_fraction: float = Field(0.1, ge=0, le=1, description="largest shrink against the list in force")


def policy(path: Path = POLICY_FILE) -> Policy:
    return load_model(path, Policy, "National Data Opt-out policy") if Path(path).exists() else Policy()


MAX_AGE_DAYS = Policy().max_age_days


def ndop_dir(store_root: Path) -> Path:
    return storage.root(store_root) / "_ndop"


def current(store_root: Path) -> dict | None:
    """The metadata of the list in force, or None."""
    return storage.read_json(ndop_dir(store_root) / "ndop.json")


def _refuse(store_root: Path, path: Path, cause: str) -> None:
    audit.append(store_root, "ndop_refused", reason=cause)
    raise ConfigError(f"National Data Opt-out list refused, the list in force is unchanged and the file is kept: "
                      f"{cause}", file=str(path))


def ingest(path: Path, store_root: Path, key: MasterKey, published: dt.date, *, today: dt.date | None = None,
           rules: Policy | None = None) -> dict:
    today = today or dt.date.today()
    rules = rules or policy()
    keys.verify_store(store_root, key)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "nhs_number" not in (reader.fieldnames or ()):
                raise ConfigError("the National Data Opt-out list needs a column nhs_number", file=str(path))
            values = [row["nhs_number"] for row in reader]
    except FileNotFoundError:
        raise ConfigError("the National Data Opt-out list does not exist", file=str(path)) from None
    if published > today:
        _refuse(store_root, path, f"its publication date {published} is in the future")
    if (today - published).days > rules.max_age_days:
        _refuse(store_root, path, f"it was published {published}, {(today - published).days} days ago "
                                  f"(at most {rules.max_age_days} allowed)")
    previous = current(store_root)
    if previous and previous.get("published") and published < dt.date.fromisoformat(previous["published"]):
        _refuse(store_root, path, f"it was published {published}, before the list in force ({previous['published']})")
    normal = nhsnumber.normalise(pa.array(values, pa.string()))
    valid = nhsnumber.is_valid(normal)
    pids = Pseudonymiser(key)(normal.filter(valid), "nhs_number")
    n_valid, n_rows = len(pids), len(values)
    if n_valid == 0:
        _refuse(store_root, path, f"it holds no valid NHS number ({n_rows} rows)")
    invalid = (n_rows - n_valid) / n_rows
    if invalid > rules.max_invalid_fraction:
        _refuse(store_root, path, f"{n_rows - n_valid} of {n_rows} rows ({invalid:.2%}) are not valid NHS numbers "
                                  f"(at most {rules.max_invalid_fraction:.2%} allowed; a spreadsheet may have turned "
                                  "them into numbers)")
    if previous and previous.get("patients"):
        drop = 1 - n_valid / previous["patients"]
        if drop > rules.max_drop_fraction:
            _refuse(store_root, path, f"it holds {n_valid} patients against {previous['patients']} in the list in "
                                      f"force, a drop of {drop:.1%} (at most {rules.max_drop_fraction:.1%} allowed)")
    folder = ndop_dir(store_root)
    table = pa.table({"patient_pid": pids})
    name = f"ndop-{published.isoformat()}-{hashlib.sha256(str(sorted(pids.to_pylist())).encode()).hexdigest()[:12]}"
    meta = {"published": published.isoformat(), "received": today.isoformat(), "patients": n_valid,
            "invalid_rows_dropped": n_rows - n_valid, "key_version": key.version,
            "key_check": key.check_value(), "file": f"{name}.parquet"}
    storage.write_parquet(folder / meta["file"], table)
    storage.write_json_atomic(folder / "ndop.json", meta)  # the switch: one atomic write
    for old in folder.glob("*.parquet"):
        if old.name != meta["file"]:
            old.unlink()
    Path(path).unlink()  # the identifiable file is kept only until the list is accepted
    audit.append(store_root, "ndop_ingested", published=meta["published"], key_version=key.version)
    return meta


def load(store_root: Path, today: dt.date, max_age_days: int | None = None,
         key: MasterKey | None = None) -> tuple[pa.Array, dict]:
    meta = current(store_root)
    if not meta:
        raise GpdataError("no National Data Opt-out list has been ingested (gpdata ndop ingest FILE --published DATE)")
    max_age_days = max_age_days if max_age_days is not None else policy().max_age_days
    published = meta.get("published") or meta["received"]
    age = (today - dt.date.fromisoformat(published)).days
    if age > max_age_days:
        raise GpdataError(f"the National Data Opt-out list is {age} days old (published {published}; "
                          f"at most {max_age_days} allowed): ingest a current list before disseminating")
    if key is not None:
        if meta.get("key_version") != key.version:
            raise GpdataError(f"the National Data Opt-out list is pseudonymised with key version "
                              f"{meta.get('key_version')}, the key is at {key.version}: finish the key rotation "
                              "(gpdata keys rotate) before disseminating")
        key.verify({meta["key_version"]: meta.get("key_check")}, "the National Data Opt-out list")
    return storage.read_parquet(ndop_dir(store_root) / meta.get("file", "ndop.parquet"))["patient_pid"] \
        .combine_chunks(), meta


def rekey(store_root: Path, key: MasterKey) -> str:
    """Bring the list to the key ring's current version (key rotation); a list already there is left alone."""
    meta = current(store_root)
    if not meta:
        return "no list"
    if meta.get("key_version") == key.version:
        return f"already {key.version}"
    old = meta.get("key_version")
    if old not in key.versions:
        raise GpdataError(f"the National Data Opt-out list is at key version {old}, which the key ring does not hold")
    key.verify({old: meta.get("key_check")}, "the National Data Opt-out list")
    folder = ndop_dir(store_root)
    pids = storage.read_parquet(folder / meta.get("file", "ndop.parquet"))["patient_pid"]
    new = Pseudonymiser(key)(pids, "nhs_number", after=old)
    name = f"ndop-{meta.get('published') or meta['received']}-{key.version}.parquet"
    storage.write_parquet(folder / name, pa.table({"patient_pid": new}))
    storage.write_json_atomic(folder / "ndop.json", {**meta, "file": name, "key_version": key.version,
                                                     "key_check": key.check_value()})
    for path in folder.glob("*.parquet"):
        if path.name != name:
            path.unlink()
    return f"{old} -> {key.version} ({len(new)} patients)"
