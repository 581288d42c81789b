"""The National Data Opt-out list: pseudonymised on arrival, applied at dissemination.

The list arrives with NHS numbers. ``ingest`` normalises and checks them, pseudonymises them with the
curated key, stores only the pseudonyms (``_ndop/ndop.parquet`` with the date received) and deletes the
identifiable file. ``load`` refuses a list older than the configured maximum age.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pyarrow as pa

from gpdata import storage
from gpdata.errors import ConfigError, GpdataError
from gpdata.privacy import nhsnumber
from gpdata.privacy.deid import Pseudonymiser
from gpdata.privacy.keys import MasterKey

MAX_AGE_DAYS = 35  # the list is refreshed monthly


def ndop_dir(store_root: Path) -> Path:
    return storage.root(store_root) / "_ndop"


def ingest(path: Path, store_root: Path, key: MasterKey, received: dt.date | None = None) -> dict:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "nhs_number" not in (reader.fieldnames or ()):
                raise ConfigError("the National Data Opt-out list needs a column nhs_number", file=str(path))
            values = [row["nhs_number"] for row in reader]
    except FileNotFoundError:
        raise ConfigError("the National Data Opt-out list does not exist", file=str(path)) from None
    normal = nhsnumber.normalise(pa.array(values, pa.string()))
    valid = nhsnumber.is_valid(normal)
    pids = Pseudonymiser(key)(normal.filter(valid), "nhs_number")
    folder = ndop_dir(store_root)
    storage.write_parquet(folder / "ndop.parquet", pa.table({"patient_pid": pids}))
    meta = {"received": (received or dt.date.today()).isoformat(), "patients": len(pids),
            "invalid_rows_dropped": len(values) - len(pids), "key_version": key.version}
    storage.write_json_atomic(folder / "ndop.json", meta)
    Path(path).unlink()  # the identifiable file is not kept
    return meta


def load(store_root: Path, today: dt.date, max_age_days: int = MAX_AGE_DAYS) -> tuple[pa.Array, dict]:
    folder = ndop_dir(store_root)
    if not (folder / "ndop.json").exists():
        raise GpdataError("no National Data Opt-out list has been ingested (gpdata ndop ingest FILE)")
    meta = json.loads((folder / "ndop.json").read_text())
    age = (today - dt.date.fromisoformat(meta["received"])).days
    if age > max_age_days:
        raise GpdataError(f"the National Data Opt-out list is {age} days old (received {meta['received']}; "
                          f"at most {max_age_days} allowed): ingest a current list before disseminating")
    return storage.read_parquet(folder / "ndop.parquet")["patient_pid"].combine_chunks(), meta
