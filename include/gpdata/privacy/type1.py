"""Type 1 opt-out: patients whose latest dissent code is a dissent are never extracted."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from gpdata.codes import OptOutCodes, code_keys
from gpdata.model import EVENT_TABLES

_FAR_FUTURE = dt.date(9999, 12, 31)


def type1_status(observations: pa.Table, codes: OptOutCodes) -> dict[str, bool]:
    """Patient ref -> True when the latest type 1 code in these records is a dissent, False when it is a
    withdrawal. Same-day dissent and withdrawal, or an undated dissent, count as dissent."""
    keys = code_keys(observations["code_system"], observations["code"])
    dissent = pc.fill_null(pc.is_in(keys, pa.array(sorted(codes.dissent))), False)
    withdrawn = pc.fill_null(pc.is_in(keys, pa.array(sorted(codes.withdrawn))), False)
    rows = observations.select(["patient_ref", "event_date"]).append_column("dissent", dissent) \
        .filter(pc.or_(dissent, withdrawn))
    latest: dict[str, tuple[dt.date, bool]] = {}
    for ref, date, is_dissent in zip(*(rows[c].to_pylist() for c in rows.column_names), strict=True):
        if ref is None:
            continue
        when = date or (_FAR_FUTURE if is_dissent else dt.date.min)
        if ref not in latest or (when, is_dissent) > latest[ref]:
            latest[ref] = (when, is_dissent)
    return {ref: is_dissent for ref, (_, is_dissent) in latest.items()}


def dissenting_patients(observations: pa.Table, codes: OptOutCodes) -> tuple[set[str], int]:
    """Patient refs whose latest type 1 code is a dissent, and how many were re-admitted by a withdrawal."""
    status = type1_status(observations, codes)
    return {ref for ref, d in status.items() if d}, sum(1 for d in status.values() if not d)


def apply_type1(tables: dict[str, pa.Table], codes: OptOutCodes) -> tuple[dict[str, pa.Table], dict]:
    """Drop every record, in every table, of each patient with an active type 1 opt-out."""
    excluded, readmitted = dissenting_patients(tables["observations"], codes)
    counts = {"patients_excluded": 0, "patients_readmitted": readmitted, "records_excluded": {}}
    if not excluded:
        return tables, counts
    refs = pa.array(sorted(excluded), pa.string())
    out = dict(tables)
    keep = pc.invert(pc.fill_null(pc.is_in(tables["patients"]["source_id"], refs), False))
    out["patients"] = tables["patients"].filter(keep)
    removed = tables["patients"].filter(pc.invert(keep))["source_id"]
    counts["patients_excluded"] = pc.count_distinct(removed).as_py()
    for name in EVENT_TABLES:
        keep = pc.invert(pc.fill_null(pc.is_in(tables[name]["patient_ref"], refs), False))
        out[name] = tables[name].filter(keep)
        counts["records_excluded"][name] = tables[name].num_rows - out[name].num_rows
    return out, counts


def optout_pseudonyms(patients: pa.Table, kept: pa.Table, pseudonymise) -> pa.Table:
    """Patient pseudonyms of the patients type 1 removed (valid NHS numbers only), for erasure."""
    from gpdata.privacy import nhsnumber

    removed = patients.filter(pc.invert(pc.is_in(patients["source_id"], value_set=kept["source_id"])))
    nhs = nhsnumber.normalise(removed["nhs_number"].combine_chunks())
    valid = nhsnumber.is_valid(nhs)
    pids = pseudonymise(pc.unique(nhs.filter(valid)), "nhs_number")
    return pa.table({"patient_pid": pids})
